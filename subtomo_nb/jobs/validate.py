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
* the contents of the inputs (:func:`check_inputs`): the particle set reads, is not empty and its
  image files exist; references and masks are finite cubes with the particles' box and pixel size
  (a header pixel size of 0 or 1 Å counts as unset, as RELION's ``--trust_ref_size``-less rule
  that the map must match the first optics group); masks lie within [0, 1];
* options we accept on RELION's form but do not implement (``--blush``, ``--helix``...) are
  refused, naming them; so is the initial model's ``--fast`` (subtomo_nb's own search) with a
  ``--grad_fin_subset`` in "Additional arguments" (``--fast`` would ignore it); ``--gpu`` without cupy or a CUDA device, GPU numbers that are not visible,
  and an unknown ``SUBTOMO_BACKEND`` are refused (:func:`subtomo_nb.jobs.devices.job_devices`).

:func:`check_job` is the one step every entry point (``subtomo`` sub-commands, the forms, the
Python job runners) goes through before any work: it adds the output checks (creatable, writable,
never an input or a file the job reads) and raises the first problem as one
:class:`~subtomo_nb.io.errors.InputError` naming the file, row and field.
* a dask scheduler file or a scheduler address, not both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from .devices import BACKEND_JOBS, JobDevices, job_devices, require_cluster
from .params import JobType, coerce
from .registry import get_job_type

if TYPE_CHECKING:
    from subtomo_nb.io.errors import InputError

__all__ = ["validate", "particle_box", "check_job", "check_output", "input_files", "Output"]

_SYMMETRY_KEYS = ("sym_name", "relax_sym")

