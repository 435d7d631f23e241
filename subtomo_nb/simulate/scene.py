"""Scene of the synthetic dataset: particle lattices on spherical virions, picks as RELION makes them.

Coordinates are decentred tomogram pixels (tilt-series pixels, ``(x, y, z)``, origin at the
tomogram corner) unless said otherwise.

* Virions: spheres of radius ``radius_range_A`` placed without overlap inside the tomogram.
* Lattice: particle centres on each sphere on an icosahedral geodesic lattice (hexagonal except
  at 12 five-fold points, as real capsids) with ``spacing_A`` between neighbours; each particle's
  reference z axis (the hexamer's C6 axis, the D2 particle's 2-fold about z) along the outward
  normal and its reference x axis towards its nearest neighbour (in-plane angle from the local
  lattice), giving the true orientation ``A_total`` (reference -> tomogram).
* Picks, as RELION 5's sphere picker writes them (``get_particle_poses/spheres.py``): a pose
  matrix ``M`` with the normal as its z column (arbitrary in-plane axes), rotated by 90° about Y:
  ``A_subtomo = M · Ry(90°)``; ``rlnAngle*`` and the tilt/psi priors are the Euler angles of
  ``Ry(90°)`` as scipy returns them (0, 90, 0), so ``A_subtomo · A_particle_prior = M`` maps the
  reference z onto the normal. The pick position is the true centre moved by ``pick_offset_px``
  (tilt-series pixels) along the normal plus isotropic Gaussian noise.
* Truth: ``A_particle_true = A_subtomoᵀ · A_total`` and the origin (Å, subtomogram frame) with
  ``pick − A_subtomo · origin / pixel = true centre`` (relion-conventions.md §2.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from subtomo_nb.geometry.euler import euler_to_matrix, matrix_to_euler

__all__ = ["Tomogram", "geodesic_sphere", "triangulation_numbers", "lattice_radius", "place_virions", "lattice_on_sphere", "make_tomogram_scene",
           "PICKER_PRIOR_ANGLES"]

#: (rot, tilt, psi) of the sphere picker's extra rotation, as spheres.py computes them.
PICKER_PRIOR_ANGLES: tuple[float, float, float] = tuple(
    float(a) for a in Rotation.from_euler("y", 90, degrees=True).as_euler("ZYZ", degrees=True))


@dataclass
class Tomogram:
    """Ground truth and picks of one simulated tomogram (positions in decentred TS pixels).

    Attributes
    ----------
    name
        ``rlnTomoName``.
    size
        ``(SizeX, SizeY, SizeZ)`` in tilt-series pixels.
    pixel_size_A
        Tilt-series pixel size (Å).
    virion_centres
        ``(V, 3)`` sphere centres (pixels); ``virion_radii_A`` their radii (Å).
    centres
        ``(P, 3)`` true hexamer centres (pixels).
    normals
        ``(P, 3)`` outward unit normals.
    A_total
        ``(P, 3, 3)`` true orientations, reference -> tomogram.
    picks
        ``(P, 3)`` picked positions (pixels).
    A_subtomo
        ``(P, 3, 3)`` picker matrices (``rlnTomoSubtomogram*``).
    virion_index
        ``(P,)`` index of each particle's virion.
    """

    name: str
    size: tuple[int, int, int]
    pixel_size_A: float
    virion_centres: np.ndarray
    virion_radii_A: np.ndarray
    centres: np.ndarray
    normals: np.ndarray
    A_total: np.ndarray
    picks: np.ndarray
    A_subtomo: np.ndarray
    virion_index: np.ndarray

    @property
    def n_particles(self) -> int:
        """Number of hexamers (= picks)."""
        return int(self.centres.shape[0])

    @property
    def centre(self) -> np.ndarray:
        """Tomogram centre ``size / 2`` (pixels, floating division as RELION)."""
        return np.asarray(self.size, dtype=np.float64) / 2.0

    @property
    def subtomo_angles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``rlnTomoSubtomogramRot/Tilt/Psi`` (degrees)."""
        return matrix_to_euler(self.A_subtomo)

    @property
    def A_particle_true(self) -> np.ndarray:
        """``A_subtomoᵀ · A_total``: the true ``rlnAngle*`` matrices."""
        return np.einsum("pji,pjk->pik", self.A_subtomo, self.A_total)

    @property
    def origins_true_A(self) -> np.ndarray:
        """True ``rlnOriginX/Y/ZAngst`` (subtomogram frame): ``A_subtomoᵀ (pick − centre) · pixel``."""
        d = (self.picks - self.centres) * self.pixel_size_A
        return np.einsum("pji,pj->pi", self.A_subtomo, d)

    @property
    def centred_coordinates_A(self) -> np.ndarray:
        """``rlnCenteredCoordinateX/Y/ZAngst`` of the picks: ``(pick − size/2) · pixel``."""
        return (self.picks - self.centre) * self.pixel_size_A


