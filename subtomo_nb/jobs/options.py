"""What a job runs with, from its form values: one :func:`options_from` for every job type.

The form values (a notebook form's, ``subtomo``'s parsed command line through
:func:`~subtomo_nb.jobs.cli.values_from_args`, or a RELION ``job.star``'s) are completed with the
registry's defaults, the one place job defaults live, and turned into the options of the code that
runs the job: :class:`~subtomo_nb.refine.autorefine.RefineOptions`,
:class:`~subtomo_nb.initial_model.vdam.VdamOptions`, or the keyword arguments of the task
function. Flag units (HEALPix orders, the doubled offset step) come from
:mod:`subtomo_nb.jobs.units`, as on RELION's command lines (:mod:`subtomo_nb.jobs.commands`), and
"Additional arguments" from :func:`~subtomo_nb.jobs.additional_args.parse_additional_arguments`.
The numerical modules are imported only when options are made.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .additional_args import INITIAL_MODEL_FLAGS, REFINE_FLAGS, parse_additional_arguments
from .registry import get_job_type
from .units import healpix_order, to_flag

__all__ = ["options_from", "input_path", "job_inputs"]


def input_path(name: str, project_dir: str | os.PathLike) -> Path:
    """Absolute path of a project-relative input file name (``$VARS`` expanded)."""
    p = Path(os.path.expandvars(str(name)))
    return p if p.is_absolute() else Path(project_dir) / p


def job_inputs(values: Mapping[str, Any], project_dir: str | os.PathLike) -> tuple[Path, Path | None]:
    """(optimisation set or particle file, tomogram set or None) of a tomo job's I/O tab."""
    if values["use_direct_entries"]:
        tomo = values.get("in_tomograms") or ""
        return input_path(values["in_particles"], project_dir), (input_path(tomo, project_dir) if tomo else None)
    return input_path(values["in_optimisation"], project_dir), None


def _backend_kwarg(target: Any, v: Mapping[str, Any]) -> dict[str, str]:
    """``{"backend": name}`` of the job's backend (``--gpu``, ``SUBTOMO_BACKEND``) for ``target``.

    ``target`` is the options dataclass (``PoseOptions.backend`` and its subclasses) or the task
    function (``backend=``). An engine that takes no backend runs numpy only: another backend is
    refused then.
    """
    from subtomo_nb.io.errors import InputError

    from .devices import job_devices

    name = job_devices(v).backend
    if dataclasses.is_dataclass(target):
        takes = any(f.name == "backend" for f in dataclasses.fields(target))
    else:
        takes = "backend" in inspect.signature(target).parameters
    if takes:
        return {"backend": name}
    if name != "numpy":
        raise InputError(None, what=f"backend {name!r}: {getattr(target, '__name__', target)} runs on numpy only "
                         "in this version", field="--gpu" if v.get("use_gpu") else "SUBTOMO_BACKEND")
    return {}