#: Jobs that read 3D pseudo-subtomograms without a tomogram set (2D stacks need one: checked
#: when the particles are read) or take it from an optimisation set (extract: checked then).
_TOMOGRAMS_OPTIONAL = ("reconstruct", "extract")


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
    deep: bool = True,
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
    deep : bool
        Also read the inputs (:func:`check_inputs`): particle set, references, masks.

    Returns
    -------
    dict of str to str
        Field key -> message. Messages start with the field's GUI label.
    """
    jt = get_job_type(job_type)
    found = _collect(jt, values, Path(project_dir), is_continue, deep, {}, [])
    return {key: _labelled(jt, key, problem) for key, problem in found.items()}


def _labelled(jt: JobType, key: str, problem: str | InputError) -> str:
    from subtomo_nb.io.errors import InputError

    if isinstance(problem, str):
        return problem
    label = jt.param(key).label.strip() if key in jt else key
    return f"{label} {problem}"


def _cli_field(jt: JobType, key: str) -> str:
    """How the ``subtomo`` command line names a field (its first option), else its job.star key."""
    from .commands import SINGLE_INPUT_JOBS

    if jt.name in SINGLE_INPUT_JOBS and key in ("in_optimisation", "in_particles"):
        return "--i"
    if key in jt and jt.param(key).cli:
        return jt.param(key).cli[0]
    return key


#: Options of RELION's forms that we accept but do not implement: key -> (refused when, flag, off).
_UNSUPPORTED: dict[str, dict[str, tuple[Any, str, str]]] = {
    "refine3d": {
        "do_blush": (True, "--blush (Blush regularisation)", "No"),
        "do_helix": (True, "--helix (helical reconstruction)", "No"),
        "ctf_intact_first_peak": (True, "--ctf_intact_first_peak", "No"),
        "do_solvent_fsc": (True, "--solvent_correct_fsc", "No"),
        "relax_sym": ("nonempty", "--relax_sym", "empty"),
        "do_queue": (True, "queue submission", "No"),
    },
    "initial_model": {"do_queue": (True, "queue submission", "No")},
    "extract": {"do_queue": (True, "queue submission", "No")},
    "reconstruct": {
        "do_helix": (True, "helical symmetry (relion_helix_toolbox --impose)", "No"),
        "snr": ("positive", "--SNR (Wiener filter)", "0"),
        "crop_size": ("positive", "--crop", "-1"),
        "binning": ("above1", "--bin (re-binning; the particles are averaged at their own extraction binning)", "1"),
        "do_queue": (True, "queue submission", "No"),
    },
    "recentre": {"do_queue": (True, "queue submission", "No")},
    "align_symmetry": {"do_queue": (True, "queue submission", "No")},
}


#: RELION's disc and memory options of relion_refine jobs: they change how RELION reads and
#: exchanges data, never the results, and have no counterpart here (particles are read once into
#: memory; dask exchanges the sums). A value other than the form's default is accepted, so a
#: RELION command line can be pasted, with one warning line naming it (never in silence).
_NO_EFFECT: dict[str, tuple[str, str]] = {
    "do_parallel_discio": ("--no_parallel_disc_io", "every worker reads its own particles"),
    "nr_pool": ("--pool", "particles are batched by the E-step itself"),
    "do_preread_images": ("--preread_images", "particles are read once into memory anyway"),
    "scratch_dir": ("--scratch_dir", "particles are read once into memory"),
}
# (--dont_combine_weights_via_disc is not listed: RELION's own job command always carries it, and
# without it relion_refine combines through files; dask exchanges the sums either way.)


def _refused(rule: Any, value: Any) -> bool:
    if rule == "nonempty":
        return bool(str(value).strip())
    if rule == "positive":
        return float(value) > 0
    if rule == "above1":
        return float(value) > 1
    return value == rule


def _check_fast(v: Mapping[str, Any], err: Callable[[str, str], None]) -> None:
    """``--fast`` (``do_fast``) with a final mini-batch size (``--grad_fin_subset`` > 0 in "Additional arguments").

    ``--fast`` keeps every mini-batch at its initial size, so a final size would be silently
    ignored: refused, under the field that holds it (``other_args``), naming both flags. A bad
    flag value is left to :func:`~subtomo_nb.jobs.options.options_from`, which names it.

    Parameters
    ----------
    v : mapping
        The initial model's values (typed).
    err : callable
        ``err(key, text)`` records the problem of a field.
    """
    from subtomo_nb.io.errors import InputError

    from .additional_args import INITIAL_MODEL_FLAGS, parse_additional_arguments

    if not v.get("do_fast"):
        return
    try:
        extra, _ = parse_additional_arguments(str(v.get("other_args", "") or ""), INITIAL_MODEL_FLAGS)
    except InputError:
        return
    fin = extra.get("grad_fin_subset", -1)
    if fin > 0:
        err("other_args", f"--grad_fin_subset {fin} cannot be used with --fast (Fast search): --fast keeps every "
                          "mini-batch at its initial size, so a final size would be ignored; leave out "
                          "--grad_fin_subset, or set 'Fast search' to No (RELION's search)")


def _gpu_warnings(devices: JobDevices, v: Mapping[str, Any], attached: bool) -> list[str]:
    """What ``--gpu`` leaves unused, one warning each: ``--j`` (one worker per GPU), or the GPU list
    itself on an attached dask cluster (its workers use their own GPUs)."""
    if not devices.uses_gpus:
        return []
    named = ",".join(str(g) for g in devices.gpus)
    if attached:
        return [f"--gpu {named}: the attached dask cluster's workers use their own GPUs; the list only puts this "
                f"process's M-step on GPU {devices.driver_gpu}"]
    threads = int(v.get("nr_threads", 1) or 1)
    if threads > 1:
        where = (" (one GPU: the job runs in this process, on it)" if not devices.needs_cluster
                 else f" ({len(devices.gpus)} worker{'s' if len(devices.gpus) != 1 else ''})")
        return [f"--j {threads} not used with --gpu: one dask worker per GPU{where}"]
    return []


def _collect(
    jt: JobType,
    values: Mapping[str, Any],
    project: Path,
    is_continue: bool,
    deep: bool,
    reads: dict[str, str],
    warnings: list[str],
) -> dict[str, str | InputError]:
    """Every problem of a job's values: key -> labelled message, or the InputError of a file.

    ``reads`` receives the files the job will read (real path -> what it is); ``warnings``
    the lines to report without stopping the job.
    """
    from subtomo_nb.io.errors import InputError

    errors: dict[str, str | InputError] = {}

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
    for key in ("offset_step", "tau_fudge", "local_search_step", "particle_diameter"):
        positive(key)
    positive("binning", 1, strict=False)
    for key in ("offset_range", "ini_high"):
        positive(key, 0, strict=False)
    if "box_size" in jt and "box_size" not in errors:
        if v["box_size"] < 2 or v["box_size"] % 2:
            err("box_size", f"must be an even number of pixels (got {v['box_size']})")
        elif "crop_size" in jt and "crop_size" not in errors and v["crop_size"] > v["box_size"]:
            err("crop_size", f"must not exceed the box size {v['box_size']} (got {v['crop_size']})")
        elif "crop_size" in jt and "crop_size" not in errors and v["crop_size"] > 0 and v["crop_size"] % 2:
            err("crop_size", f"must be an even number of pixels (got {v['crop_size']})")
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
            if "in_tomograms" in jt and not str(v["in_tomograms"]).strip() and jt.name not in _TOMOGRAMS_OPTIONAL:
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
        if not path.exists():
            errors[p.key] = InputError(path, "file not found", field=_cli_field(jt, p.key))
        elif not path.is_file():
            errors[p.key] = InputError(path, "not a regular file", field=_cli_field(jt, p.key))
        elif not os.access(path, os.R_OK):
            errors[p.key] = InputError(path, "file is not readable (permission denied)", field=_cli_field(jt, p.key))
        else:
            reads.setdefault(os.path.realpath(path), p.label.strip().rstrip(":").strip())

    # Options we do not implement are refused, naming them.
    for key, (rule, flag, off) in _UNSUPPORTED.get(jt.name, {}).items():
        if key in jt and key not in errors and _refused(rule, v[key]):
            err(key, f"is refused: {flag} is not implemented by subtomo_nb; set it to {off}")
    if jt.name == "initial_model" and "other_args" not in errors and "do_fast" not in errors:
        _check_fast(v, err)
    if jt.name in ("refine3d", "initial_model"):
        for key, (flag, why) in _NO_EFFECT.items():
            if key in jt and key not in errors and v[key] != jt.param(key).default_value():
                warnings.append(f"{flag}: accepted for RELION compatibility and has no effect here ({why})")
    if jt.name in BACKEND_JOBS and "use_gpu" not in errors:
        # --gpu as relion_refine's, or SUBTOMO_BACKEND: the backend must exist here (cupy and a
        # CUDA device for --gpu), and the GPUs named must be visible
        attached = bool(str(v.get("scheduler_file", "") or "").strip()
                        or str(v.get("scheduler_address", "") or "").strip())
        try:
            devices = job_devices(v if "use_gpu" in jt else {})
            if not attached:
                require_cluster(devices)      # GPUs beyond this process's device 0 need dask-cuda
        except InputError as exc:
            if exc.field == "--gpu" and "use_gpu" in jt:
                err("use_gpu", f"{exc.what}; leave out --gpu (set it to No) to run on the CPU")
            else:
                errors.setdefault("use_gpu" if "use_gpu" in jt else jt.params[0].key, exc)
        else:
            warnings.extend(_gpu_warnings(devices, v, attached))

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
    if deep and not errors:
        check_inputs(jt, v, project, errors, reads, is_continue=is_continue)
    return errors


# ----------------------------------------------------------------------------------------------
# The contents of the inputs
# ----------------------------------------------------------------------------------------------

#: Job types whose input is a particle set with images (read as the job will read it).
_PARTICLE_JOBS = ("refine3d", "initial_model", "reconstruct")

#: A header pixel size RELION treats as unset (mrcfile writes 0, some programs 1).
_UNSET_PIXEL = (0.0, 1.0)


def _pixel_differs(header_A: float, expected_A: float) -> bool:
    """A header pixel size that is set (not 0 or 1 Å) and differs from ``expected_A`` by more than 0.1 %."""
    return header_A not in _UNSET_PIXEL and abs(header_A - expected_A) > 1e-3 * expected_A


def _source(jt: JobType, v: Mapping[str, Any], project: Path) -> tuple[str, Path, Path | None] | None:
    """(field key, particle file or optimisation set, tomogram set or None) of a job's particle input."""
    if "use_direct_entries" in jt:
        if v["use_direct_entries"]:
            tomo = str(v.get("in_tomograms") or "").strip()
            return "in_particles", _resolve(project, v["in_particles"]), (_resolve(project, tomo) if tomo else None)
        if str(v["in_optimisation"]).strip():
            return "in_optimisation", _resolve(project, v["in_optimisation"]), None
        return None
    if jt.name == "recentre" and str(v["fn_in"]).strip():
        return "fn_in", _resolve(project, v["fn_in"]), None
    return None


