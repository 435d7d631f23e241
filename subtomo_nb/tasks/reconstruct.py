"""Reconstruct particle: ``relion_reconstruct --i STAR --o MAP [--sym G] [--ctf]`` for tomography.

Particles are 3D pseudo-subtomograms (``_data.mrc`` + ``_weights.mrc``) or 2D stacks (turned into
pseudo-subtomograms on load, see :mod:`subtomo_nb.tasks.particle_data`). Each particle's
transform is shifted by ``+origin`` (RELION's sign) and back-rotated with its orientation
``A(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)``; with ``--ctf`` the CTF² sum is the weight
(the data are CTF-premultiplied), without it each observed voxel weighs 1. With
``rlnRandomSubset`` the two half-sets are reconstructed separately, their FSC is computed and the
merged map is their sum; without it everything goes into one map.

Backend (``backend=``: numpy, cupy or the strict test device): each batch of particle
transforms is copied to the device once (``"particles"``) with its rotation matrices
(``"metadata"``); back-projection, symmetrisation, the FSC and the reconstructions run there, and
only the maps (``"map"``, to be written) and the FSC curve (``"results"``) come back. On a dask
cluster each worker back-projects on its own backend and sends its sums back through the host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from subtomo_nb.backend import Backend, get_backend
from subtomo_nb.fourier.backprojector import BackProjector
from subtomo_nb.fourier.fsc import fsc as fsc_curve
from subtomo_nb.fourier.fsc import resolution
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.geometry.symmetry import point_group
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.mrc import write_map
from subtomo_nb.io.particles import ParticleSet, box_size, pixel_size
from subtomo_nb.io.star import write_star
from subtomo_nb.tasks.particle_data import load_particle_set, particle_transforms

#: Particles per back-projection batch (memory ~ batch × box³ complex).
BATCH = 32


@dataclass
class ReconstructResult:
    """What :func:`reconstruct_particles` wrote and measured.

    Attributes
    ----------
    merged_path : Path -- merged map.
    half_paths : tuple of Path or None -- half maps (only with rlnRandomSubset).
    fsc : numpy.ndarray or None -- gold-standard FSC per shell between the half maps.
    resolution_A : float or None -- FSC = 0.143 resolution (Å).
    fsc_path : Path or None -- STAR table of the FSC curve.
    """

    merged_path: Path
    half_paths: tuple[Path, Path] | None
    fsc: np.ndarray | None
    resolution_A: float | None
    fsc_path: Path | None


def common_box_and_pixel(pset: ParticleSet) -> tuple[int, float]:
    """Box (pixels) and pixel size (Å) shared by all optics groups of a particle set.

    Raises
    ------
    InputError
        If the optics groups differ in box or pixel size (one map needs one grid).
    """
    return box_size(pset), pixel_size(pset)   # without a group: the value every group shares, else refused


def _batch_backprojection(pset: ParticleSet, rows: np.ndarray, box: int, pad: int, ctf: bool,
                          tomograms: object, backend: Backend | str = "numpy") -> tuple[Any, Any]:
    """Back-project particles ``rows`` into a fresh padded grid on ``backend``; returns (data, weight).

    Each batch's transforms are read on the host and copied to the device once (``"particles"``).
    """
    be = get_backend(backend) if isinstance(backend, str) else backend
    xp = be.xp
    bp = BackProjector(box, pad=pad, backend=be)
    for start in range(0, len(rows), BATCH):
        idx = rows[start:start + BATCH]
        data, ctf2, mult = particle_transforms(pset, idx, tomograms=tomograms, apply_origins=True)
        data, ctf2 = be.to_device(data, "particles"), be.to_device(ctf2, "particles")
        mult = None if mult is None else be.to_device(mult, "particles")
        tab = pset.particles.iloc[idx]
        A = euler_to_matrix(tab["rlnAngleRot"].to_numpy(float), tab["rlnAngleTilt"].to_numpy(float),
                            tab["rlnAnglePsi"].to_numpy(float))
        if ctf:
            weight = ctf2
        elif mult is not None:
            observed = mult > 0.01
            weight = xp.astype(observed, xp.float64)
            data = xp.where(observed, data, 0.0)
        else:
            weight = xp.ones(tuple(ctf2.shape), dtype=xp.float64, device=be.device)
        bp.insert3d(be.to_device(A, "metadata"), data, weight)
    return bp.data, bp.weight


def _host_sums(pset: ParticleSet, rows: np.ndarray, box: int, pad: int, ctf: bool, tomograms: object,
               backend: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_batch_backprojection` on a cluster worker's own ``backend``; the sums come back to the host."""
    be = get_backend(backend)
    data, weight = _batch_backprojection(pset, rows, box, pad, ctf, tomograms, be)
    return be.to_host(data, "sums"), be.to_host(weight, "sums")


