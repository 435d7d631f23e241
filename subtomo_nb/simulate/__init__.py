"""The built-in synthetic dataset: a small RELION 5 tomography project with ground truth.

C6 hexamer lattices on spherical virions in a few tomograms, dose-symmetric tilt series with
per-tilt CTF (depth-dependent defocus), dose weighting and noise, sphere-picker picks, and the
ground truth (map, mask, true orientations and origins). See :func:`simulate_project`.
"""

from __future__ import annotations

from subtomo_nb.simulate.project import DEFAULT_SNR, TINY, TINY_TUTORIAL, simulate_project, simulate_tiny_project

__all__ = ["simulate_project", "simulate_tiny_project", "TINY", "TINY_TUTORIAL", "DEFAULT_SNR"]
