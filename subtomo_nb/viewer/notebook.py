"""Notebook map/mask offset widget (ipywidgets): the napari viewer's fallback for machines with no display.

Three orthogonal central slices of the map, moved by ``-offset``, with the mask's 0.5 contour
drawn over them; X/Y/Z offset boxes in pixels (0.25-pixel steps); **Estimate** and **Apply**
buttons doing what the napari widget does (:class:`subtomo_nb.viewer.session.OffsetSession`).
The figure is rendered with matplotlib's Agg backend into an ``ipywidgets.Image``, so it needs
neither Qt nor a widget-aware matplotlib back-end (works on Binder and in nbconvert).
"""

from __future__ import annotations

import io
from os import PathLike
from typing import Any

import ipywidgets as W
import numpy as np

from subtomo_nb.io.errors import InputError
from subtomo_nb.viewer.session import STEP_PX, ApplyResult, OffsetSession, volume_slices

__all__ = ["OffsetWidget", "render_slices"]

AXES = ("x", "y", "z")


def render_slices(moved_map: np.ndarray, mask: np.ndarray, offset_px: tuple[float, float, float],
                  pixel_size_A: float) -> bytes:
    """PNG of the xy, xz and yz central slices of a map with the mask's 0.5 contour.

    Parameters
    ----------
    moved_map
        Map ``[z, y, x]`` already moved by ``-offset``.
    mask
        Mask ``[z, y, x]``.
    offset_px
        The offset ``(x, y, z)`` (pixels), printed in the title.
    pixel_size_A
        Pixel size (Å), printed in the title.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415 - Agg canvas, no pyplot state

    fig = Figure(figsize=(9.0, 3.3), dpi=90)
    axes = fig.subplots(1, 3)
    lo, hi = float(np.percentile(moved_map, 1)), float(moved_map.max())
    titles = ("XY (z = centre)", "XZ (y = centre)", "YZ (x = centre)")
    labels = (("x (px)", "y (px)"), ("x (px)", "z (px)"), ("y (px)", "z (px)"))
    for ax, m_sl, k_sl, title, (xl, yl) in zip(axes, volume_slices(moved_map), volume_slices(mask), titles, labels):
        ax.imshow(m_sl, cmap="magma", origin="lower", vmin=lo, vmax=hi, interpolation="bilinear")
        ax.contour(k_sl, levels=[0.5], colors="cyan", linewidths=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel(yl, fontsize=8)
        ax.tick_params(labelsize=7)
    x, y, z = offset_px
    fig.suptitle(f"map (magma) moved by −offset; mask 0.5 contour (cyan); offset X {x:+.2f}, Y {y:+.2f}, "
                 f"Z {z:+.2f} px ({pixel_size_A:g} Å/px)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class OffsetWidget(W.VBox):
    """Offset controls over orthogonal slices, with Estimate and Apply (ipywidgets).

    Parameters
    ----------
    session
        The map, mask, particles and offset (:class:`OffsetSession`).

    Attributes
    ----------
    offsets : dict of str -> ipywidgets.BoundedFloatText
        ``"x"``, ``"y"``, ``"z"`` offset boxes (pixels, step 0.25).
    estimate_button, apply_button : ipywidgets.Button
    output_path : ipywidgets.Text -- re-centred STAR file (empty: ``<particles>_recentred.star``).
    write_map : ipywidgets.Checkbox -- also write the re-centred map.
    image : ipywidgets.Image -- the slices.
    status : ipywidgets.HTML
    last_result : ApplyResult or None
    """

    def __init__(self, session: OffsetSession) -> None:
        self.session = session
        self.last_result: ApplyResult | None = None
        n = float(max(session.map.shape))
        style = {"description_width": "initial"}
        self.offsets = {a: W.BoundedFloatText(value=float(v), min=-n / 2, max=n / 2, step=STEP_PX,
                                              description=f"{a.upper()} offset (px)", style=style,
                                              layout=W.Layout(width="180px"))
                        for a, v in zip(AXES, session.offset)}
        self.offset_A = W.HTML()
        self.estimate_button = W.Button(description="Estimate offset", button_style="info",
                                        tooltip="Masked cross-correlation of the map with the mask")
        self.output_path = W.Text(value=str(session.default_output()) if session.particles_path else "",
                                  description="re-centred STAR", style=style, layout=W.Layout(width="560px"))
        self.write_map = W.Checkbox(value=True, description="also write the re-centred map", indent=False)
        self.apply_button = W.Button(description="Apply: re-centre particles", button_style="success")
        self.image = W.Image(format="png")
        self.status = W.HTML(value=f"box {session.map.shape[0]} px, {session.pixel_size_A:g} Å/px")
        for box in self.offsets.values():
            box.observe(self._on_offset, names="value")
        self.estimate_button.on_click(lambda _b: self._guarded(self.estimate))
        self.apply_button.on_click(lambda _b: self._guarded(self.apply))
        super().__init__([
            self.image,
            W.HBox([*self.offsets.values(), self.offset_A]),
            W.HBox([self.estimate_button, self.apply_button, self.write_map]),
            self.output_path,
            self.status,
        ])
        self._redraw()

    @classmethod
    def from_paths(cls, map_path: str | PathLike, mask_path: str | PathLike,
                   particles: str | PathLike | None = None) -> OffsetWidget:
        """Open a map, a mask and (for Apply) the particle STAR file."""
        return cls(OffsetSession.from_paths(map_path, mask_path, particles))

    @classmethod
    def from_job(cls, job_dir: str | PathLike) -> OffsetWidget:
        """Open a refine job directory (see :func:`subtomo_nb.viewer.session.find_job_files`)."""
        return cls(OffsetSession.from_job(job_dir))

    # -- offset ---------------------------------------------------------------------------
    @property
    def offset(self) -> tuple[float, float, float]:
        """Current offset ``(x, y, z)`` in pixels, as in the boxes."""
        return tuple(float(self.offsets[a].value) for a in AXES)  # type: ignore[return-value]

    def set_offset(self, x: float, y: float, z: float) -> None:
        """Set the three boxes at once (one redraw)."""
        self._batch = True
        try:
            for a, v in zip(AXES, (x, y, z)):
                self.offsets[a].value = float(v)
        finally:
            self._batch = False
        self._on_offset()

    def _on_offset(self, *_: Any) -> None:
        if getattr(self, "_batch", False):
            return
        self.session.set_offset(*self.offset)
        self._redraw()

    def _redraw(self) -> None:
        x, y, z = self.session.offset
        p = self.session.pixel_size_A
        self.offset_A.value = f"= X {x * p:.2f}, Y {y * p:.2f}, Z {z * p:.2f} Å"
        self.image.value = render_slices(self.session.moved_map(), self.session.mask, (x, y, z), p)

    # -- actions --------------------------------------------------------------------------
    def estimate(self) -> tuple[float, float, float]:
        """Estimate the offset, set the boxes to it and return it ``(x, y, z)`` (px)."""
        est = self.session.estimate()
        self.set_offset(*est)
        self.status.value = "estimated offset: " + ", ".join(f"{a.upper()} {v:+.3f}" for a, v in zip(AXES, est)) + " px"
        return est

    def apply(self) -> ApplyResult:
        """Write the re-centred particles (and map) for the offset in the boxes."""
        self.session.set_offset(*self.offset)
        out = self.output_path.value.strip() or None
        result = self.session.apply(out, write_map_too=bool(self.write_map.value))
        self.last_result = result
        self.status.value = f"wrote {result.star_path} (record {result.record_path.name})"
        return result

    def _guarded(self, action: Any) -> None:
        try:
            action()
        except (InputError, ValueError, OSError) as err:
            self.status.value = f"<b>failed:</b> {err}"
