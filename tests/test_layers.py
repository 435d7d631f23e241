"""The package's layers hold: import-linter's contracts of pyproject.toml ([tool.importlinter]).

The core (io, geometry, fourier, refine, initial_model, tasks, simulate) never imports jobs,
parallel, widgets, viewer or cli; jobs never imports widgets, viewer or cli; widgets and viewer
do not import each other. Imports inside functions count.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[test]')")
    # a fresh interpreter with this checkout first on the path, so that this tree is the one analysed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    run = subprocess.run([sys.executable, "-c", code, "--no-cache", "--no-logo", str(REPO / "pyproject.toml")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout, run.stdout[-6000:]
