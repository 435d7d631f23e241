"""Particles as Fourier-space pseudo-subtomograms, whatever their format on disk.

Every job that uses particles (reconstruct, auto-refine, initial model) sees the same thing: for
a batch of particles, the CTF-premultiplied half transforms ``X`` (``rfft3`` normalisation), the
CTF² sums ``W`` and the multiplicities ``M``, all ``(B, N, N, N//2+1)``. 3D pseudo-subtomograms are
read as they are; 2D stacks are turned into pseudo-subtomograms on load by RELION's forward
insertion (:mod:`subtomo_nb.fourier.stack2d`), using each tilt's CTF and projection from the
tomogram set (see :func:`subtomo_nb.tasks.extract.stack2d_pseudo_subtomo`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from subtomo_nb.backend import Backend, get_backend

from subtomo_nb.fourier.fft import rfft3, shift_half
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.optimisation_set import read_optimisation_set
from subtomo_nb.io.particles import ParticleSet, check_files, is_2d_stack, pixel_size, read_particles
from subtomo_nb.io.star import read_star
from subtomo_nb.io.subtomo import read_particle_subtomo
from subtomo_nb.io.tomograms import TomogramSet, read_tomograms


def input_files(path: str | os.PathLike, tomograms: str | os.PathLike | None = None) -> dict[str, Path]:
    """The files a job's particle input names, as absolute paths by optimisation-set label.

    ``path`` an optimisation set: its non-empty entries; a particle file: ``rlnTomoParticlesFile``
    only. ``tomograms`` (``--tomograms``) overrides ``rlnTomoTomogramsFile``. A file that cannot be
    read as STAR names nothing more than itself.
    """
    out: dict[str, Path] = {}
    try:
        first = next(iter(read_star(path).values()), None)
    except (OSError, ValueError, KeyError):  # unreadable as STAR: the file itself is all that is known
        first = None
    if isinstance(first, dict) and "rlnTomoParticlesFile" in first:
        oset = read_optimisation_set(path)
        for label in oset:
            name = oset.resolve(label)
            if name is not None:
                out[label] = name
    else:
        out["rlnTomoParticlesFile"] = Path(path).absolute()
    if tomograms:
        out["rlnTomoTomogramsFile"] = Path(tomograms).absolute()
    return out


def load_particle_set(
    path: str | os.PathLike,
    tomograms: str | os.PathLike | None = None,
) -> tuple[ParticleSet, TomogramSet | None]:
    """Read particles (and, where needed, tomograms) from a particle file or optimisation set.

    Parameters
    ----------
    path
        Particle STAR file or optimisation set (``rlnTomoParticlesFile``, ``rlnTomoTomogramsFile``).
    tomograms
        Tomogram set; overrides the optimisation set's. Required for 2D stacks.

    Returns
    -------
    (ParticleSet, TomogramSet or None)
    """
    path = Path(path)
    blocks = read_star(path)
    first = next(iter(blocks.values()), None)
    if isinstance(first, dict) and "rlnTomoParticlesFile" in first:
        oset = read_optimisation_set(path)
        particles_path = oset.resolve("rlnTomoParticlesFile")
        if particles_path is None:
            raise InputError(what="optimisation set names no particle file", path=path,
                             field="rlnTomoParticlesFile")
        if tomograms is None and oset.tomograms_file:
            tomograms = oset.resolve("rlnTomoTomogramsFile")
        path = particles_path
    pset = read_particles(path, require_tomo=False)
    check_files(pset)
    tomo_set = None
    if tomograms is not None:
        tomo_set = read_tomograms(tomograms)
    elif is_2d_stack(pset):
        raise InputError(what="2D-stack particles need the tomogram set (--tomograms or an optimisation set)",
                         path=pset.path, field="rlnTomoTomogramsFile")
    return pset, tomo_set


def origins_px(pset: ParticleSet, rows: np.ndarray) -> np.ndarray:
    """``rlnOrigin{X,Y,Z}Angst`` of ``rows`` in pixels, ``(B, 3)`` (absent columns count as 0)."""
    tab = pset.particles.iloc[rows]
    out = np.zeros((len(rows), 3))
    groups = tab["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in tab.columns else np.ones(len(rows), int)
    pix = np.array([pixel_size(pset, int(g)) for g in groups])
    for i, label in enumerate(("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")):
        if label in tab.columns:
            out[:, i] = tab[label].to_numpy(dtype=np.float64) / pix
    return out


def particle_transforms(
    pset: ParticleSet,
    rows: np.ndarray,
    *,
    tomograms: TomogramSet | None = None,
    apply_origins: bool = True,
    origins: np.ndarray | None = None,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Half transforms, CTF² sums and multiplicities of a batch of particles.

    Parameters
    ----------
    pset
        The particle set.
    rows
        0-based rows of ``pset.particles``.
    tomograms
        Tomogram set (needed for 2D stacks).
    apply_origins
        Shift each particle by ``+origin`` (RELION's centring, conventions §2.1).
    origins
        ``(B, 3)`` origins in pixels to use instead of the table's (a refinement's current ones).
    dtype
        Real precision of the output (complex of the same precision for the data).

    Returns
    -------
    data : (B, N, N, N//2+1) complex
    ctf2 : (B, N, N, N//2+1) real
    multiplicity : (B, N, N, N//2+1) real, or None when the files hold none
    """
    rows = np.asarray(rows, dtype=np.int64)
    cdtype = np.complex64 if np.dtype(dtype) == np.float32 else np.complex128
    if is_2d_stack(pset):
        if tomograms is None:
            raise InputError(what="2D-stack particles need the tomogram set", path=pset.path,
                             field="rlnTomoTomogramsFile")
        from subtomo_nb.tasks.extract import stack2d_pseudo_subtomo

        subs = [stack2d_pseudo_subtomo(pset, tomograms, int(i)) for i in rows]
    else:
        subs = [read_particle_subtomo(pset, int(i)) for i in rows]
    data = np.stack([rfft3(np.asarray(s.data, dtype=np.float64)) for s in subs]).astype(cdtype)
    ctf2 = np.stack([np.asarray(s.ctf2) for s in subs]).astype(dtype)
    mult = None
    if all(s.multiplicity is not None for s in subs):
        mult = np.stack([np.asarray(s.multiplicity) for s in subs]).astype(dtype)
    if apply_origins:
        shift = origins_px(pset, rows) if origins is None else np.asarray(origins, dtype=np.float64)
        data = shift_half(data, shift).astype(cdtype)
    return data, ctf2, mult