def _image_files(pset: Any) -> dict[str, str]:
    """Real paths of the image files a particle table names (rlnImageName, rlnCtfImage)."""
    from subtomo_nb.io._paths import split_image_name
    from subtomo_nb.io.particles import resolve_path

    out: dict[str, str] = {}
    for label in ("rlnImageName", "rlnCtfImage"):
        if label in pset.particles.columns:
            for name in set(map(str, pset.particles[label].tolist())):
                out.setdefault(os.path.realpath(resolve_path(pset, split_image_name(name)[1])),
                               f"{label} of {Path(pset.path).name}")
    return out


def _check_first_image(pset: Any, box: int, pixel: float) -> None:
    """The first particle's image has the optics table's box and pixel size (its MRC header only).

    3D pseudo-subtomograms are ``box``³; 2D stacks hold ``box`` x ``box`` images. A header pixel
    size of 0 or 1 Å counts as unset.
    """
    from subtomo_nb.io._paths import split_image_name
    from subtomo_nb.io.errors import InputError
    from subtomo_nb.io.mrc import read_header
    from subtomo_nb.io.particles import is_2d_stack, resolve_path

    if len(pset.particles) == 0 or "rlnImageName" not in pset.particles.columns:
        return
    image = resolve_path(pset, split_image_name(str(pset.particles["rlnImageName"].iloc[0]))[1])
    header = read_header(image)
    shape = header.shape
    ok = shape[-2:] == (box, box) if is_2d_stack(pset) else shape == (box, box, box)
    if not ok:
        raise InputError(pset.path, f"the image {image.name} holds shape {shape} [z, y, x], the optics table's "
                         f"box is {box}", row=1, field="rlnImageSize")
    pix = header.pixel_size_A
    if _pixel_differs(pix, pixel):
        raise InputError(pset.path, f"the image {image.name} has pixel size {pix:g} Å in its header, the optics "
                         f"table says {pixel:g} Å", row=1, field="rlnImagePixelSize")


