"""Fourier-space core: transforms, projector, back-projector, reconstruction, FSC, filters, masks.

Every function takes its array module from its input (numpy or cupy). Conventions: RELION's
1/N-normalised forward transforms of centred boxes, half transforms in FFTW layout, frequencies
in integer Fourier pixels, ``F_particle(k) = F_ref(A.T k)`` (see ``docs/internals.md``).
The CTF lives in :mod:`subtomo_nb.fourier.ctf` (imported on its own).
"""

from __future__ import annotations

from subtomo_nb.fourier.backprojector import BackProjector, trilinear_scatter_half
from subtomo_nb.fourier.fft import half_shape, irfft2, irfft3, rfft2, rfft3, shift_half
from subtomo_nb.fourier.filters import (
    apply_b_factor,
    fourier_crop,
    fourier_crop_half,
    fourier_pad,
    low_pass,
    low_pass_weights,
)
from subtomo_nb.fourier.fsc import fsc, fsc_true_from_half, resolution, shell_resolution_A
from subtomo_nb.fourier.grid import (
    freq_grid,
    half_points,
    radial_average,
    radius_grid,
    round_half_away,
    shell_index,
    shell_masks,
    shell_sum,
)
from subtomo_nb.fourier.masks import centred_radius, mask_particle, soft_edge_box_mask, soft_sphere
from subtomo_nb.fourier.projector import Projector, gridding_sinc2, padded_size, trilinear_gather_half
from subtomo_nb.fourier.reconstruct import (
    SSNRResult,
    blob_ft_ratio,
    downsampled_average,
    gridding_correct,
    ssnr_tau2_from_fsc,
    wiener_reconstruct,
)
from subtomo_nb.fourier.stack2d import stack_to_pseudo_subtomo

__all__ = [
    "BackProjector",
    "Projector",
    "SSNRResult",
    "apply_b_factor",
    "blob_ft_ratio",
    "centred_radius",
    "downsampled_average",
    "fourier_crop",
    "fourier_crop_half",
    "fourier_pad",
    "freq_grid",
    "fsc",
    "fsc_true_from_half",
    "gridding_correct",
    "gridding_sinc2",
    "half_points",
    "half_shape",
    "irfft2",
    "irfft3",
    "low_pass",
    "low_pass_weights",
    "mask_particle",
    "padded_size",
    "radial_average",
    "radius_grid",
    "resolution",
    "rfft2",
    "rfft3",
    "round_half_away",
    "shell_index",
    "shell_masks",
    "shell_resolution_A",
    "shell_sum",
    "shift_half",
    "soft_edge_box_mask",
    "soft_sphere",
    "ssnr_tau2_from_fsc",
    "stack_to_pseudo_subtomo",
    "trilinear_gather_half",
    "trilinear_scatter_half",
    "wiener_reconstruct",
]
