"""Names written into STAR files resolve back to the same files."""

from __future__ import annotations

from pathlib import Path

import pytest

from subtomo_nb.io._paths import project_relative, resolve_relative


@pytest.mark.parametrize("where", ["inside", "outside", "relative outside", "relative inside"])
def test_project_relative_names_resolve_to_the_same_file(tmp_path, monkeypatch, where):
    project = tmp_path / "project"
    (project / "Refine3D").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    path = {"inside": project / "Refine3D" / "run_data.star",
            "outside": tmp_path / "elsewhere" / "run_data.star",
            "relative outside": Path("elsewhere") / "run_data.star",
            "relative inside": Path("project") / "Refine3D" / "run_data.star"}[where]
    name = project_relative(path, project)
    if "inside" in where:
        assert name == str(Path("Refine3D") / "run_data.star")       # as RELION writes it
    else:
        assert Path(name).is_absolute()
    assert resolve_relative(project, name) == path.absolute()
    # no project directory: relative to the current one, resolved against it
    assert resolve_relative(None, project_relative(path, None)) == path.absolute()