def check_map(
    path: str | os.PathLike,
    *,
    box: int | None = None,
    pixel_A: float | None = None,
    mask: bool = False,
    field: str | None = None,
    particles: str | os.PathLike | None = None,
) -> None:
    """Check a reference map or mask against the particles it will be compared with.

    The rule (RELION's, without ``--trust_ref_size`` resizing): a finite ``N x N x N`` map with the
    particles' box ``N``; its pixel size equal to the particles' within 0.1 %, a header pixel
    size of 0 or 1 Å counting as unset; a mask's values within [0, 1].

    Parameters
    ----------
    path : str or os.PathLike
    box : int, optional
        The particles' box (pixels); not compared when None.
    pixel_A : float, optional
        The particles' pixel size (Å); not compared when None.
    mask : bool
        The map is a mask.
    field : str, optional
        Option that named the map (only used in messages of reading errors).
    particles : str or os.PathLike, optional
        The particle file the box and pixel size come from (named in the messages).

    Raises
    ------
    InputError
        Naming the map file.
    """
    from subtomo_nb.io.errors import InputError

    from subtomo_nb.io.mrc import read_map

    import numpy as np

    data, pix = read_map(path)
    of = f" of {Path(particles).name}" if particles is not None else ""
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(path, f"a cubic N x N x N map is required, the file holds shape {data.shape} [z, y, x]",
                         field="nx, ny, nz")
    if box is not None and data.shape[0] != box:
        raise InputError(path, f"box {data.shape[0]} differs from the particles' box {box} (rlnImageSize{of})",
                         field="nx, ny, nz")
    if pixel_A is not None and _pixel_differs(pix, pixel_A):
        raise InputError(path, f"pixel size {pix:g} Å differs from the particles' {pixel_A:g} Å "
                         f"(rlnImagePixelSize{of})", field="voxel size")
    if mask:
        lo, hi = float(np.min(data)), float(np.max(data))
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise InputError(path, f"mask values must lie within [0, 1], found {lo:g} to {hi:g}")


