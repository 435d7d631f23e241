"""Interactive map/mask offset: pick the Z (and X, Y) offset and re-centre the particles.

* :func:`align_mask` -- from a notebook cell: opens napari with the map and mask overlaid and the
  offset dock widget; on a machine without a display (Binder) or without napari it returns the
  notebook widget of :mod:`subtomo_nb.viewer.notebook` instead (ipywidgets, no Qt).
* :class:`subtomo_nb.viewer.session.OffsetSession` -- the state and the Estimate/Apply actions
  (no GUI imports).
* ``subtomo_nb.viewer._widget.OffsetDock`` -- the napari dock widget (npe2 manifest
  ``napari.yaml``: *Plugins > Map/mask offset*).

napari and Qt are imported only when a viewer is opened, so ``import subtomo_nb.viewer`` works
without them.
"""

from __future__ import annotations

import os
import sys
from os import PathLike
from typing import Any

from subtomo_nb.viewer.session import ApplyResult, OffsetSession, find_job_files, shift_volume

__all__ = ["align_mask", "OffsetSession", "ApplyResult", "find_job_files", "shift_volume", "has_display"]


def has_display() -> bool:
    """True where a Qt window can be shown: a display server, macOS/Windows, or offscreen Qt."""
    if os.environ.get("QT_QPA_PLATFORM", "") == "offscreen":
        return True
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _napari_available() -> bool:
    try:
        import napari  # noqa: F401, PLC0415
        import qtpy  # noqa: F401, PLC0415
    except Exception:  # noqa: BLE001 - any failure to import the GUI stack means "use the fallback"
        return False
    return True


def _session(map: Any, mask: Any, particles: Any, job: Any, pixel_size_A: float | None) -> OffsetSession:  # noqa: A002
    if job is not None:
        return OffsetSession.from_job(job)
    if map is None or mask is None:
        raise ValueError("give a map and a mask (paths or arrays), or job=<refine job directory>")
    if isinstance(map, (str, PathLike)) and isinstance(mask, (str, PathLike)):
        return OffsetSession.from_paths(map, mask, particles)
    return OffsetSession(map, mask, float(pixel_size_A or 1.0), particles)


def align_mask(
    map: Any = None,  # noqa: A002 - the name the issue uses
    mask: Any = None,
    particles: str | PathLike | None = None,
    *,
    job: str | PathLike | None = None,
    pixel_size_A: float | None = None,
    viewer: Any = None,
    backend: str = "auto",
) -> Any:
    """Open the map and mask overlaid with offset controls, Estimate and Apply.

    Parameters
    ----------
    map, mask
        Refined map and mask: MRC paths, or ``[z, y, x]`` arrays (then give ``pixel_size_A``).
    particles
        Particle STAR file to re-centre with Apply (e.g. the refinement's ``run_data.star``).
    job
        Instead of map/mask/particles: a refine job directory (the map ``run_class001.mrc``,
        its ``run_data.star`` and the mask named in ``note.txt`` or ``masks/`` are found).
    pixel_size_A
        Pixel size (Å) when arrays are given.
    viewer
        An existing ``napari.Viewer`` to use (napari backend only).
    backend
        ``"napari"``, ``"notebook"`` (ipywidgets over orthogonal slices) or ``"auto"``: napari
        where it is installed and a display is available, else the notebook widget.

    Returns
    -------
    OffsetDock or OffsetWidget
        The napari dock widget (its ``.viewer`` is the napari viewer) or the notebook widget
        (display it as the cell's result). Both have ``.session``, ``.estimate()`` and ``.apply()``.
    """
    session = _session(map, mask, particles, job, pixel_size_A)
    if backend not in ("auto", "napari", "notebook"):
        raise ValueError(f"backend must be 'auto', 'napari' or 'notebook', got {backend!r}")
    use_napari = backend == "napari" or (backend == "auto" and has_display() and _napari_available())
    if use_napari:
        from subtomo_nb.viewer._widget import open_viewer  # noqa: PLC0415

        return open_viewer(session, viewer=viewer)
    from subtomo_nb.viewer.notebook import OffsetWidget  # noqa: PLC0415

    return OffsetWidget(session)
