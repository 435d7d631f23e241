"""Tilt series of the synthetic dataset: acquisition scheme, per-tilt metadata and image formation.

Image formation for tilt ``f`` (tilt-image pixels, pixel centres at integer coordinates as in
RELION's extraction):

1. every Gaussian blob of every particle (the phantom chosen by ``particle``) is projected with ``P_f`` (RELION 5's projection
   matrix, tomogram pixels -> tilt-image pixels and depth); a 3D Gaussian of width ``σ`` projects
   to a 2D Gaussian of the same width at the projected centre, with peak ``amp √(2π) σ`` (line
   integral in pixels); the blobs are splatted into depth slabs of ``slab_A`` (vectorised over
   blobs with ``numpy.bincount``; the only loops are over tilts and the few blob widths);
2. each slab is multiplied in Fourier space by the CTF with RELION's per-depth defocus
   (``Tomogram::getCtf``: ``ΔU, ΔV += hand · pixel · depth``, depth = ``(P_f r).z − (P_f c).z``
   at the slab's centre) and the sum by RELION's exposure filter for the tilt's cumulative dose
   (``rlnMicrographPreExposure``);
3. contrast as in real data, particles dark: ``image = −IFT(dw · Σ_slabs CTF · FT(slab))``;
4. Gaussian noise of standard deviation ``sqrt(var(noise-free first-acquired tilt) / snr)``, the
   same for every tilt (constant dose per tilt), so the per-tilt SNR falls with dose as in real
   data (``snr=None`` or ``inf``: noise-free).
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import scipy.fft as sfft

from subtomo_nb.fourier.ctf import ctf_2d, dose_weight_2d
from subtomo_nb.simulate.phantom import Phantom, blobs, project_blobs_2d_amplitude
from subtomo_nb.simulate.scene import Tomogram

__all__ = ["dose_symmetric_order", "tilt_scheme", "tilt_series_table", "render_tilt_series"]


def dose_symmetric_order(tilts: np.ndarray, group: int = 2) -> np.ndarray:
    """Acquisition order of a dose-symmetric (Hagen) scheme.

    Starts at the tilt nearest 0, then alternates between the positive and the negative side,
    ``group`` tilts at a time (0, +3, +6, −3, −6, +9, +12, −9, ...).

    Parameters
    ----------
    tilts
        Tilt angles (degrees), any order.
    group
        Tilts taken on one side before switching.

    Returns
    -------
    numpy.ndarray
        Indices into ``tilts`` in acquisition order.
    """
    tilts = np.asarray(tilts, dtype=np.float64)
    start = int(np.argmin(np.abs(tilts)))
    pos = [int(i) for i in np.argsort(tilts) if tilts[i] > tilts[start]]
    neg = [int(i) for i in np.argsort(-tilts) if tilts[i] < tilts[start]]
    order = [start]
    side = 0
    while pos or neg:
        src = (pos, neg)[side] if (pos, neg)[side] else (pos, neg)[1 - side]
        order.extend(src[:group])
        del src[:group]
        side = 1 - side
    return np.asarray(order)


def tilt_scheme(max_tilt_deg: float = 60.0, step_deg: float = 3.0, dose_per_tilt: float = 3.0,
                group: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Tilt angles (ascending) and their cumulative pre-exposure for a dose-symmetric series.

    Parameters
    ----------
    max_tilt_deg, step_deg
        Range ``−max..+max`` in steps of ``step_deg`` (degrees).
    dose_per_tilt
        Exposure per tilt image (e/Å²).
    group
        Dose-symmetric group size (see :func:`dose_symmetric_order`).

    Returns
    -------
    tilts : numpy.ndarray
        Ascending tilt angles (degrees): the frame order of the tilt-series STAR file and stack.
    pre_exposure : numpy.ndarray
        ``rlnMicrographPreExposure`` of each frame (e/Å²): dose received before the image.
    """
    n = int(round(max_tilt_deg / step_deg))
    tilts = np.arange(-n, n + 1, dtype=np.float64) * step_deg
    order = dose_symmetric_order(tilts, group)
    pre = np.empty_like(tilts)
    pre[order] = np.arange(len(tilts)) * dose_per_tilt
    return tilts, pre