def check_inputs(
    jt: JobType,
    v: Mapping[str, Any],
    project: Path,
    errors: dict[str, str | InputError],
    reads: dict[str, str],
    *,
    is_continue: bool = False,
) -> None:
    """Read the job's inputs as the job will and record the first problem of each field in ``errors``.

    Particle sets must read (:func:`subtomo_nb.tasks.particle_data.load_particle_set`: every
    image file named), have at least one particle and one box and pixel size; references and
    masks pass :func:`check_map`. Files read are added to ``reads`` (real path -> what it is).
    """
    from subtomo_nb.io.errors import InputError

    import pandas as pd

    from subtomo_nb.io.star import read_star

    if is_continue:
        return
    src = _source(jt, v, project)
    box = pixel = None
    particles_path: Path | None = None
    if src is not None:
        key, path, tomograms = src
        try:
            if jt.name in _PARTICLE_JOBS:
                from subtomo_nb.tasks.particle_data import load_particle_set
                from subtomo_nb.tasks.reconstruct import common_box_and_pixel

                pset, tomo_set = load_particle_set(path, tomograms)
                particles_path = Path(pset.path)
                reads.setdefault(os.path.realpath(particles_path), "particle set")
                if tomo_set is not None and getattr(tomo_set, "path", None) is not None:
                    reads.setdefault(os.path.realpath(tomo_set.path), "tomogram set")
                if len(pset.particles) == 0:
                    raise InputError(particles_path, "the particle set is empty (no rows)", field="data_particles")
                box, pixel = common_box_and_pixel(pset)
                _check_first_image(pset, box, pixel)
                reads.update({k: w for k, w in _image_files(pset).items() if k not in reads})
            else:  # extract (picks) and recentre: the particle table only
                blocks = read_star(path)
                first = next(iter(blocks.values()), None)
                particles_path = path
                if isinstance(first, dict) and "rlnTomoParticlesFile" in first:
                    from subtomo_nb.io.optimisation_set import read_optimisation_set

                    oset = read_optimisation_set(path)
                    particles_path = oset.resolve("rlnTomoParticlesFile")
                    if particles_path is None:
                        raise InputError(path, "optimisation set names no particle file", field="rlnTomoParticlesFile")
                    if tomograms is None and oset.tomograms_file:
                        tomograms = oset.resolve("rlnTomoTomogramsFile")
                    blocks = read_star(particles_path)
                reads.setdefault(os.path.realpath(particles_path), "particle set")
                table = blocks.get("particles")
                if not isinstance(table, pd.DataFrame):
                    raise InputError(particles_path, "no data_particles table", field="data_particles")
                if len(table) == 0:
                    raise InputError(particles_path, "the particle set is empty (no rows)", field="data_particles")
                if jt.name == "extract":
                    from subtomo_nb.io.tomograms import read_tomograms

                    if tomograms is None:
                        raise InputError(path, "no tomogram set: give --tomograms or an optimisation set naming one",
                                         field="rlnTomoTomogramsFile")
                    read_tomograms(tomograms)
                    reads.setdefault(os.path.realpath(tomograms), "tomogram set")
        except InputError as exc:
            errors[key] = exc
            return
    if jt.name == "refine3d":
        for key, is_mask in (("fn_ref", False), ("fn_mask", True)):
            name = str(v[key]).strip()
            if name:
                try:
                    check_map(_resolve(project, name), box=box, pixel_A=pixel, mask=is_mask,
                              particles=particles_path)
                except InputError as exc:
                    errors[key] = exc
                    return
    if jt.name == "align_symmetry" and str(v["fn_in"]).strip().lower().endswith((".mrc", ".map")):
        try:
            check_map(_resolve(project, v["fn_in"]))
        except InputError as exc:
            errors["fn_in"] = exc
            return
    if "particle_diameter" in jt and box is not None and pixel is not None and v["particle_diameter"] > box * pixel:
        errors["particle_diameter"] = InputError(
            particles_path, f"mask diameter {v['particle_diameter']:g} Å is larger than the particle box "
            f"({box} px x {pixel:g} Å = {box * pixel:g} Å)", field=_cli_field(jt, "particle_diameter"))


