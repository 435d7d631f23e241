"""Notebook job forms (ipywidgets): RELION's job windows, generated from the job registry.

:class:`JobForm` shows one tab per RELION GUI tab of a job type (I/O, Reference, CTF,
Optimisation, ...) with one widget per :class:`~subtomo_nb.jobs.params.Param`, labelled and
defaulted as in RELION:

* Yes/No fields -> ``Checkbox``; numbers -> ``BoundedIntText`` / ``BoundedFloatText`` with the
  registry's range and step when the range is strict (``Param.strict_range``), else ``IntText`` /
  ``FloatText`` with the step (RELION accepts typed values beyond its sliders there, and a bounded
  box would silently clamp them); radio fields -> ``Dropdown``; text -> ``Text``; file/node
  inputs -> ``Text`` plus a ``Dropdown`` of the project's files matching the field's pattern
  (choosing one fills the text). The help text is the tooltip; fields whose ``active_if``
  condition does not hold are greyed out.
* **Validate** runs :func:`subtomo_nb.jobs.validate.validate` and writes each message in red
  under its field. **Run** validates first (invalid values start nothing, no job directory is
  made) and then calls :func:`subtomo_nb.jobs.jobdir.run_job` in a background thread, so the
  notebook stays usable. With a dask ``client`` the job's work runs on the cluster (the client is
  handed to the job's run function); the driver stays in the notebook process because the
  progress callback and the stop flag live there.
* **Stop** is cooperative: it sets a flag that the progress callback checks; at the job's next
  progress event the callback raises :class:`JobStopped` inside the job. It derives from
  ``KeyboardInterrupt`` so that the run function's ``except Exception`` clauses do not swallow it
  and :func:`~subtomo_nb.jobs.jobdir.run_job` marks the directory ``RELION_JOB_EXIT_ABORTED``. A
  job that reports no progress for a long stretch (or reports only from other threads) stops at
  its next report from the job's own thread.
* **Continue** (job types with a "Continue from here" field whose job directory holds an
  ``*_optimiser.star``) fills ``fn_cont`` with the last iteration's optimiser file and runs again
  in the same directory (``rlnJobIsContinue = 1``).
* Progress events are appended to a log (iteration, resolution, accuracies, timings) and, when
  matplotlib is available, every event with an FSC curve redraws the FSC plot into an
  ``ipywidgets.Image`` (PNG through matplotlib's Agg canvas: no display or widget back-end needed).

No Qt or napari is imported here.
"""

from __future__ import annotations

import fnmatch
import html
import io
import os
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ipywidgets as W

from subtomo_nb.jobs import (
    JobFailedError,
    JobType,
    JobValidationError,
    Param,
    Progress,
    get_job_type,
    read_job,
    run_job,
)
from subtomo_nb.jobs import validate as validate_values
from subtomo_nb.jobs.params import coerce
from subtomo_nb.jobs.progress import ParticleBar
from subtomo_nb.jobs.presets import PRESETS

__all__ = ["JobForm", "JobStopped", "PRESETS", "render_fsc", "last_optimiser", "matching_files"]

_ERROR_STYLE = "color:#c00000;font-size:90%"
_LABEL_WIDTH = "300px"
_MAX_CHOICES = 500
_SKIP_DIRS = {".git", "__pycache__", ".ipynb_checkpoints", "node_modules"}


