"""--gpu as relion_refine's, SUBTOMO_BACKEND, and the run.out line naming the backend."""

from __future__ import annotations

import subtomo_nb.backend.gpus as gpus

import pytest

import subtomo_nb.jobs.devices as devices
from subtomo_nb.io.errors import InputError
from subtomo_nb.jobs.devices import JobDevices, job_devices, parse_gpu_ids
from subtomo_nb.jobs.jobdir import job_execution
from subtomo_nb.jobs.progress import RUN_OUT


@pytest.mark.parametrize("text, ids", [
    (None, None), ("", None), ("  ", None), ("auto", None),     # RELION: no leading digit => every GPU
    ("0", [0]), ("0,1", [0, 1]), ("0:1", [0, 1]), ("1,0:2,3", [1, 0, 2, 3]), ("0:0:1", [0, 1]), (" 2 , 3 ", [2, 3]),
    ("0,,1", [0, 1]), ("0:", [0]), ("0,:1,", [0, 1]),           # untangleDeviceIDs skips empty entries
])
def test_gpu_ids_as_relions_untangle_device_ids(text, ids):
    assert parse_gpu_ids(text) == ids


@pytest.mark.parametrize("text", ["0;1", "1,x", "0:a", "0.1"])
def test_malformed_gpu_lists_are_refused(text):
    with pytest.raises(InputError, match="is not a list of GPU numbers"):
        parse_gpu_ids(text)


def test_backend_without_gpu_follows_subtomo_backend(monkeypatch):
    monkeypatch.delenv("SUBTOMO_BACKEND", raising=False)
    assert job_devices({"use_gpu": False}) == JobDevices("numpy", (), "numpy (CPU)")
    monkeypatch.setenv("SUBTOMO_BACKEND", "strict")
    assert job_devices({"use_gpu": False}) == JobDevices("strict", (), "strict (array-api-strict, device1)")
    monkeypatch.setenv("SUBTOMO_BACKEND", "tpu")
    with pytest.raises(InputError, match="field SUBTOMO_BACKEND: unknown backend 'tpu'"):
        job_devices({})


