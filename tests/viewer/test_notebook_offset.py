"""The notebook (ipywidgets) offset widget, run where napari and Qt cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

BLOCKED = ("napari", "qtpy", "PySide6", "PyQt5", "PyQt6", "PySide2", "vispy", "magicgui", "superqt")

SCRIPT = textwrap.dedent("""
    import json, sys
    from importlib.abc import MetaPathFinder

    BLOCKED = set(json.loads(sys.argv[1]))

    class Block(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test (no Qt)")
            return None

    sys.meta_path.insert(0, Block())
    import subtomo_nb, subtomo_nb.viewer, subtomo_nb.fourier, subtomo_nb.io, subtomo_nb.tasks
    from subtomo_nb.viewer import align_mask
    from subtomo_nb.viewer.notebook import OffsetWidget
    from tests.viewer._synthetic import write_job

    job = write_job(__import__("pathlib").Path(sys.argv[2]), n=40, noise_sigma=0.0, seed=3)
    w = align_mask(job["map"], job["mask"], job["particles"])   # auto: no napari -> notebook widget
    assert isinstance(w, OffsetWidget), type(w)
    first = bytes(w.image.value)
    w.offsets["z"].value = 2.75
    assert w.session.offset == [0.0, 0.0, 2.75] and bytes(w.image.value) != first
    w.estimate_button.click()
    est = w.offset
    w.offsets["x"].value = 0.5          # the user overrides one axis, then applies
    w.apply_button.click()
    res = w.last_result
    assert res is not None, w.status.value
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"estimate": est, "used": w.offset, "star": str(res.star_path),
                      "in": str(job["particles"]), "record": str(res.record_path),
                      "map": str(res.map_path), "labels": [b.description for b in w.offsets.values()],
                      "steps": [b.step for b in w.offsets.values()], "loaded": loaded,
                      "png": len(w.image.value)}))
""")


def test_notebook_fallback_without_qt(tmp_path):
    from subtomo_nb.io.star import read_star
    from subtomo_nb.tasks.recentre import recentre_table
    from tests.viewer._synthetic import OFFSET, PIXEL_A

    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(BLOCKED), str(tmp_path / "job")],
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                         "MPLBACKEND": "Agg"},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["labels"] == ["X offset (px)", "Y offset (px)", "Z offset (px)"] and out["steps"] == [0.25] * 3
    np.testing.assert_allclose(out["estimate"], OFFSET, atol=0.1)
    assert out["used"][0] == 0.5 and out["png"] > 1000
    before = read_star(out["in"])["particles"]
    after = read_star(out["star"])["particles"]
    expect = recentre_table(before, tuple(out["used"]), PIXEL_A)
    for c in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"):
        np.testing.assert_allclose(after[c].to_numpy(float), expect[c].to_numpy(float), atol=1e-5)
    assert json.loads(Path(out["record"]).read_text())["offset_px"] == dict(zip("xyz", out["used"]))
    assert Path(out["map"]).is_file()