#: Default memory (bytes) a :class:`TransformCache` keeps.
TRANSFORM_CACHE_BYTES = 2 * 1024 ** 3


class TransformCache:
    """Unshifted half transforms, CTF² and multiplicities of particles, kept on the device while they fit.

    A serial job (auto-refine, the initial model) scores every particle each iteration; it reads
    and transforms each one once and copies it to ``backend``'s device once (counted as
    ``"particles"``), as the dask workers keep theirs. Particles beyond ``max_bytes`` are read (and
    copied) again whenever they are needed. The current origins are applied on the device
    (:meth:`shifted`): they are metadata, the particle data never go back to the host.

    Parameters
    ----------
    pset, tomograms
        Particle set and tomogram set (tomograms: needed for 2D stacks).
    dtype
        Real precision of the arrays (complex of the same precision for the data).
    max_bytes
        Most device memory kept (bytes).
    backend
        The job's backend (name or :class:`~subtomo_nb.backend.Backend`); numpy: host arrays, as before.

    Attributes
    ----------
    nbytes : the device memory the kept particles hold (bytes): a batch read is kept whole (its
        arrays, as views) when it fits, otherwise the particles that fit are copied out of it.
    """

    def __init__(self, pset: ParticleSet, tomograms: TomogramSet | None, dtype: type,
                 max_bytes: int = TRANSFORM_CACHE_BYTES, backend: str | Backend = "numpy") -> None:
        self.pset, self.tomograms, self.dtype, self.max_bytes = pset, tomograms, dtype, int(max_bytes)
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self._entries: dict[int, tuple[Any, Any, Any | None]] = {}
        self.nbytes = 0

    def raw(self, rows: np.ndarray) -> tuple[Any, Any, Any | None]:
        """Unshifted ``(data, ctf2, multiplicity)`` of ``rows`` (as ``particle_transforms(apply_origins=False)``),
        device arrays of the backend."""
        be = self.backend
        xp = be.xp
        missing = list(dict.fromkeys(int(r) for r in rows if int(r) not in self._entries))
        fresh: dict[int, tuple[Any, Any, Any | None]] = {}
        if missing:
            data, ctf2, mult = particle_transforms(self.pset, np.asarray(missing), tomograms=self.tomograms,
                                                   apply_origins=False, dtype=self.dtype)
            data, ctf2 = be.to_device(data, "particles"), be.to_device(ctf2, "particles")
            mult = None if mult is None else be.to_device(mult, "particles")
            arrays = [a for a in (data, ctf2, mult) if a is not None]
            # a batch that fits whole is kept as its views (its buffers are all accounted for);
            # otherwise each particle kept is copied out, so the batch's buffers can be freed
            whole = self.nbytes + sum(_nbytes(a) for a in arrays) <= self.max_bytes
            for i, r in enumerate(missing):
                entry = (data[i, ...], ctf2[i, ...], None if mult is None else mult[i, ...])
                fresh[r] = entry
                size = sum(_nbytes(a) for a in entry if a is not None)
                if self.nbytes + size <= self.max_bytes:
                    if not whole:
                        entry = tuple(None if a is None else xp.asarray(a, copy=True) for a in entry)
                    self._entries[r] = entry
                    self.nbytes += size
        entries = [self._entries.get(int(r)) or fresh[int(r)] for r in rows]
        data = xp.stack([e[0] for e in entries])
        ctf2 = xp.stack([e[1] for e in entries])
        mult = None if any(e[2] is None for e in entries) else xp.stack([e[2] for e in entries])
        return data, ctf2, mult

    def shifted(self, rows: np.ndarray, origins_px: np.ndarray) -> tuple[Any, Any, Any | None]:
        """``(data, ctf2, multiplicity)`` of ``rows`` with the data shifted by ``+origins_px`` ``(B, 3)``
        (the values ``particle_transforms(..., origins=origins_px)`` returns), device arrays.

        ``origins_px`` (pixels, host metadata) is copied to the device (``"metadata"``); the shift
        runs there (:func:`~subtomo_nb.fourier.fft.shift_half`).
        """
        be = self.backend
        data, ctf2, mult = self.raw(rows)
        origins = be.to_device(np.asarray(origins_px, dtype=np.float64), "metadata")
        return shift_half(data, origins), ctf2, mult


def _nbytes(a: Any) -> int:
    """Bytes of an array of any backend."""
    return int(math.prod(a.shape)) * np.dtype(str(a.dtype).rsplit(".", 1)[-1]).itemsize
