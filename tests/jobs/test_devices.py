"""--gpu as relion_refine's, SUBTOMO_BACKEND, and the run.out line naming the backend."""

from __future__ import annotations

import pytest

import subtomo_nb.backend as backend
import subtomo_nb.jobs.devices as devices
from subtomo_nb.io.errors import InputError
from subtomo_nb.jobs.devices import JobDevices, job_devices, parse_gpu_ids
from subtomo_nb.jobs.jobdir import job_execution
from subtomo_nb.jobs.progress import RUN_OUT


@pytest.mark.parametrize("text, ids", [
    (None, None), ("", None), ("  ", None), ("auto", None),     # RELION: no leading digit => every GPU
    ("0", [0]), ("0,1", [0, 1]), ("0:1", [0, 1]), ("1,0:2,3", [1, 0, 2, 3]), ("0:0:1", [0, 1]), (" 2 , 3 ", [2, 3]),
])
def test_gpu_ids_as_relions_untangle_device_ids(text, ids):
    assert parse_gpu_ids(text) == ids


@pytest.mark.parametrize("text", ["0;1", "0,,1", "1,x", "0:"])
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


class _FakeCupy:
    name = "cupy"

    def describe(self, n: int = 1) -> str:
        return f"cupy ({n} GPU{'s' if n != 1 else ''})"


def test_gpu_without_value_is_every_visible_gpu(monkeypatch):
    monkeypatch.setattr(backend, "backend_from_env", lambda gpu=None: _FakeCupy())
    monkeypatch.setattr(devices, "_visible_gpu_count", lambda: 3)
    got = job_devices({"use_gpu": True, "gpu_ids": ""})
    assert got == JobDevices("cupy", (0, 1, 2), "cupy (3 GPUs)") and got.cuda_visible_devices == "0,1,2"
    assert job_devices(gpu="2") == JobDevices("cupy", (2,), "cupy (1 GPU)")


def _header(tmp_path, job_type: str, values: dict) -> list[str]:
    job_dir = tmp_path / job_type
    with job_execution(job_type, values, job_dir, project_dir=tmp_path):
        pass
    return [line for line in (job_dir / RUN_OUT).read_text().splitlines() if line.startswith(" ++++ backend")]


@pytest.mark.parametrize("job_type", ["refine3d", "initial_model", "reconstruct"])
def test_run_out_names_the_backend(tmp_path, monkeypatch, job_type):
    monkeypatch.delenv("SUBTOMO_BACKEND", raising=False)
    assert _header(tmp_path / "a", job_type, {}) == [" ++++ backend: numpy (CPU)"]
    monkeypatch.setenv("SUBTOMO_BACKEND", "strict")
    assert _header(tmp_path / "b", job_type, {}) == [" ++++ backend: strict (array-api-strict, device1)"]
    monkeypatch.setattr(backend, "backend_from_env", lambda gpu=None: _FakeCupy())
    monkeypatch.setattr(devices, "_visible_gpu_count", lambda: 4)
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
