"""A small synthetic pseudo-subtomogram set whose reconstruction is off-centre by a known offset.

Shared by the registration, viewer and notebook-widget tests (no napari or Qt needed here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from subtomo_nb.fourier.fft import irfft3, rfft3, shift_half
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.io.mrc import write_map
from subtomo_nb.io.star import write_star
from subtomo_nb.io.subtomo import PseudoSubtomo, write_pseudo_subtomo
from subtomo_nb.simulate.phantom import render_map
from subtomo_nb.simulate.project import soft_mask_from_map

#: The tutorial's bin-4 geometry: 10.8 Å pixels, box 32.
BOX = 32
PIXEL_A = 10.8
#: The offset of the issue, (x, y, z) pixels.
OFFSET = (0.5, -1.25, 2.75)


def truth_and_mask(box: int = BOX, pixel_A: float = PIXEL_A) -> tuple[np.ndarray, np.ndarray]:
    """The phantom centred in its box and the tutorial's tight soft mask made from it."""
    truth = render_map(box, pixel_A).astype(np.float64)
    return truth, soft_mask_from_map(truth).astype(np.float64)


def shifted(volume: np.ndarray, offset_xyz: tuple[float, float, float]) -> np.ndarray:
    """Move a volume's content by ``+offset`` pixels (band-limited Fourier shift)."""
    return irfft3(shift_half(rfft3(volume), np.asarray(offset_xyz, dtype=np.float64)), volume.shape[0])


def write_particle_set(out: Path, *, n: int = 120, offset_xyz: tuple[float, float, float] = OFFSET,
                       noise_sigma: float = 0.0, seed: int = 0) -> Path:
    """Write ``n`` pseudo-subtomograms of the phantom whose density sits at ``+offset`` px.

    Each particle is the phantom moved by ``offset_xyz`` in the reference frame and rotated to a
    random orientation, with white Gaussian noise of ``noise_sigma`` (relative to the phantom's
    peak) and all-ones CTF² weights; origins start at 0 (random in-plane jitter is not needed:
    the point is the reference-frame offset). Returns the particle STAR path.
    """
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "Subtomograms").mkdir(exist_ok=True)
    truth, _ = truth_and_mask()
    ref = shifted(truth, offset_xyz)
    rot = rng.uniform(-180, 180, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(-180, 180, n)
    A = euler_to_matrix(rot, tilt, psi)
    halves = Projector(ref, pad=2).rotate3d(A, BOX)
    peak = float(truth.max())
    ones = np.ones((BOX, BOX, BOX // 2 + 1), dtype=np.float32)
    rows = []
    for i in range(n):
        data = irfft3(halves[i], BOX)
        if noise_sigma > 0:
            data = data + rng.normal(0.0, noise_sigma * peak, data.shape)
        d = f"Subtomograms/p{i + 1:05d}_data.mrc"
        w = f"Subtomograms/p{i + 1:05d}_weights.mrc"
        write_pseudo_subtomo(out / d, out / w, PseudoSubtomo(data.astype(np.float32), ones, ones), PIXEL_A)
        rows.append(dict(rlnImageName=d, rlnCtfImage=w, rlnOpticsGroup=1, rlnRandomSubset=i % 2 + 1,
                         rlnAngleRot=rot[i], rlnAngleTilt=tilt[i], rlnAnglePsi=psi[i],
                         rlnOriginXAngst=0.0, rlnOriginYAngst=0.0, rlnOriginZAngst=0.0))
    optics = pd.DataFrame([dict(rlnOpticsGroup=1, rlnOpticsGroupName="opticsGroup1", rlnVoltage=300.0,
                                rlnSphericalAberration=2.7, rlnAmplitudeContrast=0.07,
                                rlnTomoTiltSeriesPixelSize=PIXEL_A / 4, rlnCtfDataAreCtfPremultiplied=1,
                                rlnImageDimensionality=3, rlnTomoSubtomogramBinning=4.0,
                                rlnImagePixelSize=PIXEL_A, rlnImageSize=BOX)])
    star = out / "particles.star"
    write_star(star, {"optics": optics, "particles": pd.DataFrame(rows)})
    return star


def write_job(out: Path, **kw: object) -> dict[str, Path]:
    """A refine-like job folder: particles, their reconstruction (``run_class001.mrc``) and a mask.

    Returns paths ``particles``, ``map``, ``mask`` (mask in ``<out>/masks/mask_align_bin4.mrc``).
    """
    from subtomo_nb.tasks.reconstruct import reconstruct_particles

    star = write_particle_set(out, **kw)  # type: ignore[arg-type]
    job = out / "Refine3D" / "job001"
    job.mkdir(parents=True, exist_ok=True)
    write_star(job / "run_data.star", __import__("subtomo_nb.io.star", fromlist=["read_star"]).read_star(star))
    reconstruct_particles(job / "run_data.star", job / "run_class001.mrc", ctf=True)
    _, mask = truth_and_mask()
    (out / "masks").mkdir(exist_ok=True)
    write_map(out / "masks" / "mask_align_bin4.mrc", mask.astype(np.float32), PIXEL_A)
    return {"particles": job / "run_data.star", "map": job / "run_class001.mrc",
            "mask": out / "masks" / "mask_align_bin4.mrc"}