def tilt_series_table(
    rng: np.random.Generator,
    stack_name: str,
    tilts: np.ndarray,
    pre_exposure: np.ndarray,
    pixel_size_A: float,
    defocus_range_A: tuple[float, float] = (30000.0, 40000.0),
    defocus_spread_A: float = 300.0,
    astigmatism_range_A: tuple[float, float] = (200.0, 800.0),
    zrot_range_deg: tuple[float, float] = (-10.0, 10.0),
    zrot_jitter_deg: float = 0.3,
    shift_sigma_A: float = 15.0,
) -> pd.DataFrame:
    """Per-tilt table of one tilt series (RELION 5 tilt-series STAR rows).

    Frames are in ascending tilt order; image ``f`` is ``"<f+1:06d>@<stack_name>"`` (RELION's
    stack syntax). Columns: rlnMicrographName, rlnTomoNominalStageTiltAngle,
    rlnTomoNominalTiltAxisAngle, rlnMicrographPreExposure, rlnTomoNominalDefocus, rlnDefocusU,
    rlnDefocusV, rlnDefocusAngle, rlnTomoXTilt, rlnTomoYTilt, rlnTomoZRot, rlnTomoXShiftAngst,
    rlnTomoYShiftAngst.

    Parameters
    ----------
    rng
        Random generator.
    stack_name
        Stack path relative to the project directory.
    tilts, pre_exposure
        From :func:`tilt_scheme` (degrees, e/Å²).
    pixel_size_A
        Tilt-series pixel (Å); used to keep shifts at a realistic size.
    defocus_range_A
        Range of the series' mean defocus (Å, underfocus positive).
    defocus_spread_A
        Standard deviation of per-tilt defocus about the mean (Å).
    astigmatism_range_A
        Range of ``ΔU − ΔV`` (Å).
    zrot_range_deg, zrot_jitter_deg
        Tilt-axis angle ``rlnTomoZRot`` range for the series and per-tilt jitter (degrees).
    shift_sigma_A
        Standard deviation of the per-tilt image shifts (Å).
    """
    n = len(tilts)
    mean_df = rng.uniform(*defocus_range_A)
    astig = rng.uniform(*astigmatism_range_A)
    ang = rng.uniform(-90.0, 90.0)
    zrot = rng.uniform(*zrot_range_deg)
    df = mean_df + rng.normal(0.0, defocus_spread_A, n)
    return pd.DataFrame({
        "rlnMicrographName": [f"{f + 1:06d}@{stack_name}" for f in range(n)],
        "rlnTomoNominalStageTiltAngle": tilts.astype(np.float64),
        "rlnTomoNominalTiltAxisAngle": np.full(n, round(zrot, 1)),
        "rlnMicrographPreExposure": pre_exposure.astype(np.float64),
        "rlnTomoNominalDefocus": np.full(n, round(mean_df / 1e4, 1)),
        "rlnDefocusU": df + 0.5 * astig,
        "rlnDefocusV": df - 0.5 * astig,
        "rlnDefocusAngle": ang + rng.normal(0.0, 2.0, n),
        "rlnTomoXTilt": np.zeros(n),
        "rlnTomoYTilt": tilts.astype(np.float64),
        "rlnTomoZRot": zrot + rng.normal(0.0, zrot_jitter_deg, n),
        "rlnTomoXShiftAngst": rng.normal(0.0, shift_sigma_A, n),
        "rlnTomoYShiftAngst": rng.normal(0.0, shift_sigma_A, n),
    })


def _splat(image_shape: tuple[int, int], n_slabs: int, xy: np.ndarray, slab: np.ndarray,
           sigma_px: np.ndarray, peak: np.ndarray, truncate: float = 3.5) -> np.ndarray:
    """Sum of 2D Gaussians into ``(n_slabs, H, W)`` (vectorised over blobs; loop over widths)."""
    H, W = image_shape
    out = np.zeros(n_slabs * H * W, dtype=np.float64)
    for s in np.unique(sigma_px):
        sel = sigma_px == s
        R = int(np.ceil(truncate * s))
        off = np.arange(-R, R + 1)
        x, y = xy[sel, 0], xy[sel, 1]
        x0 = np.rint(x).astype(np.int64)
        y0 = np.rint(y).astype(np.int64)
        ix = x0[:, None] + off[None, :]
        iy = y0[:, None] + off[None, :]
        gx = np.exp(-0.5 * ((ix - x[:, None]) / s) ** 2).astype(np.float32)
        gy = np.exp(-0.5 * ((iy - y[:, None]) / s) ** 2).astype(np.float32)
        gx *= (ix >= 0) & (ix < W)
        gy *= (iy >= 0) & (iy < H)
        gx *= peak[sel, None].astype(np.float32)
        w = gy[:, :, None] * gx[:, None, :]
        base = slab[sel] * (H * W)
        idx = base[:, None, None] + np.clip(iy, 0, H - 1)[:, :, None] * W + np.clip(ix, 0, W - 1)[:, None, :]
        out += np.bincount(idx.ravel(), weights=w.ravel(), minlength=out.size)
    return out.reshape(n_slabs, H, W)