class JobStopped(KeyboardInterrupt):
    """Raised inside a running job at its next progress event after **Stop** was pressed.

    A ``KeyboardInterrupt`` so that ``except Exception`` in run functions lets it through and
    :func:`~subtomo_nb.jobs.jobdir.run_job` records the job as aborted (RELION_JOB_EXIT_ABORTED).
    """


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _expand_braces(pattern: str) -> list[str]:
    """``"*.{mrc,star}"`` -> ``["*.mrc", "*.star"]`` (one brace group, as RELION's filters)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [pattern[: m.start()] + alt + pattern[m.end():] for alt in m.group(1).split(",")]


def matching_files(project_dir: str | os.PathLike, pattern: str, *, limit: int = _MAX_CHOICES,
                   max_depth: int = 4) -> list[str]:
    """Project-relative files whose names match a RELION file filter, sorted.

    Parameters
    ----------
    project_dir : str or os.PathLike
        Directory to search (hidden and cache directories are skipped).
    pattern : str
        Name pattern, e.g. ``"*optimisation_set.star"`` or ``"*.{mrc,star}"``; empty: ``"*"``.
    limit : int
        Stop after this many files (large projects).
    max_depth : int
        Directory levels below the project to look into.

    Returns
    -------
    list of str
        Relative paths with ``/`` separators.
    """
    root = Path(project_dir)
    patterns = _expand_braces(pattern or "*")
    found: list[str] = []
    if not root.is_dir():
        return found
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).parts) - base_depth
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        if depth >= max_depth:
            dirnames[:] = []
        for name in sorted(filenames):
            if any(fnmatch.fnmatch(name, p) for p in patterns):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
                if len(found) >= limit:
                    return sorted(found)
    return sorted(found)


def last_optimiser(job_dir: str | os.PathLike) -> Path | None:
    """The last iteration's ``*_optimiser.star`` of a job directory (None if there is none).

    Files are ordered by their ``_itNNN`` number (files without one come last, by mtime). When
    some iterations have their saved state (``*_state.npz``, written after the optimiser file: the
    iteration finished), only those count: a job killed while writing an iteration continues from
    the one before.
    """
    files = list(Path(job_dir).glob("*_optimiser.star"))
    finished = [p for p in files if p.with_name(p.name.replace("_optimiser.star", "_state.npz")).is_file()]
    files = finished or files
    if not files:
        return None

    def order(p: Path) -> tuple[int, float]:
        m = re.search(r"_it(\d+)", p.name)
        return (int(m.group(1)) if m else 10**9, p.stat().st_mtime)

    return max(files, key=order)


def render_fsc(events: list[Progress], *, threshold: float = 0.143) -> bytes | None:
    """PNG of the FSC curves of progress events (the last one bold), or None without matplotlib.

    Parameters
    ----------
    events : list of Progress
        Events with an ``fsc`` curve, oldest first; up to five earlier curves are drawn faintly.
    threshold : float
        Horizontal line (gold-standard 0.143).

    Returns
    -------
    bytes or None
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    curves = [e for e in events if e.fsc is not None and len(e.fsc) > 0]
    if not curves:
        return None
    fig = Figure(figsize=(4.8, 3.2), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    use_res = all(e.fsc_resolution_A is not None and len(e.fsc_resolution_A) == len(e.fsc) for e in curves)
    shown = curves[-6:]
    for i, e in enumerate(shown):
        y = [float(v) if v is not None else float("nan") for v in e.fsc]
        if use_res:
            x = [1.0 / float(r) if r not in (None, 0) and float(r) > 0 else 0.0 for r in e.fsc_resolution_A]
        else:
            x = list(range(len(y)))
        last = i == len(shown) - 1
        label = f"it {e.iteration}" if e.iteration is not None else None
        ax.plot(x, y, lw=2.0 if last else 1.0, alpha=1.0 if last else 0.35, label=label)
    ax.axhline(threshold, color="grey", lw=0.8, ls="--")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("1/resolution (1/Å)" if use_res else "Fourier shell")
    ax.set_ylabel("FSC")
    last = curves[-1]
    title = "FSC"
    if last.iteration is not None:
        title += f", iteration {last.iteration}"
    if last.resolution_A is not None:
        title += f": {last.resolution_A:.2f} Å"
    ax.set_title(title, fontsize=10)
    if any(e.iteration is not None for e in shown):
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _make_widget(p: Param, value: Any) -> W.ValueWidget:
    """The input widget of one parameter (description = RELION's label, tooltip = help)."""
    common: dict[str, Any] = {"description": p.label, "tooltip": p.help,
                              "style": {"description_width": _LABEL_WIDTH}}
    if p.type == "bool":
        return W.Checkbox(value=bool(value), indent=False, layout=W.Layout(width="auto"), **common)
    if p.type == "choice":
        return W.Dropdown(options=list(p.choices), value=value, layout=W.Layout(width="480px"), **common)
    layout = W.Layout(width="480px")
    if p.type in ("int", "float"):
        is_int = p.type == "int"
        step = p.step if p.step is not None else 1
        bounded = p.strict_range and p.min is not None and p.max is not None and p.min <= value <= p.max
        if bounded:
            cls = W.BoundedIntText if is_int else W.BoundedFloatText
            return cls(value=value, min=int(p.min) if is_int else float(p.min),
                       max=int(p.max) if is_int else float(p.max),
                       step=max(1, int(step)) if is_int else float(step), layout=layout, **common)
        cls = W.IntText if is_int else W.FloatText
        return cls(value=value, step=max(1, int(step)) if is_int else float(step), layout=layout, **common)
    return W.Text(value=str(value), layout=layout if p.type == "str" else W.Layout(width="560px"), **common)


# ----------------------------------------------------------------------------------------------
# The form
# ----------------------------------------------------------------------------------------------


class JobForm:
    """A RELION job window as an ipywidgets form: fields, validation, Run/Stop/Continue, progress.

    Parameters
    ----------
    job_type : str or JobType
        Registry name, CLI name, RELION title or process name (``"refine3d"``, ``"3D auto-refine"``).
    project_dir : str or os.PathLike
        The RELION project directory (file names are relative to it; jobs go under it).
    values : mapping, optional
        Initial values (others: RELION's defaults).
    client : dask.distributed.Client, optional
        Handed to the job's run function.

    Attributes
    ----------
    job_type : JobType
    project_dir : pathlib.Path
    client : object or None
    fields : dict of str to ipywidgets.ValueWidget
        The input widget of every parameter, by job.star key.
    choosers : dict of str to ipywidgets.Dropdown
        File pickers of the file fields.
    messages : dict of str to ipywidgets.HTML
        Validation message under every field (empty when valid).
    tab : ipywidgets.Tab
        One page per RELION tab, in registry order.
    run_button, stop_button, continue_button, validate_button : ipywidgets.Button
    status : ipywidgets.HTML
        One status line ("ready", "running Refine3D/job002/", "finished ...", "failed: ...").
    log : ipywidgets.HTML
        The progress events received, one line each.
    fsc_image : ipywidgets.Image
        The FSC plot (PNG), redrawn at every event that carries an FSC curve.
    events : list of Progress
        Every progress event received.
    job_dir : pathlib.Path or None
        The job directory of the last run (or of :meth:`from_job`), for **Continue**.
    state : str
        ``"idle"``, ``"running"``, ``"finished"``, ``"failed"``, ``"stopped"`` or ``"invalid"``.
    error : BaseException or None
        What ended the last run, if it did not succeed.
    widget : ipywidgets.VBox
        The whole form (displayed when the form is the value of a notebook cell).
    """

    def __init__(
        self,
        job_type: str | JobType,
        project_dir: str | os.PathLike,
        *,
        values: Mapping[str, Any] | None = None,
        client: Any = None,
    ) -> None:
        self.job_type: JobType = get_job_type(job_type)
        self.project_dir = Path(project_dir).absolute()
        self.client = client
        self.events: list[Progress] = []
        self.job_dir: Path | None = None
        self.state = "idle"
        self.error: BaseException | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log_lines: list[str] = []
        self._started = 0.0
        self._before: set[str] = set()

        start = self.job_type.defaults()
        if values:
            start.update(self.job_type.complete(values))
        self.fields: dict[str, W.ValueWidget] = {}
        self.choosers: dict[str, W.Dropdown] = {}
        self.messages: dict[str, W.HTML] = {}
        self._rows: dict[str, W.VBox] = {}
        for p in self.job_type.params:
            self._build_field(p, start[p.key])
        pages = []
        for tab in self.job_type.tabs:
            pages.append(W.VBox([self._rows[p.key] for p in self.job_type.tab_params(tab)]))
        self.tab = W.Tab(children=pages)
        for i, tab in enumerate(self.job_type.tabs):
            self.tab.set_title(i, tab)
        for p in self.job_type.params:
            if p.active_if is not None and p.active_if[0] in self.fields:
                self.fields[p.active_if[0]].observe(lambda _change: self._update_active(), names="value")
        self._update_active()

        self.validate_button = W.Button(description="Validate", tooltip="Check the values (nothing runs)")
        self.run_button = W.Button(description="Run!", button_style="success",
                                   tooltip="Validate, then run the job in a new job directory (background)")
        self.stop_button = W.Button(description="Stop", button_style="danger", disabled=True,
                                    tooltip="Stop the running job at its next progress event")
        self.continue_button = W.Button(description="Continue", disabled=True,
                                        tooltip="Continue the job from its last _optimiser.star, in its directory")
        self.validate_button.on_click(lambda _b: self.validate())
        self.run_button.on_click(lambda _b: self.run())
        self.stop_button.on_click(lambda _b: self.stop())
        self.continue_button.on_click(lambda _b: self.continue_job())
        self.status = W.HTML(value="ready")
        self.log = W.HTML(value="", layout=W.Layout(max_height="260px", overflow="auto", width="100%"))
        self.fsc_image = W.Image(format="png", layout=W.Layout(width="400px"))
        # a tqdm bar over the particles of the running iteration (tqdm's notebook widget)
        self.particles_bar = W.HBox([])
        self._particles = ParticleBar(self._notebook_bar)
        title = W.HTML(value=f"<b>{html.escape(self.job_type.title)}</b> &mdash; "
                             f"{html.escape(self.job_type.description)}")
        self.widget = W.VBox([
            title,
            self.tab,
            W.HBox([self.validate_button, self.run_button, self.stop_button, self.continue_button]),
            self.status,
            self.particles_bar,
            W.HBox([self.log, self.fsc_image]),
        ])

    # -- construction ---------------------------------------------------------------------------

    def _build_field(self, p: Param, value: Any) -> None:
        widget = _make_widget(p, value)
        self.fields[p.key] = widget
        message = W.HTML(value="")
        self.messages[p.key] = message
        parts: list[W.Widget] = [widget]
        if p.type == "file":
            chooser = W.Dropdown(options=self._file_options(p), value="", tooltip=f"files matching {p.pattern or '*'}",
                                 layout=W.Layout(width="260px"))

            def pick(change: dict[str, Any], target: W.Text = widget) -> None:
                if change["new"]:
                    target.value = change["new"]

            chooser.observe(pick, names="value")
            self.choosers[p.key] = chooser
            parts.append(chooser)
        row = W.HBox(parts) if len(parts) > 1 else parts[0]
        self._rows[p.key] = W.VBox([row, message])

    def _file_options(self, p: Param) -> list[tuple[str, str]]:
        files = matching_files(self.project_dir, p.pattern)
        return [("(choose a file)", "")] + [(f, f) for f in files]

    def refresh_files(self) -> None:
        """Re-scan the project for the file pickers (after new jobs wrote files)."""
        for key, chooser in self.choosers.items():
            chooser.options = self._file_options(self.job_type.param(key))
            chooser.value = ""

    def _update_active(self) -> None:
        for p in self.job_type.params:
            if p.active_if is None or p.active_if[0] not in self.fields:
                continue
            key, wanted = p.active_if
            try:
                active = coerce(self.job_type.param(key), self.fields[key].value) == wanted
            except ValueError:
                active = True
            self.fields[p.key].disabled = not active
            if p.key in self.choosers:
                self.choosers[p.key].disabled = not active

    # -- values ---------------------------------------------------------------------------------

    @property
    def values(self) -> dict[str, Any]:
        """Every field's value, typed (bool/int/float/str), keyed by job.star key."""
        return {p.key: coerce(p, self.fields[p.key].value) for p in self.job_type.params}

    def set_values(self, values: Mapping[str, Any]) -> None:
        """Set some fields (Python values or RELION strings such as ``"Yes"``, ``"60"``).

        Raises
        ------
        KeyError
            For a key the job type does not have.
        ValueError
            For a value that does not fit its field (type, choices, or the range of a field with
            a strict range, which the widget could not hold).
        """
        typed = {key: coerce(self.job_type.param(key), value) for key, value in values.items()}
        for key, value in typed.items():
            p = self.job_type.param(key)
            widget = self.fields[key]
            if p.type == "choice" and value not in p.choices:
                raise ValueError(f"{key}: {value!r} is not one of {', '.join(p.choices)}")
            if isinstance(widget, (W.BoundedIntText, W.BoundedFloatText)) and not widget.min <= value <= widget.max:
                raise ValueError(f"{key}: {value:g} is outside {widget.min:g}..{widget.max:g}")
        for key, value in typed.items():
            self.fields[key].value = value

    def load_preset(self, name: str) -> None:
        """Set the values of a named preset (see :data:`PRESETS`; ``"defaults"``: RELION's defaults).

        Raises
        ------
        KeyError
            For a preset this job type does not have (the message lists those it has).
        """
        if name == "defaults":
            self.set_values(self.job_type.defaults())
            return
        presets = PRESETS.get(self.job_type.name, {})
        if name not in presets:
            known = ", ".join(["defaults", *presets])
            raise KeyError(f"job type {self.job_type.name!r} has no preset {name!r}; known: {known}")
        self.set_values(presets[name])

    @classmethod
    def from_job(cls, job_dir: str | os.PathLike, *, project_dir: str | os.PathLike | None = None,
                 client: Any = None) -> JobForm:
        """Re-open a job from its ``job.star`` (:func:`~subtomo_nb.jobs.jobdir.read_job`).

        **Run** then copies it into a new job directory; **Continue** (if the job type can be
        continued and the directory has an ``*_optimiser.star``) runs on in the same directory.

        Parameters
        ----------
        job_dir : str or os.PathLike
            ``<project>/<Process>/jobNNN/``.
        project_dir : str or os.PathLike, optional
            Default: two levels above ``job_dir``.
        client : dask.distributed.Client, optional

        Returns
        -------
        JobForm
        """
        record = read_job(job_dir)
        d = Path(job_dir).absolute()
        form = cls(record.job_type, project_dir if project_dir is not None else d.parent.parent,
                   values=record.values, client=client)
        form.job_dir = d
        form.status.value = f"re-opened {html.escape(form._relative(d))} ({record.status})"
        form._update_buttons()
        return form

    # -- validation -----------------------------------------------------------------------------

    def validate(self, *, is_continue: bool = False) -> dict[str, str]:
        """Check the values with the registry's rules and show each message under its field.

        Parameters
        ----------
        is_continue : bool
            Validate for continue mode.

        Returns
        -------
        dict of str to str
            Field key -> message (empty when all is well).
        """
        raw = {p.key: self.fields[p.key].value for p in self.job_type.params}
        errors = validate_values(self.job_type, raw, project_dir=self.project_dir, is_continue=is_continue)
        self.show_errors(errors)
        return errors

    def show_errors(self, errors: Mapping[str, str]) -> None:
        """Write messages under their fields (and clear the others); opens the first bad field's tab."""
        for key, message in self.messages.items():
            text = errors.get(key, "")
            message.value = f'<span style="{_ERROR_STYLE}">{html.escape(text)}</span>' if text else ""
        bad = [p for p in self.job_type.params if p.key in errors]
        if bad:
            self.tab.selected_index = self.job_type.tabs.index(bad[0].tab)
            self._set_status(f"{len(errors)} invalid field(s): nothing was started", "invalid")
        elif errors:
            self._set_status("invalid: " + "; ".join(errors.values()), "invalid")
        elif self.state == "invalid":
            self._set_status("values are valid", "idle")

    # -- running --------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether a job started by this form is still running."""
        return self._thread is not None and self._thread.is_alive()

    def can_continue(self) -> bool:
        """Whether :attr:`job_dir` can be continued (a "Continue from here" field and an optimiser file)."""
        if self.job_dir is None or "fn_cont" not in self.job_type or not self.job_dir.is_dir():
            return False
        try:
            record = read_job(self.job_dir)
        except (OSError, ValueError, KeyError):
            return False
        return "fn_cont" in record.job_type and last_optimiser(self.job_dir) is not None

    def run(self) -> bool:
        """Validate, then run the job in a new job directory in a background thread.

        Returns
        -------
        bool
            Whether a job was started (False: invalid values, or a job is already running).
        """
        return self._start(continue_dir=None)

    def continue_job(self) -> bool:
        """Fill ``fn_cont`` with the last ``*_optimiser.star`` of :attr:`job_dir` and run there.

        Returns
        -------
        bool
            Whether the job was started.
        """
        if not self.can_continue():
            self._set_status("nothing to continue (no job directory with an _optimiser.star)", self.state)
            return False
        assert self.job_dir is not None
        optimiser = last_optimiser(self.job_dir)
        assert optimiser is not None
        self.fields["fn_cont"].value = self._relative(optimiser, directory=False)
        return self._start(continue_dir=self.job_dir)

    def stop(self) -> None:
        """Ask the running job to stop at its next progress event (raises :class:`JobStopped` there)."""
        if self.running:
            self._stop.set()
            self._set_status("stop requested: the job stops at its next progress event", "running")

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background run; True if it has ended (or none was started).

        Ctrl-C (the notebook's interrupt) while waiting stops the job as **Stop** does and waits
        for it to end cleanly; the status then names the iteration it stopped at.
        """
        thread = self._thread
        if thread is not None:
            try:
                thread.join(timeout)
            except KeyboardInterrupt:
                self.stop()
                thread.join()
            return not thread.is_alive()
        return True

    def stopped_message(self) -> str:
        """What the status says after a stop: the job, its last finished iteration, and how to go on."""
        where = self._relative(self.job_dir)
        last = last_optimiser(self.job_dir) if self.job_dir is not None and self.job_dir.is_dir() else None
        m = re.search(r"_it(\d+)", last.name) if last is not None else None
        if m is None:
            return f"stopped: {where} (RELION_JOB_EXIT_ABORTED) before any iteration finished"
        text = f"stopped: {where} (RELION_JOB_EXIT_ABORTED) after iteration {int(m.group(1))}"
        if self.can_continue():
            text += f": press Continue to go on from {last.name}"
        return text

    def _start(self, continue_dir: Path | None) -> bool:
        if self.running:
            self._set_status("a job is already running", "running")
            return False
        is_continue = continue_dir is not None
        errors = self.validate(is_continue=is_continue)
        if errors:
            return False
        values = self.values
        self._stop.clear()
        self.error = None
        self._before = self._existing_jobs()
        self._started = time.time()
        self._close_bar()
        if continue_dir is not None:
            self.job_dir = continue_dir
        what = f"continuing {self._relative(continue_dir)}" if is_continue else f"running {self.job_type.title}"
        self._set_status(what + " ...", "running")
        self._update_buttons(running=True)
        self._thread = threading.Thread(target=self._worker, args=(values, continue_dir),
                                        name=f"JobForm-{self.job_type.name}", daemon=True)
        self._thread.start()
        return True

    def _existing_jobs(self) -> set[str]:
        process = self.project_dir / self.job_type.process
        return {p.name for p in process.iterdir()} if process.is_dir() else set()

    def _new_job_dir(self) -> Path | None:
        new = sorted(self._existing_jobs() - self._before)
        return self.project_dir / self.job_type.process / new[-1] if new else None

    def _worker(self, values: dict[str, Any], continue_dir: Path | None) -> None:
        try:
            d = run_job(self.job_type, values, self.project_dir, client=self.client, progress=self._on_progress,
                        job_dir=continue_dir)
        except JobStopped as exc:
            self.error = exc
            self.job_dir = continue_dir or self._new_job_dir() or self.job_dir
            self._set_status(self.stopped_message(), "stopped")
        except JobFailedError as exc:
            self.error = exc
            self.job_dir = exc.job_dir
            cause = exc.__cause__
            why = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
            self._set_status(f"failed: {self._relative(exc.job_dir)}: {why}", "failed")
        except JobValidationError as exc:
            self.error = exc
            self.show_errors(exc.errors)
        except BaseException as exc:  # noqa: BLE001 - report anything that ends the thread
            self.error = exc
            self._set_status(f"failed: {type(exc).__name__}: {exc}", "failed")
        else:
            self.job_dir = d
            self._set_status(f"finished: {self._relative(d)} in {time.time() - self._started:.1f} s", "finished")
        finally:
            self._close_bar()
            self._update_buttons(running=False)

    def _on_progress(self, event: Progress) -> None:
        """The progress callback handed to :func:`run_job`: show the event, then honour Stop."""
        self.post_progress(event)
        if self._stop.is_set():
            raise JobStopped("stopped from the notebook form")

    def post_progress(self, event: Progress | str) -> None:
        """Show one progress event: append it to the log and redraw the FSC plot if it has a curve.

        Safe to call from any thread.
        """
        if isinstance(event, str):
            event = Progress(message=event)
        with self._lock:
            if event.is_particle_count:
                self._count_particles(event)
                return
            self.events.append(event)
            self._log_lines.append(html.escape(event.format()))
            self.log.value = ('<pre style="margin:0;font-size:85%;white-space:pre-wrap">'
                              + "\n".join(self._log_lines) + "</pre>")
            if event.fsc is not None:
                png = render_fsc(self.events)
                if png is not None:
                    self.fsc_image.value = png
            if self.state == "running" and event.fraction is not None and not self._stop.is_set():
                where = self._relative(self._new_job_dir() or self.job_dir)
                self.status.value = html.escape(f"running {where}: {100 * event.fraction:.0f}% done")

    @staticmethod
    def _notebook_bar(**kwargs: Any) -> Any:
        from tqdm.notebook import tqdm

        return tqdm(display=False, **kwargs)

    def _close_bar(self) -> None:
        """Remove the particle bar (a new run or iteration starts a new one)."""
        with self._lock:
            self._particles.close()
            self.particles_bar.children = ()

    def _count_particles(self, event: Progress) -> None:
        """Move the tqdm bar over the running iteration's particles (a new bar per iteration)."""
        if self._particles.update(event):
            self.particles_bar.children = (self._particles.bar.container,)

    # -- display helpers ------------------------------------------------------------------------

    def _relative(self, path: Path | None, *, directory: bool = True) -> str:
        """A path relative to the project (RELION's way of naming files), ``/``-terminated for directories."""
        if path is None:
            return "?"
        try:
            rel = Path(path).absolute().relative_to(self.project_dir).as_posix()
        except ValueError:
            return str(path)
        return rel + "/" if directory else rel

    def _set_status(self, text: str, state: str) -> None:
        with self._lock:
            self.state = state
            colour = {"failed": "#c00000", "invalid": "#c00000", "finished": "#007000"}.get(state)
            body = html.escape(text)
            self.status.value = f'<span style="color:{colour}">{body}</span>' if colour else body

    def _update_buttons(self, running: bool = False) -> None:
        self.run_button.disabled = running
        self.stop_button.disabled = not running
        self.continue_button.disabled = running or not self.can_continue()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"JobForm({self.job_type.name!r}, {str(self.project_dir)!r}, state={self.state!r})"
