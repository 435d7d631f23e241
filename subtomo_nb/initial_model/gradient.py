"""VDAM's M-step on the padded Fourier grid: gradients, adaptive moments, the update, SSNR.

RELION (``BackProjector::reweightGrad``, ``getFristMoment``, ``getSecondMoment``,
``applyMomenta``, ``reconstructGrad``; conventions §8.5) back-projects, per pseudo half-set,
``w (X - CTF² P V) / σ²`` and ``w CTF² / σ²``. For 3D pseudo-subtomograms the first sum is the
ordinary back-projected data sum ``D`` minus the back-projected weight ``W`` times the current
reference transform ``P`` on the padded grid (up to interpolation), so the existing
back-projector's sums give the gradient ``g = (D - W P) / max(1, W)``.

With ``g_A``, ``g_B`` from the two pseudo half-sets (particle index parity):

* first moments ``m_h <- mu m_h + (1 - mu) g_h`` (``m_h = g_h`` the first time);
* second moment (one real per voxel, initialised to 1)
  ``v <- mu2 v + (1 - mu2) |g_B - g_A|² / (|(g_A + g_B)/2|² + 1e-12)``;
* direction ``d = ((m_A + m_B)/2) / (sqrt(v) + 1e-12)``;
* per shell, noise ``N = mean |m_A - m_B|``, signal ``S = mean |P|``, ``SNR = 2 T S / N``,
  ``f = min(max(SNR / (1 + SNR), FSC_model), 1)`` (``FSC_model`` is zero here);
* ``P <- P + step (f d - (1 - f) P)`` inside ``|k_pad| < round(r_max pad)``; ``P`` is zero
  outside (the reference transform is computed to the current size only).

Shells on the padded grid are ``round(|k_pad| / pad)``. Every function works on the padded half
arrays ``(M, M, M//2+1)`` of :class:`~subtomo_nb.fourier.backprojector.BackProjector` and
:class:`~subtomo_nb.fourier.projector.Projector` (same layout and scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from subtomo_nb.backend import Backend, backend_of
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.fourier.reconstruct import wiener_reconstruct

__all__ = [
    "GradientMoments",
    "GradientStep",
    "gradient",
    "map_from_transform",
    "reference_transform",
    "resolution_shell",
    "vdam_ssnr",
    "vdam_update",
]


@dataclass
class GradientMoments:
    """VDAM's running moments of one class (RELION's ``Igrad1`` of both halves and ``Igrad2``).

    Arrays of the job's backend (they stay on the device between mini-batches).

    Attributes
    ----------
    m1 : list of two complex arrays, or None before the first update.
    m2 : real array (initialised to ones).
    """

    m1: list[Any] | None
    m2: Any

    @classmethod
    def zeros(cls, shape: tuple[int, ...], backend: Backend | None = None) -> GradientMoments:
        """Fresh moments for padded half arrays of ``shape`` on ``backend`` (default numpy)."""
        be = backend if backend is not None else backend_of(None)
        return cls(m1=None, m2=be.xp.ones(shape, dtype=be.xp.float64, device=be.device))


@dataclass
class GradientStep:
    """Result of :func:`vdam_update` (arrays of the transform's backend).

    Attributes
    ----------
    transform : complex array -- the updated reference transform ``P``.
    fsc_estimate : (N//2+1,) -- ``f`` per shell.
    noise : (N//2+1,) -- mean ``|m_A - m_B|`` per shell.
    signal : (N//2+1,) -- mean ``|P|`` per shell (before the update).
    """

    transform: Any
    fsc_estimate: Any
    noise: Any
    signal: Any


def _grid(be: Backend, m: int, pad: float, r_max: float) -> tuple[Any, Any]:
    """(inside ``|k_pad|² < round(r_max pad)²``, shell ``round(|k_pad| / pad)``) on the padded half grid.

    Built on the device from integer ranges (no table crosses): ``k = 0..m//2`` along x and the
    wrapped ``fftfreq(m) m`` along y and z.
    """
    xp = be.xp
    i = xp.arange(m, dtype=xp.int64, device=be.device)
    k = xp.where(i <= (m - 1) // 2, i, i - m)
    kx = xp.arange(m // 2 + 1, dtype=xp.int64, device=be.device)
    r2 = (kx * kx)[None, None, :] + (k * k)[None, :, None] + (k * k)[:, None, None]
    max_r2 = math.floor(r_max * pad + 0.5) ** 2                # RELION's ROUND
    # round(|k_pad| / pad), half away from zero (the argument is >= 0)
    ires = xp.astype(xp.floor(xp.sqrt(xp.astype(r2, xp.float64)) / pad + 0.5), xp.int64)
    return r2 < max_r2, ires


def _shell_mean(be: Backend, values: Any, ires: Any, inside: Any, n_shells: int) -> Any:
    """Mean of real ``values`` per shell over ``inside`` (0 where a shell is empty), ``(n_shells,)`` float64."""
    xp = be.xp
    ok = xp.reshape(inside & (ires < n_shells), (-1,))
    idx = xp.where(ok, xp.reshape(ires, (-1,)), 0)
    vals = xp.where(ok, xp.reshape(xp.astype(values, xp.float64), (-1,)), 0.0)
    total = be.bincount(idx, vals, n_shells)
    count = be.bincount(idx, xp.astype(ok, xp.float64), n_shells)
    return xp.where(count > 0, total / xp.clip(count, min=1.0), 0.0)


def reference_transform(volume: Any, pad: float, r_max: float) -> Any:
    """``P``: the map's padded transform to radius ``r_max``, without gridding pre-correction.

    As RELION's ``reconstructGrad`` computes it (``computeFourierTransformMap`` with no gridding
    correction), on the E-step projector's scale. ``volume`` is a real ``(N, N, N)`` map of any
    backend; ``P`` is on the same backend.
    """
    xp = backend_of(volume).xp
    return Projector(xp.astype(volume, xp.float64), pad=pad, r_max=r_max, skip_gridding=True).data


def gradient(data: Any, weight: Any, transform: Any, pad: float, r_max: float) -> Any:
    """``g = (D - W P) / max(1, W)`` inside the current radius, 0 outside (``reweightGrad``).

    Parameters
    ----------
    data, weight
        A pseudo half-set's back-projected sums ``D = Σ w X / σ²`` and ``W = Σ w CTF² / σ²``
        (padded half arrays, already symmetrised; arrays of one backend).
    transform
        ``P`` of the reference the E-step used (:func:`reference_transform`).
    pad, r_max
        Padding factor and current radius (Fourier pixels of the unpadded box).
    """
    be = backend_of(data, weight, transform)
    xp = be.xp
    inside, _ = _grid(be, int(weight.shape[0]), pad, r_max)
    g = (xp.astype(data, xp.complex128) - weight * transform) / xp.clip(weight, min=1.0)
    return xp.where(inside, g, 0.0)


def vdam_update(transform: Any, grads: tuple[Any, Any], moments: GradientMoments, *,
                pad: float, r_max: float, box: int, tau2_fudge: float, step: float, mu: float = 0.9,
                mu2: float = 0.999, fsc_model: np.ndarray | None = None) -> GradientStep:
    """One VDAM update of a class's reference transform (moments updated in place).

    Everything runs on the transform's backend; the per-shell curves of the result stay there
    too (the caller copies what it keeps with ``to_host``).

    Parameters
    ----------
    transform
        ``P`` (padded half array), the reference of this iteration's E-step.
    grads
        ``(g_A, g_B)`` of the two pseudo half-sets (:func:`gradient`).
    moments
        The class's moments (same backend); updated in place.
    pad, r_max, box
        Padding factor, current radius (Fourier pixels), unpadded box (pixels).
    tau2_fudge
        This iteration's T.
    step
        This iteration's step size (already scaled for the class's share when K > 1).
    mu, mu2
        Decay of the first (``--mu``) and second moments.
    fsc_model
        RELION's model FSC per shell (host array; zero for the non-MPI initial model).
    """
    be = backend_of(transform, *grads)
    xp = be.xp
    inside, ires = _grid(be, int(transform.shape[0]), pad, r_max)
    n_shells = box // 2 + 1
    gA, gB = (xp.astype(g, xp.complex128) for g in grads)
    if moments.m1 is None:
        moments.m1 = [xp.where(inside, gA, 0.0), xp.where(inside, gB, 0.0)]
    else:
        for h, g in enumerate((gA, gB)):
            moments.m1[h] = xp.where(inside, mu * moments.m1[h] + (1.0 - mu) * g, moments.m1[h])
    diff = gB - gA
    mean = 0.5 * (gA + gB)
    ratio = (xp.real(diff) ** 2 + xp.imag(diff) ** 2) / (xp.real(mean) ** 2 + xp.imag(mean) ** 2 + 1e-12)
    moments.m2 = xp.where(inside, mu2 * moments.m2 + (1.0 - mu2) * ratio, moments.m2)
    mA, mB = moments.m1
    direction = xp.where(inside, 0.5 * (mA + mB) / (xp.sqrt(moments.m2) + 1e-12), 0.0)
    noise = _shell_mean(be, xp.abs(mA - mB), ires, inside, n_shells)
    signal = _shell_mean(be, xp.abs(transform), ires, inside, n_shells)
    snr = xp.where(noise > 0, 2.0 * tau2_fudge * signal / xp.where(noise > 0, noise, 1.0), 0.0)
    f = snr / (1.0 + snr)
    if fsc_model is None:
        floor = xp.zeros(n_shells, dtype=xp.float64, device=be.device)
    else:
        floor = be.to_device(np.asarray(fsc_model, dtype=np.float64)[:n_shells], "metadata")
    f = xp.minimum(xp.maximum(f, floor), 1.0)
    shell = xp.reshape(xp.minimum(ires, n_shells - 1), (-1,))
    fk = xp.reshape(xp.take(f, shell, axis=0), ires.shape)
    new = xp.where(inside, transform + step * (fk * direction - (1.0 - fk) * transform), 0.0)
    cdtype = transform.dtype if xp.isdtype(transform.dtype, "complex floating") else xp.complex128
    return GradientStep(transform=xp.astype(new, cdtype), fsc_estimate=f, noise=noise, signal=signal)


def map_from_transform(transform: Any, box: int, pad: float, r_max: float) -> Any:
    """Real-space map of ``P``: inverse FFT on the padded grid, windowed to ``box``, ÷pad³, edge-masked.

    The box-edge soft mask (radius ``N/2``, 3 px) is applied and no gridding correction, as
    RELION's ``reconstructGrad``. The map (float64) is on the transform's backend.
    """
    be = backend_of(transform)
    xp = be.xp
    ones = xp.ones(tuple(transform.shape), dtype=xp.float64, device=be.device)
    vol = wiener_reconstruct(transform, ones, box, pad, int(r_max), data_dim=3, tau2=None, skip_gridding=True,
                             edge_mask=True, do_gridding_correction=False)
    return xp.astype(vol, xp.float64)


def vdam_ssnr(weight: Any, tau2: Any, *, pad: float, r_max: float, box: int, tau2_fudge: float,
              avg_ctf2: float = 1.0) -> Any:
    """Per-shell SSNR of a non-gold-standard run: ``mean_shell(W pad³) T τ²`` × average CTF².

    RELION's ``updateSSNRarrays`` without FSC (τ² = power spectrum of the current reference);
    for CTF-premultiplied data (every tomography data set) it is multiplied by the average CTF²
    per unit multiplicity (``setAverageCTF2``). ``weight`` and ``tau2`` are arrays of one backend
    (``tau2`` may be a host array on numpy); the SSNR ``(N//2+1,)`` is on that backend.
    """
    be = backend_of(weight, tau2)
    xp = be.xp
    inside, ires = _grid(be, int(weight.shape[0]), pad, r_max)
    n_shells = box // 2 + 1
    mean_w = _shell_mean(be, xp.astype(weight, xp.float64) * pad ** 3, ires, inside, n_shells)
    t2 = xp.zeros(n_shells, dtype=xp.float64, device=be.device)
    tin = xp.reshape(xp.astype(be.to_device(tau2, "metadata"), xp.float64), (-1,))[:n_shells]
    t2[: tin.shape[0]] = tin
    return mean_w * tau2_fudge * t2 * avg_ctf2


def resolution_shell(ssnr: np.ndarray, minimum: int = 0) -> int:
    """RELION's current-resolution shell: the first shell ``i >= 1`` with SSNR < 1, minus one.

    Returns the last shell when the SSNR never drops below 1; at least ``minimum``.
    """
    below = np.flatnonzero(np.asarray(ssnr)[1:] < 1.0)
    shell = int(below[0]) if below.size else len(ssnr) - 1
    return max(shell, int(minimum))
