"""Parameter sweeps: a grid of jobs of one job type, run on a dask client, compared in one table.

A sweep takes a job type of the registry, base values (any of the job's fields, as a form would
hold them) and, for a few fields, the values to try; every combination (the Cartesian product,
first field slowest) becomes its own RELION-like job directory (``Refine3D/job012/`` ...),
made and run by :func:`~subtomo_nb.jobs.jobdir.run_job` inside one dask task per job. The result
is a :class:`SweepResult`: a pandas table (the swept values, the final resolution, the wall time,
the status and the job directory of every job) and the final FSC curve of every job, with
:meth:`SweepResult.plot` drawing FSC curves, resolution and time against the swept values.

Every grid point is validated before anything runs (:func:`~subtomo_nb.jobs.validate.validate`);
one bad point starts nothing. A job that fails is recorded as RELION does
(``RELION_JOB_EXIT_FAILURE`` in its directory) and appears in the table with status
``"failed"`` and no resolution; the other jobs go on.

Job numbers are given by the workers as the jobs start (RELION's one counter per project; the
directory is created race-free), so the table, not the numbering, links values to job
directories.

Example
-------
>>> from subtomo_nb.jobs.sweep import run_sweep                                 # doctest: +SKIP
>>> result = run_sweep("refine3d", base, {"ini_high": [30, 40, 50],
...                                       "particle_diameter": [200, 230]}, "project")
>>> result.table[["ini_high", "particle_diameter", "resolution_A", "seconds"]]
>>> result.plot()
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .jobdir import JobValidationError, job_status, run_job
from .params import JobType, coerce
from .progress import read_progress
from .registry import get_job_type
from .validate import validate

__all__ = ["SweepResult", "sweep_grid", "run_sweep", "final_fsc", "plot_sweep"]

#: Columns of :attr:`SweepResult.table` after the swept parameters.
RESULT_COLUMNS = ("resolution_A", "seconds", "status", "job_dir", "worker")


def sweep_grid(ranges: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """All combinations of the values to try, first parameter slowest.

    Parameters
    ----------
    ranges : mapping of str to sequence
        Field key -> values, e.g. ``{"ini_high": [30, 40, 50], "particle_diameter": [200, 230]}``.

    Returns
    -------
    list of dict
        One dict per grid point, keys in the order of ``ranges``.

    Raises
    ------
    ValueError
        When there is no parameter, or a parameter has no values.
    """
    if not ranges:
        raise ValueError("a sweep needs at least one parameter with values")
    keys = list(ranges)
    for key in keys:
        if isinstance(ranges[key], (str, bytes)) or len(ranges[key]) == 0:
            raise ValueError(f"{key}: give a non-empty list of values to try")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(list(ranges[k]) for k in keys))]


def final_fsc(job_dir: str | os.PathLike) -> tuple[pd.DataFrame | None, float]:
    """The final gold-standard FSC curve and resolution of a finished job.

    Read from the job's outputs: ``run_model.star`` of an auto-refine (``data_model_class_1``:
    ``rlnResolution``, ``rlnGoldStandardFsc``; ``rlnCurrentResolution``), else the ``*_fsc.star``
    of a reconstruction (``rlnFourierShellCorrelation``, ``rlnFinalResolution``), else the last
    progress event that carried an FSC curve and a resolution (``progress.jsonl``).

    Parameters
    ----------
    job_dir : str or os.PathLike

    Returns
    -------
    curve : pandas.DataFrame or None
        Columns ``shell``, ``inv_resolution`` (1/Å; NaN when unknown) and ``fsc``; None when the
        job recorded no FSC.
    resolution_A : float
        Final resolution (Å); NaN when unknown.
    """
    from subtomo_nb.io.star import read_star

    d = Path(job_dir)
    model = d / "run_model.star"
    if model.is_file():
        blocks = read_star(model)
        table = blocks.get("model_class_1")
        general = blocks.get("model_general") or {}
        res = float(general.get("rlnCurrentResolution", math.nan))
        if isinstance(table, pd.DataFrame) and "rlnGoldStandardFsc" in table.columns:
            curve = pd.DataFrame({"shell": np.arange(len(table)),
                                  "inv_resolution": table["rlnResolution"].to_numpy(float),
                                  "fsc": table["rlnGoldStandardFsc"].to_numpy(float)})
            return curve, res
    for path in sorted(d.glob("*_fsc.star")):
        blocks = read_star(path)
        table = blocks.get("fsc")
        if isinstance(table, pd.DataFrame) and "rlnFourierShellCorrelation" in table.columns:
            res = float((blocks.get("general") or {}).get("rlnFinalResolution", math.nan))
            curve = pd.DataFrame({"shell": np.arange(len(table)),
                                  "inv_resolution": table["rlnResolution"].to_numpy(float),
                                  "fsc": table["rlnFourierShellCorrelation"].to_numpy(float)})
            return curve, res
    curve, res = None, math.nan
    for event in read_progress(d):
        if event.resolution_A is not None:
            res = float(event.resolution_A)
        if event.fsc is not None and len(event.fsc) > 0:
            y = np.array([np.nan if v is None else float(v) for v in event.fsc])
            if event.fsc_resolution_A is not None and len(event.fsc_resolution_A) == len(y):
                x = np.array([1.0 / float(r) if r not in (None, 0) else 0.0 for r in event.fsc_resolution_A])
            else:
                x = np.full(len(y), np.nan)
            curve = pd.DataFrame({"shell": np.arange(len(y)), "inv_resolution": x, "fsc": y})
    return curve, res


def _run_one(job_type: str, values: dict[str, Any], project_dir: str) -> dict[str, Any]:
    """One sweep job (runs inside a dask task): make its job directory, run it, report."""
    worker = ""
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        pass
    start = time.perf_counter()
    d = run_job(job_type, values, project_dir, check=False, raise_errors=False)
    return {"job_dir": str(d), "seconds": time.perf_counter() - start, "worker": worker}


@dataclass
class SweepResult:
    """The outcome of a parameter sweep.

    Attributes
    ----------
    job_type : JobType
    project_dir : pathlib.Path
    parameters : tuple of str
        The swept fields, in grid order.
    base_values : dict
        The values every job shares (before the swept fields are set).
    table : pandas.DataFrame
        One row per grid point, in grid order: the swept values, ``resolution_A`` (final
        resolution, NaN if unknown or failed), ``seconds`` (wall time of the job),
        ``status`` (``"succeeded"``, ``"failed"``, ...), ``job_dir`` (project-relative,
        ``Refine3D/job012/``) and ``worker`` (dask worker address).
    fsc : dict of str to pandas.DataFrame
        Final FSC curve per job directory (key as in ``table.job_dir``); columns ``shell``,
        ``inv_resolution`` (1/Å) and ``fsc``.
    """

    job_type: JobType
    project_dir: Path
    parameters: tuple[str, ...]
    base_values: dict[str, Any]
    table: pd.DataFrame
    fsc: dict[str, pd.DataFrame] = field(default_factory=dict)

    def label(self, row: int) -> str:
        """A short label of a grid point (``"ini_high=40, particle_diameter=230"``)."""
        r = self.table.iloc[row]
        return ", ".join(f"{p}={_fmt(r[p])}" for p in self.parameters)

    def best(self) -> pd.Series:
        """The row with the best (smallest) final resolution.

        Raises
        ------
        ValueError
            When no job reported a resolution.
        """
        ok = self.table["resolution_A"].notna()
        if not ok.any():
            raise ValueError("no job of the sweep reported a resolution")
        return self.table.loc[self.table.loc[ok, "resolution_A"].idxmin()]

    def plot(self, fig: Any = None) -> Any:
        """One comparison figure (see :func:`plot_sweep`)."""
        return plot_sweep(self, fig=fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _grid_values(jt: JobType, base_values: Mapping[str, Any], grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Typed values of every grid point; raises JobValidationError naming the bad point."""
    unknown = [k for k in [*base_values, *grid[0]] if k not in jt]
    if unknown:
        raise JobValidationError({k: f"{k}: not a field of job type {jt.title!r}" for k in unknown})
    out = []
    for point in grid:
        values = {**dict(base_values), **point}
        try:
            typed = {k: coerce(jt.param(k), v) for k, v in values.items()}
        except ValueError as exc:
            raise JobValidationError({str(exc).split(":", 1)[0]: f"{exc} (grid point {point})"}) from None
        out.append(typed)
    return out


