"""Headless Qt for the napari widget tests.

``QT_QPA_PLATFORM=offscreen`` is set before Qt is imported. napari's vispy canvas still needs an
OpenGL context, which Qt's offscreen platform gets through GLX from an X server: where no
``DISPLAY`` is set and ``Xvfb`` is installed (Debian: ``apt-get install xvfb``), a private Xvfb is
started for the session and stopped at the end. Without either, the napari tests skip with that
reason. The screenshot test renders through the ``xcb`` platform on the same display (Qt's
offscreen platform has no OpenGL widget), which needs ``libxcb-icccm4 libxcb-keysyms1``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

_XVFB: subprocess.Popen | None = None
_WATCHDOG = """
import os, signal, sys, time
parent, child = int(sys.argv[1]), int(sys.argv[2])
while True:
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    time.sleep(1.0)
try:
    os.kill(child, signal.SIGTERM)
except ProcessLookupError:
    pass
"""
NO_DISPLAY_REASON = ("napari's OpenGL canvas needs an X server for its GL context: set DISPLAY or install "
                     "Xvfb (Debian: apt-get install xvfb libxcb-icccm4 libxcb-keysyms1)")


def _start_xvfb() -> str | None:
    """Start ``Xvfb -displayfd`` on a free display; return ':N' or None."""
    global _XVFB
    exe = shutil.which("Xvfb")
    if exe is None:
        return None
    r, w = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(w), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        num = f.readline().strip()
    if not num:
        proc.terminate()
        return None
    _XVFB = proc
    # a watchdog stops this Xvfb once the test process has exited (Qt keeps its X connection
    # open until the very end, so stopping the server from inside the process would kill it)
    subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(proc.pid)],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return f":{num}"


if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    disp = _start_xvfb()
    if disp is not None:
        os.environ["DISPLAY"] = disp


@pytest.fixture(scope="session")
def gl_display() -> str:
    """The X display napari renders through (skips the test where there is none)."""
    disp = os.environ.get("DISPLAY")
    if not disp:
        pytest.skip(NO_DISPLAY_REASON)
    return disp


@pytest.fixture(scope="session")
def small_job(tmp_path_factory) -> dict[str, Path]:
    """A noise-free refine-like job whose map sits at OFFSET against the tutorial mask."""
    from tests.viewer._synthetic import write_job

    return write_job(tmp_path_factory.mktemp("viewer_job"), n=40, noise_sigma=0.0, seed=3)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``test-artifacts/`` at the repository root (git-ignored)."""
    d = Path(__file__).resolve().parents[2] / "test-artifacts"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(autouse=True)
def _release_gl_context():
    """After each test, make no OpenGL context current on this thread.

    vispy leaves the last canvas's QOpenGLContext current when napari closes the viewer; Qt's
    thread data keeps pointing at it after it is deleted, and PySide6's QApplication teardown at
    interpreter exit then calls ``doneCurrent()`` through that stale pointer: a segmentation fault
    after all tests passed (exit code 139).
    """
    yield
    if "qtpy" not in sys.modules:
        return
    from qtpy.QtGui import QOpenGLContext

    ctx = QOpenGLContext.currentContext()
    if ctx is not None:
        ctx.doneCurrent()
