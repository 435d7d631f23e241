"""Run functions of the jobs whose numerical body is in :mod:`subtomo_nb.tasks`.

Each has the job run signature ``run(values, job_dir, *, project_dir, progress, client=None)``
(see :func:`subtomo_nb.jobs.jobdir.run_job`): ``values`` complete and typed, file names relative
to ``project_dir``; everything is written inside ``job_dir`` under RELION's output names. The
task modules are imported only when a job runs.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .progress import Progress, ProgressCallback

__all__ = ["run_extract", "run_reconstruct", "run_recentre", "run_refine", "refine_options", "input_path", "preflight"]


def input_path(name: str, project_dir: str | os.PathLike) -> Path:
    """Absolute path of a project-relative input file name (``$VARS`` expanded)."""
    p = Path(os.path.expandvars(str(name)))
    return p if p.is_absolute() else Path(project_dir) / p


def preflight(
    job_type: str,
    values: Mapping[str, Any],
    job_dir: Path,
    project_dir: Path,
    progress: ProgressCallback,
    outputs: list[Any],
) -> None:
    """The one validation step (:func:`subtomo_nb.jobs.validate.check_job`) of a run function.

    Run functions called directly (the Python API) check their values, inputs and outputs before
    any work, as :func:`~subtomo_nb.jobs.jobdir.run_job` and the ``subtomo`` commands do; warnings
    (e.g. ``--gpu`` on a machine whose GPU the job does not use) become one progress line each.

    Raises
    ------
    subtomo_nb.io.errors.InputError
        The first problem, naming the file, row and field.
    """
    from .validate import check_job

    for line in check_job(job_type, values, project_dir=project_dir, outputs=outputs,
                          is_continue=bool(values.get("fn_cont"))):
        progress(Progress(message=f"WARNING: {line}"))


def _job_client(values: Mapping[str, Any], client: Any, progress: ProgressCallback,
                project_dir: str | os.PathLike | None = None) -> Any:
    """:func:`subtomo_nb.parallel.client.job_client` reporting to the job's progress log.

    A relative scheduler file name is relative to ``project_dir`` (RELION's working directory;
    None: the current directory). Without a scheduler field and without a client, distributed is
    not imported.
    """
    if client is None and not (values.get("scheduler_file") or values.get("scheduler_address")):
        return contextlib.nullcontext(None)
    from subtomo_nb.parallel.client import job_client

    values = dict(values)
    if values.get("scheduler_file") and project_dir is not None:
        values["scheduler_file"] = str(input_path(values["scheduler_file"], project_dir))
    return job_client(values, client, lambda line: progress(Progress(message=line)))


def _inputs(values: Mapping[str, Any], project_dir: Path) -> tuple[Path, Path | None]:
    """(optimisation set or particle file, tomogram set or None) of a tomo job's I/O tab."""
    if values["use_direct_entries"]:
        tomo = values.get("in_tomograms") or ""
        return input_path(values["in_particles"], project_dir), (input_path(tomo, project_dir) if tomo else None)
    return input_path(values["in_optimisation"], project_dir), None


def run_extract(
    values: Mapping[str, Any],
    job_dir: Path,
    *,
    project_dir: Path,
    progress: ProgressCallback,
    client: Any = None,
) -> dict[str, Path]:
    """Extract subtomos into ``job_dir`` (``particles.star``, ``optimisation_set.star``, ``Subtomograms/``)."""
    from subtomo_nb.tasks.extract import extract_subtomos

    from .validate import Output

    preflight("extract", values, job_dir, project_dir, progress,
              [Path(job_dir) / "particles.star", Path(job_dir) / "optimisation_set.star",
               Output(Path(job_dir) / "Subtomograms", prefix=True)])
    source, tomograms = _inputs(values, project_dir)
    progress(Progress(message=f"extracting from {source.name}", fraction=0.0))
    out = extract_subtomos(source, tomograms, job_dir, binning=values["binning"], box=values["box_size"],
                           crop=values["crop_size"], max_dose=values["max_dose"], min_frames=values["min_frames"],
                           stack2d=values["do_stack2d"], float16=values["do_float16"],
                           n_workers=max(1, values["nr_threads"]))
    progress(Progress(message=f"wrote {Path(out).name}", fraction=1.0))
    return {"particles": Path(out), "optimisation_set": Path(job_dir) / "optimisation_set.star"}


