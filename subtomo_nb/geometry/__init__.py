"""Geometry: RELION Euler angles, point groups, orientation and translation sampling,
tilt-series projection matrices."""

from __future__ import annotations

from .euler import angular_distance, euler_to_matrix, matrix_to_euler, rotation_about_axis
from .healpix import (
    LocalOrientations,
    angular_step,
    direction_vectors,
    healpix_directions,
    local_orientations,
    orientation_grid,
    oversampled_children,
    oversampled_directions,
    oversampled_psi,
    psi_angles,
    psi_step,
    remove_symmetry_equivalent,
    sampling_directions,
)
from .symmetry import group_type, is_proper, point_group, symmetrise_map, symmetry_pairs
from .tilt_series import project_points, projection_matrices
from .translations import oversampled_translations, translation_grid

__all__ = [
    "euler_to_matrix",
    "matrix_to_euler",
    "rotation_about_axis",
    "angular_distance",
    "point_group",
    "symmetry_pairs",
    "group_type",
    "is_proper",
    "symmetrise_map",
    "angular_step",
    "psi_step",
    "healpix_directions",
    "direction_vectors",
    "psi_angles",
    "remove_symmetry_equivalent",
    "sampling_directions",
    "orientation_grid",
    "oversampled_directions",
    "oversampled_psi",
    "oversampled_children",
    "LocalOrientations",
    "local_orientations",
    "translation_grid",
    "oversampled_translations",
    "projection_matrices",
    "project_points",
]
