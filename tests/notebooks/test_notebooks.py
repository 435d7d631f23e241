"""The tutorial notebooks run top to bottom (nbclient, kernel python3) on the tiny synthetic dataset.

They run in order in one project directory, as a user would (01 simulates and extracts, 03 refines,
...); each notebook also makes what it needs itself when run alone. Their own assert cells check the
outputs; these tests add a check of the job directories each one leaves behind.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[test]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[test]')")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
ORDER = ("01_simulate_and_extract", "02_initial_model", "03_autorefine_and_analysis", "04_recentre_z_offset",
         "05_parameter_sweep")
CELL_TIMEOUT_S = 600
TIMES: dict[str, float] = {}


def initial_model_missing() -> str:
    """Why notebook 02 cannot run yet ("" when it can): its job's run function is not there."""
    try:
        module = importlib.import_module("subtomo_nb.jobs.initial_model")
    except Exception as exc:  # noqa: BLE001 - missing or half-written module
        return f"subtomo_nb.jobs.initial_model cannot be imported yet ({type(exc).__name__}: {exc})"
    if not callable(getattr(module, "run_initial_model_job", None)):
        return "subtomo_nb.jobs.initial_model has no run_initial_model_job yet (the initial-model job)"
    return ""


def succeeded(project: Path, process: str) -> list[Path]:
    """Job directories of a process that finished successfully."""
    return sorted(p.parent for p in project.glob(f"{process}/job*/RELION_JOB_EXIT_SUCCESS"))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("notebook_project")) / "tutorial_tiny"


def test_notebooks_are_stored_clean() -> None:
    for name in ORDER:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3", name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs are stored"
        assert any("SUBTOMO_NB_TINY" in cell.source for cell in nb.cells), name


def test_notebook_02_ticks_fast_search(tmp_path: Path) -> None:
    """Notebook 02 runs the initial model with "Fast search" (--fast) ticked, and says that it is subtomo_nb's
    accelerated search and that unticking it gives RELION's job (its form cell run here, without the job)."""
    nb = nbformat.read(NOTEBOOKS / "02_initial_model.ipynb", as_version=4)
    text = " ".join(" ".join(c.source.split()) for c in nb.cells if c.cell_type == "markdown")
    assert "Fast search (subtomo_nb, not RELION)?" in text and "--fast" in text
    assert "accelerated search, not RELION's" in text and "Untick it to run RELION's job" in text
    (form_cell,) = [c for c in nb.cells if c.cell_type == "code" and 'JobForm("initial_model"' in c.source]
    scope = {"PROJECT": tmp_path, "TINY": True, "extract_job": tmp_path / "Extract" / "job001",
             "rel": lambda p: Path(p).relative_to(tmp_path).as_posix()}
    exec(compile(form_cell.source, "02_initial_model.ipynb", "exec"), scope)  # noqa: S102 - our own notebook
    values = scope["initial"].values
    assert values["do_fast"] is True and values["in_optimisation"] == "Extract/job001/optimisation_set.star"


@pytest.mark.timeout(CELL_TIMEOUT_S + 60)
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("02") else n
                                  for n in ORDER])   # 02 (VDAM, ~60 s on 2 cores): nightly path
def test_notebook_runs(name: str, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if name.startswith("02"):
        reason = initial_model_missing()
        if reason:
            pytest.skip(reason)
    monkeypatch.setenv("SUBTOMO_NB_TINY", "1")
    monkeypatch.setenv("SUBTOMO_NB_PROJECT", str(project))
    monkeypatch.setenv("SUBTOMO_NB_AUTORUN", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the cell and its traceback) when a cell fails
    TIMES[name] = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    if name.startswith("01"):
        assert len(succeeded(project, "Extract")) == 1
        assert (project / "Extract" / "job001" / "particles.star").is_file()
    elif name.startswith("02"):
        assert (succeeded(project, "InitialModel")[-1] / "initial_model.mrc").is_file()
    elif name.startswith("03"):
        assert (succeeded(project, "Refine3D")[-1] / "run_model.star").is_file()
    elif name.startswith("04"):
        assert len(succeeded(project, "Reconstruct")) == 2 and len(succeeded(project, "Select")) == 1
    elif name.startswith("05"):
        assert len(succeeded(project, "Refine3D")) == 1 + 6
    print(f"{name}: {TIMES[name]:.1f} s")


def test_binder_environment_matches_the_package() -> None:
    """binder/requirements.txt lists every core dependency of pyproject.toml; postBuild installs the package."""
    import re
    import tomllib

    root = NOTEBOOKS.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]

    def name(requirement: str) -> str:
        return re.split(r"[\[<>=!~ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")

    wanted = {name(r) for r in project["dependencies"]}
    lines = [ln for ln in (root / "binder" / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    listed = {name(ln) for ln in lines}
    assert wanted <= listed, wanted - listed
    assert {"jupyterlab", "ipywidgets"} <= listed
    post_build = root / "binder" / "postBuild"
    assert post_build.stat().st_mode & 0o111 and "pip install" in post_build.read_text()
    assert "-e ." in post_build.read_text()