def test_gpu_without_value_is_every_visible_gpu(fake_gpus, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake_gpus(3)
    got = job_devices({"use_gpu": True, "gpu_ids": ""})
    assert got == JobDevices("cupy", (0, 1, 2), "cupy (3 GPUs)") and got.cuda_visible_devices == "0,1,2"
    assert job_devices(gpu="2") == JobDevices("cupy", (2,), "cupy (1 GPU)")
    assert got.needs_cluster and not job_devices(gpu="0").needs_cluster and job_devices(gpu="1").needs_cluster


@pytest.mark.parametrize("parent, ids, expected", [
    ("2,3", (0, 1), "2,3"), ("2,3", (1,), "3"), ("3,1,0", (2, 0), "0,3"),
    ("GPU-8f0a, MIG-4e1b", (1, 0), "MIG-4e1b,GPU-8f0a"), (None, (1, 0), "1,0"),
])
def test_gpu_numbers_count_the_visible_devices(monkeypatch, parent, ids, expected):
    """--gpu numbers are relion_refine's (this process's visible devices); workers get the physical names."""
    if parent is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", parent)
    assert gpus.worker_visible_devices(ids) == expected


def test_a_gpu_beyond_the_parents_visible_devices_is_refused(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with pytest.raises(InputError, match=r"field --gpu: GPU 2 is not visible: CUDA_VISIBLE_DEVICES names 2 devices"):
        gpus.worker_visible_devices((0, 2))


def test_job_devices_through_the_parents_visible_devices(fake_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    fake_gpus(2)
    assert job_devices(gpu="0,1").cuda_visible_devices == "2,3"
    assert job_devices(gpu="1").cuda_visible_devices == "3"
    with pytest.raises(InputError, match=r"GPU 2 is not visible: this process sees 2 CUDA devices \(0 to 1\)"):
        job_devices(gpu="2")


def test_cupy_backend_device_is_the_threads_current_device(fake_gpus):
    """The per-process cupy backend follows the current device the job layer sets (no device fixed at creation)."""
    from subtomo_nb.backend.base import CupyBackend

    cupy = fake_gpus(4)
    be = object.__new__(CupyBackend)      # the real constructor needs cupy itself
    be._cupy = cupy
    assert be.device.id == 0
    cupy.current = 1                      # e.g. a notebook's main thread on GPU 1
    with devices.use_driver_gpu(job_devices(gpu="2,3")):
        assert cupy.used == [2] and be.device.id == 2
    assert cupy.used == [2, 1] and be.device.id == 1          # the thread's own device again
    with devices.use_driver_gpu(job_devices({"use_gpu": False})):   # the CPU: the device is left alone
        assert cupy.used == [2, 1]
    assert be.device.id == 1


def _header(tmp_path, job_type: str, values: dict) -> list[str]:
    job_dir = tmp_path / job_type
    with job_execution(job_type, values, job_dir, project_dir=tmp_path):
        pass
    return [line for line in (job_dir / RUN_OUT).read_text().splitlines() if line.startswith(" ++++ backend")]


@pytest.mark.parametrize("job_type", ["refine3d", "initial_model", "reconstruct"])
def test_run_out_names_the_backend(tmp_path, monkeypatch, fake_gpus, job_type):
    monkeypatch.delenv("SUBTOMO_BACKEND", raising=False)
    assert _header(tmp_path / "a", job_type, {}) == [" ++++ backend: numpy (CPU)"]
    monkeypatch.setenv("SUBTOMO_BACKEND", "strict")
    assert _header(tmp_path / "b", job_type, {}) == [" ++++ backend: strict (array-api-strict, device1)"]
    fake_gpus(4)
    assert _header(tmp_path / "c", job_type, {"use_gpu": True, "gpu_ids": "0:1"}) == [" ++++ backend: cupy (2 GPUs)"]


def test_jobs_without_a_backend_say_nothing_of_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBTOMO_BACKEND", "strict")
    assert _header(tmp_path, "extract", {}) == []


def test_gpu_fields_on_every_backend_form():
    from subtomo_nb.jobs.registry import get_job_type

    for name, tab in (("refine3d", "Compute"), ("initial_model", "Compute"), ("reconstruct", "Running")):
        jt = get_job_type(name)
        assert [(jt.param(k).label, jt.param(k).tab) for k in ("use_gpu", "gpu_ids")] == [
            ("Use GPU acceleration?", tab), ("Which GPUs to use:", tab)]
        assert jt.param("gpu_ids").active_if == ("use_gpu", True)
    assert get_job_type("reconstruct").param("use_gpu").relion is False


@pytest.mark.parametrize("gpu, used, note", [("1", [1], True), ("2,3", [2], True), ("0", [0], False), (None, [], False)])
def test_the_driver_runs_on_the_jobs_first_gpu(fake_gpus, gpu, used, note):
    """The job layer makes the first GPU of --gpu the driver's current device (not the process's device 0)."""
    from subtomo_nb.jobs.runners import job_client

    cupy = fake_gpus(4)
    lines: list[str] = []
    values = {"use_gpu": gpu is not None, "gpu_ids": gpu or ""}
    with job_client(values, None, lambda p: lines.append(p.message)) as client:
        assert client is None
        assert cupy.used == used
    assert cupy.used == (used + [0] if used else [])        # restored after the job
    assert lines == ([f"driver (this process): M-step, reduced sums and maps on GPU {used[0]}; its full-size arrays "
                      "come on top of that GPU's worker's memory plan"] if note else [])


@pytest.mark.parametrize("given", [False, True])
def test_run_refine_without_a_client_starts_and_closes_its_own(tmp_path, monkeypatch, given):
    """--j 2 (or --gpu 0,1) from the forms / Python API: run_refine starts the job's local cluster and closes it."""
    import contextlib

    import subtomo_nb.parallel as parallel
    from subtomo_nb.jobs import runners
    from subtomo_nb.refine.autorefine import AutoRefine

    events: list = []
    cluster, theirs = object(), object()

    class Stop(Exception):
        pass

    def from_options(options, progress=None, executor=None):
        events.append(("executor", executor))
        raise Stop

    monkeypatch.setattr(runners, "local_client", lambda values: events.append(("start", values["nr_threads"])) or cluster)
    monkeypatch.setattr(runners, "preflight", lambda *a, **k: None)
    monkeypatch.setattr(runners, "options_from", lambda *a, **k: {})
    monkeypatch.setattr(runners, "job_client", lambda values, client, *a: contextlib.nullcontext(client))
    monkeypatch.setattr(parallel, "DaskExecutor", lambda client, name: ("executor", client))
    monkeypatch.setattr(parallel, "close_if_owned", lambda client: events.append(("close", client)))
    monkeypatch.setattr(AutoRefine, "from_options", staticmethod(from_options))
    with pytest.raises(Stop):
        runners.run_refine({"nr_threads": 2}, tmp_path, project_dir=tmp_path, progress=lambda p: None,
                           client=theirs if given else None)
    if given:       # the caller's client: used, not closed
        assert events == [("executor", ("executor", theirs))]
    else:
        assert events == [("start", 2), ("executor", ("executor", cluster)), ("close", cluster)]
