"""The E-step on a cylindrical (polar) grid: all in-plane angles psi by correlations along θ.

With RELION's ``A = euler_to_matrix(rot, tilt, psi) = Rz'(psi) Ry'(tilt) Rz'(rot)`` (passive
``Rz'(a)`` = active rotation by ``-a``), ``A = Rz(-psi) M_d`` with ``M_d = A(rot, tilt, 0)``, so::

    V_{d,psi}(k) = F_ref(Aᵀ k) = F_ref(M_dᵀ Rz(psi) k) = G_d(Rz(psi) k),   G_d(q) = F_ref(M_dᵀ q).

On cylindrical points ``k = (ρ cos θ, ρ sin θ, z)`` the rotation ``Rz(psi)`` is ``θ -> θ + psi``:
if every ring (ρ, z) has ``n_θ = L·n_psi`` samples ``θ_j = 2πj/n_θ`` and ``psi_m = m·360°/n_psi``,
then ``V_{d,m}[ring, j] = G_d[ring, j + m L]`` -- one reference evaluation per *direction*, and
the sums of :mod:`subtomo_nb.refine.estep` over k become circular cross-correlations along θ::

    Σ_j h[j] conj(G[j + mL]) = (1/n_θ) Σ_f H_f conj(Ĝ_f) exp(-2πi f m / n_psi)

(``H``, ``Ĝ``: DFTs along θ). For each angular frequency ``f`` the sum over rings is one GEMM
``(P·T × rings) · (rings × D)``; the frequencies are then folded modulo ``n_psi`` and one
``n_psi``-point FFT gives every psi. The GEMM work drops by about ``n_psi / 2`` against the
Cartesian E-step (``estep.squared_differences``) and the interpolation by ``n_psi``.

Both terms that depend on the rotation are evaluated this way: ``B`` (data·reference) and ``A``
(``a_p |V|²``, with ``a_p = W²/(2σ²M)`` -- the CTF²/missing-wedge weighting is fixed in the
particle frame, so its overlap with the reference power depends on psi). ``C`` is summed on the
Cartesian points.

Sampling (:class:`PolarGrid`): the particle's Friedel-unique half-space is taken as ``z > 0``
(invariant under rotations about z; both the particle data and the reference are read with
Friedel conjugation where their stored ``kx < 0``). Rings sit at midpoints ``ρ = (i + ½)Δρ``,
``z = (l + ½)Δz`` inside ``|k| <= r_max``; each ring has ``n_θ = L·n_psi`` samples with ``L``
the smallest integer giving an arc spacing ``2πρ/n_θ <= arc_step`` (``arc_step=None`` gives
``n_θ = n_psi`` on every ring, which undersamples outer rings when the psi step is coarse).
Quadrature weights are the cylindrical volume element ``ρ Δρ Δz 2π/n_θ``, rescaled per integer
shell ``round(|k|)`` so that each shell's total equals the number of Cartesian half-grid points
of that shell (:meth:`PolarGrid.cartesian_weights`); then ``Σ_polar w f ≈ Σ_Cartesian f`` for
``f`` smooth within shells. The origin (shell 0) is not sampled (RELION excludes it as well).

Translations: ``φ_t(k) = exp(-2πi k·t / N)`` is applied analytically at the polar points; its
z factor is constant on a ring, so FFTs along θ are needed only per distinct in-plane shift
``(t_x, t_y)`` and the z factor multiplies the ring spectra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from subtomo_nb._array import fft_module, get_xp
from subtomo_nb.fourier.fft import irfft3
from subtomo_nb.fourier.grid import round_half_away, shell_index
from subtomo_nb.fourier.projector import Projector, centred_extension, trilinear_gather_centred
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.refine.estep import ParticleTerms, phase_factors, squared_differences

__all__ = [
    "PolarGrid",
    "PolarParticleTerms",
    "PolarReference",
    "polar_reference",
    "polar_particle_terms",
    "polar_squared_differences",
    "polar_flops",
]


@dataclass
class _Band:
    """Consecutive rings sharing one ``n_theta``."""

    n_theta: int
    ring_start: int
    ring_stop: int
    point_start: int
    point_stop: int


class PolarGrid:
    """Cylindrical sample points over the Friedel-unique half-ball ``|k| <= r_max, z > 0``.

    Parameters
    ----------
    box
        Box size ``N`` (pixels) of the particles and the reference.
    r_max
        Largest frequency sampled (Fourier pixels), at most ``N // 2``.
    psi_step_deg
        In-plane angular step (degrees); ``n_psi = ceil(360 / psi_step_deg)`` as
        :func:`subtomo_nb.geometry.healpix.psi_angles`, ``psi_m = m · 360 / n_psi``.
    d_rho, d_z
        Ring spacing in ρ and z (Fourier pixels).
    arc_step
        Largest spacing along θ on a ring (Fourier pixels); ``None``: ``n_θ = n_psi`` on all
        rings.
    normalisation
        ``"rfft"``: per-shell weights sum to the number of points of numpy's rfft half grid
        (``kx >= 0``, the ``kx = 0`` plane counted fully, as RELION's loops over FFTW halves);
        ``"unique"``: to half the number of points of the full ball (each Friedel pair once).
    core_shell
        Shells ``1 .. core_shell`` are not sampled by rings but evaluated exactly on their
        Cartesian points for every rotation (the "core"): there the lattice is too coarse for
        any quadrature to reproduce the lattice sum, and the power of real maps is largest;
        it costs ``(core points / all points)`` of the Cartesian E-step (about 3 % for shell 4
        of 15). 0 disables the core.

    Attributes
    ----------
    n_psi, psi_deg
        Number of in-plane angles and their values (degrees).
    rho, z, n_theta, shell
        Per ring (sorted by ``n_theta``, then ρ, z): radius, height (Fourier pixels), number of
        θ samples, integer shell ``round(|k|)``.
    points
        ``(K, 3)`` float64 (x, y, z) points, ring after ring, ``θ_j = 2πj/n_θ``.
    weights
        ``(K,)`` quadrature weights (Cartesian point counts).
    ring_of_point
        ``(K,)`` ring index of each point.
    n_freq
        Columns of the θ-spectra: ``max(n_theta)`` (a multiple of ``n_psi``).
    core_points, core_weights, core_index
        ``(K_c, 3)`` Cartesian points of the core, their weights (as
        :meth:`cartesian_points`) and flat indices into the rfft half grid.
    """

    def __init__(self, box: int, r_max: float, psi_step_deg: float, d_rho: float = 1.0,
                 d_z: float = 1.0, arc_step: float | None = 1.0, normalisation: str = "rfft",
                 core_shell: int = 4) -> None:
        if r_max <= 0 or r_max > box // 2:
            raise ValueError(f"r_max must be in (0, {box // 2}], got {r_max}")
        if not psi_step_deg > 0:
            raise ValueError(f"psi step must be > 0 degrees, got {psi_step_deg}")
        if normalisation not in ("rfft", "unique"):
            raise ValueError(f"normalisation must be 'rfft' or 'unique', got {normalisation!r}")
        self.box = int(box)
        self.r_max = float(r_max)
        self.n_psi = int(np.ceil(360.0 / psi_step_deg - 1e-9))
        self.psi_deg = np.arange(self.n_psi) * (360.0 / self.n_psi)
        self.d_rho, self.d_z = float(d_rho), float(d_z)
        self.arc_step = arc_step
        self.normalisation = normalisation

        rho1 = (np.arange(int(np.ceil(r_max / d_rho)) + 1) + 0.5) * d_rho
        z1 = (np.arange(int(np.ceil(r_max / d_z)) + 1) + 0.5) * d_z
        rr, zz = np.meshgrid(rho1, z1, indexing="ij")
        self.core_shell = int(core_shell)
        keep = (rr * rr + zz * zz <= self.r_max ** 2) & (
            round_half_away(np.sqrt(rr * rr + zz * zz)) > self.core_shell)
        if not np.any(keep):
            raise ValueError(f"no polar rings beyond core shell {core_shell} within r_max {r_max}")
        rho, z = rr[keep], zz[keep]
        if arc_step is None:
            L = np.ones(rho.shape, dtype=np.int64)
        else:
            L = np.maximum(1, np.ceil(2 * np.pi * rho / (self.n_psi * float(arc_step)) - 1e-9)).astype(np.int64)
        n_theta = L * self.n_psi
        order = np.lexsort((z, rho, n_theta))
        self.rho, self.z, self.n_theta = rho[order], z[order], n_theta[order]
        self.n_rings = int(self.rho.size)
        self.shell = round_half_away(np.sqrt(self.rho ** 2 + self.z ** 2))
        self.n_freq = int(self.n_theta.max())

        # points, ring by ring
        starts = np.concatenate([[0], np.cumsum(self.n_theta)])
        self.ring_start = starts[:-1]
        self.n_points = int(starts[-1])
        self.ring_of_point = np.repeat(np.arange(self.n_rings), self.n_theta)
        j = np.arange(self.n_points) - self.ring_start[self.ring_of_point]
        theta = 2 * np.pi * j / self.n_theta[self.ring_of_point]
        r_p = self.rho[self.ring_of_point]
        self.theta = theta
        self.points = np.stack([r_p * np.cos(theta), r_p * np.sin(theta), self.z[self.ring_of_point]], axis=-1)

        # bands of equal n_theta (rings are sorted by n_theta)
        self.bands: list[_Band] = []
        for nt in np.unique(self.n_theta):
            idx = np.nonzero(self.n_theta == nt)[0]
            a, b = int(idx[0]), int(idx[-1]) + 1
            self.bands.append(_Band(int(nt), a, b, int(starts[a]), int(starts[b])))

        # quadrature: cylindrical volume element, renormalised per shell to Cartesian counts
        ring_w = self.rho * self.d_rho * self.d_z * 2 * np.pi          # summed over the ring
        cart = self.cartesian_weights()
        target = np.bincount(shell_index(self.box).ravel(), weights=cart.ravel(),
                             minlength=self.box)
        target[: self.core_shell + 1] = 0.0                           # exact Cartesian core
        have = np.bincount(self.shell, weights=ring_w, minlength=target.size)
        n = min(target.size, have.size)
        scale = np.where(have[:n] > 0, target[:n] / np.where(have[:n] > 0, have[:n], 1), 0.0)
        self.ring_weight = ring_w * scale[self.shell]                  # total weight of a ring
        self.weights = (self.ring_weight / self.n_theta)[self.ring_of_point]
        self.unsampled_weight = float(np.sum(target[:n][have[:n] == 0]))
        # the core: Cartesian points of shells 1..core_shell, evaluated exactly per rotation
        cp, cw, ci = self.cartesian_points()
        core = shell_index(self.box).ravel()[ci] <= self.core_shell
        self.core_points, self.core_weights, self.core_index = cp[core], cw[core], ci[core]

    # ------------------------------------------------------------------ Cartesian reference
    def cartesian_weights(self) -> np.ndarray:
        """Weights of the rfft half-grid points the polar quadrature stands for.

        Returns
        -------
        ``(N, N, N//2+1)`` float64: 1 for ``0 < |k| <= r_max`` (``"unique"``: 1/2 on the
        ``kx = 0`` plane, whose points are their own Friedel mates' duplicates), else 0.
        """
        n = self.box
        kx = np.arange(n // 2 + 1)[None, None, :]
        k = np.fft.fftfreq(n, 1.0 / n)
        ky, kz = k[None, :, None], k[:, None, None]
        r2 = kx * kx + ky * ky + kz * kz
        w = ((r2 > 0) & (r2 <= self.r_max ** 2)).astype(np.float64)
        if self.normalisation == "unique":
            w = w * np.where(kx == 0, 0.5, 1.0)
        return w

    def cartesian_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The Cartesian points of :meth:`cartesian_weights` (for the exact E-step).

        Returns
        -------
        points : ``(K_c, 3)`` float64 (x, y, z), Fourier pixels.
        weights : ``(K_c,)`` -- point weights (fold into σ² as ``σ²/w`` for ``estep``).
        flat_index : ``(K_c,)`` -- indices into the raveled half grid.
        """
        n = self.box
        w = self.cartesian_weights()
        idx = np.nonzero(w.ravel() > 0)[0]
        iz, iy, ix = np.unravel_index(idx, w.shape)
        k = np.fft.fftfreq(n, 1.0 / n)
        pts = np.stack([ix.astype(np.float64), k[iy], k[iz]], axis=-1)
        return pts, w.ravel()[idx], idx

    # ------------------------------------------------------------------ spectra along θ
    def theta_spectra(self, values: Any) -> Any:
        """DFTs along θ of values at the polar points, ring by ring.

        Parameters
        ----------
        values
            ``(B, K)`` values at :attr:`points` (numpy or cupy).

        Returns
        -------
        ``(n_freq, B, n_rings)`` complex: column ``f mod n_freq`` holds the ring's DFT
        coefficient of signed frequency ``f`` (unnormalised forward DFT); zero where a ring
        has fewer samples.
        """
        xp = get_xp(values)
        fft = fft_module(xp)
        B = values.shape[0]
        cdt = xp.complex64 if values.dtype in (xp.float32, xp.complex64) else xp.complex128
        out = xp.zeros((self.n_freq, B, self.n_rings), dtype=cdt)
        for band in self.bands:
            nr = band.ring_stop - band.ring_start
            blk = values[:, band.point_start:band.point_stop].reshape(B, nr, band.n_theta)
            spec = fft.fft(blk, axis=-1).astype(cdt, copy=False)          # (B, nr, n_theta)
            cols = xp.asarray(self._band_columns(band.n_theta))
            out[cols, :, band.ring_start:band.ring_stop] = spec.transpose(2, 0, 1)
        return out

    def _band_columns(self, n_theta: int) -> np.ndarray:
        """Storage columns (``f mod n_freq``) of the DFT indices of an ``n_theta`` ring."""
        f = np.rint(np.fft.fftfreq(n_theta, 1.0 / n_theta)).astype(np.int64)
        return f % self.n_freq

    def frequency_groups(self) -> list[tuple[np.ndarray, int]]:
        """Columns of the θ-spectra grouped by the first ring that has them.

        Returns
        -------
        List of ``(columns, ring_start)``: every ring from ``ring_start`` on (rings are sorted
        by ``n_theta``) has these frequencies; earlier rings have zeros there.
        """
        groups = []
        seen = np.zeros(self.n_freq, dtype=bool)
        for band in self.bands:
            cols = self._band_columns(band.n_theta)
            new = cols[~seen[cols]]
            seen[cols] = True
            if new.size:
                groups.append((np.sort(new), band.ring_start))
        return groups


def polar_flops(grid: PolarGrid, n_particles: int, n_directions: int, n_translations: int) -> float:
    """Real floating-point operations of the GEMMs of :func:`polar_squared_differences`.

    ``8 · P · (T + 1) · D · Σ_f rings(f)`` (complex multiply-adds, data and power terms).
    """
    macs = sum(len(cols) * (grid.n_rings - start) for cols, start in grid.frequency_groups())
    return 8.0 * n_particles * (n_translations + 1) * n_directions * macs


@dataclass
class PolarReference:
    """The reference on a polar grid.

    Attributes
    ----------
    rings : (D, K) complex -- ``G_d`` at the ring points (psi = ``psi0``), ring after ring;
        for ``arc_step=None`` grids ``rings.reshape(D, n_rings, n_psi)`` is
        ``(D, n_rings, n_theta)``.
    core : (D, n_psi, K_c) complex -- ``V_{d,m}`` at the core's Cartesian points.
    psi0_deg : origin of the psi grid (degrees).
    """

    rings: Any
    core: Any
    psi0_deg: float = 0.0


def polar_reference(projector: Projector, directions_rot_tilt: Any, grid: PolarGrid,
                    psi0_deg: float = 0.0) -> PolarReference:
    """Reference values for every direction: once per direction on the rings, per rotation
    on the (small) Cartesian core.

    Parameters
    ----------
    projector
        :class:`~subtomo_nb.fourier.projector.Projector` of the reference (box ``grid.box``).
    directions_rot_tilt
        ``(D, 2)`` (rot, tilt) in degrees, or a pair of ``(D,)`` arrays.
    grid
        The polar grid.
    psi0_deg
        Origin of the psi grid (degrees): ``psi_m = psi0 + m · 360/n_psi``.

    Returns
    -------
    :class:`PolarReference` (the projector's dtype and array module): ``F_ref(Aᵀ k)`` with
    ``A = euler_to_matrix(rot, tilt, psi0)`` at the ring points, and with
    ``A = euler_to_matrix(rot, tilt, psi_m)`` at the core points.
    """
    if isinstance(directions_rot_tilt, tuple):
        rot, tilt = (np.asarray(a, dtype=np.float64).ravel() for a in directions_rot_tilt)
    else:
        d = np.asarray(directions_rot_tilt, dtype=np.float64).reshape(-1, 2)
        rot, tilt = d[:, 0], d[:, 1]
    xp = projector.xp
    A = euler_to_matrix(rot, tilt, np.full(rot.shape, float(psi0_deg)))
    rings = projector.sample(xp.asarray(A), xp.asarray(grid.points))
    psi = float(psi0_deg) + grid.psi_deg
    Ac = euler_to_matrix(rot[:, None], tilt[:, None], psi[None, :]).reshape(-1, 3, 3)
    core = projector.sample(xp.asarray(Ac), xp.asarray(grid.core_points))
    return PolarReference(rings=rings, core=core.reshape(rot.size, grid.n_psi, -1),
                          psi0_deg=float(psi0_deg))


@dataclass
class PolarParticleTerms:
    """Per-particle E-step terms at the polar points (quadrature weights folded in).

    Attributes
    ----------
    a : (P, K) real -- ``w · W²/(2σ²M)`` at the polar points.
    b : (P, K) complex -- ``w · W X/(2σ²M)`` at the polar points (unshifted).
    c : (P,) real -- ``Σ |X|²/(2σ²M)`` over the Cartesian points of the grid.
    shifts : (T, 3) -- translations (x, y, z), pixels (content moved by ``+t``).
    core : :class:`~subtomo_nb.refine.estep.ParticleTerms` at the core points (weights
        folded in; its ``c`` is 0: the core's share is in ``c`` above).
    grid : the polar grid.
    """

    a: Any
    b: Any
    c: Any
    shifts: Any
    core: ParticleTerms
    grid: PolarGrid = field(repr=False)


def _shell_lookup(sigma2_shell: Any, shells: Any, xp: Any) -> Any:
    """σ² per point from per-shell values ``(S,)`` or ``(P, S)`` (index clipped to ``S - 1``)."""
    s = xp.clip(shells, 0, sigma2_shell.shape[-1] - 1)
    return sigma2_shell[..., s]


def _interp_half_batch(half: Any, x: Any, y: Any, z: Any) -> Any:
    """Trilinear interpolation of ``(..., N, N, N//2+1)`` half arrays at points (Fourier px).

    Returns ``(..., K)`` (one gather per leading index; Friedel-conjugated for ``x < 0``).
    """
    xp = get_xp(half, x)
    n = int(half.shape[-2])
    width = n // 2 + 2
    lead = half.shape[:-3]
    flat = half.reshape((-1,) + half.shape[-3:])
    out = xp.empty((flat.shape[0], x.shape[0]), dtype=half.dtype)
    for i in range(flat.shape[0]):
        ext = centred_extension(flat[i], width).reshape(-1)
        out[i] = trilinear_gather_centred(ext, n, width, x, y, z)
    return out.reshape(lead + (x.shape[0],))


def polar_particle_terms(
    data_half: Any,
    ctf2_half: Any,
    mult_half: Any,
    sigma2_shell: Any,
    grid: PolarGrid,
    shifts: Any,
    pad: float = 2,
    multiplicity_threshold: float = 0.01,
) -> PolarParticleTerms:
    """The E-step terms of a batch of particles at the polar points.

    ``W`` and ``M`` are interpolated trilinearly from the Cartesian half grids; the data ``X``
    -- which oscillates on the scale of one Fourier pixel -- through a padded transform
    (real-space zero padding by ``pad`` with gridding pre-correction, as the reference's
    :class:`~subtomo_nb.fourier.projector.Projector`; ``pad=1``: trilinear on the ``N`` grid).
    Then, at each polar point with the σ² of its own shell ``round(|k|)`` (σ² may change by
    orders of magnitude between shells, so ``a`` and ``b`` are not interpolated themselves),
    as :func:`subtomo_nb.refine.estep.particle_terms`: ``a = W²/(2σ²M)``, ``b = W X/(2σ²M)``,
    zero where the interpolated ``M`` is at or below the threshold; both times the quadrature
    weights. ``c = Σ |X|²/(2σ²M)`` is summed exactly on the Cartesian points the grid stands
    for (:meth:`PolarGrid.cartesian_weights`).

    Parameters
    ----------
    data_half
        ``(P, N, N, N//2+1)`` complex CTF-premultiplied particle transforms (rfft3 layout).
    ctf2_half
        ``(P, N, N, N//2+1)`` or ``(N, N, N//2+1)`` real CTF² sums ``W``.
    mult_half
        ``(P, N, N, N//2+1)`` or ``(N, N, N//2+1)`` real multiplicities ``M`` (ones if none).
    sigma2_shell
        ``(S,)`` or ``(P, S)`` noise power per shell ``round(|k|)`` (indices beyond ``S - 1``
        use the last value); points where it is not positive are excluded.
    grid
        The polar grid (box ``N``).
    shifts
        ``(T, 3)`` translations (x, y, z), pixels.
    pad
        Padding factor for the data's interpolation (1: plain trilinear).
    multiplicity_threshold
        Points with ``M`` at or below are excluded.

    Returns
    -------
    :class:`PolarParticleTerms` in the precision of ``data_half`` (complex64 -> float32).
    """
    xp = get_xp(data_half, ctf2_half, mult_half, sigma2_shell)
    n = grid.box
    if data_half.ndim != 4 or data_half.shape[-3:] != (n, n, n // 2 + 1):
        raise ValueError(f"data_half must be (P, {n}, {n}, {n // 2 + 1}), got {data_half.shape}")
    rdt = xp.float32 if data_half.dtype == xp.complex64 else xp.float64
    cdt = xp.complex64 if rdt == xp.float32 else xp.complex128
    P = int(data_half.shape[0])
    W = xp.asarray(ctf2_half, dtype=rdt)
    M = xp.asarray(mult_half, dtype=rdt)
    s2_shell = xp.asarray(sigma2_shell, dtype=rdt)

    # c on the Cartesian points
    sh = xp.asarray(shell_index(n))
    s2c = _shell_lookup(s2_shell, sh, xp)
    valid = (M > multiplicity_threshold) & (s2c > 0)
    inv = xp.where(valid, 1.0 / (2.0 * xp.where(valid, s2c * M, 1.0)), 0.0).astype(rdt)
    cw = xp.asarray(grid.cartesian_weights(), dtype=rdt)
    c = xp.sum(xp.broadcast_to((data_half.real ** 2 + data_half.imag ** 2) * inv * cw,
                               data_half.shape).reshape(P, -1), axis=-1)

    # W, M, X at the polar points
    pts = xp.asarray(grid.points, dtype=rdt)
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    Wp = _interp_half_batch(W, x, y, z)
    Mp = _interp_half_batch(M, x, y, z)
    if pad == 1:
        Xp = _interp_half_batch(data_half.astype(cdt, copy=False), x, y, z)
    else:
        Xp = xp.empty((P, grid.n_points), dtype=cdt)
        for p in range(P):
            Xp[p] = Projector(irfft3(data_half[p], n).astype(rdt, copy=False), pad=pad).interpolate(pts)
    shell_p = xp.asarray(grid.shell[grid.ring_of_point])
    s2p = _shell_lookup(s2_shell, shell_p, xp)
    ok = (Mp > multiplicity_threshold) & (s2p > 0)
    wts = xp.asarray(grid.weights, dtype=rdt)
    inv_p = xp.where(ok, wts / (2.0 * xp.where(ok, s2p * Mp, 1.0)), 0.0).astype(rdt)
    a = xp.broadcast_to(Wp * Wp * inv_p, (P, grid.n_points)).astype(rdt)
    b = (Xp * (Wp * inv_p)).astype(cdt)
    # the core: exact Cartesian terms, point weights folded into 1/σ²
    ci = xp.asarray(grid.core_index)
    cwt = xp.asarray(grid.core_weights, dtype=rdt)
    inv_c = xp.broadcast_to(inv, data_half.shape).reshape(P, -1)[:, ci] * cwt
    W_c = xp.broadcast_to(W, data_half.shape).reshape(P, -1)[:, ci]
    core = ParticleTerms(a=(W_c * W_c * inv_c).astype(rdt),
                         b=(data_half.reshape(P, -1)[:, ci] * (W_c * inv_c)).astype(cdt),
                         c=xp.zeros(P, dtype=rdt))
    return PolarParticleTerms(a=a, b=b, c=c, shifts=xp.asarray(shifts, dtype=rdt), core=core, grid=grid)


def _group_rhs(ref_spec_conj: Any, grid: PolarGrid) -> list[Any]:
    """Per frequency group, the contiguous ``(columns, rings from start, D)`` reference block."""
    xp = get_xp(ref_spec_conj)
    return [xp.ascontiguousarray(ref_spec_conj[xp.asarray(cols)][:, start:, :])
            for cols, start in grid.frequency_groups()]


def _correlate(lhs_spec: Any, rhs_groups: list[Any], grid: PolarGrid, zphase: Any = None,
               t_index: Any = None) -> Any:
    """``Σ_rings Σ_f lhs[f, b, ring] conj(G)[f, ring, d] e^{-2πi f m / n_psi}`` for all m.

    Parameters
    ----------
    lhs_spec
        ``(F, B, U, n_rings)`` particle spectra (B particles, U shift variants).
    rhs_groups
        :func:`_group_rhs` of the ``(F, n_rings, D)`` conjugated reference spectra.
    grid
        The polar grid.
    zphase
        ``(T, n_rings)`` per-ring factors applied per output translation (None: T = U).
    t_index
        ``(T,)`` index into U of each output translation.

    Returns
    -------
    ``(n_psi, B, T, D)`` complex.
    """
    xp = get_xp(lhs_spec, rhs_groups[0])
    fft = fft_module(xp)
    F, B, U, R = lhs_spec.shape
    D = rhs_groups[0].shape[-1]
    T = U if zphase is None else zphase.shape[0]
    out = xp.empty((F, B * T, D), dtype=xp.result_type(lhs_spec.dtype, rhs_groups[0].dtype))
    for (cols, start), rhs in zip(grid.frequency_groups(), rhs_groups):
        c = xp.asarray(cols)
        lhs = lhs_spec[c][..., start:]                                   # (c, B, U, R_s)
        if zphase is not None:
            lhs = lhs[:, :, t_index, :] * zphase[None, None, :, start:]  # (c, B, T, R_s)
        lhs = lhs.reshape(len(cols), B * T, R - start)
        out[c] = xp.matmul(lhs, rhs)
    folded = out.reshape(F // grid.n_psi, grid.n_psi, B * T, D).sum(axis=0)
    return fft.fft(folded, axis=0).reshape(grid.n_psi, B, T, D)


def polar_squared_differences(terms: PolarParticleTerms, reference: PolarReference,
                              batch_size: int | None = None,
                              max_batch_bytes: float = 2.0 ** 27) -> Any:
    """RELION's ``diff2`` for all directions × psi × translations via correlations along θ.

    Parameters
    ----------
    terms
        :func:`polar_particle_terms` of ``P`` particles.
    reference
        :func:`polar_reference` of the same grid.
    batch_size
        Particles per batch (default: as many as fit ``max_batch_bytes`` of spectra).
    max_batch_bytes
        Memory bound for the per-batch shifted spectra when ``batch_size`` is None.

    Returns
    -------
    ``(P, D, n_psi, T)`` real: ``diff2[p, d, m, t]`` for ``A = euler_to_matrix(rot_d, tilt_d,
    psi0 + m·360/n_psi)`` (``psi0`` of :func:`polar_reference`) and translation ``t``, with the
    precision of the inputs (float32 for complex64 references and float32 terms).
    """
    grid = terms.grid
    ref = reference.rings
    xp = get_xp(ref, terms.a)
    P, K = terms.a.shape
    D = ref.shape[0]
    if ref.shape[-1] != K or K != grid.n_points:
        raise ValueError(f"reference has {ref.shape[-1]} points, terms {K}, grid {grid.n_points}")
    rdt = terms.a.dtype
    cdt = xp.complex64 if rdt == xp.float32 else xp.complex128
    ref = ref.astype(cdt, copy=False)
    n = grid.box
    inv_nt = xp.asarray(1.0 / grid.n_theta[grid.ring_of_point], dtype=rdt)

    # reference spectra (conjugated, (F, rings, D)), data and power
    g_conj = _group_rhs(xp.conj(grid.theta_spectra(ref)).transpose(0, 2, 1), grid)
    power = (ref.real ** 2 + ref.imag ** 2).astype(rdt)
    p_conj = _group_rhs(xp.conj(grid.theta_spectra(power)).transpose(0, 2, 1), grid)

    # translations: distinct in-plane parts (FFT per particle and in-plane shift), z per ring
    t = xp.asarray(terms.shifts, dtype=rdt).reshape(-1, 3)
    T = t.shape[0]
    t_np = np.asarray(t.get() if hasattr(t, "get") else t, dtype=np.float64)
    uxy, t_index = np.unique(t_np[:, :2], axis=0, return_inverse=True)
    t_index = xp.asarray(t_index.ravel())
    pts = xp.asarray(grid.points, dtype=rdt)
    uxy_x = xp.asarray(uxy, dtype=rdt)
    phase_xy = xp.exp((-2j * np.pi / n) * (uxy_x @ pts[:, :2].T)).astype(cdt)      # (U, K)
    z_ring = xp.asarray(grid.z, dtype=rdt)
    zphase = xp.exp((-2j * np.pi / n) * (t[:, 2:3] * z_ring[None, :])).astype(cdt)  # (T, rings)
    U = phase_xy.shape[0]

    if batch_size is None:
        per = grid.n_freq * grid.n_rings * (U + T) * np.dtype(cdt).itemsize
        batch_size = int(max(1, min(P, max_batch_bytes // max(per, 1))))
    out = xp.empty((P, D, grid.n_psi, T), dtype=rdt)
    for p0 in range(0, P, batch_size):
        p1 = min(P, p0 + batch_size)
        Bn = p1 - p0
        a = terms.a[p0:p1] * inv_nt                                            # (B, K)
        a_spec = grid.theta_spectra(a)[:, :, None, :]                           # (F, B, 1, R)
        A = _correlate(a_spec, p_conj, grid).real[:, :, 0, :]                   # (n_psi, B, D)
        h = (terms.b[p0:p1] * inv_nt)[:, None, :] * phase_xy[None, :, :]        # (B, U, K)
        h_spec = grid.theta_spectra(h.reshape(Bn * U, K)).reshape(grid.n_freq, Bn, U, grid.n_rings)
        Bt = _correlate(h_spec, g_conj, grid, zphase, t_index).real             # (n_psi, B, T, D)
        d2 = A[:, :, None, :] - 2.0 * Bt + terms.c[p0:p1][None, :, None, None].astype(rdt)
        out[p0:p1] = d2.transpose(1, 3, 0, 2)
    if grid.core_points.shape[0]:
        core_ref = reference.core.astype(cdt, copy=False).reshape(D * grid.n_psi, -1)
        kc = xp.asarray(grid.core_points, dtype=rdt)
        d2c = squared_differences(terms.core, core_ref, phase_factors(kc, t, n).astype(cdt))
        out += d2c.reshape(P, D, grid.n_psi, T).astype(rdt, copy=False)
    return out
