"""Parameter-sweep widget (ipywidgets): pick fields and the values to try, Run, compare.

:class:`SweepWidget` sits under a :class:`~subtomo_nb.widgets.forms.JobForm` (whose current
values are the sweep's base values) or takes the base values as a mapping. Up to three rows each
choose a field of the job type (any field but file inputs and the Running tab) and the values to
try, written as a comma-separated list (``30, 40, 50``; ``C1, C6``; ``Yes, No``) or an inclusive
range ``start:stop:step`` (``20:60:10``). The grid size is shown as it is typed. **Run sweep**
parses and validates first (a message under the bad row; nothing starts), then calls
:func:`subtomo_nb.jobs.sweep.run_sweep` in a background thread: the table fills in as jobs finish
and the comparison plot (FSC curves, resolution and time against the swept values) is redrawn
after each one.
"""

from __future__ import annotations

import html
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd

from subtomo_nb.jobs import JobType, JobValidationError, Param, get_job_type
from subtomo_nb.jobs.params import coerce
from subtomo_nb.jobs.sweep import RESULT_COLUMNS, SweepResult, plot_sweep, run_sweep, sweep_grid

__all__ = ["SweepWidget", "parse_values", "sweepable"]

_ERROR_STYLE = "color:#c00000;font-size:90%"
_MAX_RANGE = 1000


def sweepable(job_type: str | JobType) -> list[Param]:
    """Fields a sweep can vary: all but file inputs and the Running tab (queue, MPI, threads)."""
    jt = get_job_type(job_type)
    return [p for p in jt.params if p.type != "file" and p.tab != "Running"]