def _accumulate(pset: ParticleSet, rows: np.ndarray, box: int, pad: int, ctf: bool, tomograms: object,
                n_workers: int, client: object = None, backend: Backend | None = None) -> BackProjector:
    """Back-project ``rows`` with ``n_workers`` dask workers (threads), or on ``client``'s cluster, and sum the parts.

    On a cluster the rows go in one part per worker, and the parts are added in row order here
    (each part's host sums copied to ``backend`` as ``"sums"``). Local threads share ``backend``.
    """
    be = get_backend("numpy") if backend is None else backend
    bp = BackProjector(box, pad=pad, backend=be)
    if len(rows) == 0:
        return bp
    if client is not None:
        n_parts = max(1, len(client.scheduler_info().get("workers", {})))
        futures = [client.submit(_host_sums, pset, chunk, box, pad, ctf, tomograms, be.name, pure=False)
                   for chunk in np.array_split(rows, n_parts) if len(chunk)]
        for d, w in client.gather(futures):
            bp.data += be.to_device(d, "sums")
            bp.weight += be.to_device(w, "sums")
        return bp
    if n_workers <= 1:
        bp.data, bp.weight = _batch_backprojection(pset, rows, box, pad, ctf, tomograms, be)
        return bp
    import dask

    parts = [dask.delayed(_batch_backprojection)(pset, chunk, box, pad, ctf, tomograms, be)
             for chunk in np.array_split(rows, n_workers) if len(chunk)]
    for d, w in dask.compute(*parts, scheduler="threads", num_workers=n_workers):
        bp.data += d
        bp.weight += w
    return bp


def _write_fsc(path: Path, curve: np.ndarray, box: int, pix: float, res: float) -> None:
    shells = np.arange(len(curve))
    inv = shells / (box * pix)
    ang = np.where(shells > 0, box * pix / np.maximum(shells, 1), 999.0)
    table = pd.DataFrame({"rlnSpectralIndex": shells, "rlnResolution": inv, "rlnAngstromResolution": ang,
                          "rlnFourierShellCorrelation": curve})
    write_star(path, {"general": {"rlnFinalResolution": float(res)}, "fsc": table})


def reconstruct_particles(
    star_path: str | os.PathLike,
    out_map: str | os.PathLike,
    *,
    sym: str = "C1",
    ctf: bool = True,
    pad: int = 2,
    n_workers: int = 1,
    tomograms: str | os.PathLike | None = None,
    client: object = None,
    backend: str = "numpy",
) -> ReconstructResult:
    """Reconstruct a map from particles with their current orientations and origins.

    Parameters
    ----------
    star_path
        Particle STAR file, or an optimisation set naming one (and the tomograms).
    out_map
        Output merged map (.mrc). Half maps ``<stem>_half1.mrc``/``<stem>_half2.mrc`` and the FSC
        table ``<stem>_fsc.star`` are written beside it when rlnRandomSubset is present.
    sym
        Point group (RELION name) applied to data and weights before the division.
    ctf
        CTF correction (``--ctf``): weights are the CTF² sums.
    pad
        Padding factor of the Fourier grid.
    n_workers
        Number of parallel workers (``--j``).
    tomograms
        Tomogram set, needed for 2D stacks when ``star_path`` is a particle file.
    client
        A ``distributed.Client``: back-project on its cluster's workers (one part per worker and
        half-set) instead of ``n_workers`` local threads. The maps are written here.
    backend
        Array backend of the back-projection and reconstruction (``"numpy"``, ``"cupy"``,
        ``"strict"``; :func:`subtomo_nb.backend.get_backend`). Maps come to the host only to be
        written.

    Returns
    -------
    ReconstructResult
    """
    out_map = Path(out_map)
    be = get_backend(backend)
    pset, tomo_set = load_particle_set(star_path, tomograms)
    box, pix = common_box_and_pixel(pset)
    ops = point_group(sym)
    tab = pset.particles
    if "rlnRandomSubset" in tab.columns:
        subset = tab["rlnRandomSubset"].to_numpy()
        bad = ~np.isin(subset, (1, 2))
        if bad.any():
            raise InputError(what="rlnRandomSubset must be 1 or 2", path=pset.path,
                             row=int(np.flatnonzero(bad)[0]) + 1, field="rlnRandomSubset")
        halves = [np.flatnonzero(subset == 1), np.flatnonzero(subset == 2)]
    else:
        halves = [np.arange(len(tab))]
    bps = [_accumulate(pset, rows, box, pad, ctf, tomo_set, n_workers, client, be) for rows in halves]
    for bp in bps:
        bp.symmetrise(ops)
    out_map.parent.mkdir(parents=True, exist_ok=True)
    stem = out_map.with_suffix("")
    if len(bps) == 1:
        merged = bps[0].reconstruct()
        write_map(out_map, be.to_host(merged, "map").astype(np.float32), pix)
        return ReconstructResult(out_map, None, None, None, None)
    half_maps = [bp.reconstruct() for bp in bps]
    half_paths = (Path(f"{stem}_half1.mrc"), Path(f"{stem}_half2.mrc"))
    for path, vol in zip(half_paths, half_maps):
        write_map(path, be.to_host(vol, "map").astype(np.float32), pix)
    curve = be.to_host(fsc_curve(half_maps[0], half_maps[1]), "results")
    res = resolution(curve, box, pix, 0.143)
    merged_bp = BackProjector(box, pad=pad, backend=be)
    for bp in bps:
        merged_bp.add(bp)
    write_map(out_map, be.to_host(merged_bp.reconstruct(), "map").astype(np.float32), pix)
    fsc_path = Path(f"{stem}_fsc.star")
    _write_fsc(fsc_path, curve, box, pix, res)
    return ReconstructResult(out_map, half_paths, curve, res, fsc_path)
