"""The napari offset dock widget, headless (make_napari_viewer, QT_QPA_PLATFORM=offscreen)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qtpy", reason="Qt bindings are not installed (pip install 'subtomo_nb[test]')")
pytest.importorskip("napari", reason="napari is not installed (pip install 'subtomo_nb[test]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install 'subtomo_nb[test]')")

from subtomo_nb.io.star import read_star  # noqa: E402
from subtomo_nb.tasks.recentre import recentre_table  # noqa: E402
from subtomo_nb.viewer._widget import OffsetDock  # noqa: E402
from tests.viewer._synthetic import OFFSET, PIXEL_A  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_manifest_declares_the_widget():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManifest.from_file(REPO / "subtomo_nb" / "viewer" / "napari.yaml")
    assert pm.name == "subtomo_nb"
    [w] = pm.contributions.widgets
    [cmd] = pm.contributions.commands
    assert w.command == cmd.id and cmd.python_name == "subtomo_nb.viewer._widget:OffsetDock"


def test_dock_load_offsets_estimate_apply(make_napari_viewer, gl_display, small_job):
    viewer = make_napari_viewer()
    dock = OffsetDock(viewer)
    viewer.window.add_dock_widget(dock, name="Map/mask offset")
    # load a map and a mask (and particles) through the file fields
    dock.map_file.value = small_job["map"]
    dock.mask_file.value = small_job["mask"]
    dock.particles_file.value = small_job["particles"]
    dock.load_button.clicked.emit()
    names = [layer.name for layer in viewer.layers]
    assert "map" in names and "mask" in names and "map slice z" in names and "mask slice x" in names
    assert viewer.dims.ndisplay == 3
    assert viewer.layers["map"].colormap.name != viewer.layers["mask"].colormap.name
    # controls: labelled in px, 0.25-px steps; setting them moves the map layers live
    for a in "xyz":
        assert dock.offsets[a].label == f"{a.upper()} offset (px)" and dock.offsets[a].step == 0.25
    dock.offsets["z"].value = 2.75
    dock.offsets["x"].value = 0.5
    assert viewer.layers["map"].translate[0] == pytest.approx(-2.75)
    assert viewer.layers["map slice y"].translate[2] == pytest.approx(-0.5)
    assert tuple(viewer.layers["mask"].translate) == (0.0, 0.0, 0.0)
    assert dock.session.offset == [0.5, 0.0, 2.75]
    # Estimate: the controls are set to the known offset
    dock.estimate_button.clicked.emit()
    est = dock.offset
    np.testing.assert_allclose(est, OFFSET, atol=0.1)
    np.testing.assert_allclose(viewer.layers["map"].translate, [-est[2], -est[1], -est[0]], atol=1e-6)
    # the user nudges Z by one step, then Apply
    dock.offsets["z"].value = round(est[2] / 0.25) * 0.25
    used = dock.offset
    dock.apply_button.clicked.emit()
    res = dock.last_result
    assert res is not None, dock.status.value
    before = read_star(small_job["particles"])["particles"]
    after = read_star(res.star_path)["particles"]
    expect = recentre_table(before, used, PIXEL_A)
    for c in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"):
        np.testing.assert_allclose(after[c].to_numpy(float), expect[c].to_numpy(float), atol=1e-5)
    record = json.loads(res.record_path.read_text())
    assert record["offset_px"] == dict(zip("xyz", used))
    assert "--center_Z" in record["command"] and res.map_path.is_file()


def test_dock_from_job_directory(make_napari_viewer, gl_display, small_job):
    viewer = make_napari_viewer()
    dock = OffsetDock(viewer)
    dock.job_dir.value = small_job["map"].parent
    dock.load_button.clicked.emit()
    assert dock.session is not None, dock.status.value
    assert dock.session.mask_path == small_job["mask"] and dock.session.particles_path == small_job["particles"]


def test_align_mask_opens_napari(make_napari_viewer, gl_display, small_job):
    from subtomo_nb.viewer import align_mask

    viewer = make_napari_viewer()
    dock = align_mask(small_job["map"], small_job["mask"], small_job["particles"], viewer=viewer, backend="napari")
    assert isinstance(dock, OffsetDock) and dock.viewer is viewer
    np.testing.assert_allclose(dock.estimate(), OFFSET, atol=0.1)


SCREENSHOT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from qtpy.QtWidgets import QApplication
    import imageio.v3 as iio
    from subtomo_nb.viewer import align_mask
    map_, mask, parts, out = sys.argv[1:5]
    dock = align_mask(map_, mask, parts, backend="napari")
    v = dock.viewer
    v.window._qt_window.resize(1500, 950)
    v.window._qt_window.show()
    dock.offsets["z"].value = 1.0
    dock.estimate_button.clicked.emit()
    QApplication.processEvents()
    dock.frame_view()
    QApplication.processEvents()
    img = v.screenshot(canvas_only=False)
    iio.imwrite(out, img)
    canvas = v.screenshot(canvas_only=True)
    print("canvas-mean", float(canvas[..., :3].mean()))
    v.close()
""")


@pytest.mark.slow
def test_screenshot_artifact(gl_display, small_job, artifacts_dir):
    """Saves test-artifacts/viewer_offset.png: the map inside the mask, controls labelled in px."""
    out = artifacts_dir / "viewer_offset.png"
    env = dict(os.environ, QT_QPA_PLATFORM="xcb", DISPLAY=gl_display, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", SCREENSHOT, str(small_job["map"]), str(small_job["mask"]),
                           str(small_job["particles"]), str(out)], env=env, capture_output=True, text=True,
                          timeout=240)
    if proc.returncode != 0 and "xcb" in proc.stderr and "platform plugin" in proc.stderr:
        pytest.skip("Qt's xcb platform cannot load (Debian: apt-get install libxcb-icccm4 libxcb-keysyms1 "
                    "libxcb-cursor0): " + proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    import imageio.v3 as iio

    img = iio.imread(out)
    assert img.shape[0] > 500 and img.shape[1] > 1000
    mean = float(proc.stdout.split("canvas-mean")[1].split()[0])
    assert mean > 2.0, "the 3D canvas rendered black"
