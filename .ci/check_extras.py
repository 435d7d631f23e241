#!/usr/bin/env python3
"""CI: every optional extra resolves in a fresh virtual environment, to wheels only.

For each extra (gpu, viewer, notebook, test, all) this makes a new venv and runs
``pip install --dry-run --report R -e ".[extra]"`` in it, then checks the report: pip found a
resolution; nothing would be built from a source distribution (a source stub such as old
``rapids-dask-dependency`` releases, which download a wheel from another index at build time);
``dask-cuda`` (in gpu and all) is at least 25. Prints one line per extra with the versions that
matter and the seconds it took.

Exit status 0 when all pass, 1 when one fails. When PyPI cannot be reached the check is skipped
with a warning (exit 0): it needs the network, the rest of CI does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

EXTRAS = ("gpu", "viewer", "notebook", "test", "all")
SHOWN = ("dask", "distributed", "dask-cuda", "rapids-dask-dependency", "cupy-cuda12x", "napari", "jupyterlab",
         "voila", "pytest")
MIN_DASK_CUDA = (25,)
TIMEOUT_S = int(os.environ.get("SUBTOMO_EXTRAS_TIMEOUT", "600"))


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def pypi_reachable(timeout: float = 10.0) -> bool:
    """Whether the package index answers (PIP_INDEX_URL or PyPI's simple index)."""
    url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/") + "/pip/"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except Exception:  # noqa: BLE001 - any failure means: no index here
        return False


def check_extra(root: Path, extra: str, work: Path) -> tuple[bool, str]:
    """Resolve one extra in a new venv; returns (ok, one-line summary)."""
    venv = work / f"venv-{extra}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    report = work / f"report-{extra}.json"
    start = time.monotonic()
    try:
        res = subprocess.run([str(pip), "install", "--dry-run", "--quiet", "--report", str(report),
                              "-e", f"{root}[{extra}]"], capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"[{extra}] pip did not resolve within {TIMEOUT_S} s (backtracking?)"
    seconds = time.monotonic() - start
    if res.returncode != 0 or not report.exists():
        tail = [line for line in (res.stderr or res.stdout).splitlines() if line.strip()][-3:]
        return False, f"[{extra}] pip failed to resolve ({seconds:.0f} s): " + " / ".join(tail)
    items = json.loads(report.read_text())["install"]
    versions, sources = {}, []
    for item in items:
        meta = item["metadata"]
        name = meta["name"].lower().replace("_", "-")
        versions[name] = meta["version"]
        info = item.get("download_info", {})
        url = info.get("url", "")
        if "dir_info" in info:          # the project itself (editable)
            continue
        if not url.endswith(".whl"):
            sources.append(f"{name} {meta['version']}")
    problems = []
    if sources:
        problems.append("built from source: " + ", ".join(sources))
    if extra in ("gpu", "all"):
        found = versions.get("dask-cuda")
        if found is None or _version_tuple(found) < MIN_DASK_CUDA:
            problems.append(f"dask-cuda {found} (need >= {'.'.join(map(str, MIN_DASK_CUDA))})")
    shown = ", ".join(f"{n} {versions[n]}" for n in SHOWN if n in versions)
    line = f"[{extra}] {len(items)} packages in {seconds:.0f} s: {shown}"
    return (not problems), line + ("" if not problems else " -- FAIL: " + "; ".join(problems))


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent
    extras = argv[1:] or list(EXTRAS)
    if not pypi_reachable():
        print("warning: the package index is unreachable; the extras' resolution is not checked")
        return 0
    ok = True
    with tempfile.TemporaryDirectory(prefix="subtomo-extras-") as tmp:
        for extra in extras:
            passed, line = check_extra(root, extra, Path(tmp))
            print(line, flush=True)
            ok &= passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