# ----------------------------------------------------------------------------------------------
# Outputs, and the one step before any work
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """A place a job writes: one file, or every name starting with a prefix (``run`` -> ``run_it001...``).

    Attributes
    ----------
    path : pathlib.Path
    prefix : bool
        Every path whose name starts with ``path``'s (and anything under it) is written.
    """

    path: Path
    prefix: bool = False


OutputSpec = Union[str, os.PathLike, Output]


def _writable_dir(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def check_output(out: OutputSpec, reads: Mapping[str, str], *, field: str = "--o") -> None:
    """Check that an output can be written and overwrites nothing the job reads.

    Parameters
    ----------
    out : str or os.PathLike or Output
    reads : mapping of str to str
        Real paths of every file the job reads -> what it is.
    field : str
        The option that named the output (in messages).

    Raises
    ------
    InputError
        The output equals (or, for a prefix, would cover) an input; a parent is a file; the
        nearest existing parent directory is not writable.
    """
    from subtomo_nb.io.errors import InputError

    spec = out if isinstance(out, Output) else Output(Path(out))
    path = Path(os.path.abspath(spec.path))
    real = os.path.realpath(path)
    for name, what in reads.items():
        hit = name == real
        if spec.prefix and not hit:
            hit = os.path.basename(name).startswith(os.path.basename(real)) and os.path.dirname(name) == os.path.dirname(real)
            hit = hit or name.startswith(real.rstrip(os.sep) + os.sep)
        if hit:
            raise InputError(spec.path, f"the output would overwrite an input the job reads ({what}: {name}); "
                             "choose another output name", field=field)
    if path.is_dir() and not spec.prefix:
        raise InputError(spec.path, "the output is an existing directory; give a file name", field=field)
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink() or parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(parent, f"is a file, not a directory: cannot create {path.parent} in it", field=field)
    if not _writable_dir(parent):
        raise InputError(parent, "directory is not writable (permission denied)", field=field)


def input_files(job_type: str | JobType, values: Mapping[str, Any], *, project_dir: str | os.PathLike = ".") -> dict[str, str]:
    """Every file a job reads (real path -> what it is): its file fields and what they name."""
    jt = get_job_type(job_type)
    reads: dict[str, str] = {}
    _collect(jt, values, Path(project_dir), False, True, reads, [])
    return reads


def check_job(
    job_type: str | JobType,
    values: Mapping[str, Any],
    *,
    project_dir: str | os.PathLike = ".",
    outputs: tuple[OutputSpec, ...] | list[OutputSpec] = (),
    is_continue: bool = False,
) -> list[str]:
    """The one validation step before a job does any work.

    Checks the values (:func:`validate`, reading the inputs), then every output: creatable,
    writable, and never an input or a file the job reads.

    Parameters
    ----------
    job_type : str or JobType
    values : mapping
        Job values (missing keys: defaults).
    project_dir : str or os.PathLike
    outputs : sequence of path or Output
        What the job will write.
    is_continue : bool

    Returns
    -------
    list of str
        Warnings to report (e.g. ``--gpu`` on a machine whose GPU the job does not use).

    Raises
    ------
    InputError
        The first problem, naming the file, row and field (for an option, the option).
    """
    from subtomo_nb.io.errors import InputError

    jt = get_job_type(job_type)
    reads: dict[str, str] = {}
    warnings: list[str] = []
    found = _collect(jt, values, Path(project_dir), is_continue, True, reads, warnings)
    for key, problem in found.items():
        if isinstance(problem, InputError):
            raise problem
        raise InputError(None, problem, field=_cli_field(jt, key))
    for out in outputs:
        check_output(out, reads)
    return warnings
