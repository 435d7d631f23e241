"""RELION 5 tomography file I/O: STAR tables, MRC maps, particle and tomogram sets,
optimisation sets and pseudo-subtomograms.

Only this layer (and ``simulate``) touches disk. Every problem with an input file raises
:class:`InputError` (a ``ValueError``) naming the file and, where it applies, the 1-based data
row and the STAR label. Inputs are only ever read; outputs are written atomically.
"""

from __future__ import annotations

from ._paths import find_project_dir, split_image_name
from .errors import InputError
from .mrc import MapHeader, read_header, read_map, write_map
from .optimisation_set import (
    OPTIMISATION_SET_LABELS,
    OptimisationSet,
    read_optimisation_set,
    resolve,
    write_optimisation_set,
)
from .particles import (
    ANGLE_LABELS,
    ORIGIN_LABELS,
    PIXEL_SIZE_LABELS,
    ParticleSet,
    box_size,
    check_files,
    is_2d_stack,
    optics_row,
    parse_visible_frames,
    pixel_size,
    read_particles,
    resolve_path,
    validate_particles,
    visible_frames,
    write_particles,
)
from .star import VERSION_LINE, format_star_value, is_relion_label, read_star, relion_labels, write_star
from .subtomo import (
    PseudoSubtomo,
    read_particle_stack2d,
    read_particle_subtomo,
    read_pseudo_subtomo,
    read_stack2d,
    write_pseudo_subtomo,
    write_stack2d,
)
from .tomograms import TomogramSet, read_tomograms, write_tomograms

__all__ = [
    "InputError",
    # star
    "read_star",
    "write_star",
    "relion_labels",
    "is_relion_label",
    "format_star_value",
    "VERSION_LINE",
    # mrc
    "MapHeader",
    "read_header",
    "read_map",
    "write_map",
    # particles
    "ParticleSet",
    "read_particles",
    "write_particles",
    "validate_particles",
    "pixel_size",
    "box_size",
    "is_2d_stack",
    "optics_row",
    "resolve_path",
    "check_files",
    "parse_visible_frames",
    "visible_frames",
    "ANGLE_LABELS",
    "ORIGIN_LABELS",
    "PIXEL_SIZE_LABELS",
    # subtomograms
    "PseudoSubtomo",
    "read_pseudo_subtomo",
    "write_pseudo_subtomo",
    "read_particle_subtomo",
    "read_stack2d",
    "write_stack2d",
    "read_particle_stack2d",
    # tomograms
    "TomogramSet",
    "read_tomograms",
    "write_tomograms",
    # optimisation sets
    "OptimisationSet",
    "read_optimisation_set",
    "write_optimisation_set",
    "resolve",
    "OPTIMISATION_SET_LABELS",
    # paths
    "find_project_dir",
    "split_image_name",
]
