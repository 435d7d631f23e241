"""Which backend and which GPUs a job runs on: ``--gpu`` as relion_refine's, ``SUBTOMO_BACKEND``.

RELION's ``--gpu`` (relion_refine, relion-conventions.md §6.1, §8.1, §10.1 "Which GPUs to use:"):

* absent: the CPU;
* given with no value, an empty value, or a value that does not start with a digit: all visible
  GPUs (RELION: "gpu-ids not specified, threads will automatically be mapped to devices");
* a list of device numbers: ``:`` separates MPI ranks and ``,`` the threads of one rank
  (RELION's ``untangleDeviceIDs``: ``0,1:2,3`` is rank 1 on devices 0 and 1, rank 2 on 2 and 3).
  subtomo_nb has one dask worker per GPU instead of ranks and threads, so the job runs on the
  distinct devices named, in the order first named (``0:0:1`` is devices 0 and 1).

Without ``--gpu`` the environment variable ``SUBTOMO_BACKEND`` (``numpy``, ``strict``, ``cupy``)
picks the backend; unset means ``numpy``. The chosen backend's name goes to the engine
(``PoseOptions.backend``, ``reconstruct_particles(..., backend=...)``) and its description to
``run.out`` (:func:`backend_line`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["JobDevices", "parse_gpu_ids", "gpu_request", "job_devices", "backend_line", "BACKEND_JOBS",
           "BACKEND_ENV", "require_cluster",
           "use_driver_gpu"]

#: The jobs whose numerics run on the job's backend (the others always run numpy on the CPU).
BACKEND_JOBS = ("refine3d", "initial_model", "reconstruct")
#: Environment variable naming the backend of jobs run without ``--gpu``.
BACKEND_ENV = "SUBTOMO_BACKEND"


def parse_gpu_ids(text: str | None) -> list[int] | None:
    """The GPUs named by a ``--gpu`` value: None for all visible GPUs, else distinct device numbers.

    Parameters
    ----------
    text
        The value of ``--gpu`` (RELION's "Which GPUs to use:"): ``""`` (all), ``"0,1"``,
        ``"0:1"``, ``"0,1:2,3"``.

    Returns
    -------
    list of int or None
        The distinct devices in the order first named; None: all visible GPUs.

    Raises
    ------
    InputError
        A value that starts with a digit but is not a ``:``/``,`` separated list of device
        numbers (e.g. ``"0;1"``, ``"1,x"``). Empty entries are skipped, as RELION's
        ``untangleDeviceIDs`` skips them (``"0,,1"`` is devices 0 and 1, ``"0:"`` device 0).
    """
    from subtomo_nb.io.errors import InputError  # noqa: PLC0415 - the registry imports nothing heavy

    s = "" if text is None else str(text).strip()
    if not s or not s[0].isdigit():
        return None  # RELION: not starting with a digit => automatic mapping over all devices
    out: list[int] = []
    for rank in s.split(":"):
        for word in rank.split(","):
            w = word.strip()
            if not w:
                continue      # RELION's untangleDeviceIDs skips empty entries ("0,,1", "0:")
            if not w.isdigit():
                raise InputError(None, what=f"{text!r} is not a list of GPU numbers (e.g. 0,1 or 0:1; empty: "
                                 "all visible GPUs)", field="--gpu")
            if int(w) not in out:
                out.append(int(w))
    return out


def gpu_request(values: Mapping[str, Any]) -> str | None:
    """The ``--gpu`` value of a job's values (``use_gpu`` / ``gpu_ids``), or None when it runs without."""
    if not values.get("use_gpu"):
        return None
    return str(values.get("gpu_ids", "") or "")


@dataclass(frozen=True)
class JobDevices:
    """The backend of a job and the GPUs it uses.

    Attributes
    ----------
    backend : the backend's name for :func:`subtomo_nb.backend.get_backend` (``"numpy"``,
        ``"strict"``, ``"cupy"``).
    gpus : the CUDA device numbers of the job's workers (one worker per GPU); empty without GPUs.
    description : what ``run.out`` says (``Backend.describe``), e.g. ``cupy (2 GPUs)``.
    """

    backend: str
    gpus: tuple[int, ...]
    description: str

    @property
    def uses_gpus(self) -> bool:
        """Whether the job runs on CUDA devices."""
        return bool(self.gpus)

    @property
    def needs_cluster(self) -> bool:
        """Whether the job starts a dask-cuda cluster (one worker per GPU) for its GPUs.

        One GPU that is this process's device 0 runs in this process; any other GPU list needs a
        ``LocalCUDACluster`` (dask-cuda), unless the job attaches to a scheduler.
        """
        return bool(self.gpus) and self.gpus != (0,)

    @property
    def cuda_visible_devices(self) -> str:
        """``CUDA_VISIBLE_DEVICES`` of a cluster with one worker per GPU (:func:`subtomo_nb.backend.gpus.worker_visible_devices`)."""
        from subtomo_nb.backend.gpus import worker_visible_devices  # noqa: PLC0415 - the registry imports nothing heavy

        return worker_visible_devices(self.gpus)

    @property
    def driver_gpu(self) -> int | None:
        """The device (this process's numbering) the driver's M-step and sums use: the first GPU of the list."""
        return self.gpus[0] if self.gpus else None


def require_cluster(devices: JobDevices) -> None:
    """Refuse, before anything is written, a GPU list that needs dask-cuda where it is not installed.

    Raises
    ------
    InputError
        ``devices.needs_cluster`` and dask-cuda missing (field ``--gpu``).
    """
    import importlib.util  # noqa: PLC0415

    from subtomo_nb.io.errors import InputError  # noqa: PLC0415

    if devices.needs_cluster and importlib.util.find_spec("dask_cuda") is None:
        named = ",".join(str(g) for g in devices.gpus)
        raise InputError(None, what=f"GPUs {named} need one dask-cuda worker each, and dask-cuda is not installed "
                         "(pip install dask-cuda, or the subtomo_nb[gpu] extra); without it only --gpu 0 runs "
                         "(in this process)", field="--gpu")


@contextlib.contextmanager
def use_driver_gpu(devices: JobDevices) -> Iterator[None]:
    """Within the block, the job's first GPU is this thread's current CUDA device (the driver's
    M-step, sums, maps); on leaving it, the thread's previous device is current again.

    cupy allocates on the current device, which is per thread; the job layer enters this in the
    thread that runs the job, before the driver makes its first array, for the job's duration (a
    notebook's main thread is back on its own device after a ``--gpu 1`` job). Without GPUs: nothing.
    """
    if devices.driver_gpu is None:
        yield
        return
    import cupy  # type: ignore[import-not-found]  # noqa: PLC0415

    previous = cupy.cuda.Device().id
    cupy.cuda.Device(devices.driver_gpu).use()
    try:
        yield
    finally:
        cupy.cuda.Device(previous).use()


def job_devices(values: Mapping[str, Any] | None = None, *, gpu: str | None = None) -> JobDevices:
    """The backend and GPUs of a job: ``--gpu`` if given, else ``SUBTOMO_BACKEND``, else numpy.

    Parameters
    ----------
    values
        A job's values (``use_gpu``, ``gpu_ids``); or give ``gpu`` directly.
    gpu
        The ``--gpu`` value (None: not given).

    Returns
    -------
    JobDevices

    Raises
    ------
    InputError
        One line, no traceback needed: ``--gpu`` without cupy or without a CUDA device, a GPU
        number beyond the visible devices, a malformed list, or an unknown ``SUBTOMO_BACKEND``.
    """
    from subtomo_nb.backend import backend_from_env  # noqa: PLC0415
    from subtomo_nb.backend.base import BackendError  # noqa: PLC0415
    from subtomo_nb.io.errors import InputError  # noqa: PLC0415

    if values is not None and gpu is None:
        gpu = gpu_request(values)
    ids = parse_gpu_ids(gpu) if gpu is not None else None
    try:
        be = backend_from_env(gpu)
    except BackendError as exc:
        field = "--gpu" if gpu is not None else BACKEND_ENV
        raise InputError(None, what=str(exc).removeprefix("--gpu: ").removeprefix("--gpu "), field=field) from None
    if gpu is None:
        return JobDevices(be.name, (), be.describe(1))
    from subtomo_nb.backend.gpus import select_gpus  # noqa: PLC0415

    gpus = select_gpus(ids)
    return JobDevices(be.name, gpus, be.describe(len(gpus)))


def backend_line(values: Mapping[str, Any]) -> str:
    """The ``run.out`` header line naming the backend, e.g. `` ++++ backend: numpy (CPU)``."""
    return f" ++++ backend: {job_devices(values).description}"

