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

import numpy as np

from subtomo_nb.fourier.grid import freq_grid, round_half_away
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

    Attributes
    ----------
    m1 : list of two complex arrays, or None before the first update.
    m2 : real array (initialised to ones).
    """

    m1: list[np.ndarray] | None
    m2: np.ndarray

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> GradientMoments:
        """Fresh moments for padded half arrays of ``shape``."""
        return cls(m1=None, m2=np.ones(shape, dtype=np.float64))


@dataclass
class GradientStep:
    """Result of :func:`vdam_update`.

    Attributes
    ----------
    transform : complex array -- the updated reference transform ``P``.
    fsc_estimate : (N//2+1,) -- ``f`` per shell.
    noise : (N//2+1,) -- mean ``|m_A - m_B|`` per shell.
    signal : (N//2+1,) -- mean ``|P|`` per shell (before the update).
    """

    transform: np.ndarray
    fsc_estimate: np.ndarray
    noise: np.ndarray
    signal: np.ndarray


def _grid(m: int, pad: float, r_max: float) -> tuple[np.ndarray, np.ndarray]:
    """(inside ``|k_pad|² < round(r_max pad)²``, shell ``round(|k_pad| / pad)``) on the padded half grid."""
    kx, ky, kz = freq_grid(m, 3)
    r2 = np.broadcast_to(kx * kx + ky * ky + kz * kz, (m, m, m // 2 + 1))
    max_r2 = math.floor(r_max * pad + 0.5) ** 2                # RELION's ROUND
    ires = round_half_away(np.sqrt(r2.astype(np.float64)) / pad).astype(np.int64)
    return r2 < max_r2, ires


def _shell_mean(values: np.ndarray, ires: np.ndarray, inside: np.ndarray, n_shells: int) -> np.ndarray:
    ok = inside & (ires < n_shells)
    total = np.bincount(ires[ok], weights=values[ok], minlength=n_shells)[:n_shells]
    count = np.bincount(ires[ok], minlength=n_shells)[:n_shells]
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def reference_transform(volume: np.ndarray, pad: float, r_max: float) -> np.ndarray:
    """``P``: the map's padded transform to radius ``r_max``, without gridding pre-correction.

    As RELION's ``reconstructGrad`` computes it (``computeFourierTransformMap`` with no gridding
    correction), on the E-step projector's scale.
    """
    return Projector(np.asarray(volume, dtype=np.float64), pad=pad, r_max=r_max, skip_gridding=True).data


def gradient(data: np.ndarray, weight: np.ndarray, transform: np.ndarray, pad: float, r_max: float) -> np.ndarray:
    """``g = (D - W P) / max(1, W)`` inside the current radius, 0 outside (``reweightGrad``).

    Parameters
    ----------
    data, weight
        A pseudo half-set's back-projected sums ``D = Σ w X / σ²`` and ``W = Σ w CTF² / σ²``
        (padded half arrays, already symmetrised).
    transform
        ``P`` of the reference the E-step used (:func:`reference_transform`).
    pad, r_max
        Padding factor and current radius (Fourier pixels of the unpadded box).
    """
    inside, _ = _grid(weight.shape[0], pad, r_max)
    g = (data.astype(np.complex128) - weight * transform) / np.maximum(1.0, weight)
    return np.where(inside, g, 0)


def vdam_update(transform: np.ndarray, grads: tuple[np.ndarray, np.ndarray], moments: GradientMoments, *,
                pad: float, r_max: float, box: int, tau2_fudge: float, step: float, mu: float = 0.9,
                mu2: float = 0.999, fsc_model: np.ndarray | None = None) -> GradientStep:
    """One VDAM update of a class's reference transform (moments updated in place).

    Parameters
    ----------
    transform
        ``P`` (padded half array), the reference of this iteration's E-step.
    grads
        ``(g_A, g_B)`` of the two pseudo half-sets (:func:`gradient`).
    moments
        The class's moments; updated in place.
    pad, r_max, box
        Padding factor, current radius (Fourier pixels), unpadded box (pixels).
    tau2_fudge
        This iteration's T.
    step
        This iteration's step size (already scaled for the class's share when K > 1).
    mu, mu2
        Decay of the first (``--mu``) and second moments.
    fsc_model
        RELION's model FSC per shell (zero for the non-MPI initial model).
    """
    inside, ires = _grid(transform.shape[0], pad, r_max)
    n_shells = box // 2 + 1
    gA, gB = (np.asarray(g, dtype=np.complex128) for g in grads)
    if moments.m1 is None:
        moments.m1 = [np.where(inside, gA, 0), np.where(inside, gB, 0)]
    else:
        for h, g in enumerate((gA, gB)):
            moments.m1[h] = np.where(inside, mu * moments.m1[h] + (1.0 - mu) * g, moments.m1[h])
    diff = gB - gA
    mean = 0.5 * (gA + gB)
    ratio = (diff.real ** 2 + diff.imag ** 2) / (mean.real ** 2 + mean.imag ** 2 + 1e-12)
    moments.m2 = np.where(inside, mu2 * moments.m2 + (1.0 - mu2) * ratio, moments.m2)
    mA, mB = moments.m1
    direction = np.where(inside, 0.5 * (mA + mB) / (np.sqrt(moments.m2) + 1e-12), 0)
    noise = _shell_mean(np.abs(mA - mB), ires, inside, n_shells)
    signal = _shell_mean(np.abs(transform), ires, inside, n_shells)
    snr = np.where(noise > 0, 2.0 * tau2_fudge * signal / np.where(noise > 0, noise, 1.0), 0.0)
    f = snr / (1.0 + snr)
    floor = np.zeros(n_shells) if fsc_model is None else np.asarray(fsc_model, dtype=np.float64)[:n_shells]
    f = np.minimum(np.maximum(f, floor), 1.0)
    fk = f[np.minimum(ires, n_shells - 1)]
    new = np.where(inside, transform + step * (fk * direction - (1.0 - fk) * transform), 0)
    return GradientStep(transform=new.astype(transform.dtype if np.iscomplexobj(transform) else np.complex128),
                        fsc_estimate=f, noise=noise, signal=signal)


def map_from_transform(transform: np.ndarray, box: int, pad: float, r_max: float) -> np.ndarray:
    """Real-space map of ``P``: inverse FFT on the padded grid, windowed to ``box``, ÷pad³, edge-masked.

    The box-edge soft mask (radius ``N/2``, 3 px) is applied and no gridding correction, as
    RELION's ``reconstructGrad``.
    """
    ones = np.ones(transform.shape[:-1] + (transform.shape[-1],), dtype=np.float64)
    return wiener_reconstruct(transform, ones, box, pad, int(r_max), data_dim=3, tau2=None, skip_gridding=True,
                              edge_mask=True, do_gridding_correction=False).astype(np.float64)


def vdam_ssnr(weight: np.ndarray, tau2: np.ndarray, *, pad: float, r_max: float, box: int, tau2_fudge: float,
              avg_ctf2: float = 1.0) -> np.ndarray:
    """Per-shell SSNR of a non-gold-standard run: ``mean_shell(W pad³) T τ²`` × average CTF².

    RELION's ``updateSSNRarrays`` without FSC (τ² = power spectrum of the current reference);
    for CTF-premultiplied data (every tomography data set) it is multiplied by the average CTF²
    per unit multiplicity (``setAverageCTF2``).
    """
    inside, ires = _grid(weight.shape[0], pad, r_max)
    n_shells = box // 2 + 1
    mean_w = _shell_mean(np.asarray(weight, dtype=np.float64) * pad ** 3, ires, inside, n_shells)
    t2 = np.zeros(n_shells)
    tin = np.asarray(tau2, dtype=np.float64)[:n_shells]
    t2[: len(tin)] = tin
    return mean_w * tau2_fudge * t2 * avg_ctf2


def resolution_shell(ssnr: np.ndarray, minimum: int = 0) -> int:
    """RELION's current-resolution shell: the first shell ``i >= 1`` with SSNR < 1, minus one.

    Returns the last shell when the SSNR never drops below 1; at least ``minimum``.
    """
    below = np.flatnonzero(np.asarray(ssnr)[1:] < 1.0)
    shell = int(below[0]) if below.size else len(ssnr) - 1
    return max(shell, int(minimum))