def _refine3d(v: Mapping[str, Any], job_dir: Path, project_dir: Path) -> Any:
    """``RefineOptions`` of the 3D auto-refine form (RELION's mappings, conventions §10.1).

    "Ref. map is on absolute greyscale? No" ⇒ ``--firstiter_cc``; the sampling choices ⇒ HEALPix
    orders; the form's offset step is the fine one (× 2 for ``--offset_step``); "Use finer angular
    sampling faster?" ⇒ ``--auto_ignore_angles --auto_resol_angles``; "Skip padding?" ⇒
    ``--pad 1``; "Additional arguments" may give ``--auto_iter_max``, ``--random_seed`` and
    ``--no_align_ref_sym``.
    """
    from subtomo_nb.refine.autorefine import RefineOptions

    if v["fn_cont"]:
        # --continue: the stopped run's own options (saved with its iteration), a new output root
        return RefineOptions(particles="", reference="", output_root=job_dir / "run",
                             continue_from=input_path(v["fn_cont"], project_dir), project_dir=project_dir,
                             **_backend_kwarg(RefineOptions, v))
    particles, tomograms = job_inputs(v, project_dir)
    extra, _ = parse_additional_arguments(v["other_args"], REFINE_FLAGS)
    align_ref_sym = not extra.pop("no_align_ref_sym", False)
    return RefineOptions(
        particles=particles, reference=input_path(v["fn_ref"], project_dir),
        output_root=job_dir / "run", tomograms=tomograms,
        solvent_mask=input_path(v["fn_mask"], project_dir) if v["fn_mask"] else None,
        firstiter_cc=not v["ref_correct_greyscale"], ini_high=float(v["ini_high"]),
        sym=str(v["sym_name"]), ctf=bool(v["do_ctf_correction"]),
        particle_diameter=float(v["particle_diameter"]), zero_mask=bool(v["do_zero_mask"]),
        pad=1 if v["do_pad1"] else 2,
        healpix_order=healpix_order(v["sampling"]),
        auto_local_healpix_order=healpix_order(v["auto_local_sampling"]),
        offset_range_px=float(v["offset_range"]), offset_step_px=float(to_flag("x2", v["offset_step"])),
        sigma_tilt=float(v["sigma_tilt"]),
        auto_ignore_angles=bool(v["auto_faster"]), auto_resol_angles=bool(v["auto_faster"]),
        align_reference_symmetry=align_ref_sym, project_dir=project_dir, **extra, **_backend_kwarg(RefineOptions, v),
    )


def _initial_model(v: Mapping[str, Any], job_dir: Path, project_dir: Path) -> Any:
    """``VdamOptions`` of the "3D initial reference" form (RELION's mappings, §10.2).

    "Additional arguments" may set the relion_refine flags of
    :data:`~subtomo_nb.jobs.additional_args.INITIAL_MODEL_FLAGS` (e.g. ``--maxsig 20
    --random_seed 7``); the run function reports the other words as not used. "Fast search
    (subtomo_nb, not RELION)?" (``do_fast``, ``--fast``) is ``VdamOptions.fast``: subtomo_nb's own
    search (:mod:`subtomo_nb.initial_model.fast`); No leaves the options RELION's.
    """
    from subtomo_nb.initial_model.vdam import VdamOptions

    particles, tomograms = job_inputs(v, project_dir)
    extra, _ = parse_additional_arguments(v["other_args"], INITIAL_MODEL_FLAGS)
    return VdamOptions(
        particles=particles, output_root=job_dir / "run", tomograms=tomograms,
        nr_iter=int(v["nr_iter"]), tau2_fudge=float(v["tau_fudge"]),
        nr_classes=int(v["nr_classes"]), particle_diameter=float(v["particle_diameter"]),
        flatten_solvent=bool(v["do_solvent"]), sym=str(v["sym_name"]),
        run_in_c1=bool(v["do_run_C1"]), sigma_tilt=float(v["sigma_tilt"]),
        ctf=bool(v["do_ctf_correction"]), ctf_intact_first_peak=bool(v["ctf_intact_first_peak"]),
        n_workers=max(1, int(v["nr_threads"])), fast=bool(v["do_fast"]), project_dir=project_dir, **extra,
        **_backend_kwarg(VdamOptions, v),
    )


def _extract(v: Mapping[str, Any], job_dir: Path, project_dir: Path) -> dict[str, Any]:
    """Keyword arguments of :func:`subtomo_nb.tasks.extract.extract_subtomos`."""
    source, tomograms = job_inputs(v, project_dir)
    return {"optimisation_set_or_particles": source, "tomograms": tomograms, "out_dir": job_dir,
            "binning": v["binning"], "box": v["box_size"], "crop": v["crop_size"], "max_dose": v["max_dose"],
            "min_frames": v["min_frames"], "stack2d": v["do_stack2d"], "float16": v["do_float16"],
            "n_workers": max(1, v["nr_threads"])}


