"""RELION's reconstruction from padded Fourier data and weight arrays.

Implements ``BackProjector::reconstruct`` (relion-conventions.md §6.7), the down-sampled
un-regularised average used for the gold-standard FSC (``getDownsampledAverage``, §6.8) and the
FSC -> SSNR -> tau2 update (``updateSSNRarrays``). All arrays are padded half transforms
``(M, M, M//2+1)`` in wrapped (FFT) layout with ``M = pad * N``; functions work on numpy or
cupy arrays.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from subtomo_nb._array import fft_module, get_xp
from subtomo_nb.fourier.fft import irfft3
from subtomo_nb.fourier.grid import freq_grid, round_half_away
from subtomo_nb.fourier.masks import mask_particle
from subtomo_nb.fourier.projector import gridding_sinc2

__all__ = [
    "wiener_reconstruct",
    "gridding_correct",
    "downsampled_average",
    "ssnr_tau2_from_fsc",
    "SSNRResult",
    "blob_ft_ratio",
]

BLOB_RADIUS = 1.9
BLOB_ALPHA = 15.0


def _padded_r2(m: int, xp: Any) -> Any:
    kx, ky, kz = freq_grid(m, 3, xp)
    return kx * kx + ky * ky + kz * kz  # broadcast (m, m, m//2+1) int64


def gridding_correct(vol: Any, padded: int) -> Any:
    """Divide a centred real-space map by ``sinc(r / padded)**2`` (trilinear gridding correction).

    Parameters
    ----------
    vol
        Real map ``(N, N, N)`` (centre voxel ``N//2``).
    padded
        Padded box ``M = pad * N`` used during interpolation (pixels).
    """
    xp = get_xp(vol)
    rdtype = vol.dtype if vol.dtype in (xp.float32, xp.float64) else xp.float64
    return vol / gridding_sinc2(int(vol.shape[-1]), padded, vol.ndim, xp, rdtype)


def blob_ft_ratio(rval: Any, radius: float = 2 * BLOB_RADIUS, alpha: float = BLOB_ALPHA) -> Any:
    """Fourier transform of a 3D Kaiser-Bessel blob (order 0), normalised to 1 at 0.

    ``B(w) / B(0)`` with ``B(w) ~ I_{3/2}(z) / z**1.5``, ``z = sqrt(alpha**2 - (2 pi a w)**2)``
    (``J_{3/2}`` for imaginary ``z``); closed forms of the half-integer Bessel functions make this
    array-module generic. ``rval`` is the frequency in cycles per padded voxel; RELION tabulates
    this with ``a = 2 * 1.9`` and ``alpha = 15``.
    """
    xp = get_xp(rval)
    w = xp.asarray(rval, dtype=xp.float64)
    u = (2 * np.pi * radius * w) ** 2
    z2 = alpha ** 2 - u
    c = np.sqrt(2 / np.pi)

    def f_real(z: Any) -> Any:  # I_{3/2}(z) / z^{3/2}
        zs = xp.where(z < 1e-4, 1.0, z)
        val = c * (xp.cosh(zs) - xp.sinh(zs) / zs) / zs ** 2
        return xp.where(z < 1e-4, c / 3 * (1 + z * z / 10), val)

    def f_imag(y: Any) -> Any:  # J_{3/2}(y) / y^{3/2}
        ys = xp.where(y < 1e-4, 1.0, y)
        val = c * (xp.sin(ys) / ys - xp.cos(ys)) / ys ** 2
        return xp.where(y < 1e-4, c / 3 * (1 - y * y / 10), val)

    za = xp.sqrt(xp.abs(z2))
    num = xp.where(z2 >= 0, f_real(za), f_imag(za))
    den = c * (np.cosh(alpha) - np.sinh(alpha) / alpha) / alpha ** 2
    return num / den


def _pipe_menon_weights(fweight: Any, inside: Any, box: int, m: int, n_iter: int) -> Any:
    """Iterative gridding weights (Pipe & Menon 1999, eq. 14), RELION's ``max_iter_preweight``."""
    xp = get_xp(fweight)
    fft = fft_module(xp)
    newweight = inside.astype(xp.float64)
    c = xp.fft.fftfreq(m, 1.0 / m)
    r = xp.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    blob = blob_ft_ratio(r / (box * (m / box)))  # rval = r / (ori_size * pad), origin at corner
    for _ in range(n_iter):
        conv = (newweight * fweight).astype(xp.complex128)
        real = fft.irfftn(conv, s=(m, m, m), norm="forward") * blob
        conv = fft.rfftn(real, norm="forward")
        w = xp.maximum(1e-6, xp.abs(conv))
        newweight = xp.where(inside, newweight / w, newweight)
    return newweight


def wiener_reconstruct(data: Any, weight: Any, box: int, pad: float, r_max: int | None = None,
                       data_dim: int = 3, tau2: Any = None, tau2_fudge: float = 1.0,
                       minres_map: int = 5, skip_gridding: bool = True, gridding_iterations: int = 10,
                       edge_mask: bool = True, do_gridding_correction: bool = True) -> Any:
    """RELION's ``BackProjector::reconstruct`` on padded half arrays.

    Steps (relion-conventions.md §6.7):

    1. keep voxels with ``|k_pad|**2 <= round(r_max pad)**2``;
    2. if ``tau2`` is given (MAP): for shells ``i = round(|k_pad| / pad) >= minres_map`` add
       ``1 / (pad**3 * tau2_fudge * tau2[i])`` to the weight (``1 / (0.001 W)`` where tau2 = 0);
    3. ``skip_gridding=True``: weight floored at 1/1000 of its radial average (shells
       ``floor(|k_pad| / pad)``; beyond r_max the last shell's floor) and ``V = D / W'``;
       ``skip_gridding=False``: ``V = D * w`` with ``gridding_iterations`` Pipe--Menon iterations
       of the weights ``w`` (Kaiser--Bessel blob radius 3.8, alpha 15, convolution on the padded
       grid);
    4. inverse :func:`irfft3` on the padded grid, crop to ``N`` around the centre, divide by
       ``pad**3`` (``data_dim=3``) or ``pad**3 * N`` (``data_dim=2``);
    5. optional soft edge mask (radius ``N/2``, 3-pixel raised cosine, outside = weighted mean
       of the outside, ``softMaskOutsideMap``);
    6. gridding correction: divide by ``sinc(r / (pad N))**2``.

    Parameters
    ----------
    data, weight
        Padded half arrays ``(M, M, M//2+1)`` (complex, real).
    box
        Output box ``N`` (pixels).
    pad
        Effective padding factor ``M / N``.
    r_max
        Maximum radius (Fourier pixels of the unpadded box); default ``N // 2``.
    data_dim
        3 for 3D data (subtomograms), 2 for 2D images back-projected into 3D.
    tau2
        Per-shell signal power (unpadded shells ``0..``); None for the un-regularised D/W.
    tau2_fudge
        RELION's ``T`` (``--tau2_fudge``).
    minres_map
        Shells below this are not regularised (RELION ``minres_map``, default 5).
    skip_gridding, gridding_iterations
        See step 3 (RELION's default is ``skip_gridding=True``).
    edge_mask, do_gridding_correction
        Steps 5 and 6 (both on in RELION).

    Returns
    -------
    Real map ``(N, N, N)`` with the real dtype of ``weight``.
    """
    xp = get_xp(data, weight)
    m = int(weight.shape[0])
    r_max = int(box // 2 if r_max is None else r_max)
    rdtype = weight.dtype if weight.dtype in (xp.float32, xp.float64) else xp.float64
    r2 = xp.broadcast_to(_padded_r2(m, xp), weight.shape)
    rmax_pad = int(round(r_max * pad))
    max_r2 = rmax_pad * rmax_pad
    inside = r2 <= max_r2
    rr = xp.sqrt(r2.astype(xp.float64))
    fw = xp.where(inside, weight, 0).astype(xp.float64)
    fd = xp.where(inside, data, 0).astype(xp.complex128)
    if tau2 is not None:
        nsh = max(r_max + 2, box // 2 + 2)
        t2 = xp.zeros(nsh, dtype=xp.float64)
        tin = xp.asarray(tau2, dtype=xp.float64).ravel()[:nsh]
        t2[: tin.shape[0]] = tin
        ires = xp.minimum(round_half_away(rr / pad), nsh - 1)
        tau = t2[ires]
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_tau = xp.where(tau > 0, 1.0 / (pad ** 3 * tau2_fudge * xp.where(tau > 0, tau, 1)),
                               xp.where(fw > 1e-20, 1.0 / (0.001 * xp.where(fw > 1e-20, fw, 1)), 0.0))
        reg = (r2 < max_r2) & (ires >= minres_map)
        fw = xp.where(reg, fw + inv_tau, fw)
    if skip_gridding:
        round_max_r2 = int(round((r_max * pad) ** 2))
        sh = xp.floor(rr / pad).astype(xp.int64)
        valid = (r2 < round_max_r2) & (sh < r_max)
        idx = xp.where(valid, sh, 0).ravel()
        tot = xp.bincount(idx, weights=xp.where(valid, fw, 0).ravel(), minlength=r_max)[:r_max]
        cnt = xp.bincount(idx, weights=valid.ravel().astype(xp.float64), minlength=r_max)[:r_max]
        floor_w = xp.where(cnt > 0, tot / (1000.0 * xp.where(cnt > 0, cnt, 1)), 0)
        wmax = xp.maximum(fw, floor_w[xp.minimum(sh, r_max - 1)])
        fconv = xp.where(wmax != 0, fd / xp.where(wmax != 0, wmax, 1), fd)
    else:
        newweight = _pipe_menon_weights(fw, inside, box, m, gridding_iterations)
        fconv = fd * newweight
    big = irfft3(fconv, m)
    o = m // 2 - box // 2
    vol = big[o:o + box, o:o + box, o:o + box]
    norm = pad ** 3 * (box if data_dim == 2 else 1)
    vol = vol / norm
    if edge_mask:
        vol = mask_particle(vol, box / 2.0, 3.0, background="mean")
    if do_gridding_correction:
        vol = gridding_correct(vol, m)
    return vol.astype(rdtype)


def downsampled_average(data: Any, weight: Any, box: int, pad: float, divide: bool = True) -> Any:
    """Padded data binned back onto the unpadded grid: ``sum D / sum W`` (``getDownsampledAverage``).

    Every padded voxel ``k_pad`` goes to unpadded voxel ``round(k_pad / pad)`` (half away from
    zero); the average is the data sum divided by the weight sum (``divide=True``) or by the
    voxel count, 0 where the divisor is 0.

    Returns
    -------
    Complex half transform ``(N, N, N//2+1)``, the un-regularised average used for the
    gold-standard FSC (§6.8), on the scale of the inserted values.
    """
    xp = get_xp(data, weight)
    m = int(weight.shape[0])
    kx, ky, kz = freq_grid(m, 3, xp)
    bx = round_half_away(kx / pad)
    by = round_half_away(ky / pad)
    bz = round_half_away(kz / pad)
    nh = box // 2 + 1
    ok = (bx < nh) & (by >= -(box // 2)) & (by < box - box // 2) & (bz >= -(box // 2)) & (bz < box - box // 2)
    idx = ((bz % box) * box + (by % box)) * nh + bx
    idx = xp.broadcast_to(xp.where(ok, idx, 0), weight.shape).ravel()
    ok = xp.broadcast_to(ok, weight.shape).ravel()
    size = box * box * nh
    d = data.ravel()
    re = xp.bincount(idx, weights=xp.where(ok, d.real, 0).astype(xp.float64), minlength=size)
    im = xp.bincount(idx, weights=xp.where(ok, d.imag, 0).astype(xp.float64), minlength=size)
    den_src = weight.ravel() if divide else xp.ones(weight.size)
    den = xp.bincount(idx, weights=xp.where(ok, den_src, 0).astype(xp.float64), minlength=size)
    avg = xp.where(den > 0, (re + 1j * im) / xp.where(den > 0, den, 1), 0)
    cdtype = data.dtype if xp.iscomplexobj(data) else xp.complex128
    return avg.reshape(box, box, nh).astype(cdtype)


class SSNRResult(NamedTuple):
    """Per-shell outputs of :func:`ssnr_tau2_from_fsc` (length ``N//2 + 1``)."""

    tau2: Any
    """Signal power ``SSNR * sigma2`` (``rlnReferenceTau2``)."""
    ssnr: Any
    """``T * f / (1 - f)`` (``rlnSsnrMap``, "data_vs_prior")."""
    sigma2: Any
    """Noise power of the reconstruction ``count / sum(pad**3 W)`` (``rlnReferenceSigma2``)."""
    fourier_coverage: Any
    """Fraction of voxels with ``W >= 1 / (pad**3 T tau2)`` (``rlnFourierCompleteness``)."""


def ssnr_tau2_from_fsc(fsc: Any, weight: Any, box: int, pad: float, r_max: int | None = None,
                       tau2_fudge: float = 1.0, whole_data: bool = False) -> SSNRResult:
    """tau2 and SSNR per shell from an FSC and the padded weights (``updateSSNRarrays``).

    ``sigma2(i) = count_i / sum_i(pad**3 W)`` over padded voxels with ``|k_pad|**2 <
    round(r_max pad)**2`` and ``round(|k_pad| / pad) = i``; ``f = max(FSC, 0.001)``; with
    ``whole_data`` ``f = sqrt(2 f / (1 + f))``; ``f = min(f, 0.999)``;
    ``SSNR = tau2_fudge * f / (1 - f)``; ``tau2 = SSNR * sigma2``.

    Parameters
    ----------
    fsc
        Half-set FSC per shell, length ``N//2 + 1``.
    weight
        Padded weight array ``(M, M, M//2+1)``.
    box, pad, r_max
        Unpadded box (pixels), effective padding factor, maximum radius (Fourier pixels).
    tau2_fudge
        RELION's ``T``.
    whole_data
        True in the final iteration (both halves joined).
    """
    xp = get_xp(weight)
    m = int(weight.shape[0])
    nsh = box // 2 + 1
    r_max = int(box // 2 if r_max is None else r_max)
    r2 = xp.broadcast_to(_padded_r2(m, xp), weight.shape)
    max_r2 = int(round(r_max * pad)) ** 2
    ires = round_half_away(xp.sqrt(r2.astype(xp.float64)) / pad)
    valid = (r2 < max_r2) & (ires < nsh)
    idx = xp.where(valid, ires, 0).ravel()
    w = weight.ravel().astype(xp.float64)
    vmask = valid.ravel()
    s = xp.bincount(idx, weights=xp.where(vmask, pad ** 3 * w, 0), minlength=nsh)[:nsh]
    cnt = xp.bincount(idx, weights=vmask.astype(xp.float64), minlength=nsh)[:nsh]
    sigma2 = xp.where(s > 1e-10, cnt / xp.where(s > 1e-10, s, 1), 0.0)
    f = xp.maximum(xp.asarray(fsc, dtype=xp.float64)[:nsh], 0.001)
    if whole_data:
        f = xp.sqrt(2 * f / (f + 1))
    f = xp.minimum(f, 0.999)
    ssnr = tau2_fudge * f / (1 - f)
    tau2 = ssnr * sigma2
    # Fourier coverage: W / invtau2 >= 1
    t = tau2[idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = xp.where(t > 0, w * pad ** 3 * tau2_fudge * t, 0.001 * w * w)
    cov = xp.bincount(idx, weights=xp.where(vmask & (ratio >= 1), 1.0, 0.0), minlength=nsh)[:nsh]
    coverage = xp.where(cnt > 0, cov / xp.where(cnt > 0, cnt, 1), 0)
    return SSNRResult(tau2=tau2, ssnr=ssnr, sigma2=sigma2, fourier_coverage=coverage)
