"""Analysis view of a finished (or running) job: FSC per iteration, resolution and accuracy, map slices.

What is read (RELION's output names, so a RELION job directory works as well as ours):

* per iteration ``run_itNNN_half1_model.star`` (auto-refine; ``run_itNNN_model.star`` for
  single-set runs) and the final ``run_model.star``: table ``model_class_1``
  (``rlnResolution`` in 1/Å, ``rlnGoldStandardFsc``), ``model_general``
  (``rlnCurrentResolution``) and ``model_classes`` (``rlnAccuracyRotations``,
  ``rlnAccuracyTranslationsAngst``);
* ``run_itNNN_sampling.star`` / ``run_sampling.star``: the HEALPix order of each iteration;
* ``run_optimiser.star``: the number of the final iteration (``rlnCurrentIteration``);
* ``progress.jsonl`` (written by :func:`subtomo_nb.jobs.run_job`): seconds per iteration;
* the map: ``run_class001.mrc`` (else the last ``run_itNNN_half1_class001.mrc``), or the
  ``merged.mrc`` of a reconstruction (with its ``merged_fsc.star``).

The pure functions (:func:`iteration_table`, :func:`fsc_curves`, :func:`job_map`, the ``plot_*``
figure makers) need no display; :class:`AnalysisView` puts them in an ipywidgets panel, with PNGs
drawn by matplotlib's Agg canvas (works headless, in Voilà and on Binder).
"""

from __future__ import annotations

import html
import io
import math
import os
import re
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd

__all__ = [
    "AnalysisView",
    "iteration_table",
    "fsc_curves",
    "job_map",
    "central_slices",
    "plot_fsc_curves",
    "plot_history",
    "plot_slices",
    "figure_png",
]

_IT_MODEL = re.compile(r"^run_it(\d{3,})(?:_half1)?_model\.star$")
#: Columns of :func:`iteration_table`.
TABLE_COLUMNS = ("iteration", "resolution_A", "accuracy_rot_deg", "accuracy_trans_A", "healpix_order", "seconds",
                 "final")


def _iteration_models(job_dir: Path) -> dict[int, Path]:
    """Iteration -> model STAR file (half 1 where there are two)."""
    found: dict[int, Path] = {}
    for p in job_dir.glob("run_it*_model.star"):
        m = _IT_MODEL.match(p.name)
        if m and (int(m.group(1)) not in found or "_half1_" in p.name):
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def _final_iteration(job_dir: Path, iterations: list[int]) -> int:
    """Number of the final iteration (run_optimiser.star), else one after the last numbered one."""
    from subtomo_nb.io.star import read_star

    opt = job_dir / "run_optimiser.star"
    if opt.is_file():
        general = read_star(opt).get("optimiser_general") or {}
        if "rlnCurrentIteration" in general:
            return int(general["rlnCurrentIteration"])
    return (iterations[-1] + 1) if iterations else 1


def _model_row(path: Path) -> tuple[dict[str, float], pd.DataFrame | None]:
    from subtomo_nb.io.star import read_star

    blocks = read_star(path)
    general = blocks.get("model_general") or {}
    classes = blocks.get("model_classes")
    row = {"resolution_A": float(general.get("rlnCurrentResolution", math.nan)),
           "accuracy_rot_deg": math.nan, "accuracy_trans_A": math.nan}
    if isinstance(classes, pd.DataFrame) and len(classes):
        for key, label in (("accuracy_rot_deg", "rlnAccuracyRotations"),
                           ("accuracy_trans_A", "rlnAccuracyTranslationsAngst")):
            if label in classes.columns:
                value = float(classes[label].iloc[0])
                row[key] = value if value < 999.0 else math.nan  # RELION's "not yet estimated"
    table = blocks.get("model_class_1")
    curve = None
    if isinstance(table, pd.DataFrame) and "rlnGoldStandardFsc" in table.columns:
        curve = pd.DataFrame({"shell": np.arange(len(table)), "inv_resolution": table["rlnResolution"].to_numpy(float),
                              "fsc": table["rlnGoldStandardFsc"].to_numpy(float)})
    return row, curve