def run_reconstruct(
    values: Mapping[str, Any],
    job_dir: Path,
    *,
    project_dir: Path,
    progress: ProgressCallback,
    client: Any = None,
) -> dict[str, Path]:
    """Reconstruct particle into ``job_dir/merged.mrc`` (half maps and FSC beside it)."""
    from subtomo_nb.tasks.reconstruct import reconstruct_particles

    from .validate import Output

    preflight("reconstruct", values, job_dir, project_dir, progress, [Output(Path(job_dir) / "merged", prefix=True)])
    source, tomograms = _inputs(values, project_dir)
    with _job_client(values, client, progress, project_dir) as client:
        result = reconstruct_particles(source, Path(job_dir) / "merged.mrc", sym=values["sym_name"],
                                       ctf=values["do_ctf"], pad=values["pad"],
                                       n_workers=max(1, values["nr_threads"]), tomograms=tomograms, client=client)
    fsc = None if result.fsc is None else [float(x) for x in result.fsc]
    progress(Progress(message=f"wrote {result.merged_path.name}", resolution_A=result.resolution_A, fsc=fsc,
                      fraction=1.0))
    out = {"merged": result.merged_path}
    if result.half_paths is not None:
        out["half1"], out["half2"] = result.half_paths
    return out


def run_recentre(
    values: Mapping[str, Any],
    job_dir: Path,
    *,
    project_dir: Path,
    progress: ProgressCallback,
    client: Any = None,
) -> dict[str, Path]:
    """``relion_star_handler --center`` into ``job_dir/particles.star``."""
    from subtomo_nb.tasks.recentre import recentre_star

    preflight("recentre", values, job_dir, project_dir, progress, [Path(job_dir) / "particles.star"])
    src = input_path(values["fn_in"], project_dir)
    centre = (values["center_x"], values["center_y"], values["center_z"])
    progress(Progress(message=f"re-centring {src.name} on ({centre[0]:g}, {centre[1]:g}, {centre[2]:g}) px"))
    out = recentre_star(src, Path(job_dir) / "particles.star", centre,
                        ignore_optics=values["do_ignore_optics"], angpix=values["angpix"])
    progress(Progress(message=f"wrote {out.name}", fraction=1.0))
    return {"particles": out}


