"""The "3D initial reference" job: its run function and the body of ``subtomo initial-model``.

The numerical body is :class:`subtomo_nb.initial_model.vdam.InitialModel`; its options come from
the job's values through :func:`subtomo_nb.jobs.options.options_from`. This module adds what a
job needs around it: the one validation step, the progress events of ``run.out``, the dask client
(a scheduler named in the form, or a local cluster of ``--j`` workers) and the outputs. With
"Fast search" (``--fast``, subtomo_nb's own search, not RELION's) ``run.out`` says so before
iteration 1, one line per change (:meth:`~subtomo_nb.initial_model.vdam.InitialModel.fast_changes`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from subtomo_nb.io.errors import InputError

from .additional_args import INITIAL_MODEL_FLAGS, parse_additional_arguments
from .options import options_from
from .progress import Progress
from .runners import preflight

__all__ = ["run_initial_model_job", "run_from_args"]


def _iteration_relay(progress: Callable[[Any], None], nr_iter: int) -> Callable[[dict], None]:
    """The run's events (dicts) as the job's :class:`Progress` events."""
    from subtomo_nb.geometry.healpix import angular_step

    def relay(event: dict) -> None:
        if event.get("kind") == "iteration":
            progress(Progress(message=f"of {nr_iter}, mini-batch of {event['subset']} particles, step "
                              f"{event['step']:.2f}, T {event['tau2_fudge']:.2f}, sampling "
                              f"{angular_step(int(event['healpix_order']), 1):.2f}° (HEALPix order "
                              f"{event['healpix_order']}, oversampled once)",
                              iteration=int(event["iteration"]), resolution_A=float(event["resolution_A"]),
                              fsc=event["fsc"] or None,
                              accuracy_rot_deg=float(event["acc_rot"]) if event["acc_rot"] < 999 else None,
                              accuracy_trans_A=float(event["acc_trans_A"]) if event["acc_trans_A"] < 999 else None,
                              timings={"time": event["seconds"], "E-step": event["seconds_estep"],
                                       "M-step": event["seconds_mstep"]},
                              fraction=event["iteration"] / nr_iter))
        elif event.get("kind") == "particles":
            progress(Progress(iteration=int(event["iteration"]), particles_done=int(event["done"]),
                              particles_total=int(event["of"])))
        elif event.get("kind") == "message":
            progress(Progress(message=event["message"]))

    return relay


def run_initial_model_job(
    values: Mapping[str, Any],
    job_dir: Path,
    *,
    project_dir: Path,
    progress: Callable[[Any], None],
    client: Any = None,
) -> dict[str, Path]:
    """The "3D initial reference" job: VDAM into ``job_dir`` (``run_it*``, ``initial_model.mrc``, ...).

    Parameters
    ----------
    values
        The job's values (file names relative to ``project_dir``).
    job_dir
        The job directory (the only place written).
    project_dir
        RELION's project directory.
    progress
        Receives :class:`~subtomo_nb.jobs.progress.Progress` events.
    client
        A dask client to run the E-step on; None: the scheduler named in the values, else a
        local cluster of ``nr_threads`` workers (more than one), else this process.

    Returns
    -------
    dict
        The outputs (``initial_model``, ``optimisation_set``, ``data``, ``model``, ...).

    Raises
    ------
    InputError
        ``--continue`` (``fn_cont``), which is not supported yet, or bad values or inputs.
    """
    if values.get("fn_cont"):
        raise InputError(what="continuing a stopped 3D initial reference run is not supported yet; "
                         "start a new job", path=values["fn_cont"], field="--continue")
    from subtomo_nb.initial_model.vdam import InitialModel

    from .validate import Output

    preflight("initial_model", values, job_dir, project_dir, progress,
              [Output(Path(job_dir) / "run", prefix=True), Path(job_dir) / "initial_model.mrc"])
    opts = options_from("initial_model", values, job_dir, project_dir)
    _, unused = parse_additional_arguments(str(values.get("other_args", "") or ""), INITIAL_MODEL_FLAGS)
    if unused:
        progress(Progress(message="additional arguments not used: " + " ".join(unused)))
    relay = _iteration_relay(progress, opts.nr_iter)

    from .runners import run_driver

    def report_fast(job: InitialModel) -> None:
        # --fast (subtomo_nb's own search): what it changed, before iteration 1 (nothing without it)
        for line in job.fast_changes():
            progress(Progress(message=line))

    job = run_driver(InitialModel, opts, values, client, progress, project_dir, relay, name="inimodel",
                     started=report_fast)
    return dict(job.outputs)


def run_from_args(args: argparse.Namespace) -> int:
    """``subtomo initial-model``: relion_refine --grad --denovo_3dref with RELION's flags; run.out beside run_*."""
    from .cli import values_from_args
    from .progress import ProgressLog, ProgressPrinter

    out = Path(args.o)
    job_dir = out.parent if out.name.startswith("run") else out
    job_dir.mkdir(parents=True, exist_ok=True)
    values = values_from_args("initial_model", args)
    log = ProgressLog(job_dir, forward=ProgressPrinter())
    outputs = run_initial_model_job(values, job_dir, project_dir=Path.cwd(), progress=log)
    for key, value in outputs.items():
        print(f"{key}: {value}")
    return 0
