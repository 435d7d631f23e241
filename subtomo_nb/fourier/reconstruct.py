"""RELION's reconstruction from padded Fourier data and weight arrays.

Implements ``BackProjector::reconstruct`` (relion-conventions.md §6.7), the down-sampled
un-regularised average used for the gold-standard FSC (``getDownsampledAverage``, §6.8) and the
FSC -> SSNR -> tau2 update (``updateSSNRarrays``). All arrays are padded half transforms
``(M, M, M//2+1)`` in wrapped (FFT) layout with ``M = pad * N``.

Every function runs on the backend of its input arrays (:mod:`subtomo_nb.backend`: numpy,
cupy, the strict test device) with array-API calls only, the grids and per-shell sums of
:mod:`~subtomo_nb.fourier.grid` and FFTs of the backend; results stay on that device (no host copies).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from subtomo_nb.backend import Backend, backend_of
from subtomo_nb.fourier.grid import freq_grid, round_half_away, shell_sum, wrapped_freqs
from subtomo_nb.fourier.masks import mask_particle
from subtomo_nb.fourier.projector import gridding_sinc2

__all__ = [
    "SSNRResult",
    "blob_ft_ratio",
    "downsampled_average",
    "gridding_correct",
    "ssnr_tau2_from_fsc",
    "wiener_reconstruct",
]

BLOB_RADIUS = 1.9
BLOB_ALPHA = 15.0


def _padded_r2(be: Backend, m: int) -> Any:
    """``|k|**2`` (int64, Fourier pixels of the padded box ``m``), broadcastable to ``(m, m, m//2+1)``."""
    kx, ky, kz = freq_grid(m, 3, be)
    return kx * kx + ky * ky + kz * kz


def gridding_correct(vol: Any, padded: int) -> Any:
    """Divide a centred real-space map by ``sinc(r / padded)**2`` (trilinear gridding correction).

    Parameters
    ----------
    vol
        Real map ``(N, N, N)`` (centre voxel ``N//2``).
    padded
        Padded box ``M = pad * N`` used during interpolation (pixels).
    """
    be = backend_of(vol)
    xp = be.xp
    rdtype = vol.dtype if vol.dtype in (xp.float32, xp.float64) else xp.float64
    return vol / gridding_sinc2(int(vol.shape[-1]), int(padded), vol.ndim, be, rdtype)


def blob_ft_ratio(rval: Any, radius: float = 2 * BLOB_RADIUS, alpha: float = BLOB_ALPHA) -> Any:
    """Fourier transform of a 3D Kaiser-Bessel blob (order 0), normalised to 1 at 0.

    ``B(w) / B(0)`` with ``B(w) ~ I_{3/2}(z) / z**1.5``, ``z = sqrt(alpha**2 - (2 pi a w)**2)``
    (``J_{3/2}`` for imaginary ``z``); closed forms of the half-integer Bessel functions make this
    array-module generic. ``rval`` is the frequency in cycles per padded voxel; RELION tabulates
    this with ``a = 2 * 1.9`` and ``alpha = 15``. ``rval`` may be an array of any backend (the
    result stays there) or host numbers.
    """
    be = backend_of(rval)
    xp = be.xp
    w = xp.astype(rval, xp.float64) if be.owns(rval) else xp.asarray(rval, dtype=xp.float64)
    radius, alpha = float(radius), float(alpha)
    u = (2 * math.pi * radius * w) ** 2
    z2 = alpha ** 2 - u
    c = math.sqrt(2 / math.pi)

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
    den = c * (math.cosh(alpha) - math.sinh(alpha) / alpha) / alpha ** 2
    return num / den


def _pipe_menon_weights(fweight: Any, inside: Any, box: int, m: int, n_iter: int) -> Any:
    """Iterative gridding weights (Pipe & Menon 1999, eq. 14), RELION's ``max_iter_preweight``."""
    be = backend_of(fweight)
    xp = be.xp
    fft = be.fft()
    newweight = xp.astype(inside, xp.float64)
    # numpy.fft.fftfreq(m, 1/m) with its rounding: integer frequencies times 1 / (m * (1/m))
    c = wrapped_freqs(m, be, xp.float64) * (1.0 / (m * (1.0 / m)))
    r = xp.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    blob = blob_ft_ratio(r / (box * (m / box)))  # rval = r / (ori_size * pad), origin at corner
    for _ in range(n_iter):
        conv = xp.astype(newweight * fweight, xp.complex128)
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
    be = backend_of(data, weight)
    xp = be.xp
    m = int(weight.shape[0])
    box, pad = int(box), float(pad)
    r_max = int(box // 2 if r_max is None else r_max)
    tau2_fudge = float(tau2_fudge)
    rdtype = weight.dtype if weight.dtype in (xp.float32, xp.float64) else xp.float64
    r2 = xp.broadcast_to(_padded_r2(be, m), weight.shape)
    rmax_pad = round(r_max * pad)
    max_r2 = rmax_pad * rmax_pad
    inside = r2 <= max_r2
    rr = xp.sqrt(xp.astype(r2, xp.float64))
    fw = xp.astype(xp.where(inside, weight, 0.0), xp.float64)
    fd = xp.astype(xp.where(inside, data, 0.0), xp.complex128)
    if tau2 is not None:
        nsh = max(r_max + 2, box // 2 + 2)
        tin = xp.reshape(be.to_device(tau2, "metadata", dtype=xp.float64), (-1,))
        tin = tin[:min(nsh, int(tin.shape[0]))]  # (out-of-bounds slice stops are not array-API)
        t2 = xp.concat([tin, xp.zeros(nsh - int(tin.shape[0]), dtype=xp.float64, device=be.device)])
        ires = xp.minimum(round_half_away(rr / pad), nsh - 1)
        tau = _gather(xp, t2, ires)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_tau = xp.where(tau > 0, 1.0 / (pad ** 3 * tau2_fudge * xp.where(tau > 0, tau, 1.0)),
                               xp.where(fw > 1e-20, 1.0 / (0.001 * xp.where(fw > 1e-20, fw, 1.0)), 0.0))
        reg = (r2 < max_r2) & (ires >= minres_map)
        fw = xp.where(reg, fw + inv_tau, fw)
    if skip_gridding:
        round_max_r2 = round((r_max * pad) ** 2)
        sh = xp.astype(xp.floor(rr / pad), xp.int64)
        valid = (r2 < round_max_r2) & (sh < r_max)
        tot = shell_sum(fw, sh, r_max, valid)
        cnt = shell_sum(xp.ones(sh.shape, dtype=xp.float64, device=be.device), sh, r_max, valid)
        floor_w = xp.where(cnt > 0, tot / (1000.0 * xp.where(cnt > 0, cnt, 1.0)), 0.0)
        wmax = xp.maximum(fw, _gather(xp, floor_w, xp.minimum(sh, r_max - 1)))
        fconv = xp.where(wmax != 0, fd / xp.where(wmax != 0, wmax, 1.0), fd)
    else:
        newweight = _pipe_menon_weights(fw, inside, box, m, gridding_iterations)
        fconv = fd * newweight
    vol = _centred_crop(xp, be.fft().irfftn(fconv, s=(m, m, m), norm="forward"), box)
    norm = pad ** 3 * (box if data_dim == 2 else 1)
    vol = vol / norm
    if edge_mask:
        vol = mask_particle(vol, box / 2.0, 3.0, background="mean")
    if do_gridding_correction:
        vol = gridding_correct(vol, m)
    return xp.astype(vol, rdtype)


def _gather(xp: Any, table: Any, index: Any) -> Any:
    """``table[index]`` for a 1-D ``table`` and an integer ``index`` array of any shape."""
    return xp.reshape(xp.take(table, xp.reshape(index, (-1,)), axis=0), index.shape)


def _centred_crop(xp: Any, big: Any, box: int) -> Any:
    """The central ``box``-cube of ``fftshift(big)`` (side ``m``), taken from the unshifted array.

    ``fftshift`` puts index 0 at ``m // 2``; its crop ``m//2 - box//2 ..`` holds the wrapped
    indices ``-(box//2) .. box - box//2 - 1``: two blocks per axis, so no shifted copy of the
    padded box is made (the numbers are the same).
    """
    out = big
    for ax in range(big.ndim):
        m = int(big.shape[ax])
        neg = [slice(None)] * big.ndim
        pos = [slice(None)] * big.ndim
        neg[ax] = slice(m - box // 2, m)
        pos[ax] = slice(0, box - box // 2)
        out = xp.concat([out[tuple(neg)], out[tuple(pos)]], axis=ax)
    return out


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
    be = backend_of(data, weight)
    xp = be.xp
    m = int(weight.shape[0])
    box, pad = int(box), float(pad)
    kx, ky, kz = freq_grid(m, 3, be, dtype=xp.float64)
    bx = round_half_away(kx / pad)
    by = round_half_away(ky / pad)
    bz = round_half_away(kz / pad)
    nh = box // 2 + 1
    ok = (bx < nh) & (by >= -(box // 2)) & (by < box - box // 2) & (bz >= -(box // 2)) & (bz < box - box // 2)
    idx = ((bz % box) * box + (by % box)) * nh + bx
    idx = xp.reshape(xp.broadcast_to(xp.where(ok, idx, 0), weight.shape), (-1,))
    ok = xp.reshape(xp.broadcast_to(ok, weight.shape), (-1,))
    size = box * box * nh
    d = xp.reshape(data, (-1,))
    if not xp.isdtype(d.dtype, "complex floating"):
        d = xp.astype(d, xp.complex128)
    num = shell_sum(d, idx, size, ok)  # complex128: per-voxel sums of the real and imaginary parts
    if divide:
        den_src = xp.reshape(weight, (-1,))
    else:
        den_src = xp.ones(int(ok.shape[0]), dtype=xp.float64, device=be.device)
    den = shell_sum(den_src, idx, size, ok)
    avg = xp.where(den > 0, num / xp.where(den > 0, den, 1.0), 0.0)
    cdtype = data.dtype if xp.isdtype(data.dtype, "complex floating") else xp.complex128
    return xp.astype(xp.reshape(avg, (box, box, nh)), cdtype)


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
    be = backend_of(weight)
    xp = be.xp
    m = int(weight.shape[0])
    box, pad, tau2_fudge = int(box), float(pad), float(tau2_fudge)
    nsh = box // 2 + 1
    r_max = int(box // 2 if r_max is None else r_max)
    r2 = xp.broadcast_to(_padded_r2(be, m), weight.shape)
    max_r2 = round(r_max * pad) ** 2
    ires = round_half_away(xp.sqrt(xp.astype(r2, xp.float64)) / pad)
    valid = (r2 < max_r2) & (ires < nsh)
    idx = xp.reshape(xp.where(valid, ires, 0), (-1,))
    w = xp.astype(xp.reshape(weight, (-1,)), xp.float64)
    vmask = xp.reshape(valid, (-1,))
    s = shell_sum(pad ** 3 * w, idx, nsh, vmask)
    cnt = shell_sum(xp.astype(vmask, xp.float64), idx, nsh)
    sigma2 = xp.where(s > 1e-10, cnt / xp.where(s > 1e-10, s, 1.0), 0.0)
    f = xp.reshape(be.to_device(fsc, "metadata", dtype=xp.float64), (-1,))
    f = f[:min(nsh, int(f.shape[0]))]
    f = xp.maximum(f, 0.001)
    if whole_data:
        f = xp.sqrt(2 * f / (f + 1))
    f = xp.minimum(f, 0.999)
    ssnr = tau2_fudge * f / (1 - f)
    tau2 = ssnr * sigma2
    # Fourier coverage: W / invtau2 >= 1
    t = xp.take(tau2, idx, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = xp.where(t > 0, w * pad ** 3 * tau2_fudge * t, 0.001 * w * w)
    cov = shell_sum(xp.astype(vmask & (ratio >= 1), xp.float64), idx, nsh)
    coverage = xp.where(cnt > 0, cov / xp.where(cnt > 0, cnt, 1.0), 0.0)
    return SSNRResult(tau2=tau2, ssnr=ssnr, sigma2=sigma2, fourier_coverage=coverage)
