"""Write the synthetic tutorial project: a small RELION 5 tomography project with ground truth.

Layout of ``out_dir`` (all STAR file names are relative to ``out_dir``, the RELION project
directory)::

    tomograms.star                 data_global, one row per tomogram
    tilt_series/<TS>.star          data_<TS>: one row per tilt image (ascending tilt)
    tilt_series/<TS>.mrcs          the tilt images; rlnMicrographName = "<f+1:06d>@tilt_series/<TS>.mrcs"
    particles.star                 picks as RELION 5's sphere picker (general, optics, particles)
    optimisation_set.star          rlnTomoParticlesFile, rlnTomoTomogramsFile
    masks/mask_align_bin4.mrc      soft mask around the central particle (bin 4, box 32): tight
                                   (map > 10 % of max, 2-pixel cosine edge) because the lattice
                                   neighbours come close to the central particle
    ground_truth/map_bin4.mrc      the phantom at 4 x tilt-series pixel, box 32 (reference z along
                                   z: the hexamer's C6 axis, or the D2 particle's 2-fold along the
                                   virion's surface normal)
    ground_truth/particles_true.star  true rlnAngle* and rlnOrigin*Angst for each pick

RELION 5 locates tilt images through ``rlnMicrographName`` of each tilt-series row when
``data_global`` has no ``rlnTomoTiltSeriesName`` (``TomogramSet::loadTomogram``, option B); the
``n@stack`` form is read by RELION's ``Image::read``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from subtomo_nb.geometry.euler import matrix_to_euler
from subtomo_nb.geometry.tilt_series import projection_matrices
from subtomo_nb.io.mrc import write_map
from subtomo_nb.io.optimisation_set import OptimisationSet, write_optimisation_set
from subtomo_nb.io.star import write_star
from subtomo_nb.io.tomograms import TomogramSet, write_tomograms
from subtomo_nb.simulate.phantom import get_phantom, render_map
from subtomo_nb.simulate.scene import PICKER_PRIOR_ANGLES, Tomogram, make_tomogram_scene
from subtomo_nb.simulate.tilt_series import render_tilt_series, tilt_scheme, tilt_series_table

__all__ = ["simulate_project", "simulate_tiny_project", "TINY", "TINY_TUTORIAL", "DEFAULT_SNR", "soft_mask_from_map"]

#: Default signal-to-noise ratio (variance ratio) of the first-acquired tilt image. At 1e-3 a
#: single particle's orientation is determined by a reference low-passed to 50 Å (median error
#: ~7° at HEALPix order 2 on the tiny preset with the full tilt series); at 2e-4 it was not (~33°),
#: and a refinement started there stays lost.
DEFAULT_SNR = 1e-3

#: Parameters of the tiny preset (tests): one small tomogram, one small virion, 9 tilts.
TINY: dict[str, Any] = dict(
    n_tomograms=1,
    tomogram_size=(640, 640, 520),
    n_virions=1,
    radius_range_A=(600.0, 640.0),
    max_tilt_deg=60.0,
    tilt_step_deg=15.0,
    margin_A=60.0,
)

#: The tiny project of ``subtomo tutorial --tiny`` / ``subtomo simulate --tiny`` and the notebooks'
#: tiny mode: :data:`TINY` with the full dose-symmetric tilt series of the default dataset (±60° in
#: 3° steps, 41 tilts) instead of 9 tilts in 15° steps. With 9 tilts a particle holds 4.5 times
#: less signal and a single particle's orientation is not determined at the tutorial's SNR: the
#: tiny auto-refine ended 70° from the true orientations (38.4 Å, from a 50 Å start). With 41
#: tilts it reaches the true poses' resolution (28.8 Å) with a median error of 3.4°, against
#: 2.2° for the best poses against the ground truth (``benchmarks/angular_error_oracle.py``).
#: :data:`TINY` itself stays as it is: the tests and RELION's reference extractions of
#: ``shared/data/relion-reference/extract_tiny`` were made from it.
TINY_TUTORIAL: dict[str, Any] = {**TINY, "tilt_step_deg": 3.0}


def soft_mask_from_map(volume: np.ndarray, threshold_fraction: float = 0.1, extend_px: int = 0,
                       edge_px: float = 2.0) -> np.ndarray:
    """Soft mask: ``volume > threshold·max``, dilated by ``extend_px`` and given a cosine edge.

    Parameters
    ----------
    volume
        Map ``[z, y, x]``.
    threshold_fraction
        Binarisation threshold as a fraction of the maximum.
    extend_px
        Binary dilation (pixels).
    edge_px
        Width of the raised-cosine edge (pixels).

    Returns
    -------
    numpy.ndarray
        float32 mask in [0, 1].
    """
    binary = volume > threshold_fraction * float(volume.max())
    if extend_px > 0:
        binary = ndimage.binary_dilation(binary, iterations=int(extend_px))
    dist = ndimage.distance_transform_edt(~binary)
    mask = np.where(dist <= 0, 1.0, np.where(dist < edge_px, 0.5 + 0.5 * np.cos(np.pi * dist / edge_px), 0.0))
    return mask.astype(np.float32)


def _tomo_names(n: int) -> list[str]:
    return [f"TS_{i + 1:02d}" for i in range(n)]


def _particle_table(tomo: Tomogram, optics_group: int, angles: tuple[np.ndarray, np.ndarray, np.ndarray],
                    origins_A: np.ndarray | None) -> pd.DataFrame:
    n = tomo.n_particles
    rot_s, tilt_s, psi_s = tomo.subtomo_angles
    cc = tomo.centred_coordinates_A
    cols: dict[str, Any] = {
        "rlnTomoName": [tomo.name] * n,
        "rlnTomoParticleName": [f"{tomo.name}/{i + 1}" for i in range(n)],
        "rlnOpticsGroup": np.full(n, optics_group, dtype=np.int64),
        "rlnCenteredCoordinateXAngst": cc[:, 0],
        "rlnCenteredCoordinateYAngst": cc[:, 1],
        "rlnCenteredCoordinateZAngst": cc[:, 2],
        "rlnTomoSubtomogramRot": rot_s,
        "rlnTomoSubtomogramTilt": tilt_s,
        "rlnTomoSubtomogramPsi": psi_s,
        "rlnAngleRot": np.broadcast_to(angles[0], (n,)).astype(np.float64),
        "rlnAngleTilt": np.broadcast_to(angles[1], (n,)).astype(np.float64),
        "rlnAnglePsi": np.broadcast_to(angles[2], (n,)).astype(np.float64),
        "rlnAngleTiltPrior": np.full(n, PICKER_PRIOR_ANGLES[1]),
        "rlnAnglePsiPrior": np.full(n, PICKER_PRIOR_ANGLES[2]),
    }
    if origins_A is not None:
        cols["rlnOriginXAngst"] = origins_A[:, 0]
        cols["rlnOriginYAngst"] = origins_A[:, 1]
        cols["rlnOriginZAngst"] = origins_A[:, 2]
    return pd.DataFrame(cols)


def simulate_project(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    n_tomograms: int = 4,
    tomogram_size: tuple[int, int, int] = (960, 960, 440),
    pixel_size_A: float = 2.7,
    n_virions: int | tuple[int, int] = 4,
    radius_range_A: tuple[float, float] = (400.0, 550.0),
    spacing_A: float = 260.0,
    margin_A: float = 180.0,
    max_tilt_deg: float = 60.0,
    tilt_step_deg: float = 3.0,
    dose_per_tilt: float = 3.0,
    dose_group: int = 2,
    defocus_range_A: tuple[float, float] = (30000.0, 40000.0),
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    hand: float = -1.0,
    snr: float | None = DEFAULT_SNR,
    pick_offset_bin4_px: float = -2.75,
    pick_noise_bin4_px: float = 0.5,
    truth_binning: int = 4,
    truth_box: int = 32,
    slab_A: float = 200.0,
    phantom_scale: float | None = None,
    particle: str = "hexamer",
    float16: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    """Simulate the tutorial project (seeded, deterministic) into ``out_dir``.

    Parameters
    ----------
    out_dir
        Project directory (created; nothing is written outside it).
    seed
        Seed of all randomness; the same seed gives identical files.
    n_tomograms
        Number of tomograms (``TS_01``, ``TS_02``, ...).
    tomogram_size
        ``rlnTomoSizeX/Y/Z`` (tilt-series pixels); the tilt images are ``SizeX × SizeY``.
    pixel_size_A
        ``rlnTomoTiltSeriesPixelSize`` (Å).
    n_virions
        Virions per tomogram, or an inclusive ``(min, max)`` range; fewer are placed when they
        do not fit (the default 4 gives 3 or 4 and ~600 particles in 4 tomograms).
    radius_range_A
        Virion radius range (Å, snapped to a lattice radius).
    spacing_A
        Lattice spacing (Å). The default, 260 Å, keeps the neighbours out of a 32-pixel
        bin-4 box (346 Å), so that each box holds the one particle the ground-truth map has (with
        a dense lattice the neighbours, absent from that map, bias the alignment by several
        degrees even without noise). Each particle's reference z axis is along the virion's outward
        normal and its reference x axis towards its nearest neighbour, whatever the ``particle``.
    margin_A
        Clearance of virions from the tomogram's x/y faces and from each other (Å).
    max_tilt_deg, tilt_step_deg
        Tilt range ``±max`` in steps (degrees).
    dose_per_tilt
        Exposure per tilt (e/Å²); ``rlnMicrographPreExposure`` is cumulative, dose-symmetric.
    dose_group
        Dose-symmetric group size.
    defocus_range_A
        Range of each series' mean defocus (Å).
    voltage_kV, cs_mm, amplitude_contrast
        Optics (kV, mm, fraction).
    hand
        ``rlnTomoHand``.
    snr
        Variance SNR of the first-acquired tilt image; None/inf for noise-free images.
    pick_offset_bin4_px
        Pick displacement along the outward normal, in bin-4 pixels (−2.75 as the tutorial).
    pick_noise_bin4_px
        Standard deviation of isotropic pick noise, bin-4 pixels.
    truth_binning, truth_box
        Binning and box of the ground-truth map and mask (``map_bin4.mrc``).
    slab_A
        Depth-slab thickness for the depth-dependent CTF (Å).
    phantom_scale
        Scale of the phantom's blob centres (dimensionless); None: the phantom's
        :attr:`~subtomo_nb.simulate.phantom.Phantom.dataset_scale` (1.8 for both phantoms, about
        150 Å across and 100 Å tall). The tilt series and the ground-truth map use the same.
    particle
        The phantom on the lattice, a name in :data:`~subtomo_nb.simulate.phantom.PHANTOMS`:
        ``"hexamer"`` (chiral C6 hexamer, C6 axis along the normal) or ``"d2"`` (chiral D2 dimer of
        dimers, its 2-fold about reference z along the normal). The ground-truth map, the mask
        and the true poses are those of this phantom; ``symmetry`` in the result is its point group.
    float16
        Write the tilt-image stacks as float16 (MRC mode 12).
    verbose
        Print progress.

    Returns
    -------
    dict
        ``project_dir``, ``tomograms``, ``particles``, ``optimisation_set``, ``mask``, ``map``,
        ``particles_true`` (paths), ``tilt_series`` (list of stack paths), ``n_particles`` (int),
        ``scenes`` (list of :class:`~subtomo_nb.simulate.scene.Tomogram`), ``particle`` (the
        phantom's name), ``symmetry`` (its RELION point-group symbol: ``"C6"``, ``"D2"``),
        ``seconds``.

    Raises
    ------
    ValueError
        For a ``particle`` not in :data:`~subtomo_nb.simulate.phantom.PHANTOMS` (before anything
        is written).
    """
    t0 = time.perf_counter()
    phantom = get_phantom(particle)  # an unknown name raises here, before anything is written
    if phantom_scale is None:
        phantom_scale = phantom.dataset_scale
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    (out / "tilt_series").mkdir(exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    (out / "ground_truth").mkdir(exist_ok=True)
    children = np.random.SeedSequence(seed).spawn(int(n_tomograms))
    tilts, pre = tilt_scheme(max_tilt_deg, tilt_step_deg, dose_per_tilt, dose_group)
    scale4 = 4.0  # the pick parameters are in bin-4 pixels
    names = _tomo_names(int(n_tomograms))
    global_rows = []
    tilt_tables: dict[str, pd.DataFrame] = {}
    picks, truth, scenes, stacks = [], [], [], []
    optics_rows = []
    for t, (name, ss) in enumerate(zip(names, children)):
        rng_scene, rng_ts, rng_noise = (np.random.default_rng(s) for s in ss.spawn(3))
        tomo = make_tomogram_scene(
            rng_scene, name, size_px=tomogram_size, pixel_size_A=pixel_size_A, n_virions=n_virions,
            radius_range_A=radius_range_A, spacing_A=spacing_A, margin_A=margin_A,
            pick_offset_px=pick_offset_bin4_px * scale4, pick_noise_px=pick_noise_bin4_px * scale4)
        stack_rel = f"tilt_series/{name}.mrcs"
        table = tilt_series_table(rng_ts, stack_rel, tilts, pre, pixel_size_A, defocus_range_A=defocus_range_A)
        W, H = int(tomogram_size[0]), int(tomogram_size[1])
        P = projection_matrices(table, tomogram_size, pixel_size_A, (W, H))
        images = render_tilt_series(tomo, P, table, (H, W), voltage_kV=voltage_kV, cs_mm=cs_mm,
                                    amplitude_contrast=amplitude_contrast, hand=hand, snr=snr,
                                    rng=rng_noise, slab_A=slab_A,
                                    phantom_scale=phantom_scale, particle=phantom)
        write_map(out / stack_rel, images, pixel_size_A, float16=float16, image_stack=True)
        if verbose:
            print(f"{name}: {tomo.n_particles} particles, {len(tilts)} tilts, "
                  f"{time.perf_counter() - t0:.1f} s")
        group = f"optics{t + 1}"
        global_rows.append({
            "rlnTomoName": name,
            "rlnVoltage": float(voltage_kV),
            "rlnSphericalAberration": float(cs_mm),
            "rlnAmplitudeContrast": float(amplitude_contrast),
            "rlnMicrographOriginalPixelSize": float(pixel_size_A),
            "rlnTomoHand": float(hand),
            "rlnOpticsGroupName": group,
            "rlnTomoTiltSeriesPixelSize": float(pixel_size_A),
            "rlnTomoTomogramBinning": 4.0,
            "rlnTomoSizeX": int(tomogram_size[0]),
            "rlnTomoSizeY": int(tomogram_size[1]),
            "rlnTomoSizeZ": int(tomogram_size[2]),
        })
        tilt_tables[name] = table
        optics_rows.append({
            "rlnOpticsGroup": t + 1,
            "rlnOpticsGroupName": group,
            "rlnSphericalAberration": float(cs_mm),
            "rlnVoltage": float(voltage_kV),
            "rlnTomoTiltSeriesPixelSize": float(pixel_size_A),
            "rlnAmplitudeContrast": float(amplitude_contrast),
        })
        picks.append(_particle_table(tomo, t + 1, PICKER_PRIOR_ANGLES, None))
        truth.append(_particle_table(tomo, t + 1, matrix_to_euler(tomo.A_particle_true), tomo.origins_true_A))
        scenes.append(tomo)
        stacks.append(out / stack_rel)

    tset = TomogramSet(global_table=pd.DataFrame(global_rows), tilt_series=tilt_tables, project_dir=out)
    write_tomograms(out / "tomograms.star", tset, embed=False, tilt_series_dir=out / "tilt_series", project_dir=out)
    optics = pd.DataFrame(optics_rows)
    general = {"rlnTomoSubTomosAre2DStacks": 0}
    write_star(out / "particles.star", {"general": general, "optics": optics,
                                          "particles": pd.concat(picks, ignore_index=True)})
    write_star(out / "ground_truth" / "particles_true.star",
               {"general": general, "optics": optics, "particles": pd.concat(truth, ignore_index=True)})
    write_optimisation_set(out / "optimisation_set.star", OptimisationSet({
        "rlnTomoParticlesFile": "particles.star",
        "rlnTomoTomogramsFile": "tomograms.star",
    }))
    truth_pix = truth_binning * pixel_size_A
    vol = render_map(truth_box, truth_pix, scale=phantom_scale, particle=phantom)
    write_map(out / "ground_truth" / "map_bin4.mrc", vol, truth_pix)
    write_map(out / "masks" / "mask_align_bin4.mrc", soft_mask_from_map(vol), truth_pix)
    return {
        "project_dir": out,
        "tomograms": out / "tomograms.star",
        "particles": out / "particles.star",
        "optimisation_set": out / "optimisation_set.star",
        "mask": out / "masks" / "mask_align_bin4.mrc",
        "map": out / "ground_truth" / "map_bin4.mrc",
        "particles_true": out / "ground_truth" / "particles_true.star",
        "tilt_series": stacks,
        "n_particles": int(sum(s.n_particles for s in scenes)),
        "scenes": scenes,
        "particle": phantom.name,
        "symmetry": phantom.symmetry,
        "seconds": time.perf_counter() - t0,
    }


def simulate_tiny_project(out_dir: str | os.PathLike, *, tutorial: bool = False, particle: str = "hexamer",
                          **overrides: Any) -> dict[str, Any]:
    """:func:`simulate_project` with the :data:`TINY` preset (a few seconds); ``overrides`` win.

    ``tutorial=True`` uses :data:`TINY_TUTORIAL` (the full tilt series: what the tiny tutorial
    refines successfully) instead. ``particle`` picks the phantom as in :func:`simulate_project`
    (``"hexamer"``, C6, or ``"d2"``, D2), e.g. ``simulate_tiny_project(out_dir, particle="d2")``.
    """
    kwargs = dict(TINY_TUTORIAL if tutorial else TINY)
    kwargs.update(overrides)
    kwargs["particle"] = particle
    return simulate_project(out_dir, **kwargs)