def run_sweep(
    job_type: str | JobType,
    base_values: Mapping[str, Any],
    ranges: Mapping[str, Sequence[Any]],
    project_dir: str | os.PathLike,
    *,
    client: Any = None,
    n_workers: int | None = None,
    on_result: Callable[[int, dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Run the grid of jobs of a parameter sweep on a dask client, one task per job.

    Parameters
    ----------
    job_type : str or JobType
        Registry name (``"refine3d"``, ``"initial_model"``, ``"reconstruct"``, ...).
    base_values : mapping
        Values shared by every job (file names relative to ``project_dir``, as in a form).
    ranges : mapping of str to sequence
        Field -> values to try (e.g. ``{"ini_high": [30, 40, 50], "particle_diameter": [200, 230]}``).
    project_dir : str or os.PathLike
        RELION project directory; the jobs go into ``<project>/<Process>/jobNNN/``.
    client : dask.distributed.Client, optional
        Where to run; default :func:`subtomo_nb.parallel.get_client` (the current client, or a
        new ``LocalCluster``, closed again at the end).
    n_workers : int, optional
        Workers of a new local cluster (default: one per core, at most one per job).
    on_result : callable, optional
        Called in this process as ``on_result(index, row)`` when the job of grid point ``index``
        has finished (``row``: that row of the table as a dict), e.g. to update a widget.

    Returns
    -------
    SweepResult

    Raises
    ------
    ValueError
        No parameters or an empty list of values.
    subtomo_nb.jobs.JobValidationError
        A field the job type lacks, or a grid point that does not validate (nothing was run).
    """
    from subtomo_nb.parallel import close_if_owned, get_client

    jt = get_job_type(job_type)
    project = Path(project_dir).absolute()
    grid = sweep_grid(ranges)
    all_values = _grid_values(jt, base_values, grid)
    for point, values in zip(grid, all_values):
        errors = validate(jt, values, project_dir=project)
        if errors:
            where = ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())
            raise JobValidationError({k: f"{m} (grid point {where})" for k, m in errors.items()})

    if client is None:
        n = n_workers if n_workers is not None else min(len(grid), max(os.cpu_count() or 1, 1))
        client = get_client(n_workers=n, gpu=False, dashboard_address=None)
    rows: list[dict[str, Any]] = [dict(point) for point in grid]
    fsc: dict[str, pd.DataFrame] = {}
    try:
        from distributed import as_completed

        futures = {client.submit(_run_one, jt.name, values, str(project), pure=False,
                                 key=f"sweep-{jt.name}-{i}-{time.time_ns()}"): i
                   for i, values in enumerate(all_values)}
        for future in as_completed(list(futures)):
            i = futures[future]
            try:
                info = future.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker, a job that could not start
                rows[i].update(resolution_A=math.nan, seconds=math.nan, status=f"error: {type(exc).__name__}: {exc}",
                               job_dir="", worker="")
            else:
                d = Path(info["job_dir"])
                curve, res = final_fsc(d)
                rel = f"{d.parent.name}/{d.name}/"
                status = job_status(d)
                rows[i].update(resolution_A=res if status == "succeeded" else math.nan, seconds=info["seconds"],
                               status=status, job_dir=rel, worker=info["worker"])
                if curve is not None:
                    fsc[rel] = curve
            if on_result is not None:
                on_result(i, dict(rows[i]))
    finally:
        close_if_owned(client)
    table = pd.DataFrame(rows, columns=[*grid[0], *RESULT_COLUMNS])
    return SweepResult(jt, project, tuple(grid[0]), dict(base_values), table, fsc)


def plot_sweep(result: SweepResult, *, fig: Any = None) -> Any:
    """Compare the jobs of a sweep: FSC curves, final resolution and time against the swept values.

    Left: the final FSC curve of every job (against 1/resolution), with the 0.143 threshold.
    Middle: final resolution against the first swept parameter, one line per value of the other
    parameters. Right: the wall time of each job, the same way.

    Parameters
    ----------
    result : SweepResult
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (cleared); default a new Agg figure (no display needed).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    if fig is None:
        fig = Figure(figsize=(13.0, 3.8), dpi=90)
    else:
        fig.clear()
    ax_fsc, ax_res, ax_time = fig.subplots(1, 3)
    t = result.table
    for i in range(len(t)):
        curve = result.fsc.get(t["job_dir"].iloc[i])
        if curve is None:
            continue
        x = curve["inv_resolution"].to_numpy(float)
        if not np.isfinite(x).all():
            x = curve["shell"].to_numpy(float)
        ax_fsc.plot(x, curve["fsc"].to_numpy(float), lw=1.3, label=result.label(i))
    ax_fsc.axhline(0.143, color="grey", lw=0.8, ls="--")
    ax_fsc.set_ylim(-0.1, 1.05)
    ax_fsc.set_xlabel("1/resolution (1/Å)")
    ax_fsc.set_ylabel("FSC")
    ax_fsc.set_title("final FSC of each job", fontsize=10)
    if ax_fsc.get_legend_handles_labels()[0] and len(t) <= 12:
        ax_fsc.legend(fontsize=6, loc="lower left")

    first, others = result.parameters[0], result.parameters[1:]
    xs = list(dict.fromkeys(t[first].tolist()))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
    pos = {v: (float(v) if numeric else k) for k, v in enumerate(xs)}
    groups = t.groupby(list(others), sort=False) if others else [((), t)]
    for ax, column, ylabel in ((ax_res, "resolution_A", "final resolution (Å)"), (ax_time, "seconds", "time (s)")):
        for key, sub in groups:
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{p}={_fmt(v)}" for p, v in zip(others, key)) or None
            ax.plot([pos[v] for v in sub[first]], sub[column].to_numpy(float), "o-", label=label)
        if not numeric:
            ax.set_xticks(list(pos.values()), [_fmt(v) for v in xs])
        ax.set_xlabel(first)
        ax.set_ylabel(ylabel)
        if others:
            ax.legend(fontsize=7)
    ax_res.set_title("final resolution", fontsize=10)
    ax_time.set_title("wall time per job", fontsize=10)
    fig.suptitle(f"{result.job_type.title}: sweep of {' × '.join(result.parameters)} ({len(t)} jobs)", fontsize=11)
    fig.tight_layout()
    return fig