def _icosahedron() -> tuple[np.ndarray, np.ndarray]:
    """Vertices (12, 3) of an icosahedron (edge 2) and its faces (20, 3), counter-clockwise from outside."""
    g = (1.0 + np.sqrt(5.0)) / 2.0
    v = np.array([[0, s1, s2 * g] for s1 in (-1, 1) for s2 in (-1, 1)]
                 + [[s1, s2 * g, 0] for s1 in (-1, 1) for s2 in (-1, 1)]
                 + [[s2 * g, 0, s1] for s1 in (-1, 1) for s2 in (-1, 1)], dtype=np.float64)
    d = np.linalg.norm(v[:, None] - v[None], axis=-1)
    tri = np.array([(a, b, c) for a in range(12) for b in range(a + 1, 12) for c in range(b + 1, 12)])
    i, j, k = tri.T
    face = (np.abs(d[i, j] - 2) < 1e-9) & (np.abs(d[j, k] - 2) < 1e-9) & (np.abs(d[i, k] - 2) < 1e-9)
    tri = tri[face]
    vi, vj, vk = v[tri[:, 0]], v[tri[:, 1]], v[tri[:, 2]]
    ccw = np.einsum("fi,fi->f", np.cross(vj - vi, vk - vi), vi) > 0
    tri[~ccw] = tri[~ccw][:, [0, 2, 1]]
    return v, tri


def triangulation_numbers(t_max: int = 100) -> dict[int, tuple[int, int]]:
    """Caspar-Klug triangulation numbers ``T = h² + hk + k²`` up to ``t_max`` with one ``(h, k)`` each."""
    out: dict[int, tuple[int, int]] = {}
    for h in range(1, int(np.sqrt(t_max)) + 2):
        for k in range(0, h + 1):
            t = h * h + h * k + k * k
            if t <= t_max and t not in out:
                out[t] = (h, k)
    return dict(sorted(out.items()))


def geodesic_sphere(h: int, k: int = 0) -> np.ndarray:
    """Unit vectors of the icosahedral ``(h, k)`` geodesic lattice: ``10 T + 2`` points, ``T = h²+hk+k²``.

    A planar hexagonal lattice is laid on each face of an icosahedron whose corners are the lattice
    points ``0``, ``h a1 + k a2`` and that point turned by 60° (Caspar & Klug), and projected onto
    the sphere: hexagonal everywhere except at the 12 five-fold vertices, the arrangement of real
    icosahedral capsids (``k ≠ 0`` gives the chiral classes).
    """
    v, tri = _icosahedron()
    a1 = np.array([1.0, 0.0])
    a2 = np.array([0.5, np.sqrt(3.0) / 2.0])
    B = h * a1 + k * a2
    C = -k * a1 + (h + k) * a2
    T = np.stack([B, C], axis=1)  # columns: B - A, C - A (A = 0)
    m, n = np.meshgrid(np.arange(-k - 1, h + k + 2), np.arange(-1, h + k + 2), indexing="ij")
    p = m.reshape(-1, 1) * a1 + n.reshape(-1, 1) * a2
    lam_bc = np.linalg.solve(T, p.T).T  # (P, 2) barycentric weights of B and C
    lam = np.column_stack([1.0 - lam_bc.sum(1), lam_bc])
    lam = lam[np.all(lam > -1e-9, axis=1)]
    pts = np.einsum("pc,fcx->fpx", lam, v[tri]).reshape(-1, 3)
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    _, idx = np.unique(np.round(pts, 8), axis=0, return_index=True)
    return pts[np.sort(idx)]


#: Mean distance to the 5 nearest neighbours on :func:`geodesic_sphere` (unit radius) times sqrt(T),
#: measured for T = 16..36 (1.181-1.190; the projection stretches the lattice near face centres).
_GEODESIC_SPACING = 1.187


