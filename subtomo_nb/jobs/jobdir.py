"""RELION-like job directories: ``<Process>/jobNNN/`` with job.star, note.txt, run.out, markers.

* Numbering: one counter for the whole project, as RELION's pipeline: the next job is 1 + the
  highest ``jobNNN`` under any process directory (or RELION's ``rlnPipeLineJobCounter`` in
  ``default_pipeline.star`` if that is higher), three digits at least (``job007``).
* ``job.star``: RELION 5's layout (``RelionJob::write``): a list block ``data_job`` with
  ``rlnJobTypeLabel``, ``rlnJobIsContinue``, ``rlnJobIsTomo``, then a loop
  ``data_joboptions_values`` of ``rlnJobOptionVariable`` / ``rlnJobOptionValue`` pairs in key
  order (RELION's ``std::map``), values as RELION writes them (``Yes``/``No``, ``60``, text).
* ``note.txt``: the commands, as RELION records every execution of a job, plus the equivalent
  ``subtomo`` command line.
* ``run.out`` / ``run.err``: progress log and errors; ``progress.jsonl``: the same events as data.
* ``RELION_JOB_EXIT_SUCCESS`` / ``RELION_JOB_EXIT_FAILURE`` / ``RELION_JOB_EXIT_ABORTED``: empty
  marker files written when the run ends, which RELION's GUI reads as the job's status.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from subtomo_nb._memory import keep_freed_memory

from .commands import format_command, relion_commands, subtomo_command, output_name, job_prefix
from .devices import BACKEND_JOBS, backend_line
from .params import JobType, from_relion_string, to_relion_string
from .progress import ProgressCallback, ProgressLog
from .registry import get_job_type, job_type_for_label, job_type_for_process
from .scratch import job_scratch
from .validate import validate

__all__ = [
    "JobRecord",
    "JobValidationError",
    "JobFailedError",
    "JOB_STAR",
    "NOTE",
    "EXIT_SUCCESS",
    "EXIT_FAILURE",
    "EXIT_ABORTED",
    "job_numbers",
    "next_job_number",
    "create_job_dir",
    "write_job_star",
    "read_job_star",
    "read_job",
    "write_note",
    "job_status",
    "resolve_run_function",
    "job_execution",
    "run_job",
]

JOB_STAR = "job.star"
NOTE = "note.txt"
EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
_MARKERS = (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED)
_JOB_RE = re.compile(r"^job(\d{3,})$")
_COUNTER_RE = re.compile(r"_rlnPipeLineJobCounter\s+(\d+)")


class JobValidationError(ValueError):
    """The job's values did not pass :func:`~subtomo_nb.jobs.validate.validate`.

    Attributes
    ----------
    errors : dict of str to str
        Field key -> message.
    """

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("invalid job parameters:\n" + "\n".join(f"  {k}: {m}" for k, m in self.errors.items()))


class JobFailedError(RuntimeError):
    """The run function raised; the job directory has ``RELION_JOB_EXIT_FAILURE``.

    Attributes
    ----------
    job_dir : pathlib.Path
    """

    def __init__(self, job_dir: Path, error: BaseException) -> None:
        self.job_dir = Path(job_dir)
        super().__init__(f"job {job_dir} failed: {type(error).__name__}: {error}")


@dataclass
class JobRecord:
    """A job re-opened from its directory.

    Attributes
    ----------
    job_dir : pathlib.Path
    job_type : JobType
    values : dict
        Every field's value (defaults for fields job.star lacks).
    is_continue : bool
    is_tomo : bool
    type_label : str
        ``rlnJobTypeLabel`` as written.
    extra : dict of str to str
        job.star entries that are not fields of the job type (e.g. ``qsub_extra1``), raw.
    status : str
        ``"succeeded"``, ``"failed"``, ``"aborted"`` or ``"running"`` (no marker yet).
    """

    job_dir: Path
    job_type: JobType
    values: dict[str, Any]
    is_continue: bool = False
    is_tomo: bool = True
    type_label: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    status: str = "running"


def job_numbers(project_dir: str | os.PathLike) -> list[int]:
    """Numbers of all ``<Process>/jobNNN`` directories of a project, sorted."""
    root = Path(project_dir)
    found = []
    if root.is_dir():
        for process in root.iterdir():
            if not process.is_dir() or process.name.startswith("."):
                continue
            for job in process.iterdir():
                m = _JOB_RE.match(job.name)
                if m and job.is_dir():
                    found.append(int(m.group(1)))
    return sorted(found)


def next_job_number(project_dir: str | os.PathLike) -> int:
    """The number the next job of a project gets (RELION's pipeline job counter).

    1 + the highest ``jobNNN`` under any process directory; RELION's ``rlnPipeLineJobCounter``
    from ``default_pipeline.star`` wins when it is higher (jobs deleted in RELION keep their
    numbers used).
    """
    numbers = job_numbers(project_dir)
    nxt = (numbers[-1] + 1) if numbers else 1
    pipeline = Path(project_dir) / "default_pipeline.star"
    if pipeline.is_file():
        m = _COUNTER_RE.search(pipeline.read_text(errors="replace"))
        if m:
            nxt = max(nxt, int(m.group(1)))
    return nxt


def create_job_dir(job_type: str | JobType, project_dir: str | os.PathLike) -> Path:
    """Create ``<project>/<Process>/jobNNN/`` with the next free number (safe against races).

    Returns
    -------
    pathlib.Path
        The new, empty job directory (absolute).
    """
    jt = get_job_type(job_type)
    root = Path(project_dir).absolute()
    (root / jt.process).mkdir(parents=True, exist_ok=True)
    n = next_job_number(root)
    while True:
        path = root / jt.process / f"job{n:03d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n = max(n + 1, next_job_number(root))


def write_job_star(
    job_dir: str | os.PathLike,
    job_type: str | JobType,
    values: Mapping[str, Any],
    *,
    is_continue: bool = False,
    extra: Mapping[str, str] | None = None,
) -> Path:
    """Write ``job.star`` in RELION 5's layout.

    Parameters
    ----------
    job_dir : str or os.PathLike
    job_type : str or JobType
    values : mapping
        Job values (missing keys: defaults).
    is_continue : bool
        ``rlnJobIsContinue``.
    extra : mapping of str to str, optional
        Further raw entries to keep (e.g. read from a RELION job.star).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    import pandas as pd

    from subtomo_nb.io.star import write_star

    jt = get_job_type(job_type)
    v = jt.complete(values)
    entries = {key: to_relion_string(jt.param(key), value) for key, value in v.items()}
    for key, text in (extra or {}).items():
        entries.setdefault(key, str(text))
    keys = sorted(entries)
    table = pd.DataFrame({"rlnJobOptionVariable": pd.Series(keys, dtype=object),
                          "rlnJobOptionValue": pd.Series([entries[k] for k in keys], dtype=object)})
    head = {"rlnJobTypeLabel": jt.type_label, "rlnJobIsContinue": int(bool(is_continue)),
            "rlnJobIsTomo": int(jt.is_tomo)}
    path = Path(job_dir) / JOB_STAR
    write_star(path, {"job": head, "joboptions_values": table})
    return path


def read_job_star(path: str | os.PathLike) -> tuple[str, bool, bool, dict[str, str]]:
    """Read a ``job.star`` (ours or RELION's).

    Returns
    -------
    type_label : str
    is_continue : bool
    is_tomo : bool
    raw : dict of str to str
        Variable -> value text.
    """
    import pandas as pd

    from subtomo_nb.io.errors import InputError
    from subtomo_nb.io.star import read_star

    blocks = read_star(path)
    head = blocks.get("job")
    table = blocks.get("joboptions_values")
    if not isinstance(head, dict) or not isinstance(table, pd.DataFrame):
        raise InputError(path, "not a RELION job.star (needs data_job and data_joboptions_values)")
    label = str(head.get("rlnJobTypeLabel", head.get("rlnJobType", "")))
    raw: dict[str, str] = {}
    for key, value in zip(table["rlnJobOptionVariable"], table["rlnJobOptionValue"]):
        if isinstance(value, float) and value != value:
            text = ""
        elif isinstance(value, float) and value == int(value) and abs(value) < 1e15:
            text = str(int(value))
        else:
            text = str(value)
        raw[str(key)] = text
    return label, bool(int(head.get("rlnJobIsContinue", 0))), bool(int(head.get("rlnJobIsTomo", 0))), raw


def job_status(job_dir: str | os.PathLike) -> str:
    """``"succeeded"``, ``"failed"``, ``"aborted"`` (RELION's marker files) or ``"running"``."""
    d = Path(job_dir)
    for marker, status in ((EXIT_SUCCESS, "succeeded"), (EXIT_FAILURE, "failed"), (EXIT_ABORTED, "aborted")):
        if (d / marker).exists():
            return status
    return "running"


def read_job(job_dir: str | os.PathLike) -> JobRecord:
    """Re-open a job from its directory (to continue it, or to copy its values into a new form).

    The job type comes from ``rlnJobTypeLabel`` (else from the process directory name).

    Parameters
    ----------
    job_dir : str or os.PathLike
        ``<Process>/jobNNN/`` holding a ``job.star``.

    Returns
    -------
    JobRecord

    Raises
    ------
    subtomo_nb.io.errors.InputError
        Missing or malformed job.star, or a value that does not fit its field (named).
    KeyError
        For a job type this package does not know.
    """
    from subtomo_nb.io.errors import InputError

    d = Path(job_dir)
    path = d / JOB_STAR
    label, is_continue, is_tomo, raw = read_job_star(path)
    try:
        jt = job_type_for_label(label)
    except KeyError:
        jt = job_type_for_process(d.absolute().parent.name)
    values = jt.defaults()
    extra: dict[str, str] = {}
    for key, text in raw.items():
        if key in jt:
            try:
                values[key] = from_relion_string(jt.param(key), text)
            except ValueError as exc:
                raise InputError(path, str(exc), field=key) from None
        else:
            extra[key] = text
    return JobRecord(d, jt, values, is_continue, is_tomo, label, extra, job_status(d))


def write_note(
    job_dir: str | os.PathLike,
    job_type: str | JobType,
    values: Mapping[str, Any],
    *,
    relative_dir: str | None = None,
    is_continue: bool = False,
    command: Sequence[str] | None = None,
) -> Path:
    """Append the job's command lines to ``note.txt`` (RELION's record of every execution).

    The file is rewritten whole under a temporary name and renamed (never half written).

    Parameters
    ----------
    job_dir : str or os.PathLike
    job_type : str or JobType
    values : mapping
    relative_dir : str, optional
        Project-relative job directory used in the commands (default: ``<Process>/<jobNNN>/``
        from ``job_dir``).
    is_continue : bool
    command : sequence of str, optional
        The ``subtomo`` command line as it was run (default: the one equivalent to ``values``).

    Returns
    -------
    pathlib.Path
    """
    from subtomo_nb.io.star import _atomic_write_text

    jt = get_job_type(job_type)
    d = Path(job_dir)
    rel = relative_dir or f"{d.absolute().parent.name}/{d.name}/"
    v = jt.complete(values)
    nr_mpi = int(v.get("nr_mpi", 1))
    lines = [f" ++++ Executing new job on {time.ctime()}", " ++++ with the following command(s): "]
    for argv in relion_commands(jt, v, rel, is_continue=is_continue):
        lines.append(format_command(argv, nr_mpi))
    as_run = list(command) if command is not None else subtomo_command(jt, v, job_prefix(jt, rel) + output_name(jt))
    lines += [" ++++ ", " ++++ run by subtomo_nb as: ", format_command(as_run), " ++++ ", ""]
    path = d / NOTE
    previous = path.read_text() if path.is_file() else ""
    _atomic_write_text(path, previous + "\n".join(lines))
    return path


def resolve_run_function(dotted: str) -> Callable[..., Any]:
    """Import the run function named ``"package.module.function"`` (or ``"package.module:function"``).

    Raises
    ------
    ImportError
        When the module or the function does not exist (yet); the message names it.
    """
    module_name, sep, attr = dotted.replace(":", ".").rpartition(".")
    if not sep:
        raise ImportError(f"run function {dotted!r} is not a dotted path")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"run function {dotted} is not available: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ImportError(f"run function {dotted} is not available: {module_name} has no function {attr}")
    return fn


def _touch(path: Path) -> None:
    path.write_text("")


def with_worker_count(values: Mapping[str, Any], client: Any) -> dict[str, Any]:
    """``values`` with ``nr_threads`` set to the number of workers of the dask ``client`` the job runs on.

    The job's record (``job.star``, the ``--j`` of ``note.txt``) then says what was used. Values that
    attach the job to a cluster of their own (``scheduler_file`` / ``scheduler_address``), or no
    client, leave ``nr_threads`` as it is.
    """
    out = dict(values)
    if client is None or "nr_threads" not in out or out.get("scheduler_file") or out.get("scheduler_address"):
        return out
    from subtomo_nb.parallel.client import worker_count

    n = worker_count(client)
    if n > 0:
        out["nr_threads"] = n
    return out


def _project_relative_dir(d: Path, project: Path) -> str:
    """The job directory as RELION names it: project-relative, ending in ``/``."""
    from subtomo_nb.io._paths import project_relative

    return project_relative(d, project).rstrip("/") + "/"


@contextmanager
def job_execution(
    job_type: str | JobType,
    values: Mapping[str, Any],
    job_dir: str | os.PathLike,
    *,
    project_dir: str | os.PathLike,
    is_continue: bool = False,
    progress: ProgressCallback | None = None,
    command: Sequence[str] | None = None,
    log_traceback: bool = True,
    on_interrupt: Callable[[KeyboardInterrupt], str] | None = None,
) -> Iterator[ProgressLog]:
    """Record one execution of a job in its directory, as RELION's pipeliner does.

    Before the block: ``job.star`` and ``note.txt`` (both written under a temporary name, then
    renamed) and a ``run.out`` header (program, version, date, job directory, command, and for the
    jobs of :data:`~subtomo_nb.jobs.devices.BACKEND_JOBS` the backend they run on); old exit
    markers are removed. After it: a closing ``run.out`` line with the date and the seconds taken,
    and ``RELION_JOB_EXIT_SUCCESS`` / ``_FAILURE`` / ``_ABORTED``. Every write is inside
    ``job_dir`` (created if needed); the exception of a failed block propagates.

    Parameters
    ----------
    job_type : str or JobType
    values : mapping
        The job's complete values (``nr_threads``: the real worker count, see :func:`with_worker_count`).
    job_dir : str or os.PathLike
    project_dir : str or os.PathLike
        RELION's working directory; names in the commands are relative to it.
    is_continue : bool
    progress : callable, optional
        Also receives every event written to ``run.out``.
    command : sequence of str, optional
        The ``subtomo`` command line as run (default: the equivalent of ``values``).
    log_traceback : bool
        Write the traceback of a failure to ``run.err`` (the ``subtomo`` command does it itself).
    on_interrupt : callable, optional
        The closing ``run.out`` line of an interrupted run (e.g. how to continue it).

    Yields
    ------
    ProgressLog
        The job's log.
    """
    from subtomo_nb import __version__

    jt = get_job_type(job_type)
    v = jt.complete(values)
    d = Path(job_dir)
    d.mkdir(parents=True, exist_ok=True)
    for marker in _MARKERS:
        (d / marker).unlink(missing_ok=True)
    rel = _project_relative_dir(d, Path(project_dir))
    write_job_star(d, jt, v, is_continue=is_continue)
    write_note(d, jt, v, relative_dir=rel, is_continue=is_continue, command=command)
    log = ProgressLog(d, progress)
    as_run = list(command) if command is not None else subtomo_command(jt, v, job_prefix(jt, rel) + output_name(jt))
    log.write(f" ++++ subtomo_nb version {__version__}: {jt.title} ({jt.name}) in {rel}, started {time.ctime()}\n"
              f" ++++ command: {shlex.join(as_run)}")
    start = time.time()
    try:
        if jt.name in BACKEND_JOBS:
            log.write(backend_line(v))   # e.g. " ++++ backend: cupy (2 GPUs)"
        yield log
    except KeyboardInterrupt as exc:
        log.write(on_interrupt(exc) if on_interrupt is not None
                  else f" ++++ aborted at {time.ctime()} after {time.time() - start:.1f} s")
        _touch(d / EXIT_ABORTED)
        raise
    except Exception as exc:  # the job failed: record it as RELION does
        log.write(f"ERROR: {type(exc).__name__}: {exc}")
        if log_traceback:
            log.write(traceback.format_exc(), err=True)
        log.write(f" ++++ failed at {time.ctime()} after {time.time() - start:.1f} s")
        _touch(d / EXIT_FAILURE)
        raise
    log.write(f" ++++ finished successfully at {time.ctime()} after {time.time() - start:.1f} s")
    _touch(d / EXIT_SUCCESS)


def run_job(
    job_type: str | JobType,
    values: Mapping[str, Any],
    project_dir: str | os.PathLike,
    *,
    client: Any = None,
    progress: ProgressCallback | None = None,
    job_dir: str | os.PathLike | None = None,
    check: bool = True,
    raise_errors: bool = True,
) -> Path:
    """Run a job in a new RELION-like job directory of a project.

    Creates ``<project>/<Process>/jobNNN/``, writes ``job.star`` and ``note.txt``, calls the
    job type's run function with the job directory as its only output place, appends progress
    to ``run.out`` and writes ``RELION_JOB_EXIT_SUCCESS`` or ``RELION_JOB_EXIT_FAILURE``
    (:func:`job_execution`). With a ``client``, ``nr_threads`` is recorded as its number of
    workers (the ``--j`` the job ran with).

    The run function is called as ``run(values, job_dir, project_dir=..., progress=...,
    client=...)`` with every value complete and typed; file names in ``values`` are relative to
    ``project_dir`` (RELION's working directory). It must write only inside ``job_dir``.

    Parameters
    ----------
    job_type : str or JobType
    values : mapping
        Job values (missing keys: defaults).
    project_dir : str or os.PathLike
        RELION project directory.
    client : dask.distributed.Client, optional
        Passed to the run function.
    progress : callable, optional
        Also receives every :class:`~subtomo_nb.jobs.progress.Progress` event.
    job_dir : str or os.PathLike, optional
        Continue an existing job in this directory (``rlnJobIsContinue = 1``) instead of
        creating a new one.
    check : bool
        Validate the values first (no directory is created when they are invalid).
    raise_errors : bool
        Re-raise a failure of the run function as :class:`JobFailedError` (after the failure
        marker and the message are written); False: return the job directory.

    Returns
    -------
    pathlib.Path
        The job directory (absolute).

    Raises
    ------
    JobValidationError
        Invalid values (``check=True``).
    JobFailedError
        The run function failed (``raise_errors=True``).
    """
    jt = get_job_type(job_type)
    project = Path(project_dir).absolute()
    is_continue = job_dir is not None
    if check:
        errors = validate(jt, values, project_dir=project, is_continue=is_continue)
        if errors:
            raise JobValidationError(errors)
    unknown = [k for k in values if k not in jt]
    if unknown:
        raise JobValidationError({k: f"{k}: not a field of job type {jt.title!r}" for k in unknown})
    try:
        v = with_worker_count(jt.complete(values), client)
    except ValueError as exc:
        raise JobValidationError({str(exc).split(":", 1)[0]: str(exc)}) from None
    if job_dir is None:
        d = create_job_dir(jt, project)
    else:
        d = Path(job_dir)
        d = d if d.is_absolute() else project / d
        if not d.is_dir():
            raise FileNotFoundError(f"job directory to continue not found: {d}")
    try:
        with job_execution(jt, v, d, project_dir=project, is_continue=is_continue, progress=progress) as log:
            fn = resolve_run_function(jt.run)
            keep_freed_memory()   # a job's E-step reuses its freed arrays (subtomo_nb._memory)
            with job_scratch(d):  # temporary files and dask spill stay inside the job directory
                fn(v, d, project_dir=project, progress=log, client=client)
    except Exception as exc:  # recorded in the job directory by job_execution
        if raise_errors:
            raise JobFailedError(d, exc) from exc
    return d
