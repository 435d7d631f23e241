"""Run functions of the jobs whose numerical body is in :mod:`subtomo_nb.tasks`.

Each has the job run signature ``run(values, job_dir, *, project_dir, progress, client=None)``
(see :func:`subtomo_nb.jobs.jobdir.run_job`): ``values`` complete and typed, file names relative
to ``project_dir``; everything is written inside ``job_dir`` under RELION's output names. The
task modules are imported only when a job runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .options import input_path, options_from
from .progress import Progress, ProgressCallback

__all__ = ["run_extract", "run_reconstruct", "run_recentre", "run_refine", "input_path", "preflight", "job_client",
           "local_client", "own_client", "memory_plan"]


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


def local_client(values: Mapping[str, Any]) -> Any:
    """The local dask cluster a job starts for itself, or None when it runs in this process.

    * attached to a scheduler (``scheduler_file`` / ``scheduler_address``): None (the job attaches,
      :func:`job_client`);
    * ``--gpu``: a ``LocalCUDACluster`` with one worker per selected GPU (``--j`` not used), except
      for one GPU that is this process's device 0 (then the job runs here, on it). An empty
      ``--gpu`` (every visible GPU) leaves ``CUDA_VISIBLE_DEVICES`` to dask-cuda;
    * otherwise ``--j N`` > 1: a ``LocalCluster`` of N single-threaded worker processes.

    What is not used (``--j`` with ``--gpu``) is a warning of
    :func:`~subtomo_nb.jobs.validate.check_job`; GPUs that need dask-cuda where it is missing are
    refused there, before the job directory is written.

    Raises
    ------
    subtomo_nb.io.errors.InputError
        ``--gpu`` naming GPUs this machine cannot give the job (see above).
    """
    from .devices import gpu_request, job_devices, parse_gpu_ids

    if values.get("scheduler_file") or values.get("scheduler_address"):
        return None
    n = int(values.get("nr_threads", 1) or 1)
    devices = job_devices(values)
    if devices.uses_gpus:
        if not devices.needs_cluster:
            return None
        from subtomo_nb.parallel import get_client

        every = parse_gpu_ids(gpu_request(values)) is None      # --gpu "": every visible GPU
        return get_client(gpu=True if every else list(devices.gpus), dashboard_address=None)
    if n <= 1:
        return None
    from subtomo_nb.parallel import get_client

    return get_client(n_workers=n, gpu=False, dashboard_address=None)


def _device_free() -> int | None:
    """Free bytes of this process's (worker's) CUDA device; run on each GPU worker."""
    from subtomo_nb.backend import get_backend

    mem = get_backend("cupy").memory()
    return None if mem is None else int(mem[0])


def memory_plan(job: Any, values: Mapping[str, Any], client: Any, progress: ProgressCallback,
                available: int | None = None) -> Any:
    """Print the E-step workers' memory plan before iteration 1, give the job its particle budget,
    and refuse a job whose working set cannot fit.

    ``job`` is the driver made by ``from_options`` (:class:`~subtomo_nb.refine.autorefine.AutoRefine`,
    :class:`~subtomo_nb.initial_model.vdam.InitialModel`): its box, pixel size, precision, batch
    size, particles and first sampling. The memory each worker may use: the free memory of its GPU
    (``Backend.memory()``, the smallest over the GPU workers), else the host's available RAM
    shared by the workers. ``available`` overrides it (tests). The plan's
    :attr:`~subtomo_nb.refine.memory_plan.MemoryPlan.resident_bytes` becomes the job's
    ``device_cache_bytes`` (:meth:`~subtomo_nb.refine.driver.PoseDriver.set_device_cache_bytes`):
    the particles within it stay on each worker's device (in memory on the CPU), the others are
    copied again every iteration (in this process: re-read from disk; dask GPU workers: kept in
    their host memory; dask CPU workers keep all); unknown memory keeps the default. On cupy the
    driver's M-step arrays are counted in each worker's working set (its GPU is a worker's).

    Returns
    -------
    subtomo_nb.refine.memory_plan.MemoryPlan

    Raises
    ------
    subtomo_nb.io.errors.InputError
        One line: the working set (everything but the resident particles) does not fit; use a
        smaller batch size (float32) or more GPUs.
    """
    from subtomo_nb.parallel.client import worker_count
    from subtomo_nb.refine.memory_plan import host_memory, plan_memory

    from .devices import job_devices

    backend = job_devices(values).backend
    workers = max(1, worker_count(client)) if client is not None else 1
    where = "GPU free" if backend == "cupy" else "host RAM per worker"
    if available is None:
        if backend == "cupy":
            if client is not None:
                free = [v for v in client.run(_device_free, on_error="return").values() if isinstance(v, int)]
            else:
                free = [_device_free()]
            free = [v for v in free if v is not None]
            available = min(free) if free else None
        else:
            host = host_memory()
            available = None if host is None else host // workers
    opts, state = job.opts, job.state
    plan = plan_memory(box=job.box, pad=float(getattr(opts, "pad", 1)), dtype=job.dtype,
                       batch_size=int(opts.batch_size), particles=len(job.pset.particles), workers=workers,
                       first=state.sampling, auto_local_healpix_order=int(opts.auto_local_healpix_order),
                       pixel_size_A=float(job.pix), first_radius=job.box * job.pix / float(state.current_resolution),
                       available=available, where=where, driver=backend == "cupy", dask=client is not None)
    for line in plan.lines():
        progress(Progress(message=line))
    plan.check()
    if plan.resident_bytes is not None:
        job.set_device_cache_bytes(plan.resident_bytes)
    return plan


@contextlib.contextmanager
def own_client(values: Mapping[str, Any], client: Any = None, *, gpu_only: bool = False) -> Iterator[Any]:
    """The client a job runs on: ``client`` if given, else the job's own :func:`local_client`
    (``--j N`` workers, or one per ``--gpu`` GPU; None: this process), closed on leaving the block.

    ``gpu_only``: start one only for ``--gpu`` (reconstruct: ``--j`` is threads in this process).
    """
    if client is not None or (gpu_only and not values.get("use_gpu")):
        yield client
        return
    own = local_client(values)
    try:
        yield own
    finally:
        if own is not None:
            from subtomo_nb.parallel import close_if_owned

            close_if_owned(own)


def run_driver(driver: Any, opts: Any, values: Mapping[str, Any], client: Any, progress: ProgressCallback,
               project_dir: str | os.PathLike | None, relay: Callable[[dict], None], *, name: str,
               started: Callable[[Any], None] | None = None) -> Any:
    """Run auto-refine or VDAM (``driver``: AutoRefine or InitialModel) from its options.

    The job's own local cluster when no client is given (``--j N`` workers, or one per ``--gpu``
    GPU; :func:`own_client`), the dask executor on a client (``name`` labels its graphs), the
    memory plan before iteration 1 (refusing what cannot fit), then the iterations. Returns the
    driver after its last iteration.

    Parameters
    ----------
    started : callable, optional
        Called with the driver once it is made, before the memory plan and iteration 1 (the
        initial model writes what ``--fast`` changed to ``run.out`` there).
    """
    with own_client(values, client) as own, job_client(values, own, progress, project_dir) as client:
        executor = None
        if client is not None:
            from subtomo_nb.parallel import DaskExecutor

            executor = DaskExecutor(client, name=name)
        job = driver.from_options(opts, progress=relay, executor=executor)
        if started is not None:
            started(job)
        memory_plan(job, values, client, progress)     # before iteration 1: refuse what cannot fit
        job.run()
    return job


@contextlib.contextmanager
def job_client(values: Mapping[str, Any], client: Any, progress: ProgressCallback,
               project_dir: str | os.PathLike | None = None) -> Iterator[Any]:
    """:func:`subtomo_nb.parallel.client.job_client` reporting to the job's progress log.

    A relative scheduler file name is relative to ``project_dir`` (RELION's working directory;
    None: the current directory). Without a scheduler field and without a client, distributed is
    not imported. With ``--gpu`` the job's first GPU is this thread's current CUDA device within
    the block (:func:`~subtomo_nb.jobs.devices.use_driver_gpu`; the previous one after it): every
    job on a backend opens its client here, in the thread that runs it, before its driver makes
    an array.
    """
    from .devices import job_devices, use_driver_gpu

    devices = job_devices(values)
    # the driver's M-step, sums and maps on the job's first GPU (this thread, for the job's duration)
    with use_driver_gpu(devices):
        if devices.needs_cluster and not (values.get("scheduler_file") or values.get("scheduler_address")):
            progress(Progress(message=f"driver (this process): M-step, reduced sums and maps on GPU {devices.driver_gpu}; "
                                      f"its full-size arrays come on top of that GPU's worker's memory plan"))
        if client is None and not (values.get("scheduler_file") or values.get("scheduler_address")):
            yield None
            return
        from subtomo_nb.parallel import client as clients

        values = dict(values)
        if values.get("scheduler_file") and project_dir is not None:
            values["scheduler_file"] = str(input_path(values["scheduler_file"], project_dir))
        with clients.job_client(values, client, lambda line: progress(Progress(message=line)),
                                backend=devices.backend) as attached:
            yield attached


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
    options = options_from("extract", values, job_dir, project_dir)
    progress(Progress(message=f"extracting from {Path(options['optimisation_set_or_particles']).name}", fraction=0.0))
    out = extract_subtomos(**options)
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
    options = options_from("reconstruct", values, job_dir, project_dir)
    # --gpu: the job's own GPU workers when no client is given (--j: threads in this process)
    with own_client(values, client, gpu_only=True) as own, job_client(values, own, progress, project_dir) as client:
        result = reconstruct_particles(**options, client=client)
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
    options = options_from("recentre", values, job_dir, project_dir)
    centre = options["centre_px"]
    progress(Progress(message=f"re-centring {options['in_path'].name} on ({centre[0]:g}, {centre[1]:g}, {centre[2]:g}) px"))
    out = recentre_star(**options)
    progress(Progress(message=f"wrote {out.name}", fraction=1.0))
    return {"particles": out}


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
    from subtomo_nb.io._paths import project_relative
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
            for line in stop_report({**event, "job_dir": project_relative(job_dir, project_dir).rstrip("/")}):
                progress(Progress(message=line))

    options = options_from("refine3d", values, job_dir, project_dir)
    run_driver(AutoRefine, options, values, client, progress, project_dir, relay, name="refine")
    root = Path(job_dir)
    return {"map": root / "run_class001.mrc", "data": root / "run_data.star",
            "optimisation_set": root / "run_optimisation_set.star"}
