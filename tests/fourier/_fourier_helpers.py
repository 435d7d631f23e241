"""Shared analytic test objects for the Fourier tests: sums of Gaussian blobs."""

from __future__ import annotations

import numpy as np


class Blobs:
    """Sum of isotropic Gaussians (centres in pixels from the box centre, x y z)."""

    def __init__(self, n: int, centres: np.ndarray, amps: np.ndarray, sigma: float) -> None:
        self.n, self.centres, self.amps, self.sigma = n, centres, amps, sigma
        c = np.arange(n, dtype=np.float64) - n // 2
        self.z, self.y, self.x = np.meshgrid(c, c, c, indexing="ij")
        self.Y, self.X = np.meshgrid(c, c, indexing="ij")

    def volume(self, A: np.ndarray | None = None) -> np.ndarray:
        """Real-space map of V_rot(r) = V(A.T r): centres moved to A c."""
        cs = self.centres if A is None else self.centres @ np.asarray(A).T
        s2 = 2 * self.sigma ** 2
        return sum(a * np.exp(-((self.x - p[0]) ** 2 + (self.y - p[1]) ** 2 + (self.z - p[2]) ** 2) / s2)
                   for a, p in zip(self.amps, cs))

    def projections(self, A: np.ndarray) -> np.ndarray:
        """Analytic projections along z of V(A.T r) for a stack of rotations, (R, n, n)."""
        A = np.asarray(A).reshape(-1, 3, 3)
        cr = np.einsum("rij,gj->rgi", A, self.centres)
        s2 = 2 * self.sigma ** 2
        line = np.sqrt(2 * np.pi) * self.sigma
        out = np.zeros((A.shape[0], self.n, self.n))
        for g, a in enumerate(self.amps):
            out += a * line * np.exp(-((self.X[None] - cr[:, g, 0, None, None]) ** 2
                                       + (self.Y[None] - cr[:, g, 1, None, None]) ** 2) / s2)
        return out


def make_blobs(n: int, seed: int = 0, count: int = 5, spread: float = 6.0, sigma: float = 1.5) -> Blobs:
    rng = np.random.default_rng(seed)
    return Blobs(n, rng.uniform(-spread, spread, (count, 3)), rng.uniform(0.5, 1.5, count), sigma)


def random_rotations(count: int, seed: int = 0) -> np.ndarray:
    """Uniformly distributed RELION rotation matrices."""
    from subtomo_nb.geometry.euler import euler_to_matrix

    rng = np.random.default_rng(seed)
    rot = rng.uniform(0, 360, count)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, count)))
    psi = rng.uniform(0, 360, count)
    return euler_to_matrix(rot, tilt, psi)


def shell_cc(a: np.ndarray, b: np.ndarray, shells: np.ndarray, which: range) -> np.ndarray:
    """Per-shell normalised correlation Re<a, b> / (|a||b|) of two half transforms."""
    out = []
    for i in which:
        s = shells == i
        out.append(np.vdot(a[s], b[s]).real / np.sqrt(np.vdot(a[s], a[s]).real * np.vdot(b[s], b[s]).real))
    return np.array(out)


def assert_same_on_device(be, got, ref: np.ndarray) -> None:
    """``got`` is an array of the backend ``be`` on its device whose host copy equals ``ref``
    bit for bit (dtype and shape included)."""
    assert be.owns(got) and got.device == be.device
    host = be.to_host(got, "results")
    assert host.dtype == ref.dtype and host.shape == ref.shape
    np.testing.assert_array_equal(host, ref)
