"""Progress events of a running job and the log that records them.

A run function receives a ``progress`` callable and calls it with :class:`Progress` events
(iteration, current resolution, FSC curve, angular/translational accuracies, timings, a
message). :class:`ProgressLog` appends each event as one line to the job's ``run.out`` (what
RELION's GUI shows) and as one JSON line to ``progress.jsonl`` (what notebooks re-read to plot
FSC curves and resolution against iteration), then forwards it to an optional callback (a live
widget, a progress bar).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Progress", "ProgressLog", "ProgressCallback", "read_progress", "RUN_OUT", "RUN_ERR", "PROGRESS_JSONL",
           "ProgressPrinter", "ParticleBar"]

RUN_OUT = "run.out"
RUN_ERR = "run.err"
PROGRESS_JSONL = "progress.jsonl"


@dataclass
class Progress:
    """One progress event.

    Attributes
    ----------
    message : str
        Free text ("E-step half 1", "converged", ...).
    iteration : int or None
        Iteration number (RELION's ``_itNNN``).
    resolution_A : float or None
        Current (gold-standard) resolution in Å.
    fsc : sequence of float or None
        FSC per Fourier shell (shell 0 first).
    fsc_resolution_A : sequence of float or None
        Resolution (Å) of each FSC shell, for plotting.
    accuracy_rot_deg : float or None
        Estimated angular accuracy (RELION's ``rlnAccuracyRotations``).
    accuracy_trans_A : float or None
        Estimated translational accuracy in Å (``rlnAccuracyTranslationsAngst``).
    timings : mapping of str to float or None
        Seconds spent per step (``{"E-step": 12.3, "M-step": 1.1}``).
    fraction : float or None
        Fraction of the job done (0-1), for progress bars.
    particles_done, particles_total : int or None
        Particles of the current iteration whose E-step has finished, out of how many (both
        half-sets together). Such an event only moves a progress bar: :class:`ProgressLog` does
        not record it in ``run.out`` (RELION's log has no line per batch either).
    time : float
        Wall-clock time of the event (``time.time()``).
    """

    message: str = ""
    iteration: int | None = None
    resolution_A: float | None = None
    fsc: Sequence[float] | None = None
    fsc_resolution_A: Sequence[float] | None = None
    accuracy_rot_deg: float | None = None
    accuracy_trans_A: float | None = None
    timings: Mapping[str, float] | None = None
    fraction: float | None = None
    particles_done: int | None = None
    particles_total: int | None = None
    time: float = field(default_factory=time.time)

    @property
    def is_particle_count(self) -> bool:
        """Whether this event only reports the particles done in the current iteration."""
        return self.particles_total is not None

    def format(self) -> str:
        """The event as one human-readable ``run.out`` line (Å and degrees)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        parts = []
        if self.iteration is not None:
            parts.append(f"iteration {self.iteration}")
        if self.resolution_A is not None:
            parts.append(f"{self.resolution_A:.2f} Å")
        if self.accuracy_rot_deg is not None:
            parts.append(f"angular accuracy {self.accuracy_rot_deg:.2f}°")
        if self.accuracy_trans_A is not None:
            parts.append(f"translational accuracy {self.accuracy_trans_A:.2f} Å")
        if self.message:
            parts.append(self.message)
        if self.particles_total is not None:
            parts.append(f"{self.particles_done}/{self.particles_total} particles")
        if self.timings:
            parts.append(", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))
        if self.fraction is not None:
            parts.append(f"{100 * self.fraction:.0f}% done")
        return f"[{stamp}] " + " | ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (arrays as lists, NaN as null)."""
        def clean(x: Any) -> Any:
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, Mapping):
                return {str(k): clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(i) for i in x]
            if hasattr(x, "tolist"):
                return clean(x.tolist())
            return x

        return clean(asdict(self))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Progress:
        """The event back from :meth:`to_json` (unknown keys ignored)."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


#: What run functions receive: call it with a :class:`Progress` (or a plain message string).
ProgressCallback = Callable[[Progress], None]


class ProgressLog:
    """Append progress events to a job directory's ``run.out`` and ``progress.jsonl``.

    Thread-safe: dask callbacks may report from several threads.

    Parameters
    ----------
    job_dir : str or os.PathLike
        The job directory.
    forward : callable, optional
        Called with every event after it is written (e.g. a notebook widget's update).
    """

    def __init__(self, job_dir: str | Path, forward: ProgressCallback | None = None) -> None:
        self.job_dir = Path(job_dir)
        self.forward = forward
        self._lock = threading.Lock()

    def write(self, text: str, *, err: bool = False) -> None:
        """Append raw text lines to ``run.out`` (or ``run.err``)."""
        with self._lock, open(self.job_dir / (RUN_ERR if err else RUN_OUT), "a") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")

    def __call__(self, event: Progress | str) -> None:
        if isinstance(event, str):
            event = Progress(message=event)
        if event.is_particle_count:
            if self.forward is not None:
                self.forward(event)
            return
        line = event.format()
        record = json.dumps(event.to_json())
        with self._lock:
            with open(self.job_dir / RUN_OUT, "a") as fh:
                fh.write(line + "\n")
            with open(self.job_dir / PROGRESS_JSONL, "a") as fh:
                fh.write(record + "\n")
        if self.forward is not None:
            self.forward(event)


def read_progress(job_dir: str | Path) -> list[Progress]:
    """All progress events a job recorded (from ``progress.jsonl``), oldest first."""
    path = Path(job_dir) / PROGRESS_JSONL
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            events.append(Progress.from_json(json.loads(line)))
    return events


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where tqdm draws a widget bar)."""
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None
    except Exception:  # noqa: BLE001 - no IPython, or a broken one: plain text
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


class ParticleBar:
    """A tqdm bar over the particles of the running iteration: a new bar for each iteration.

    Parameters
    ----------
    make : callable
        ``make(total=..., desc=..., unit=...)`` returns a new tqdm bar (a text bar, or tqdm's
        notebook widget).

    Attributes
    ----------
    bar : the current tqdm bar, or None.
    """

    def __init__(self, make: Callable[..., Any]) -> None:
        self._make = make
        self.bar: Any = None
        self._key: tuple | None = None

    def update(self, event: Progress) -> bool:
        """Move the bar to ``event.particles_done``; returns True when a new bar was made for it."""
        key = (event.iteration, event.particles_total)
        new = self.bar is None or self._key != key
        if new:
            self.close()
            self.bar = self._make(total=event.particles_total, desc=f"iteration {event.iteration}", unit="particle")
            self._key = key
        self.bar.update(max(0, int(event.particles_done or 0) - self.bar.n))
        self.bar.refresh()   # one event per batch of particles: draw each
        return new

    def close(self) -> None:
        """Close the current bar (the next event starts a new one)."""
        if self.bar is not None:
            self.bar.close()
        self.bar = None
        self._key = None


class ProgressPrinter:
    """Show progress events as a person reads them: one line each, and a bar over the particles.

    Events that only count the particles of an iteration
    (:attr:`Progress.is_particle_count`) move a tqdm progress bar (a text bar on a terminal, a
    widget in a notebook; none when the output is a file or a pipe, so logs stay clean); every
    other event is printed as its :meth:`Progress.format` line.

    Parameters
    ----------
    file : file object, optional
        Where the lines go (default: ``sys.stdout`` at the time of each event).
    bar : bool or None
        Show the bar: True always, False never, None (default) on a terminal or in a notebook.
    """

    def __init__(self, file: Any = None, bar: bool | None = None) -> None:
        self.file = file
        self.bar = bar
        self._particles = ParticleBar(self._text_bar)
        self._lock = threading.Lock()

    @staticmethod
    def _text_bar(**kwargs: Any) -> Any:
        from tqdm.auto import tqdm

        return tqdm(leave=False, file=sys.stderr, disable=False, **kwargs)

    def _show_bar(self) -> bool:
        if self.bar is not None:
            return self.bar
        return _in_notebook() or bool(getattr(sys.stderr, "isatty", lambda: False)())

    def __call__(self, event: Progress | str) -> None:
        if isinstance(event, str):
            event = Progress(message=event)
        with self._lock:
            if event.is_particle_count:
                self._count(event)
                return
            self._close()
            print(event.format(), file=self.file or sys.stdout, flush=True)

    def _count(self, event: Progress) -> None:
        if not self._show_bar():
            return
        self._particles.update(event)
        if (event.particles_done or 0) >= (event.particles_total or 0):
            self._particles.close()

    def _close(self) -> None:
        self._particles.close()

    def close(self) -> None:
        """Close an open bar."""
        with self._lock:
            self._close()