def render_tilt_series(
    tomo: Tomogram,
    proj: np.ndarray,
    table: pd.DataFrame,
    image_shape: tuple[int, int],
    *,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    hand: float = -1.0,
    snr: float | None = None,
    rng: np.random.Generator | None = None,
    slab_A: float = 200.0,
    truncate: float = 3.0,
    phantom_scale: float = 1.0,
    particle: str | Phantom = "hexamer",
) -> np.ndarray:
    """Render the tilt images of one tomogram.

    Parameters
    ----------
    tomo
        Scene of the tomogram (true particle centres and orientations).
    proj
        ``(F, 4, 4)`` RELION 5 projection matrices ``P_f`` (tomogram pixels -> image pixels).
    table
        Per-tilt table (:func:`tilt_series_table`): defocus, angle, pre-exposure.
    image_shape
        ``(H, W)`` of the tilt images (pixels).
    voltage_kV, cs_mm, amplitude_contrast
        Optics.
    hand
        ``rlnTomoHand`` (sign of the defocus change with depth).
    snr
        Signal-to-noise ratio of the first-acquired tilt (variance ratio); None/inf: no noise.
    rng
        Random generator for the noise (required when ``snr`` is finite).
    slab_A
        Thickness of the depth slabs sharing one CTF (Å).
    truncate
        Gaussian splat radius in standard deviations.
    phantom_scale
        Scale of the phantom's blob centres (dimensionless; :func:`subtomo_nb.simulate.phantom.blobs`).
    particle
        The phantom placed at each particle: a name in :data:`subtomo_nb.simulate.phantom.PHANTOMS`
        (``"hexamer"``, ``"d2"``) or a :class:`~subtomo_nb.simulate.phantom.Phantom`.

    Returns
    -------
    numpy.ndarray
        ``(F, H, W)`` float32 tilt images.
    """
    pix = tomo.pixel_size_A
    c_ref, s_ref, a_ref = blobs(phantom_scale, particle)
    # blob centres in tomogram pixels: (P*B, 3)
    pos = (tomo.centres[:, None, :]
           + np.einsum("pij,bj->pbi", tomo.A_total, c_ref) / pix).reshape(-1, 3)
    sig_px = np.tile(s_ref / pix, tomo.n_particles)
    peak = np.tile(project_blobs_2d_amplitude(s_ref / pix, a_ref), tomo.n_particles)
    H, W = image_shape
    F = proj.shape[0]
    out = np.empty((F, H, W), dtype=np.float32)
    slab_px = slab_A / pix
    centre_h = np.append(tomo.centre, 1.0)
    du = table["rlnDefocusU"].to_numpy(np.float64)
    dv = table["rlnDefocusV"].to_numpy(np.float64)
    da = table["rlnDefocusAngle"].to_numpy(np.float64)
    dose = table["rlnMicrographPreExposure"].to_numpy(np.float64)
    for f in range(F):
        P = proj[f]
        q = pos @ P[:3, :3].T + P[:3, 3]
        depth = q[:, 2] - (P @ centre_h)[2]
        slab_id = np.rint(depth / slab_px).astype(np.int64)
        slabs, slab_idx = np.unique(slab_id, return_inverse=True)
        stack = _splat((H, W), len(slabs), q[:, :2], slab_idx.ravel(), sig_px, peak, truncate)
        dz = hand * pix * slabs * slab_px
        ctf = ctf_2d((H, W), pix, voltage_kV, cs_mm, amplitude_contrast,
                     du[f] + dz, dv[f] + dz, np.full(len(slabs), da[f]), dtype=np.float32)
        dw = dose_weight_2d((H, W), pix, dose[f], dtype=np.float32)
        ft = sfft.rfft2(stack.astype(np.float32))
        img_ft = dw * np.einsum("syx,syx->yx", ctf, ft)
        out[f] = -sfft.irfft2(img_ft, s=(H, W)).astype(np.float32)
    if snr is not None and np.isfinite(snr):
        if rng is None:
            raise ValueError("rng is required to add noise")
        first = int(np.argmin(dose))
        sigma = float(np.sqrt(np.var(out[first], dtype=np.float64) / float(snr)))
        for f in range(F):
            out[f] += sigma * rng.standard_normal((H, W), dtype=np.float32)
    return out
