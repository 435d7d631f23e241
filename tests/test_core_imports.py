"""The core imports and runs with the core dependencies only (no cupy, dask-cuda, napari, Qt)."""

from __future__ import annotations

import subprocess
import sys

BLOCKER = """
import importlib.abc, sys
BLOCKED = {"cupy", "cupyx", "dask_cuda", "napari", "qtpy", "PySide6", "PyQt5", "PyQt6", "magicgui", "vispy"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} blocked for this test")
        return None
sys.meta_path.insert(0, Block())
"""

CODE = BLOCKER + """
import numpy as np
import subtomo_nb, subtomo_nb.io, subtomo_nb.geometry, subtomo_nb.fourier, subtomo_nb.simulate
import subtomo_nb.tasks.reconstruct, subtomo_nb.tasks.extract, subtomo_nb.tasks.recentre, subtomo_nb.jobs
import subtomo_nb.refine.expectation, subtomo_nb.cli.main
from subtomo_nb.fourier.projector import Projector
from subtomo_nb.geometry.euler import euler_to_matrix
v = np.zeros((16, 16, 16), np.float32); v[8, 8, 8] = 1
out = Projector(v).sample(euler_to_matrix(10, 20, 30), np.array([[1.0, 2.0, 0.0]]))
assert np.isfinite(out).all()
print("core ok")
"""


def test_core_imports_and_runs_without_gpu_or_viewer_packages():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "core ok" in proc.stdout