def parse_values(param: Param, text: str) -> list[Any]:
    """The values to try for one field, from what was typed.

    Parameters
    ----------
    param : Param
        The field.
    text : str
        ``"30, 40, 50"`` (a list; for text fields too: ``"C1, C6"``), or for numbers an inclusive
        range ``"start:stop:step"`` (``"20:60:10"`` -> 20, 30, 40, 50, 60).

    Returns
    -------
    list
        Typed values (bool/int/float/str), in the order given, without repeats.

    Raises
    ------
    ValueError
        Empty text, a value that does not fit the field (not a number, not one of its choices,
        not Yes/No), a zero or wrong-signed step, or a range of more than 1000 values.
    """
    text = text.strip()
    if not text:
        raise ValueError("give the values to try, e.g. 30, 40, 50")
    if param.type in ("int", "float") and ":" in text:
        parts = [s.strip() for s in text.split(":")]
        if len(parts) != 3:
            raise ValueError(f"a range is start:stop:step, not {text!r}")
        try:
            start, stop, step = (float(s) for s in parts)
        except ValueError:
            raise ValueError(f"a range needs three numbers: {text!r}") from None
        if step == 0 or (stop - start) * step < 0:
            raise ValueError(f"step {step:g} does not go from {start:g} to {stop:g}")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        if n > _MAX_RANGE:
            raise ValueError(f"{n} values is too many for one sweep")
        raw: Sequence[Any] = [round(start + i * step, 10) for i in range(n)]
    else:
        raw = [s.strip() for s in text.split(",") if s.strip()]
    out: list[Any] = []
    for item in raw:
        value = coerce(param, item)
        if param.type == "choice" and value not in param.choices:
            raise ValueError(f"{value!r} is not one of {', '.join(param.choices)}")
        if value not in out:
            out.append(value)
    return out


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class SweepWidget:
    """Choose fields and values, run the grid of jobs on a dask client, see the table and the plot.

    Parameters
    ----------
    job_type : str or JobType
        The job type to sweep (``"refine3d"``, ``"initial_model"``, ...).
    project_dir : str or os.PathLike
        RELION project directory.
    base : JobForm or mapping, optional
        Base values: a job form (its values at the time **Run sweep** is pressed) or a mapping.
        Default: the job type's defaults.
    client : dask.distributed.Client, optional
        Where the jobs run (default: :func:`subtomo_nb.parallel.get_client` at every run).
    n_workers : int, optional
        Workers of a local cluster made for the sweep.
    rows : int
        Number of parameter rows (default 3).

    Attributes
    ----------
    params : list of ipywidgets.Dropdown
        Field chooser of each row (value ``""``: unused row).
    values : list of ipywidgets.Text
        Values to try of each row.
    messages : list of ipywidgets.HTML
        Parse errors of each row.
    size : ipywidgets.HTML
        The grid size (``3 × 2 = 6 jobs``).
    run_button : ipywidgets.Button
    status : ipywidgets.HTML
    table_html : ipywidgets.HTML
        The results table (rows of unfinished jobs marked ``queued``).
    plot_image : ipywidgets.Image
        The comparison plot (PNG).
    result : SweepResult or None
        The finished sweep.
    error : BaseException or None
    state : str
        ``"idle"``, ``"running"``, ``"finished"``, ``"failed"`` or ``"invalid"``.
    widget : ipywidgets.VBox
    """

    def __init__(
        self,
        job_type: str | JobType,
        project_dir: str | os.PathLike,
        *,
        base: Any = None,
        client: Any = None,
        n_workers: int | None = None,
        rows: int = 3,
    ) -> None:
        self.job_type = get_job_type(job_type)
        self.project_dir = Path(project_dir).absolute()
        self.base = base
        self.client = client
        self.n_workers = n_workers
        self.result: SweepResult | None = None
        self.error: BaseException | None = None
        self.state = "idle"
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._rows: list[dict[str, Any]] = []
        self._fsc: dict[str, pd.DataFrame] = {}
        self._keys: list[str] = []
        self._params = {p.key: p for p in sweepable(self.job_type)}
        options = [("(none)", "")] + [(f"{p.label.strip()} ({p.key})", p.key) for p in self._params.values()]
        self.params = [W.Dropdown(options=options, value="", layout=W.Layout(width="420px")) for _ in range(rows)]
        self.values = [W.Text(value="", placeholder="e.g. 30, 40, 50  or  20:60:10", layout=W.Layout(width="320px"))
                       for _ in range(rows)]
        self.hints = [W.HTML(value="") for _ in range(rows)]
        self.messages = [W.HTML(value="") for _ in range(rows)]
        for i in range(rows):
            self.params[i].observe(lambda change, i=i: self._on_param(i), names="value")
            self.values[i].observe(lambda change: self._update_size(), names="value")
        self.size = W.HTML(value="")
        self.run_button = W.Button(description="Run sweep", button_style="success",
                                   tooltip="Run one job per combination of the values, on the dask client")
        self.run_button.on_click(lambda _b: self.run())
        self.status = W.HTML(value="choose up to three fields and the values to try")
        self.table_html = W.HTML(value="")
        self.plot_image = W.Image(format="png")
        title = W.HTML(value=f"<b>Parameter sweep: {html.escape(self.job_type.title)}</b>")
        lines = [W.VBox([W.HBox([self.params[i], self.values[i], self.hints[i]]), self.messages[i]])
                 for i in range(rows)]
        self.widget = W.VBox([title, *lines, W.HBox([self.run_button, self.size]), self.status, self.table_html,
                              self.plot_image])
        self._update_size()

    # -- choosing ---------------------------------------------------------------------------------

    def set_sweep(self, ranges: Mapping[str, Sequence[Any] | str]) -> None:
        """Fill the rows from ``{field: values}`` (values as a list or as text), the rest cleared.

        Raises
        ------
        KeyError
            A field that cannot be swept.
        ValueError
            More fields than rows.
        """
        if len(ranges) > len(self.params):
            raise ValueError(f"at most {len(self.params)} fields per sweep")
        for key in ranges:
            if key not in self._params:
                raise KeyError(f"{key!r} cannot be swept (file inputs and Running fields cannot)")
        items = list(ranges.items())
        for i in range(len(self.params)):
            if i < len(items):
                key, vals = items[i]
                self.params[i].value = key
                self.values[i].value = vals if isinstance(vals, str) else ", ".join(_format(v) for v in vals)
            else:
                self.params[i].value = ""
                self.values[i].value = ""

    def _base_values(self) -> dict[str, Any]:
        if self.base is None:
            return {}
        if hasattr(self.base, "values") and hasattr(self.base, "job_type"):  # a JobForm
            return dict(self.base.values)
        return dict(self.base)

    def _on_param(self, i: int) -> None:
        key = self.params[i].value
        if not key:
            self.hints[i].value = ""
            self.values[i].value = ""
            return
        p = self._params[key]
        if p.type == "choice":
            hint = "choices: " + ", ".join(p.choices)
        elif p.type == "bool":
            hint = "Yes, No"
        elif p.min is not None and p.max is not None:
            hint = f"{p.type}, RELION's range {p.min:g}-{p.max:g}"
        else:
            hint = p.type
        self.hints[i].value = f'<span style="font-size:85%;color:#555">{html.escape(hint)}</span>'
        if not self.values[i].value:
            current = self._base_values().get(key, p.default_value())
            self.values[i].value = _format(coerce(p, current))
        self._update_size()

    def ranges(self, *, show: bool = True) -> dict[str, list[Any]]:
        """The fields and values of the filled rows; raises ValueError (messages under the rows).

        Parameters
        ----------
        show : bool
            Write the messages under the rows.

        Returns
        -------
        dict of str to list
        """
        out: dict[str, list[Any]] = {}
        errors: dict[int, str] = {}
        for i, (chooser, text) in enumerate(zip(self.params, self.values)):
            key = chooser.value
            if not key:
                continue
            if key in out:
                errors[i] = f"{key} is already swept in another row"
                continue
            try:
                out[key] = parse_values(self._params[key], text.value)
            except ValueError as exc:
                errors[i] = str(exc)
        if show:
            for i, message in enumerate(self.messages):
                text = errors.get(i, "")
                message.value = f'<span style="{_ERROR_STYLE}">{html.escape(text)}</span>' if text else ""
        if errors:
            raise ValueError("; ".join(errors.values()))
        if not out:
            raise ValueError("choose at least one field to sweep")
        return out

    def _update_size(self) -> None:
        try:
            ranges = self.ranges(show=False)
        except ValueError:
            self.size.value = ""
            return
        counts = [len(v) for v in ranges.values()]
        n = int(np.prod(counts))
        self.size.value = f"{' × '.join(map(str, counts))} = {n} job{'s' if n != 1 else ''}"

    # -- running ----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether a sweep started here is still running."""
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> bool:
        """Parse and check the rows, then run the sweep in a background thread.

        Returns
        -------
        bool
            Whether the sweep was started (False: bad values, or a sweep is running).
        """
        if self.running:
            self._set_status("a sweep is already running", "running")
            return False
        try:
            ranges = self.ranges()
        except ValueError as exc:
            self._set_status(f"invalid: {exc}; nothing was started", "invalid")
            return False
        base = self._base_values()
        grid = sweep_grid(ranges)
        self.result, self.error = None, None
        self._rows = [{**point, "resolution_A": math.nan, "seconds": math.nan, "status": "queued", "job_dir": "",
                       "worker": ""} for point in grid]
        self._fsc = {}
        self._keys = list(ranges)
        self.plot_image.value = b""
        self._render_table()
        self._set_status(f"running {len(grid)} {self.job_type.title} jobs ...", "running")
        self.run_button.disabled = True
        self._thread = threading.Thread(target=self._worker, args=(base, ranges), daemon=True,
                                        name=f"SweepWidget-{self.job_type.name}")
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background sweep; True if it has ended (or none was started)."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _worker(self, base: dict[str, Any], ranges: dict[str, list[Any]]) -> None:
        try:
            result = run_sweep(self.job_type, base, ranges, self.project_dir, client=self.client,
                               n_workers=self.n_workers, on_result=self._on_result)
            self._finish(result)
        except JobValidationError as exc:
            self.error = exc
            text = "; ".join(f"{k}: {m}" for k, m in exc.errors.items())
            for row in self._rows:
                row["status"] = "not run"
            self._render_table()
            self._set_status(f"invalid: {text}; nothing was started", "invalid")
        except BaseException as exc:  # noqa: BLE001 - report anything that ends the thread
            self.error = exc
            self._set_status(f"failed: {type(exc).__name__}: {exc}", "failed")
        finally:
            self.run_button.disabled = False

    def _finish(self, result: SweepResult) -> None:
        self.result = result
        with self._lock:
            self._rows = result.table.to_dict("records")
            self._fsc = dict(result.fsc)
        self._render_table()
        self._render_plot()
        n_ok = int((result.table["status"] == "succeeded").sum())
        text = f"finished: {n_ok} of {len(result.table)} jobs succeeded"
        if result.table["resolution_A"].notna().any():
            best = result.best()
            text += f"; best {best['resolution_A']:.2f} Å ({result.label(int(best.name))})"
        self._set_status(text, "finished")

    def _on_result(self, index: int, row: dict[str, Any]) -> None:
        from subtomo_nb.jobs.sweep import final_fsc

        with self._lock:
            self._rows[index] = row
            if row.get("job_dir"):
                curve, _ = final_fsc(self.project_dir / row["job_dir"])
                if curve is not None:
                    self._fsc[row["job_dir"]] = curve
            done = sum(r["status"] != "queued" for r in self._rows)
        self._render_table()
        self._render_plot()
        self._set_status(f"running: {done} of {len(self._rows)} jobs done", "running")

    def _partial_result(self) -> SweepResult:
        table = pd.DataFrame(self._rows, columns=[*self._keys, *RESULT_COLUMNS])
        return SweepResult(self.job_type, self.project_dir, tuple(self._keys), self._base_values(), table,
                           dict(self._fsc))

    def _render_table(self) -> None:
        with self._lock:
            table = pd.DataFrame(self._rows, columns=[*self._keys, *RESULT_COLUMNS])
        shown = table.drop(columns=["worker"]).rename(columns={"resolution_A": "resolution (Å)", "seconds": "time (s)"})
        def number(fmt: str) -> Any:
            return lambda v: "—" if pd.isna(v) else format(v, fmt)

        self.table_html.value = shown.to_html(index=False, na_rep="—",
                                              formatters={"resolution (Å)": number(".2f"), "time (s)": number(".1f")})

    def _render_plot(self) -> None:
        from subtomo_nb.widgets.analysis import figure_png

        with self._lock:
            partial = self._partial_result()
        done = partial.table[partial.table["status"] != "queued"]
        if not len(done):
            return
        partial.table = done.reset_index(drop=True)
        self.plot_image.value = figure_png(plot_sweep(partial))

    def _set_status(self, text: str, state: str) -> None:
        self.state = state
        colour = {"failed": "#c00000", "invalid": "#c00000", "finished": "#007000"}.get(state)
        body = html.escape(text)
        self.status.value = f'<span style="color:{colour}">{body}</span>' if colour else body

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"SweepWidget({self.job_type.name!r}, {str(self.project_dir)!r}, state={self.state!r})"
