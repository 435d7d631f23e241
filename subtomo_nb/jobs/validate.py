"""Check a job's values before it runs: one message per offending field.

What is checked (each message is keyed by the field's job.star key):

* the value has the field's type; a radio value is one of its choices;
* numbers inside RELION's slider range (fields marked ``strict_range``) and basic sanity
  (at least one thread / process, positive steps, even boxes...);
* input files exist (names relative to the project directory, as RELION's);
* an optimisation set XOR direct entries (RELION's ``getTomoInputCommmand`` rules), with the
  particle and tomogram sets required for direct entries;
* required inputs present (reference map for auto-refine, input file for re-centre...);
* point-group names known to RELION (:func:`subtomo_nb.geometry.symmetry.point_group`);
* the mask diameter fits in the box of the input particles (``rlnImageSize`` x pixel size of
  the optics table of the particle file, directly given or named by the optimisation set);
* continue mode needs a ``_optimiser.star``; the initial model refuses MPI (as RELION);
* a dask scheduler file or a scheduler address, not both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .params import JobType, coerce
from .registry import get_job_type

__all__ = ["validate", "particle_box"]

_SYMMETRY_KEYS = ("sym_name", "relax_sym")


def _resolve(project_dir: Path, name: str) -> Path:
    p = Path(os.path.expandvars(name))
    return p if p.is_absolute() else project_dir / p


def _sym_error(name: str) -> str | None:
    from subtomo_nb.geometry.symmetry import point_group

    try:
        point_group(name)
    except (ValueError, KeyError) as exc:
        return (f"unknown symmetry {name!r} (RELION point groups: C1, Cn, Ci, Cs, Cnv, Cnh, Sn, Dn, Dnv, Dnh, "
                f"T, Td, Th, O, Oh, I, In, Ih, Inh): {exc}")
    return None


def particle_box(particles_star: str | os.PathLike) -> tuple[int, float]:
    """Box size (pixels) and pixel size (Å) of the particles, from a particle file's optics table.

    Parameters
    ----------
    particles_star : str or os.PathLike
        A RELION particle STAR file (``data_optics`` with ``rlnImageSize`` and a pixel size).

    Returns
    -------
    box : int
        Largest ``rlnImageSize`` over the optics groups.
    pixel_A : float
        Pixel size of that group (``rlnImagePixelSize``, else RELION's fall-backs).

    Raises
    ------
    subtomo_nb.io.errors.InputError
        Unreadable file, or no optics table / image size / pixel size.
    """
    import pandas as pd

    from subtomo_nb.io.errors import InputError
    from subtomo_nb.io.particles import PIXEL_SIZE_LABELS
    from subtomo_nb.io.star import read_star

    blocks = read_star(particles_star)
    optics = blocks.get("optics")
    if not isinstance(optics, pd.DataFrame) or len(optics) == 0:
        raise InputError(particles_star, "no data_optics table", field="data_optics")
    if "rlnImageSize" not in optics.columns:
        raise InputError(particles_star, "optics table has no image size (not extracted yet?)", field="rlnImageSize")
    label = next((lab for lab in PIXEL_SIZE_LABELS if lab in optics.columns), None)
    if label is None:
        raise InputError(particles_star, "optics table has no pixel size", field="rlnImagePixelSize")
    i = int(pd.to_numeric(optics["rlnImageSize"]).to_numpy().argmax())
    return int(optics["rlnImageSize"].iloc[i]), float(optics[label].iloc[i])


def _particles_file(jt: JobType, v: Mapping[str, Any], project_dir: Path) -> Path | None:
    """The particle STAR file the job will read, if it can be found (no error otherwise)."""
    if "use_direct_entries" in jt and v["use_direct_entries"]:
        name = v.get("in_particles", "")
        return _resolve(project_dir, name) if name else None
    name = v.get("in_optimisation", "")
    if not name:
        return None
    path = _resolve(project_dir, name)
    if not path.is_file():
        return None
    try:
        from subtomo_nb.io.optimisation_set import read_optimisation_set, resolve

        oset = read_optimisation_set(path, project_dir=project_dir)
        if "rlnTomoParticlesFile" not in oset:
            return path  # a particle file given where an optimisation set may be (our CLI allows it)
        return resolve(oset, "rlnTomoParticlesFile", project_dir)
    except ValueError:
        return None


def validate(
    job_type: str | JobType,
    values: Mapping[str, Any],
    *,
    project_dir: str | os.PathLike = ".",
    is_continue: bool = False,
) -> dict[str, str]:
    """Check job values; returns ``{key: message}`` for every problem (empty when all is well).

    Parameters
    ----------
    job_type : str or JobType
    values : mapping
        Job values (missing keys take their defaults; RELION strings are accepted).
    project_dir : str or os.PathLike
        RELION project directory; relative file names are taken from it.
    is_continue : bool
        Validate for continue mode (needs "Continue from here").

    Returns
    -------
    dict of str to str
        Field key -> message. Messages start with the field's GUI label.
    """
    jt = get_job_type(job_type)
    project = Path(project_dir)
    errors: dict[str, str] = {}

    def err(key: str, text: str) -> None:
        if key not in errors:
            label = jt.param(key).label.strip() if key in jt else key
            errors[key] = f"{label} {text}"

    v: dict[str, Any] = jt.defaults()
    for key, value in values.items():
        if key not in jt:
            errors[key] = f"{key}: not a field of job type {jt.title!r}"
            continue
        try:
            v[key] = coerce(jt.param(key), value)
        except ValueError as exc:
            err(key, f"has a bad value: {str(exc).split(': ', 1)[-1]}")

    for p in jt.params:
        if p.key in errors:
            continue
        value = v[p.key]
        if p.type == "choice" and value not in p.choices:
            err(p.key, f"must be one of {', '.join(p.choices)} (got {value!r})")
        if p.type in ("int", "float"):
            if not math.isfinite(value):
                err(p.key, "must be a finite number")
            elif p.strict_range and p.min is not None and p.max is not None and not (p.min <= value <= p.max):
                err(p.key, f"must be between {p.min:g} and {p.max:g} (got {value:g})")

    def positive(key: str, minimum: float = 0.0, strict: bool = True) -> None:
        if key in jt and key not in errors:
            x = v[key]
            if (x <= minimum) if strict else (x < minimum):
                err(key, f"must be {'>' if strict else '>='} {minimum:g} (got {x:g})")

    for key in ("nr_mpi", "nr_threads", "nr_pool", "min_dedicated", "nr_iter", "nr_classes", "min_frames",
                "helical_nr_asu", "nr_uniform"):
        positive(key, 1, strict=False)
    for key in ("offset_step", "tau_fudge", "binning", "local_search_step"):
        positive(key)
    for key in ("particle_diameter", "offset_range", "ini_high"):
        positive(key, 0, strict=False)
    if "box_size" in jt and "box_size" not in errors:
        if v["box_size"] < 2 or v["box_size"] % 2:
            err("box_size", f"must be an even number of pixels (got {v['box_size']})")
        elif "crop_size" in jt and "crop_size" not in errors and v["crop_size"] > v["box_size"]:
            err("crop_size", f"must not exceed the box size {v['box_size']} (got {v['crop_size']})")
    if jt.name == "initial_model" and "nr_mpi" not in errors and v["nr_mpi"] > 1:
        err("nr_mpi", "must be 1: gradient refinement (VDAM) does not run with MPI, as in RELION")

    # Symmetry names.
    for key in _SYMMETRY_KEYS:
        if key in jt and key not in errors:
            name = str(v[key]).strip()
            if key == "relax_sym" and not name:
                continue
            if not name:
                err(key, "must name a point group (e.g. C1)")
                continue
            message = _sym_error(name)
            if message:
                err(key, message)

    # Inputs: optimisation set XOR direct entries.
    if "in_optimisation" in jt and not is_continue:
        has_set = bool(str(v["in_optimisation"]).strip())
        direct_keys = [k for k in ("in_particles", "in_tomograms", "in_trajectories") if k in jt]
        any_direct = any(str(v[k]).strip() for k in direct_keys)
        if v["use_direct_entries"]:
            if has_set:
                err("in_optimisation", "must be empty when 'OR: use direct entries?' is Yes "
                    "(give either an optimisation set or the direct entries, not both)")
            if "in_particles" in jt and not str(v["in_particles"]).strip():
                err("in_particles", "is required with direct entries (no particle set given)")
            if "in_tomograms" in jt and not str(v["in_tomograms"]).strip():
                err("in_tomograms", "is required with direct entries (no tomogram set given)")
        elif not has_set:
            if any_direct:
                err("use_direct_entries", "must be Yes to use the particle/tomogram sets given below "
                    "(no optimisation set given)")
            else:
                err("in_optimisation", "is required: give an optimisation set, or set 'OR: use direct "
                    "entries?' to Yes and give the particle and tomogram sets")
        elif any_direct:
            err("use_direct_entries", "both an optimisation set and direct entries are given: "
                "clear one of them (set 'OR: use direct entries?' accordingly)")

    required = {"refine3d": ("fn_ref",), "recentre": ("fn_in",), "align_symmetry": ("fn_in",)}.get(jt.name, ())
    if is_continue and "fn_cont" in jt:
        required = ("fn_cont",)
        if str(v["fn_cont"]).strip() and not str(v["fn_cont"]).endswith("_optimiser.star"):
            err("fn_cont", f"must be an iteration's _optimiser.star (got {v['fn_cont']!r})")
    for key in required:
        if not str(v[key]).strip():
            err(key, "is required")

    # Files that are given must exist.
    for p in jt.params:
        if p.type != "file" or p.key in errors or p.key == "qsubscript":
            continue
        name = str(v[p.key]).strip()
        if not name:
            continue
        if p.key in ("in_particles", "in_tomograms", "in_trajectories") and not v.get("use_direct_entries", True):
            continue
        if p.key == "fn_cont" and not is_continue:
            continue
        path = _resolve(project, name)
        if not path.is_file():
            err(p.key, f"file not found: {name} (looked for {path})")

    # A dask cluster to attach to: a scheduler file or an address, not both.
    if "scheduler_address" in jt and "scheduler_address" not in errors:
        address = str(v["scheduler_address"]).strip()
        if address and str(v.get("scheduler_file", "")).strip():
            err("scheduler_address", "give a dask scheduler file or a scheduler address, not both")
        elif address and ("://" in address and not address.split("://", 1)[1] or " " in address):
            err("scheduler_address", f"{address!r} is not a dask scheduler address (tcp://host:port)")

    # Mask diameter against the box of the input particles.
    if "particle_diameter" in jt and "particle_diameter" not in errors and not is_continue:
        star = _particles_file(jt, v, project)
        if star is not None and star.is_file():
            try:
                box, pixel = particle_box(star)
            except ValueError:
                box, pixel = 0, 0.0
            if box > 0 and pixel > 0 and v["particle_diameter"] > box * pixel:
                err("particle_diameter", f"{v['particle_diameter']:g} Å is larger than the particle box "
                    f"({box} px x {pixel:g} Å = {box * pixel:g} Å in {star.name})")
    return errors
