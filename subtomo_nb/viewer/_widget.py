"""napari dock widget: overlay a refined map on its mask, pick the offset, re-centre the particles.

Layers (all in pixels of the map, axes z, y, x):

* ``mask`` -- cyan see-through glow (additive maximum projection) and ``mask slice z/y/x`` -- its three
  orthogonal central planes;
* ``map`` -- iso-surface (yellow) and ``map slice z/y/x`` -- its three orthogonal central planes
  (magma), all moved live by ``-offset`` (layer translation) against the fixed mask.

The 3D view opens with the map's iso-surface inside the mask's glow; the slice layers are in the layer list (tick their
eye to show them in 3D, or press the 2D/3D toggle to page through slices).

Controls: X/Y/Z offset spin boxes (px, 0.25 px steps), **Estimate** (masked normalised
cross-correlation, :func:`subtomo_nb.fourier.registration.estimate_offset`, sets the boxes),
**Apply** (re-centred STAR file, optional re-centred map, JSON record;
:meth:`subtomo_nb.viewer.session.OffsetSession.apply`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit, FloatSpinBox, Label, PushButton

from subtomo_nb.io.errors import InputError
from subtomo_nb.viewer.session import STEP_PX, ApplyResult, OffsetSession

if TYPE_CHECKING:
    import napari

__all__ = ["OffsetDock", "open_viewer"]

AXES = ("x", "y", "z")


class OffsetDock(Container):
    """Dock widget with map/mask inputs, offset controls (px) and Estimate/Apply buttons.

    Parameters
    ----------
    napari_viewer
        The viewer the layers go into (npe2 passes it).
    session
        Optional pre-loaded :class:`OffsetSession`.
    """

    def __init__(self, napari_viewer: napari.Viewer, session: OffsetSession | None = None) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.session: OffsetSession | None = None
        self.last_result: ApplyResult | None = None
        self._layers: dict[str, Any] = {}

        self.job_dir = FileEdit(label="job directory", mode="d", value="",
                                tooltip="Refine job: its run_class001.mrc, run_data.star and mask are found")
        self.map_file = FileEdit(label="map (.mrc)", mode="r", filter="*.mrc", value="")
        self.mask_file = FileEdit(label="mask (.mrc)", mode="r", filter="*.mrc", value="")
        self.particles_file = FileEdit(label="particles (.star)", mode="r", filter="*.star", value="")
        self.load_button = PushButton(text="Load")
        self.offsets = {a: FloatSpinBox(label=f"{a.upper()} offset (px)", value=0.0, step=STEP_PX,
                                        min=-64.0, max=64.0,
                                        tooltip=f"Where the map's density sits along {a} relative to the "
                                                "mask, in pixels of the map")
                        for a in AXES}
        for box in self.offsets.values():
            if hasattr(box.native, "setDecimals"):
                box.native.setDecimals(3)  # the Estimate's sub-pixel value, not rounded to 0.01
        self.offset_A = Label(label="offset (Å)", value="-")
        self.estimate_button = PushButton(text="Estimate offset")
        self.output_file = FileEdit(label="re-centred STAR", mode="w", filter="*.star", value="")
        self.write_map = CheckBox(text="also write the re-centred map", value=True)
        self.apply_button = PushButton(text="Apply: re-centre particles")
        self.status = Label(label="status", value="load a map and a mask")
        self.extend([self.job_dir, self.map_file, self.mask_file, self.particles_file, self.load_button,
                     *self.offsets.values(), self.offset_A, self.estimate_button, self.output_file,
                     self.write_map, self.apply_button, self.status])

        self.load_button.changed.connect(self._on_load)
        for box in self.offsets.values():
            box.changed.connect(self._on_offset)
        self.estimate_button.changed.connect(self._on_estimate)
        self.apply_button.changed.connect(self._on_apply)
        if session is not None:
            self.set_session(session)

    # -- loading --------------------------------------------------------------------------
    def _on_load(self, *_: Any) -> None:
        try:
            job = str(self.job_dir.value)
            if job not in ("", "."):
                session = OffsetSession.from_job(job)
            else:
                particles = str(self.particles_file.value)
                session = OffsetSession.from_paths(self.map_file.value, self.mask_file.value,
                                                   particles if particles not in ("", ".") else None)
        except (InputError, ValueError, OSError) as err:
            self.status.value = f"could not load: {err}"
            return
        self.set_session(session)

    def set_session(self, session: OffsetSession) -> None:
        """Show a session's map and mask as layers and its offset in the controls."""
        self.session = session
        for name in list(self._layers):
            layer = self._layers.pop(name)
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        if session.map_path is not None:
            self.map_file.value = session.map_path
        if session.mask_path is not None:
            self.mask_file.value = session.mask_path
        if session.particles_path is not None:
            self.particles_file.value = session.particles_path
            self.output_file.value = session.default_output()
        n = max(session.map.shape)
        for box in self.offsets.values():
            box.min, box.max = -n / 2, n / 2
        self._add_layers(session)
        self.set_offset(*session.offset)
        self.status.value = f"box {session.map.shape[0]} px, {session.pixel_size_A:g} Å/px"

    def _add_layers(self, s: OffsetSession) -> None:
        v = self.viewer
        centre = tuple(float(n // 2) for n in s.map.shape)
        lo, hi = float(np.percentile(s.map, 50)), float(s.map.max())
        iso = lo + 0.45 * (hi - lo)
        self._layers["map"] = v.add_image(s.map, name="map", colormap="yellow", rendering="iso",
                                          iso_threshold=iso, blending="translucent", contrast_limits=(lo, hi))
        # the mask as a see-through glow (additive maximum projection), so the map shows inside it
        self._layers["mask"] = v.add_image(s.mask, name="mask", colormap="cyan", rendering="mip",
                                           opacity=0.6, blending="additive", contrast_limits=(0.0, 1.6))
        for i, axis in enumerate("zyx"):
            normal = tuple(1.0 if j == i else 0.0 for j in range(3))
            plane = {"position": centre, "normal": normal, "thickness": 1.0}
            self._layers[f"mask_{axis}"] = v.add_image(
                s.mask, name=f"mask slice {axis}", colormap="cyan", depiction="plane", plane=plane,
                blending="additive", opacity=0.3, contrast_limits=(0.0, 1.0), visible=False)
            self._layers[f"map_{axis}"] = v.add_image(
                s.map, name=f"map slice {axis}", colormap="magma", depiction="plane", plane=plane,
                blending="additive", opacity=0.6, contrast_limits=(lo, hi), visible=False)
        v.dims.ndisplay = 3
        v.dims.axis_labels = ("z (px)", "y (px)", "x (px)")
        self.frame_view()

    def frame_view(self, zoom: float = 2.0) -> None:
        """Reset the 3D camera to an oblique view of the box, zoomed ``zoom`` times."""
        v = self.viewer
        v.reset_view()
        v.camera.angles = (-20.0, 35.0, 140.0)
        v.camera.zoom = v.camera.zoom * zoom

    # -- offset ---------------------------------------------------------------------------
    @property
    def offset(self) -> tuple[float, float, float]:
        """Current offset ``(x, y, z)`` in pixels, as shown in the controls."""
        return tuple(float(self.offsets[a].value) for a in AXES)  # type: ignore[return-value]

    def set_offset(self, x: float, y: float, z: float) -> None:
        """Set the controls (and so the layers) to the offset ``(x, y, z)`` pixels."""
        for a, val in zip(AXES, (x, y, z)):
            with self.offsets[a].changed.blocked():
                self.offsets[a].value = float(val)
        self._on_offset()

    def _on_offset(self, *_: Any) -> None:
        if self.session is None:
            return
        x, y, z = self.offset
        self.session.set_offset(x, y, z)
        for name, layer in self._layers.items():
            if name.startswith("map"):
                layer.translate = (-z, -y, -x)  # layer axes are (z, y, x), pixels
        p = self.session.pixel_size_A
        self.offset_A.value = f"X {x * p:.2f}, Y {y * p:.2f}, Z {z * p:.2f}"

    # -- actions --------------------------------------------------------------------------
    def estimate(self) -> tuple[float, float, float]:
        """Estimate the offset, set the controls to it and return it ``(x, y, z)`` (px)."""
        if self.session is None:
            raise RuntimeError("load a map and a mask first")
        est = self.session.estimate()
        self.set_offset(*est)
        self.status.value = "estimated offset (px): " + ", ".join(f"{a.upper()} {v:+.2f}" for a, v in zip(AXES, est))
        return est

    def apply(self) -> ApplyResult:
        """Write the re-centred particles (and map) for the offset in the controls."""
        if self.session is None:
            raise RuntimeError("load a map and a mask first")
        self.session.set_offset(*self.offset)
        out = str(self.output_file.value)
        result = self.session.apply(None if out in ("", ".") else out, write_map_too=bool(self.write_map.value))
        self.last_result = result
        self.status.value = f"wrote {Path(result.star_path).name}"
        return result

    def _on_estimate(self, *_: Any) -> None:
        try:
            self.estimate()
        except (RuntimeError, ValueError) as err:
            self.status.value = f"estimate failed: {err}"

    def _on_apply(self, *_: Any) -> None:
        try:
            self.apply()
        except (RuntimeError, ValueError, InputError, OSError) as err:
            self.status.value = f"apply failed: {err}"


def open_viewer(session: OffsetSession, viewer: napari.Viewer | None = None) -> OffsetDock:
    """Open (or reuse) a napari viewer with the session's layers and the offset dock widget."""
    import napari  # noqa: PLC0415

    if viewer is None:
        viewer = napari.Viewer(title="subtomo_nb: map/mask offset")
    dock = OffsetDock(viewer, session=session)
    viewer.window.add_dock_widget(dock, name="Map/mask offset", area="right")
    return dock
