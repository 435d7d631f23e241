"""A real browser: Voilà serves the auto-refine notebook, headless Chromium (Playwright) drives its form.

Voilà runs ``notebooks/03_autorefine_and_analysis.ipynb`` on 127.0.0.1 (a free port, a token) with
the tiny dataset and ``SUBTOMO_NB_AUTORUN=0`` (the notebook shows the form and leaves **Run!** to
the user). Debian's Chromium, driven by Playwright, opens the page, fills two fields (the initial
low-pass filter on the Reference tab, RELION's "Additional arguments" on the Running tab), presses
**Run!** and waits for the form's progress plot (the FSC image) and the "finished" status. The job
directory must hold the values typed in the browser. A screenshot goes to
``test-artifacts/browser_autorefine.png`` (git-ignored).

Skipped, with the reason, where Chromium, Playwright or Voilà is missing (``.ci/run`` installs
them: ``apt-get install chromium``, the ``test`` extra).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "03_autorefine_and_analysis.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]
PAGE_TIMEOUT_MS = 240_000  # Voilà executes the notebook (simulation, extraction) before the page shows
JOB_TIMEOUT_MS = 300_000


def _chromium() -> str | None:
    for candidate in (os.environ.get("SUBTOMO_NB_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


CHROMIUM = _chromium()
pytestmark = [
    pytest.mark.slow,   # Voilà + Chromium end to end: ~17 s on 2 cores, the nightly path
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium; .ci/run does this as root)"),
]
playwright_sync = pytest.importorskip("playwright.sync_api",
                                      reason="playwright is not installed (pip install -e '.[test]')")
pytest.importorskip("voila", reason="voila is not installed (pip install -e '.[test]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"voila did not listen on port {port} within {timeout:.0f} s")


@pytest.fixture()
def voila_server(tmp_path: Path):
    """Voilà serving the auto-refine notebook on 127.0.0.1 (tiny dataset, no auto-run); yields (url, project)."""
    port = _free_port()
    token = secrets.token_hex(16)
    project = tmp_path / "tutorial_tiny"
    env = dict(os.environ, SUBTOMO_NB_TINY="1", SUBTOMO_NB_PROJECT=str(project), SUBTOMO_NB_AUTORUN="0",
               MPLBACKEND="Agg")
    log = open(tmp_path / "voila.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "voila", str(NOTEBOOK), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
         f"--Voila.token={token}", "--show_tracebacks=True"],
        cwd=NOTEBOOK.parent, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, 60)
        yield f"http://127.0.0.1:{port}/?token={token}", project
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        print((tmp_path / "voila.log").read_text()[-4000:])


@pytest.mark.timeout(900)
def test_form_runs_from_the_browser(voila_server, tmp_path: Path) -> None:
    from subtomo_nb.jobs import read_job

    url, project = voila_server
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser_autorefine.png"
    with playwright_sync.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.goto(url, timeout=PAGE_TIMEOUT_MS, wait_until="domcontentloaded")
            run = page.get_by_role("button", name="Run!")
            run.wait_for(state="visible", timeout=PAGE_TIMEOUT_MS)
            assert page.get_by_text("3D auto-refine").first.is_visible()

            # fill a field on the Reference tab: the initial low-pass filter
            page.locator(".lm-TabBar-tab", has_text="Reference").first.click()
            ini_high = page.locator(".widget-text", has_text="Initial low-pass filter").locator("input")
            ini_high.wait_for(state="visible", timeout=30_000)
            assert float(ini_high.input_value()) == 50.0  # the tutorial preset the notebook loaded
            ini_high.fill("40")
            ini_high.press("Enter")
            # and RELION's "Additional arguments" on the Running tab: one iteration before the final one
            page.locator(".lm-TabBar-tab", has_text="Running").first.click()
            other = page.locator(".widget-text", has_text="Additional arguments").locator("input")
            other.wait_for(state="visible", timeout=30_000)
            assert other.input_value() == "--auto_iter_max 2"
            other.fill("--auto_iter_max 1")
            other.press("Enter")

            image = page.locator("img.widget-image").first
            assert image.evaluate("img => img.naturalWidth") == 0  # an empty image: no plot yet
            run.click()
            page.get_by_text("running").first.wait_for(timeout=60_000)
            # the progress plot appears (the FSC image of the first iteration), then the job finishes
            page.wait_for_function(
                "() => { const img = document.querySelector('img.widget-image');"
                " return img !== null && img.complete && img.naturalWidth > 0; }", timeout=JOB_TIMEOUT_MS)
            page.get_by_text("finished:").first.wait_for(timeout=JOB_TIMEOUT_MS)
            log_text = page.locator(".widget-html pre", has_text="iteration 1").first.inner_text()
            assert "iteration 1" in log_text and "resolution" in log_text
            page.get_by_role("button", name="Run!").scroll_into_view_if_needed()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    assert shot.is_file() and shot.stat().st_size > 10_000
    jobs = sorted(project.glob("Refine3D/job*/RELION_JOB_EXIT_SUCCESS"))
    assert len(jobs) == 1
    values = read_job(jobs[0].parent).values
    assert values["ini_high"] == 40.0 and values["other_args"] == "--auto_iter_max 1"
    assert values["sym_name"] == "C6"  # the rest of the tutorial preset, as the notebook set it