def refine_options(values: Mapping[str, Any], job_dir: Path, project_dir: Path) -> Any:
    """``RefineOptions`` of the 3D auto-refine job form (RELION's mappings, conventions §10.1).

    "Ref. map is on absolute greyscale? No" ⇒ ``--firstiter_cc``; the sampling choices ⇒ HEALPix
    orders (index + 1 − oversampling); the form's offset step is the fine one (× 2 for
    ``--offset_step``); "Use finer angular sampling faster?" ⇒ ``--auto_ignore_angles
    --auto_resol_angles``; "Skip padding?" ⇒ ``--pad 1``.
    """
    from subtomo_nb.refine.autorefine import RefineOptions

    from .registry import SAMPLING_CHOICES

    project_dir = Path(project_dir)
    if values.get("fn_cont"):
        # --continue: the stopped run's own options (saved with its iteration), a new output root
        return RefineOptions(particles="", reference="", output_root=Path(job_dir) / "run",
                             continue_from=input_path(values["fn_cont"], project_dir))
    particles, tomograms = _inputs(values, project_dir)
    mask = values.get("fn_mask") or ""
    extra = _extra_int_flags(values.get("other_args") or "", ("--auto_iter_max", "--random_seed"))
    return RefineOptions(
        particles=particles, reference=input_path(values["fn_ref"], project_dir),
        output_root=Path(job_dir) / "run", tomograms=tomograms,
        solvent_mask=input_path(mask, project_dir) if mask else None,
        firstiter_cc=not values.get("ref_correct_greyscale", False), ini_high=float(values.get("ini_high", 60.0)),
        sym=str(values.get("sym_name", "C1")), ctf=bool(values.get("do_ctf_correction", True)),
        particle_diameter=float(values.get("particle_diameter", 200.0)), zero_mask=bool(values.get("do_zero_mask", True)),
        pad=1 if values.get("do_pad1") else 2,
        healpix_order=SAMPLING_CHOICES.index(values.get("sampling", "7.5 degrees")) + 1 - 1,
        auto_local_healpix_order=SAMPLING_CHOICES.index(values.get("auto_local_sampling", "1.8 degrees")) + 1 - 1,
        offset_range_px=float(values.get("offset_range", 5.0)), offset_step_px=2.0 * float(values.get("offset_step", 1.0)),
        sigma_tilt=float(values.get("sigma_tilt", -1.0)),
        auto_ignore_angles=bool(values.get("auto_faster", False)), auto_resol_angles=bool(values.get("auto_faster", False)),
        align_reference_symmetry="--no_align_ref_sym" not in shlex.split(values.get("other_args") or ""),
        **{flag.lstrip("-"): value for flag, value in extra.items()},
    )


def _extra_int_flags(other_args: str, flags: tuple[str, ...]) -> dict[str, int]:
    """Integer values of some ``--flag N`` pairs in an "Additional arguments:" string."""
    words = shlex.split(other_args)
    out = {}
    for i, word in enumerate(words[:-1]):
        if word in flags:
            try:
                out[word] = int(words[i + 1])
            except ValueError:
                raise ValueError(f"Additional arguments: {word} needs an integer, got {words[i + 1]!r}") from None
    return out


def run_refine(
    values: Mapping[str, Any],
    job_dir: Path,
    *,
    project_dir: Path,
    progress: ProgressCallback,
    client: Any = None,
) -> dict[str, Path]:
    """3D auto-refine into ``job_dir`` (``run_it*`` per iteration, ``run_class001.mrc`` etc. at the end)."""
    from subtomo_nb.geometry.healpix import angular_step
    from subtomo_nb.refine.autorefine import AutoRefine
    from subtomo_nb.refine.report import stop_report

    from .validate import Output

    root = Path(job_dir) / "run"
    preflight("refine3d", values, job_dir, project_dir, progress,
              [Path(job_dir) / "run_data.star"] if values.get("fn_cont") else [Output(root, prefix=True)])

    def relay(event: dict) -> None:
        kind = event.get("kind")
        if kind == "message":
            progress(Progress(message=str(event["message"])))
        elif kind == "particles":
            progress(Progress(iteration=int(event["iteration"]), particles_done=int(event["done"]),
                              particles_total=int(event["of"])))
        elif kind == "iteration":
            order = int(event["healpix_order"])
            progress(Progress(message=f"sampling {angular_step(order, 1):.2f}° (HEALPix order {order}, oversampled once)",
                              iteration=int(event["iteration"]), resolution_A=float(event["resolution_A"]),
                              fsc=[float(x) for x in event["fsc"]], accuracy_rot_deg=float(event["acc_rot"]),
                              accuracy_trans_A=float(event["acc_trans_A"]), timings={"time": event["seconds"]}))
        elif kind == "finished":
            for line in stop_report(event):
                progress(Progress(message=line))

    options = refine_options(values, job_dir, project_dir)
    with _job_client(values, client, progress, project_dir) as client:
        executor = None
        if client is not None:
            from subtomo_nb.parallel import DaskExecutor

            executor = DaskExecutor(client, name="refine")
        AutoRefine(options, progress=relay, executor=executor).run()
    root = Path(job_dir)
    return {"map": root / "run_class001.mrc", "data": root / "run_data.star",
            "optimisation_set": root / "run_optimisation_set.star"}
