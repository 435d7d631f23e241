"""The align-symmetry job (``relion_align_symmetry``): its run function and ``subtomo align-symmetry``.

The work is :func:`subtomo_nb.tasks.align_symmetry.align_symmetry_file`, called with the options
of :func:`subtomo_nb.jobs.options.options_from`; this module checks the input and the group,
writes the one output map and reports.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from subtomo_nb.io.errors import InputError

from .options import options_from
from .progress import Progress
from .runners import preflight

__all__ = ["OUTPUT_NAME", "align_to_file", "run_align_symmetry_job", "run_from_args"]

#: File the job writes in its directory (RELION's ``--o`` default).
OUTPUT_NAME = "aligned.mrc"

Report = Callable[[str], None]


def align_to_file(values: Mapping[str, Any], output: Path, project_dir: Path, report: Report) -> Any:
    """Align the job's input and write the result to ``output`` (the only file written).

    Returns
    -------
    subtomo_nb.initial_model.align_symmetry.AlignResult

    Raises
    ------
    InputError
        No input, an unknown group (field ``--sym``), a missing or unreadable file, or options
        the search refuses (named with the input).
    """
    from subtomo_nb._array import asnumpy
    from subtomo_nb.geometry.symmetry import point_group
    from subtomo_nb.io.mrc import write_map
    from subtomo_nb.tasks.align_symmetry import align_symmetry_file

    options = options_from("align_symmetry", values, output.parent, project_dir)
    src = options["path"]
    if src is None:
        raise InputError(None, "no input map or model.star given", field="--i")
    try:
        point_group(options["sym"])
    except ValueError as exc:
        raise InputError(None, str(exc), field="--sym") from exc
    if values.get("do_nn"):
        report("nearest-neighbour interpolation (--NN) is not implemented; linear interpolation is used")
    try:
        result = align_symmetry_file(**options, progress=report)
    except InputError:
        raise
    except ValueError as exc:  # option errors (flags, boxes): one clear message naming the input
        raise InputError(src, str(exc)) from exc
    write_map(output, asnumpy(result.volume), result.pixel_size_A)
    report(f"wrote {output} (rot {result.rot:.2f}, tilt {result.tilt:.2f}, psi {result.psi:.2f} deg; "
           f"{result.pixel_size_A:g} Å/px; {result.seconds:.1f} s)")
    return result


def run_align_symmetry_job(
    values: Mapping[str, Any],
    job_dir: Path,
    *,
    project_dir: Path,
    progress: Callable[[Any], None],
    client: Any = None,
) -> dict[str, Path]:
    """Job-registry run function of ``align_symmetry``: writes ``job_dir/aligned.mrc``.

    Parameters
    ----------
    values
        Complete job values (``fn_in`` relative to ``project_dir``; model.star class paths too).
    job_dir
        The job directory (the only place written).
    project_dir
        RELION project directory (working directory).
    progress
        Receives :class:`~subtomo_nb.jobs.progress.Progress` events.
    client
        Unused (the search runs in this process).

    Returns
    -------
    dict
        ``{"map": job_dir / "aligned.mrc"}``.
    """
    output = Path(job_dir) / OUTPUT_NAME
    preflight("align_symmetry", values, job_dir, project_dir, progress, [output])
    align_to_file(values, output, Path(project_dir), lambda msg: progress(Progress(message=msg)))
    progress(Progress(message=f"wrote {output.name}", fraction=1.0))
    return {"map": output}


def run_from_args(args: argparse.Namespace) -> int:
    """Body of ``subtomo align-symmetry`` (parser: ``build_argparser("align_symmetry", sub)``).

    ``--o`` is the output map (``.mrc``/``.map``) or a directory that receives ``aligned.mrc``;
    paths are relative to the current directory, as RELION's.

    Returns
    -------
    int
        0 on success (bad input raises :class:`InputError`, which ``subtomo`` reports).
    """
    from .cli import values_from_args

    values = values_from_args("align_symmetry", args)
    out = Path(args.o if args.o else OUTPUT_NAME)
    if out.suffix.lower() not in (".mrc", ".map"):
        out = out / OUTPUT_NAME
    result = align_to_file(values, out, Path.cwd(), lambda msg: print(msg, flush=True))
    print(f"aligned map: {out}")
    print(f"rot: {result.rot:.4f}\ntilt: {result.tilt:.4f}\npsi: {result.psi:.4f}")
    return 0