def _reconstruct(v: Mapping[str, Any], job_dir: Path, project_dir: Path) -> dict[str, Any]:
    """Keyword arguments of :func:`subtomo_nb.tasks.reconstruct.reconstruct_particles` (no client)."""
    from subtomo_nb.tasks.reconstruct import reconstruct_particles

    source, tomograms = job_inputs(v, project_dir)
    return {"star_path": source, "out_map": job_dir / "merged.mrc", "sym": v["sym_name"], "ctf": v["do_ctf"],
            "pad": v["pad"], "n_workers": max(1, v["nr_threads"]), "tomograms": tomograms,
            **_backend_kwarg(reconstruct_particles, v)}


def _recentre(v: Mapping[str, Any], job_dir: Path, project_dir: Path) -> dict[str, Any]:
    """Keyword arguments of :func:`subtomo_nb.tasks.recentre.recentre_star`."""
    return {"in_path": input_path(v["fn_in"], project_dir), "out_path": job_dir / "particles.star",
            "centre_px": (v["center_x"], v["center_y"], v["center_z"]),
            "ignore_optics": v["do_ignore_optics"], "angpix": v["angpix"]}


def _align_symmetry(v: Mapping[str, Any], job_dir: Path, project_dir: Path) -> dict[str, Any]:
    """Keyword arguments of :func:`subtomo_nb.tasks.align_symmetry.align_symmetry_file`.

    ``path`` is the input (empty when none is given: the run function says so), ``sym`` the
    target group and ``project_dir`` where the model.star's class paths are relative to.
    """
    return {
        "path": input_path(v["fn_in"], project_dir) if v["fn_in"] else None,
        "sym": str(v["sym_name"]),
        "project_dir": project_dir,
        "select_largest_class": bool(v["do_select_largest_class"]),
        "select_highest_resol": bool(v["do_select_highest_resol"]),
        "angpix": float(v["angpix"]),
        "box_size": int(v["box_size"]),
        "keep_centre": bool(v["do_keep_centre"]),
        "only_rot": bool(v["do_only_rot"]),
        "nr_uniform": int(v["nr_uniform"]),
        "maxres_A": float(v["maxres"]),
        "local_search_range": int(v["local_search_range"]),
        "local_search_step": float(v["local_search_step"]),
        "pad": int(v["pad"]),
        "apply_sym": bool(v["do_apply_sym"]),
    }


_BUILDERS: dict[str, Callable[[Mapping[str, Any], Path, Path], Any]] = {
    "refine3d": _refine3d,
    "initial_model": _initial_model,
    "extract": _extract,
    "reconstruct": _reconstruct,
    "recentre": _recentre,
    "align_symmetry": _align_symmetry,
}


def options_from(
    job_type: str,
    values: Mapping[str, Any],
    job_dir: str | os.PathLike = ".",
    project_dir: str | os.PathLike = ".",
) -> Any:
    """What a job runs with, from its form values.

    Parameters
    ----------
    job_type : str
        A registry name (``"refine3d"``, ``"initial_model"``, ``"extract"``, ``"reconstruct"``,
        ``"recentre"``, ``"align_symmetry"``).
    values : mapping
        Some or all of the job's values (the others take the registry's defaults; keys the job
        type does not have are ignored).
    job_dir : str or os.PathLike
        The job directory (outputs go inside it).
    project_dir : str or os.PathLike
        RELION's project directory: input file names are relative to it.

    Returns
    -------
    RefineOptions, VdamOptions or dict
        ``refine3d``: :class:`~subtomo_nb.refine.autorefine.RefineOptions`; ``initial_model``:
        :class:`~subtomo_nb.initial_model.vdam.VdamOptions`; the others: the keyword arguments of
        their task function (``extract_subtomos``, ``reconstruct_particles``, ``recentre_star``,
        ``align_symmetry_file``).

    Raises
    ------
    subtomo_nb.io.errors.InputError
        A bad "Additional arguments" flag value.
    ValueError
        A value that cannot be converted to its field's type.
    """
    jt = get_job_type(job_type)
    v = jt.complete({k: value for k, value in values.items() if k in jt})
    return _BUILDERS[jt.name](v, Path(job_dir), Path(project_dir))
