"""Offset of a map against a mask: masked normalised cross-correlation with sub-pixel refinement.

The question answered is the one of the tutorial's re-centring step: *by how many pixels is the
density of a refined map off the centre of the mask that was made for it?* The answer ``t``
(pixels, ``(x, y, z)``) is the position of the map's density relative to the mask, i.e. the map
looks like the mask's density moved by ``+t``. It is what ``relion_star_handler --center
--center_X tx --center_Y ty --center_Z tz`` takes: re-centring every particle on the point ``t``
of the reference brings the density onto the mask's centre
(:func:`subtomo_nb.tasks.recentre.recentre_table`).

Method
------
1. Both volumes are reduced to zero mean (the map optionally low-passed first), and the map is
   weighted by a soft *search window*: the mask dilated by the largest shift searched, so
   density far from the mask (neighbours in a lattice, noise at the box edge) cannot pull the
   estimate.
2. The correlation ``c(s) = sum_r map(r) mask(r - s)`` of every integer shift ``s`` is one
   FFT product; it is normalised by the map's energy under the shifted mask
   (``sum_r map(r)^2 mask(r - s)``, a second FFT product), the masked normalised
   cross-correlation. The best integer shift within ``max_shift_px`` is taken.
3. Sub-pixel: a separable parabola through the peak and its 6 neighbours, then Newton steps on
   the band-limited (Fourier-interpolated) normalised correlation, whose gradient and Hessian
   are exact sums over the cross-power spectra. The correlation of a smooth mask with a map is
   smooth, so this converges to a small fraction of a pixel in 3-4 steps.

All arithmetic uses the array module of the inputs (numpy or cupy; :func:`subtomo_nb._array.get_xp`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from subtomo_nb._array import asnumpy, fft_module, get_xp
from subtomo_nb.fourier.filters import low_pass

__all__ = ["estimate_offset", "correlation_at"]

#: Newton refinement steps of the sub-pixel search.
NEWTON_STEPS = 6


def _maybe_lowpass(vol: Any, lowpass_A: float | None, pixel_size_A: float | None) -> Any:
    """Low-pass a cubic volume to ``lowpass_A`` (Å) when asked; checks the arguments."""
    if lowpass_A is None:
        return vol
    if pixel_size_A is None or pixel_size_A <= 0:
        raise ValueError("lowpass_A needs a positive pixel_size_A")
    if not vol.shape[0] == vol.shape[1] == vol.shape[2]:
        raise ValueError("lowpass_A needs a cubic box")
    return low_pass(vol, float(lowpass_A), float(pixel_size_A))


def _freqs(shape: tuple[int, int, int], xp: Any) -> tuple[Any, Any, Any]:
    """Signed integer frequencies (cycles per box) of a full FFT, as broadcastable (z, y, x) grids."""
    nz, ny, nx = shape
    kz = xp.fft.fftfreq(nz) * nz
    ky = xp.fft.fftfreq(ny) * ny
    kx = xp.fft.fftfreq(nx) * nx
    # Nyquist terms of even boxes are their own Friedel mates: give them no phase slope, so the
    # interpolated correlation stays real and its derivatives are those of a real function.
    for k, n in ((kz, nz), (ky, ny), (kx, nx)):
        if n % 2 == 0:
            k[n // 2] = 0
    return kz[:, None, None], ky[None, :, None], kx[None, None, :]


def _soft_dilate(mask: Any, radius_px: float, xp: Any) -> Any:
    """Smooth envelope covering ``mask > 0.01`` dilated by ``radius_px`` pixels (FFT convolution)."""
    fft = fft_module(xp)
    shape = mask.shape
    support = (mask > 0.01).astype(xp.float64)
    zz, yy, xx = (xp.fft.fftfreq(n) * n for n in shape)
    r = xp.sqrt(zz[:, None, None] ** 2 + yy[None, :, None] ** 2 + xx[None, None, :] ** 2)
    ball = (r <= radius_px).astype(xp.float64)
    grown = fft.irfftn(fft.rfftn(support) * fft.rfftn(ball), s=shape)
    grown = xp.clip(grown, 0.0, 1.0)
    # soft edge: blur the binary dilation with a Gaussian of sigma 1 px
    g = xp.exp(-0.5 * r**2)
    g /= g.sum()
    return xp.clip(fft.irfftn(fft.rfftn((grown > 0.5).astype(xp.float64)) * fft.rfftn(g), s=shape), 0.0, 1.0)


class _CrossPower:
    """Cross-power spectra of a map against a mask and its band-limited correlation functions."""

    def __init__(self, vol: Any, mask: Any, xp: Any) -> None:
        fft = fft_module(xp)
        self.xp = xp
        self.shape = vol.shape
        self.n = float(np.prod(self.shape))
        fm = fft.fftn(mask)
        # numerator: sum_r vol(r) mask(r - s); denominator: sum_r vol(r)^2 mask(r - s)
        self.p_num = fft.fftn(vol) * xp.conj(fm)
        self.p_den = fft.fftn(vol * vol) * xp.conj(fm)
        self.num_grid = xp.real(fft.ifftn(self.p_num))
        self.den_grid = xp.real(fft.ifftn(self.p_den))
        self.k = _freqs(self.shape, xp)

    def ncc_grid(self) -> Any:
        """Normalised correlation at every integer shift (wrapped indices ``[sz, sy, sx]``)."""
        xp = self.xp
        den = xp.sqrt(xp.maximum(self.den_grid, 1e-30 * float(xp.max(xp.abs(self.den_grid)) + 1e-300)))
        return self.num_grid / den

    def _terms(self, P: Any, s_zyx: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Value, gradient and Hessian (w.r.t. the shift, (z, y, x)) of ``Re sum P e^{2 pi i k.s/N}``."""
        xp = self.xp
        kz, ky, kx = self.k
        nz, ny, nx = self.shape
        wz, wy, wx = 2 * np.pi / nz, 2 * np.pi / ny, 2 * np.pi / nx
        phase = xp.exp(1j * (wz * kz * s_zyx[0] + wy * ky * s_zyx[1] + wx * kx * s_zyx[2]))
        e = P * phase
        w = (wz * kz, wy * ky, wx * kx)
        val = float(xp.real(e.sum())) / self.n
        grad = np.empty(3)
        hess = np.empty((3, 3))
        for a in range(3):
            grad[a] = float(xp.real((1j * w[a] * e).sum())) / self.n
            for b in range(a, 3):
                hess[a, b] = hess[b, a] = -float(xp.real((w[a] * w[b] * e).sum())) / self.n
        return val, grad, hess

    def ncc_local(self, s_zyx: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Normalised correlation ``N / sqrt(D)`` at a sub-pixel shift, with gradient and Hessian."""
        n, gn, hn = self._terms(self.p_num, s_zyx)
        d, gd, hd = self._terms(self.p_den, s_zyx)
        d = max(d, 1e-300)
        q = d**-0.5
        val = n * q
        # f = n d^-1/2: grad f = gn q - 1/2 n d^-3/2 gd
        grad = gn * q - 0.5 * n * d**-1.5 * gd
        hess = (hn * q - 0.5 * d**-1.5 * (np.outer(gn, gd) + np.outer(gd, gn))
                - 0.5 * n * d**-1.5 * hd + 0.75 * n * d**-2.5 * np.outer(gd, gd))
        return val, grad, hess


def _prepare(map_: Any, mask: Any, max_shift_px: float | None, lowpass_A: float | None,
             pixel_size_A: float | None) -> tuple[Any, Any, Any, float]:
    xp = get_xp(map_, mask)
    vol = xp.asarray(map_, dtype=xp.float64)
    msk = xp.asarray(mask, dtype=xp.float64)
    if vol.ndim != 3 or msk.shape != vol.shape:
        raise ValueError(f"map and mask must be 3D volumes of one shape; got {vol.shape} and {msk.shape}")
    if not bool(xp.isfinite(vol).all()) or not bool(xp.isfinite(msk).all()):
        raise ValueError("map or mask contains non-finite values")
    if float(msk.max()) <= 0:
        raise ValueError("mask is empty (no positive voxel)")
    vol = _maybe_lowpass(vol, lowpass_A, pixel_size_A)
    max_shift = float(max_shift_px) if max_shift_px is not None else min(vol.shape) / 4.0
    if max_shift <= 0:
        raise ValueError("max_shift_px must be positive")
    # search window: the mask grown by the largest shift (plus its edge), softened
    window = _soft_dilate(msk, max_shift + 2.0, xp)
    vol = vol - float((vol * window).sum() / window.sum())
    vol = vol * window
    return xp, vol, msk, max_shift


def _raw_offset(map_: Any, mask: Any, max_shift_px: float | None, lowpass_A: float | None,
                pixel_size_A: float | None) -> np.ndarray:
    """Peak of the masked normalised cross-correlation, ``(z, y, x)`` pixels (no calibration)."""
    xp, vol, msk, max_shift = _prepare(map_, mask, max_shift_px, lowpass_A, pixel_size_A)
    cp = _CrossPower(vol, msk, xp)
    ncc = cp.ncc_grid()
    shape = np.array(vol.shape)
    # restrict to |s| <= max_shift on every axis (wrapped indices)
    sz, sy, sx = (xp.fft.fftfreq(int(n)) * int(n) for n in shape)
    allowed = ((xp.abs(sz)[:, None, None] <= max_shift) & (xp.abs(sy)[None, :, None] <= max_shift)
               & (xp.abs(sx)[None, None, :] <= max_shift))
    score = xp.where(allowed, ncc, -xp.inf)
    idx = np.array(np.unravel_index(int(xp.argmax(score)), vol.shape))
    s0 = np.where(idx > shape // 2, idx - shape, idx).astype(np.float64)  # signed (z, y, x)

    # separable parabola through the peak and its neighbours on each axis
    ncc_h = asnumpy(ncc)
    s = s0.copy()
    for a in range(3):
        step = np.zeros(3, dtype=int)
        step[a] = 1
        i0 = tuple(idx % shape)
        im = tuple((idx - step) % shape)
        ip = tuple((idx + step) % shape)
        fm, f0, fp = ncc_h[im], ncc_h[i0], ncc_h[ip]
        denom = fm - 2 * f0 + fp
        if denom < 0:
            s[a] += float(np.clip(0.5 * (fm - fp) / denom, -0.5, 0.5))

    # Newton steps on the Fourier-interpolated normalised correlation
    for _ in range(NEWTON_STEPS):
        _, g, h = cp.ncc_local(s)
        if np.linalg.eigvalsh(h).max() < 0:
            step = -np.linalg.solve(h, g)
        else:  # not concave here: a small gradient step instead
            step = 0.1 * g / (np.abs(g).max() + 1e-300)
        step = np.clip(step, -0.5, 0.5)
        s = s + step
        if np.abs(step).max() < 1e-4:
            break
    return np.clip(s, s0 - 1.0, s0 + 1.0)


def _cosine_edge(dist: np.ndarray, width: float) -> np.ndarray:
    """1 inside (``dist <= 0``), raised-cosine fall to 0 over ``width`` pixels outside."""
    w = max(float(width), 1e-6)
    return np.where(dist <= 0, 1.0, np.where(dist < w, 0.5 + 0.5 * np.cos(np.pi * np.minimum(dist, w) / w), 0.0))


def mask_like(map: Any, mask: Any, extend_px: float = 0.0, *, smooth_px: float = 0.0) -> np.ndarray:  # noqa: A002
    """A mask made from ``map`` with the recipe of ``relion_mask_create``, sized like ``mask``.

    The recipe: threshold, extend the binary region by ``extend_px`` pixels (Euclidean
    distance), raised-cosine soft edge. The threshold is chosen so that the mask's core
    (``mask >= 0.99``) has the same volume as the given mask's core, and the edge width so that
    both masks have the same integral. The map is smoothed with a Gaussian of ``smooth_px``
    first, which removes noise without moving the density. Host (numpy) arrays.

    Parameters
    ----------
    map, mask
        Volumes ``[z, y, x]`` of one shape.
    extend_px
        Extension of the thresholded region (pixels).
    smooth_px
        Standard deviation of the Gaussian applied to the map (pixels); 0 for none.

    Returns
    -------
    numpy.ndarray
        float64 mask ``[z, y, x]`` in [0, 1], centred on the map's density.
    """
    from scipy import ndimage  # noqa: PLC0415

    vol = np.asarray(asnumpy(map), dtype=np.float64)
    msk = np.asarray(asnumpy(mask), dtype=np.float64)
    if smooth_px > 0:
        vol = ndimage.gaussian_filter(vol, smooth_px, mode="wrap")
    n_core = int((msk >= 0.99).sum())
    target = float(msk.sum())
    if n_core == 0:
        raise ValueError("mask has no core (no voxel >= 0.99)")
    order = np.sort(vol.ravel())[::-1]

    def dist_for(tau: float) -> np.ndarray:
        inside = vol >= tau
        return ndimage.distance_transform_edt(~inside) - float(extend_px)

    # threshold: bisect over the sorted values so that |dist <= 0| matches the core volume
    lo, hi = 0, min(n_core, order.size) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if int((dist_for(order[mid]) <= 0).sum()) >= n_core:
            hi = mid
        else:
            lo = mid + 1
    dist = dist_for(order[lo])
    # edge width: bisect so that the integrals agree
    w_lo, w_hi = 1e-3, float(max(vol.shape))
    for _ in range(40):
        w = 0.5 * (w_lo + w_hi)
        if _cosine_edge(dist, w).sum() < target:
            w_lo = w
        else:
            w_hi = w
    return _cosine_edge(dist, 0.5 * (w_lo + w_hi))


def estimate_offset(
    map: Any,  # noqa: A002 - the name the issue uses
    mask: Any,
    *,
    max_shift_px: float | None = None,
    lowpass_A: float | None = None,
    pixel_size_A: float | None = None,
    calibrate: bool = True,
) -> tuple[float, float, float]:
    """Offset (pixels) of a map's density against a mask, by masked normalised cross-correlation.

    Parameters
    ----------
    map
        Refined map ``[z, y, x]`` (numpy or cupy), protein density positive.
    mask
        Mask of the same shape, values in [0, 1], made for a map whose density is centred.
    max_shift_px
        Largest offset searched on each axis (pixels); default a quarter of the smallest box side.
    lowpass_A
        Optional low-pass (Å) applied to the map before correlating (needs ``pixel_size_A``);
        useful for noisy maps. The mask is smooth, so the estimate rarely needs it.
    pixel_size_A
        Pixel size of the map (Å); only used with ``lowpass_A``.

    Returns
    -------
    tuple of float
        ``(dx, dy, dz)`` in pixels: the map's density sits at ``+(dx, dy, dz)`` from where the mask
        expects it. Re-centring the particles on this point of the reference
        (``subtomo star-handler --center --center_X dx --center_Y dy --center_Z dz``) brings the
        density onto the mask's centre.

    Raises
    ------
    ValueError
        If the shapes differ, the inputs are not finite, or the mask is empty.
    """
    raw = _raw_offset(map, mask, max_shift_px, lowpass_A, pixel_size_A)
    if calibrate:
        xp = get_xp(map, mask)
        own = mask_like(asnumpy(_maybe_lowpass(map, lowpass_A, pixel_size_A)), asnumpy(mask))
        bias = _raw_offset(map, xp.asarray(own), max_shift_px, lowpass_A, pixel_size_A)
        raw = raw - bias
    return float(raw[2]), float(raw[1]), float(raw[0])


def correlation_at(
    map: Any,  # noqa: A002
    mask: Any,
    offset_xyz_px: tuple[float, float, float],
    *,
    max_shift_px: float | None = None,
    lowpass_A: float | None = None,
    pixel_size_A: float | None = None,
) -> float:
    """Masked normalised cross-correlation of ``map`` with ``mask`` moved by ``offset_xyz_px``.

    The score :func:`estimate_offset` maximises, at one sub-pixel offset ``(x, y, z)`` (pixels);
    1 would mean the map under the moved mask is proportional to the mask. Useful to show how
    much better a proposed offset fits than no offset.
    """
    xp, vol, msk, _ = _prepare(map, mask, max_shift_px, lowpass_A, pixel_size_A)
    cp = _CrossPower(vol, msk, xp)
    s = np.array([offset_xyz_px[2], offset_xyz_px[1], offset_xyz_px[0]], dtype=np.float64)
    val, _, _ = cp.ncc_local(s)
    norm = float(xp.sqrt(msk.sum()))
    return val / norm
