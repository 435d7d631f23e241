"""Jobs: RELION's tomography job forms as data, their command lines, job directories and runs.

* :mod:`~subtomo_nb.jobs.registry`: one :class:`JobType` per job (extract, initial model,
  auto-refine, reconstruct particle, re-centre, align symmetry) with its :class:`Param` fields
  (RELION's job.star keys, labels, tabs, defaults, ranges, flags).
* :mod:`~subtomo_nb.jobs.commands`: :func:`command_line` (RELION's and ``subtomo``'s).
* :mod:`~subtomo_nb.jobs.options`: :func:`~subtomo_nb.jobs.options.options_from`, what a job
  runs with, from its values (one per job type; flag units from :mod:`~subtomo_nb.jobs.units`,
  "Additional arguments" from :mod:`~subtomo_nb.jobs.additional_args`).
* :mod:`~subtomo_nb.jobs.runners`, :mod:`~subtomo_nb.jobs.initial_model`,
  :mod:`~subtomo_nb.jobs.align_symmetry`: the run functions (and ``subtomo`` bodies) around the
  algorithms and tasks; :mod:`~subtomo_nb.jobs.tutorial`: the synthetic tutorial's jobs;
  :mod:`~subtomo_nb.jobs.presets`: the forms' named value sets.
* :mod:`~subtomo_nb.jobs.validate`: :func:`validate` -> ``{key: message}``.
* :mod:`~subtomo_nb.jobs.cli`: :func:`build_argparser` / :func:`values_from_args`.
* :mod:`~subtomo_nb.jobs.jobdir`: ``<Process>/jobNNN/`` directories, :func:`run_job`,
  :func:`read_job`.
* :mod:`~subtomo_nb.jobs.progress`: :class:`Progress` events written to ``run.out``.

Importing this package imports no numerical code: run functions are named by dotted paths and
imported when a job runs. The layers below (io, geometry, fourier, refine, initial_model, tasks,
simulate) never import this package; this package never imports widgets, viewer or cli
(import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

from .cli import build_argparser, parse_job_args, values_from_args
from .commands import command_line, format_command, relion_commands, subtomo_command
from .jobdir import (
    EXIT_FAILURE,
    EXIT_SUCCESS,
    JobFailedError,
    JobRecord,
    JobValidationError,
    create_job_dir,
    job_execution,
    job_status,
    next_job_number,
    read_job,
    run_job,
    write_job_star,
)
from .params import JobType, Param, from_relion_string, to_relion_string
from .progress import Progress, ProgressLog, read_progress
from .registry import REGISTRY, SAMPLING_CHOICES, get_job_type
from .validate import validate

__all__ = [
    "JobType",
    "Param",
    "REGISTRY",
    "SAMPLING_CHOICES",
    "get_job_type",
    "to_relion_string",
    "from_relion_string",
    "command_line",
    "relion_commands",
    "subtomo_command",
    "format_command",
    "validate",
    "build_argparser",
    "values_from_args",
    "parse_job_args",
    "Progress",
    "ProgressLog",
    "read_progress",
    "JobRecord",
    "JobValidationError",
    "JobFailedError",
    "EXIT_SUCCESS",
    "EXIT_FAILURE",
    "next_job_number",
    "create_job_dir",
    "write_job_star",
    "read_job",
    "job_status",
    "job_execution",
    "run_job",
]