def _healpix_order(path: Path) -> float:
    from subtomo_nb.io.star import read_star

    if not path.is_file():
        return math.nan
    general = read_star(path).get("sampling_general") or {}
    return float(general.get("rlnHealpixOrder", math.nan))


def _seconds_per_iteration(job_dir: Path) -> dict[int, float]:
    from subtomo_nb.jobs.progress import read_progress

    out: dict[int, float] = {}
    for event in read_progress(job_dir):
        if event.iteration is not None and event.timings:
            # "time" is the whole iteration (its parts, e.g. "E-step", are inside it)
            timings = event.timings
            out[int(event.iteration)] = float(timings["time"] if "time" in timings else sum(timings.values()))
    return out


def _read(job_dir: str | os.PathLike) -> tuple[pd.DataFrame, dict[int, pd.DataFrame]]:
    d = Path(job_dir)
    models = _iteration_models(d)
    final = d / "run_model.star"
    final_it = _final_iteration(d, list(models)) if final.is_file() else None
    seconds = _seconds_per_iteration(d)
    rows, curves = [], {}
    entries = [(it, path, d / f"run_it{it:03d}_sampling.star", False) for it, path in models.items()]
    if final_it is not None:
        entries = [e for e in entries if e[0] != final_it]
        entries.append((final_it, final, d / "run_sampling.star", True))
    for it, path, sampling, is_final in entries:
        row, curve = _model_row(path)
        rows.append({"iteration": it, **row, "healpix_order": _healpix_order(sampling),
                     "seconds": seconds.get(it, math.nan), "final": is_final})
        if curve is not None and it > 0 and np.any(curve["fsc"].to_numpy() != 0):
            curves[it] = curve
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    if len(table):
        table = table.astype({"iteration": int, "final": bool})
    return table, curves


def iteration_table(job_dir: str | os.PathLike) -> pd.DataFrame:
    """Resolution, accuracies, sampling and time of every iteration of a refinement job.

    Parameters
    ----------
    job_dir : str or os.PathLike
        A ``Refine3D/jobNNN/`` directory (ours or RELION's).

    Returns
    -------
    pandas.DataFrame
        One row per iteration, oldest first, columns ``iteration``, ``resolution_A``
        (``rlnCurrentResolution``), ``accuracy_rot_deg`` (``rlnAccuracyRotations``),
        ``accuracy_trans_A`` (``rlnAccuracyTranslationsAngst``; NaN where RELION writes 999, not
        estimated yet), ``healpix_order``, ``seconds`` (from ``progress.jsonl``, NaN when not
        recorded) and ``final`` (the row of ``run_model.star``). Empty for a job without model
        files.
    """
    return _read(job_dir)[0]


def fsc_curves(job_dir: str | os.PathLike) -> dict[int, pd.DataFrame]:
    """Gold-standard FSC curve of every iteration (iteration 0, the start, has none).

    For a reconstruction job (no model files) the curve of its ``*_fsc.star`` is returned under
    iteration 0.

    Returns
    -------
    dict of int to pandas.DataFrame
        Iteration -> columns ``shell``, ``inv_resolution`` (1/Å) and ``fsc``; the final
        iteration is the last key.
    """
    table, curves = _read(job_dir)
    if not len(table):
        from subtomo_nb.jobs.sweep import final_fsc

        curve, _ = final_fsc(job_dir)
        if curve is not None:
            return {0: curve}
    return curves


def job_map(job_dir: str | os.PathLike) -> Path | None:
    """The job's current map: final ``run_class001.mrc``, else the last iteration's half-1 map,
    else ``merged.mrc`` (reconstruction); None when there is none yet."""
    d = Path(job_dir)
    for name in ("run_class001.mrc", "merged.mrc"):
        if (d / name).is_file():
            return d / name
    its = sorted(d.glob("run_it*_half1_class001.mrc")) or sorted(d.glob("run_it*_class001.mrc"))
    return its[-1] if its else None


