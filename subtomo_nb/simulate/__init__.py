"""The built-in synthetic dataset: a small RELION 5 tomography project with ground truth.

Lattices of a phantom particle on spherical virions in a few tomograms (a chiral C6 hexamer by
default, or a chiral D2 dimer of dimers with ``particle="d2"``; see
:mod:`subtomo_nb.simulate.phantom`), dose-symmetric tilt series with per-tilt CTF
(depth-dependent defocus), dose weighting and noise, sphere-picker picks, and the ground truth
(map, mask, true orientations and origins). See :func:`simulate_project`.
"""

from __future__ import annotations

from subtomo_nb.simulate.project import DEFAULT_SNR, TINY, TINY_TUTORIAL, simulate_project, simulate_tiny_project

__all__ = ["simulate_project", "simulate_tiny_project", "TINY", "TINY_TUTORIAL", "DEFAULT_SNR"]