def lattice_t_number(radius_A: float, spacing_A: float) -> tuple[int, int, int]:
    """The triangulation number whose geodesic lattice at ``radius_A`` has spacing nearest ``spacing_A``.

    Returns ``(T, h, k)``.
    """
    t0 = (_GEODESIC_SPACING * radius_A / spacing_A) ** 2
    tn = triangulation_numbers(int(t0 * 1.5) + 4)
    t = min(tn, key=lambda x: abs(np.sqrt(x) - np.sqrt(t0)))
    return t, *tn[t]


def lattice_radius(radius_A: float, spacing_A: float) -> float:
    """``radius_A`` snapped to the nearest radius where a geodesic lattice has spacing ``spacing_A`` (Å)."""
    t, _, _ = lattice_t_number(radius_A, spacing_A)
    return float(spacing_A * np.sqrt(t) / _GEODESIC_SPACING)


def place_virions(
    rng: np.random.Generator,
    n_virions: int,
    size_px: tuple[int, int, int],
    pixel_size_A: float,
    radius_range_A: tuple[float, float],
    margin_A: float,
    spacing_A: float | None = None,
    max_tries: int = 2000,
) -> tuple[np.ndarray, np.ndarray]:
    """Random non-overlapping spheres inside the tomogram (rejection sampling, restarted when stuck).

    Spheres keep ``margin_A`` from the tomogram's x/y faces and from each other and are centred in
    z (within the room left); if ``n_virions`` do not fit, fewer are returned. With ``spacing_A``
    each drawn radius is snapped with :func:`lattice_radius` (the lattice then has that spacing).

    Returns
    -------
    centres : numpy.ndarray
        ``(V, 3)`` centres in pixels.
    radii : numpy.ndarray
        ``(V,)`` radii in Å.
    """
    L = np.asarray(size_px, dtype=np.float64) * pixel_size_A
    best_c: list[np.ndarray] = []
    best_r: list[float] = []
    for _attempt in range(max(1, max_tries // 50)):
        centres: list[np.ndarray] = []
        radii: list[float] = []
        for _ in range(50 * n_virions):
            if len(centres) == n_virions:
                break
            r = rng.uniform(*radius_range_A)
            if spacing_A is not None:
                r = lattice_radius(r, spacing_A)
            lo = r + margin_A
            if 2 * lo > min(L[0], L[1]):
                continue
            zroom = max(0.0, L[2] / 2 - r - margin_A / 4)
            c = np.array([rng.uniform(lo, L[0] - lo), rng.uniform(lo, L[1] - lo),
                          L[2] / 2 + rng.uniform(-zroom, zroom)])
            if all(np.linalg.norm(c - c2) >= r + r2 + margin_A for c2, r2 in zip(centres, radii)):
                centres.append(c)
                radii.append(r)
        if len(centres) > len(best_c):
            best_c, best_r = centres, radii
        if len(best_c) == n_virions:
            break
    centres, radii = best_c, best_r
    return np.asarray(centres).reshape(-1, 3) / pixel_size_A, np.asarray(radii, dtype=np.float64)


def _tangent_frame(normals: np.ndarray) -> np.ndarray:
    """Deterministic right-handed frames ``[e1, e2, n]`` (as columns) with ``n`` the normal."""
    n = normals
    helper = np.where(np.abs(n[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    e1 = helper - np.sum(helper * n, axis=1, keepdims=True) * n
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(n, e1)
    return np.stack([e1, e2, n], axis=-1)


def lattice_on_sphere(
    rng: np.random.Generator, radius_A: float, spacing_A: float, inplane_jitter_deg: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Hexamer positions and true orientations on one sphere (sphere-centred, Å).

    The icosahedral geodesic lattice (:func:`geodesic_sphere`) whose neighbour distance at this
    radius is closest to ``spacing_A`` (:func:`lattice_t_number`), given a random overall rotation.

    Returns
    -------
    normals : numpy.ndarray
        ``(N, 3)`` outward unit normals (position = ``radius · normal``).
    A_total : numpy.ndarray
        ``(N, 3, 3)`` rotations with columns (reference x, y, z) in the tomogram frame:
        z = normal, x = direction to the nearest neighbour (tangent), plus a small random
        in-plane jitter.
    """
    _, h, k = lattice_t_number(radius_A, spacing_A)
    R = Rotation.random(random_state=np.random.RandomState(rng.integers(2**31))).as_matrix()
    normals = geodesic_sphere(h, k) @ R.T
    n = normals.shape[0]
    pos = normals * radius_A
    d2 = np.sum((pos[:, None, :] - pos[None, :, :]) ** 2, axis=-1)
    np.fill_diagonal(d2, np.inf)
    nn = np.argmin(d2, axis=1)
    t = pos[nn] - pos
    t -= np.sum(t * normals, axis=1, keepdims=True) * normals
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    jit = np.deg2rad(rng.normal(0.0, inplane_jitter_deg, n))[:, None]
    b = np.cross(normals, t)
    x_axis = np.cos(jit) * t + np.sin(jit) * b
    y_axis = np.cross(normals, x_axis)
    A = np.stack([x_axis, y_axis, normals], axis=-1)
    return normals, A


def make_tomogram_scene(
    rng: np.random.Generator,
    name: str,
    size_px: tuple[int, int, int] = (960, 960, 440),
    pixel_size_A: float = 2.7,
    n_virions: int | tuple[int, int] = (2, 3),
    radius_range_A: tuple[float, float] = (400.0, 550.0),
    spacing_A: float = 95.0,
    margin_A: float = 180.0,
    pick_offset_px: float = -11.0,
    pick_noise_px: float = 2.0,
    inplane_jitter_deg: float = 2.0,
) -> Tomogram:
    """Build one tomogram's virions, hexamer lattice, true poses and sphere-picker picks.

    Parameters
    ----------
    rng
        Random generator (the only source of randomness).
    name
        ``rlnTomoName``.
    size_px
        Tomogram size ``(X, Y, Z)`` in tilt-series pixels.
    pixel_size_A
        Tilt-series pixel size (Å).
    n_virions
        Number of virions, or an inclusive ``(min, max)`` range drawn uniformly.
    radius_range_A
        Virion radius range (Å), before snapping to a lattice radius (:func:`lattice_radius`); the
        hexamer centres lie on the sphere.
    spacing_A
        Lattice spacing (Å).
    margin_A
        Minimum clearance of the spheres from the tomogram's x/y faces and from each other (Å).
    pick_offset_px
        Pick = true centre + ``pick_offset_px`` · normal (tilt-series pixels; −11 = −2.75 bin-4 px).
    pick_noise_px
        Standard deviation of isotropic pick noise (tilt-series pixels).
    inplane_jitter_deg
        Standard deviation of the random in-plane rotation about the normal (degrees).
    """
    if np.ndim(n_virions) == 0:
        nv = int(n_virions)
    else:
        nv = int(rng.integers(int(n_virions[0]), int(n_virions[1]) + 1))
    vc, vr = place_virions(rng, nv, size_px, pixel_size_A, radius_range_A, margin_A, spacing_A)
    normals, A_tot, centres, vidx = [], [], [], []
    for i, (c, r) in enumerate(zip(vc, vr)):
        nrm, A = lattice_on_sphere(rng, r, spacing_A, inplane_jitter_deg)
        normals.append(nrm)
        A_tot.append(A)
        centres.append(c[None, :] + nrm * (r / pixel_size_A))
        vidx.append(np.full(len(nrm), i))
    normals_a = np.concatenate(normals) if normals else np.zeros((0, 3))
    A_total = np.concatenate(A_tot) if A_tot else np.zeros((0, 3, 3))
    centres_a = np.concatenate(centres) if centres else np.zeros((0, 3))
    vidx_a = np.concatenate(vidx) if vidx else np.zeros(0, dtype=int)
    picks = centres_a + pick_offset_px * normals_a + rng.normal(0.0, pick_noise_px, centres_a.shape)
    ry90 = Rotation.from_euler("y", 90, degrees=True).as_matrix()
    M = _tangent_frame(normals_a) if len(normals_a) else np.zeros((0, 3, 3))
    A_subtomo = M @ ry90
    # store A_subtomo as RELION will read it back from the Euler angles written to the STAR file
    A_subtomo = euler_to_matrix(*matrix_to_euler(A_subtomo)) if len(A_subtomo) else A_subtomo
    return Tomogram(name=name, size=tuple(int(s) for s in size_px), pixel_size_A=float(pixel_size_A),
                    virion_centres=vc, virion_radii_A=vr, centres=centres_a, normals=normals_a,
                    A_total=A_total, picks=picks, A_subtomo=A_subtomo, virion_index=vidx_a)