def central_slices(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The XY, XZ and YZ central sections of a ``[z, y, x]`` volume.

    Returns
    -------
    tuple of numpy.ndarray
        ``volume[nz//2]`` (rows y, columns x), ``volume[:, ny//2, :]`` (rows z, columns x) and
        ``volume[:, :, nx//2]`` (rows z, columns y).
    """
    v = np.asarray(volume)
    if v.ndim != 3:
        raise ValueError(f"need a 3D volume, got shape {v.shape}")
    nz, ny, nx = v.shape
    return v[nz // 2], v[:, ny // 2, :], v[:, :, nx // 2]


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=80)


def plot_fsc_curves(curves: dict[int, pd.DataFrame], *, title: str = "FSC per iteration",
                    threshold: float = 0.143) -> Any:
    """FSC curves against 1/resolution, early iterations light, the last one bold.

    Parameters
    ----------
    curves : dict of int to pandas.DataFrame
        From :func:`fsc_curves`.
    title : str
    threshold : float
        Dashed horizontal line (0.143).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    fig = _figure((5.0, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    its = list(curves)
    cmap = matplotlib.colormaps["viridis"]
    for k, it in enumerate(its):
        c = curves[it]
        x = c["inv_resolution"].to_numpy(float)
        if not np.isfinite(x).all():
            x = c["shell"].to_numpy(float)
        last = k == len(its) - 1
        ax.plot(x, c["fsc"].to_numpy(float), color="k" if last else cmap(k / max(len(its) - 1, 1)),
                lw=2.0 if last else 1.0, label=f"it {it}")
    ax.axhline(threshold, color="grey", lw=0.8, ls="--")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("1/resolution (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_title(title, fontsize=10)
    if its:
        ax.legend(fontsize=7, loc="lower left", ncol=2 if len(its) > 6 else 1)
    fig.tight_layout()
    return fig


def plot_history(table: pd.DataFrame) -> Any:
    """Resolution and angular/translational accuracy against iteration (two panels).

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`iteration_table`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.ticker import MaxNLocator

    fig = _figure((8.0, 3.2))
    ax_res, ax_acc = fig.subplots(1, 2)
    it = table["iteration"].to_numpy(float)
    ax_res.plot(it, table["resolution_A"].to_numpy(float), "o-", color="C0")
    ax_res.set_xlabel("iteration")
    ax_res.set_ylabel("resolution (Å)")
    ax_res.set_title("current resolution", fontsize=10)
    ax_acc.plot(it, table["accuracy_rot_deg"].to_numpy(float), "o-", color="C1", label="rotations (°)")
    ax_acc.plot(it, table["accuracy_trans_A"].to_numpy(float), "s-", color="C2", label="translations (Å)")
    ax_acc.set_xlabel("iteration")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title("estimated accuracy", fontsize=10)
    ax_acc.legend(fontsize=7)
    for ax in (ax_res, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def plot_slices(volume: np.ndarray, *, title: str = "") -> Any:
    """The three central sections of a map side by side (grey, same contrast).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = _figure((8.0, 2.9))
    axes = fig.subplots(1, 3)
    sl = central_slices(volume)
    lo, hi = float(np.percentile(volume, 1)), float(np.percentile(volume, 99.9))
    for ax, s, name in zip(axes, sl, ("XY (z = centre)", "XZ (y = centre)", "YZ (x = centre)")):
        ax.imshow(s, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else None)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


class AnalysisView:
    """An ipywidgets panel of a job's outputs: summary, iteration table, FSC, history, map slices.

    Parameters
    ----------
    job_dir : str or os.PathLike
        A job directory (``Refine3D/jobNNN/``; a ``Reconstruct/jobNNN/`` shows its FSC and map).

    Attributes
    ----------
    job_dir : pathlib.Path
    table : pandas.DataFrame
        :func:`iteration_table` (as last read).
    curves : dict of int to pandas.DataFrame
        :func:`fsc_curves` (as last read).
    summary, table_html : ipywidgets.HTML
    fsc_image, history_image, slices_image : ipywidgets.Image
        PNGs (empty when there is nothing to show).
    map_choice : ipywidgets.Dropdown
        Which map the slices show (final, or an iteration's half-1 map).
    refresh_button : ipywidgets.Button
        Re-read the directory (e.g. while the job runs).
    widget : ipywidgets.VBox
    """

    def __init__(self, job_dir: str | os.PathLike) -> None:
        self.job_dir = Path(job_dir).absolute()
        self.summary = W.HTML()
        self.table_html = W.HTML()
        self.fsc_image = W.Image(format="png")
        self.history_image = W.Image(format="png")
        self.slices_image = W.Image(format="png")
        self.map_choice = W.Dropdown(description="map", layout=W.Layout(width="420px"))
        self.refresh_button = W.Button(description="Refresh", tooltip="Re-read the job directory")
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.map_choice.observe(lambda _c: self._draw_slices(), names="value")
        self.table = pd.DataFrame(columns=list(TABLE_COLUMNS))
        self.curves: dict[int, pd.DataFrame] = {}
        self.widget = W.VBox([
            W.HBox([self.summary, self.refresh_button]),
            self.table_html,
            W.HBox([self.fsc_image, self.history_image]),
            self.map_choice,
            self.slices_image,
        ])
        self.refresh()

    def _maps(self) -> list[tuple[str, str]]:
        d = self.job_dir
        options = []
        final = job_map(d)
        if final is not None and final.name in ("run_class001.mrc", "merged.mrc"):
            options.append((f"final ({final.name})", str(final)))
        for p in sorted(d.glob("run_it*_half1_class001.mrc"), reverse=True):
            m = re.search(r"_it(\d+)_", p.name)
            options.append((f"iteration {int(m.group(1)) if m else '?'} (half 1)", str(p)))
        return options

    def refresh(self) -> None:
        """Re-read the job directory and redraw everything."""
        from subtomo_nb.jobs import job_status
        from subtomo_nb.jobs.sweep import final_fsc

        self.table, self.curves = _read(self.job_dir)
        status = job_status(self.job_dir) if self.job_dir.is_dir() else "missing"
        final_res = math.nan
        if len(self.table):
            final_res = float(self.table["resolution_A"].iloc[-1])
        else:
            curve, final_res = final_fsc(self.job_dir)
            if curve is not None:
                self.curves = {0: curve}
        name = f"{self.job_dir.parent.name}/{self.job_dir.name}/"
        res_text = f"{final_res:.2f} Å" if math.isfinite(final_res) else "—"
        n_it = int(self.table["iteration"].max()) if len(self.table) else 0
        self.summary.value = (f"<b>{html.escape(name)}</b> ({html.escape(status)}): "
                              f"{n_it} iteration(s), resolution {res_text}")
        if len(self.table):
            shown = self.table.rename(columns={"resolution_A": "resolution (Å)", "accuracy_rot_deg": "acc. rot. (°)",
                                               "accuracy_trans_A": "acc. trans. (Å)", "seconds": "time (s)"})
            self.table_html.value = shown.to_html(index=False, float_format=lambda v: f"{v:.3g}", na_rep="—")
            self.history_image.value = figure_png(plot_history(self.table))
        else:
            self.table_html.value = ""
            self.history_image.value = b""
        self.fsc_image.value = figure_png(plot_fsc_curves(self.curves)) if self.curves else b""
        options = self._maps()
        current = self.map_choice.value
        self.map_choice.options = options
        if options:
            self.map_choice.value = current if current in [v for _, v in options] else options[0][1]
        self._draw_slices()

    def _draw_slices(self) -> None:
        from subtomo_nb.io.mrc import read_map

        path = self.map_choice.value
        if not path:
            self.slices_image.value = b""
            return
        volume, pixel = read_map(path)
        self.slices_image.value = figure_png(plot_slices(volume, title=f"{Path(path).name} ({pixel:g} Å/px)"))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"AnalysisView({str(self.job_dir)!r})"
