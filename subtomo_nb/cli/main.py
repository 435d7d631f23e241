"""``subtomo``: command-line entry point with RELION's flag names.

Sub-commands::

    subtomo simulate      --o DIR [--seed S] [--tiny] [--snr X | --noise_free] [--particle {hexamer,d2}]
    subtomo extract       --ios optimisation_set.star --o DIR --bin 4 --b 32 [--crop N] [--stack2d|--no_stack2d]
    subtomo reconstruct   --i particles.star --o map.mrc [--sym G] [--ctf] [--j N]
                          [--scheduler_file F | --scheduler_address tcp://HOST:PORT] (also refine,
                          initial-model: run the work on a dask cluster started elsewhere, e.g. by SLURM)
    subtomo star-handler  --i IN --o OUT --center --center_X x --center_Y y --center_Z z
    subtomo refine        --ios optimisation_set.star --ref map.mrc --o Refine3D/job004/run ...
    subtomo initial-model --ios optimisation_set.star --o InitialModel/job005/run --iter 100 ...
    subtomo align-symmetry --i map.mrc --o aligned.mrc --sym C6 [--apply_sym]
    subtomo tutorial      --o DIR [--j N] [--skip_refine] [--initial_model [--fast]]   (simulate, extract at
                          bin 4, reconstruct with the truth, initial model, auto-refine; prints the resolutions)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from collections.abc import Sequence

from subtomo_nb._memory import keep_freed_memory
from subtomo_nb.io.errors import InputError

#: Environment variable that shows the Python traceback of every error.
DEBUG_ENV = "SUBTOMO_DEBUG"

#: The project directory of the direct sub-commands: the current directory, kept relative so that
#: file names reach the tasks as they were typed.
_HERE = Path(".")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that ``finally`` blocks and temporary files clean up."""


def _check(job_type: str, args: argparse.Namespace, outputs: list, *, is_continue: bool = False) -> dict:
    """The job values of a sub-command, through the one validation step (:func:`subtomo_nb.jobs.validate.check_job`).

    Raises :class:`InputError` for the first problem; prints the warnings (one line each).
    """
    from subtomo_nb.jobs import values_from_args
    from subtomo_nb.jobs.validate import check_job

    values = refine_values(args) if job_type == "refine3d" else values_from_args(job_type, args)
    for line in check_job(job_type, values, project_dir=Path.cwd(), outputs=outputs, is_continue=is_continue):
        print(f"subtomo {args.command}: warning: {line}", file=sys.stderr)
        args._warnings = [*getattr(args, "_warnings", []), line]
    return values


def _in_job_dir(args: argparse.Namespace, job_dir: Path, job_type: str, values: dict, *,
                is_continue: bool = False, progress=None, on_interrupt=None):
    """Run the sub-command's job in ``job_dir``, as RELION's pipeliner runs a job.

    The directory gets the job's record (:func:`subtomo_nb.jobs.jobdir.job_execution`):
    ``job.star``, ``note.txt`` with the command as typed, ``run.out`` opened with a header and
    closed with the outcome, RELION's exit marker; temporary files and dask spill go inside it.
    An output written straight into the project directory (the current directory) has no job
    directory: nothing is recorded there. Returns the job's progress log (None then).
    """
    from subtomo_nb.jobs.jobdir import job_execution
    from subtomo_nb.jobs.scratch import job_scratch

    args._log_dir = job_dir
    log = None
    other = _other_job(Path(job_dir), job_type)
    if other:
        print(f"subtomo {args.command}: warning: {job_dir} holds another job ({other}); its job.star, note.txt and "
              "run.out are left as they are and this run is not recorded there", file=sys.stderr)
    elif Path(job_dir).resolve() != Path.cwd().resolve():
        log = args._stack.enter_context(job_execution(
            job_type, values, job_dir, project_dir=Path.cwd(), is_continue=is_continue, progress=progress,
            command=["subtomo", *getattr(args, "_argv", [args.command])], log_traceback=False,
            on_interrupt=on_interrupt))
    args._stack.enter_context(job_scratch(job_dir))
    return log


def _other_job(job_dir: Path, job_type: str) -> str:
    """The type label of another job recorded in ``job_dir`` ("" when none, or the same job type)."""
    from subtomo_nb.jobs.jobdir import read_job_star
    from subtomo_nb.jobs.registry import get_job_type

    if not (job_dir / "job.star").is_file():
        return ""
    try:
        label = read_job_star(job_dir / "job.star")[0]
    except InputError:
        return "an unreadable job.star"
    return "" if label == get_job_type(job_type).type_label else label


def _job_dir_of(out: Path) -> Path:
    """The job directory of a refine / initial-model ``--o`` (``Job/jobNNN/run`` or ``Job/jobNNN``)."""
    return out.parent if out.name.startswith("run") else out


def _check_directory(path: str, args: argparse.Namespace) -> None:
    """The output project directory of simulate / tutorial: creatable, writable, not a file."""
    from subtomo_nb.jobs.validate import check_output

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(p, "exists and is not a directory", field="--o")
    check_output(p / "tomograms.star", {})
    if getattr(args, "snr", None) is not None and not (args.snr > 0 and args.snr < float("inf")):
        raise InputError(None, f"must be a positive number (got {args.snr:g})", field="--snr")
    if getattr(args, "j", 1) < 1:
        raise InputError(None, f"must be >= 1 (got {args.j})", field="--j")


#: Signal-to-noise ratio of the simulator's tilt images (``subtomo_nb.simulate.project.DEFAULT_SNR``;
#: not imported here, to keep ``subtomo --help`` fast; tests/cli/test_help.py checks that they agree).
_SIMULATE_SNR = 1e-3

#: The simulator's phantoms and their point groups (``subtomo_nb.simulate.phantom.PHANTOMS``; not
#: imported here, to keep ``subtomo --help`` fast; tests/cli/test_help.py checks that they agree).
_SIMULATE_PARTICLES = {"hexamer": "C6", "d2": "D2"}


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="Write the built-in synthetic tutorial project",
                       description="Write the built-in synthetic tutorial project: tilt series of virions "
                                   "studded with a chiral particle (a C6 hexamer, or with --particle d2 a D2 "
                                   "dimer of dimers), their tomogram set, the picked particles, an "
                                   "optimisation set, the ground-truth map, a mask and the true poses.")
    p.add_argument("--o", required=True, help="Output project directory (required)")
    p.add_argument("--seed", type=int, default=0, help="Random seed of the simulation (default: 0)")
    p.add_argument("--tiny", action="store_true",
                   help="Write the tiny tutorial project (one tomogram, about 90 particles, the full 41-tilt "
                        "series) (default: off)")
    p.add_argument("--snr", type=float, default=None,
                   help=f"Signal-to-noise ratio per tilt image (default: {_SIMULATE_SNR:g})")
    p.add_argument("--noise_free", action="store_true",
                   help="Add no noise to the tilt images; wins over --snr (default: off)")
    p.add_argument("--particle", choices=list(_SIMULATE_PARTICLES), default="hexamer",
                   help="Phantom on the virions: hexamer (a chiral hexamer, symmetry C6) or d2 (a chiral "
                        "dimer of dimers, symmetry D2); its reference z axis (the C6 axis, or D2's 2-fold "
                        "about z) lies along the virion's surface normal (default: hexamer)")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from subtomo_nb.simulate import simulate_project, simulate_tiny_project

    _check_directory(args.o, args)
    kwargs: dict = {"seed": args.seed, "particle": args.particle}
    if args.noise_free:
        kwargs["snr"] = None
    elif args.snr is not None:
        kwargs["snr"] = args.snr
    if args.tiny:
        paths = simulate_tiny_project(args.o, tutorial=True, **kwargs)
    else:
        paths = simulate_project(args.o, **kwargs)
    for key in ("project_dir", "tomograms", "particles", "optimisation_set", "mask", "map",
                "particles_true", "n_particles", "particle", "symmetry"):
        print(f"{key}: {paths[key]}")
    print(f"time (s): {paths['seconds']:.1f}")
    return 0


def _run_extract(args: argparse.Namespace) -> int:
    from subtomo_nb.jobs.options import options_from
    from subtomo_nb.jobs.validate import Output
    from subtomo_nb.tasks.extract import extract_subtomos

    o = Path(args.o)
    values = _check("extract", args, [o / "particles.star", o / "optimisation_set.star",
                                      Output(o / "Subtomograms", prefix=True)])
    _in_job_dir(args, o, "extract", values)
    out = extract_subtomos(**options_from("extract", values, o, _HERE))
    print(f"particles: {out}")
    return 0


def _particle_geometry(particles: str, tomograms: str | None) -> dict:
    """``box_size`` (pixels) and ``binning`` of a particle file or optimisation set's particles."""
    from subtomo_nb.io.particles import box_size, subtomogram_binning
    from subtomo_nb.tasks.particle_data import load_particle_set

    pset, _ = load_particle_set(particles, tomograms)
    return {"box_size": box_size(pset), "binning": subtomogram_binning(pset)}


def _run_reconstruct(args: argparse.Namespace) -> int:
    from subtomo_nb.tasks.reconstruct import reconstruct_particles

    o = Path(args.o)
    if o.suffix.lower() not in (".mrc", ".map"):
        raise InputError(o, "the output map must be an .mrc (or .map) file", field="--o")
    stem = o.with_suffix("")
    values = _check("reconstruct", args, [o, Path(f"{stem}_half1.mrc"), Path(f"{stem}_half2.mrc"), Path(f"{stem}_fsc.star")])
    if values["box_size"] not in (128, None):
        print(f"subtomo reconstruct: warning: averaging at the particles' own box; not applied: "
              f"--b {values['box_size']}", file=sys.stderr)
    # the job record says what is done: the particles' own box and binning
    values = {**values, **_particle_geometry(args.i, args.tomograms)}
    _in_job_dir(args, o.parent, "reconstruct", values)
    from subtomo_nb.jobs.options import options_from
    from subtomo_nb.jobs.progress import ProgressPrinter
    from subtomo_nb.jobs.runners import job_client, own_client

    options = {**options_from("reconstruct", values, o.parent, _HERE), "out_map": o}   # --o names the map
    # --j: threads here; --gpu: one worker per GPU (the job's own cluster, closed after)
    with own_client(values, gpu_only=True) as own, job_client(values, own, ProgressPrinter()) as client:
        result = reconstruct_particles(**options, client=client)
    print(f"merged map: {result.merged_path}")
    if result.fsc is not None:
        print(f"half maps: {result.half_paths[0]} {result.half_paths[1]}")
        print(f"gold-standard resolution (FSC 0.143): {result.resolution_A:.2f} Å")
    return 0


def _run_star_handler(args: argparse.Namespace) -> int:
    from subtomo_nb.jobs.options import options_from
    from subtomo_nb.tasks.recentre import recentre_star

    if not args.center:
        print("subtomo star-handler: only --center is implemented; nothing to do", file=sys.stderr)
        return 2
    values = _check("recentre", args, [Path(args.o)])
    _in_job_dir(args, Path(args.o).parent, "recentre", values)
    options = {**options_from("recentre", values, Path(args.o).parent, _HERE), "out_path": args.o}  # --o: the file
    out = recentre_star(**options)
    print(f"re-centred particles: {out}")
    return 0


def refine_values(args: argparse.Namespace) -> dict:
    """The refine3d job values of ``subtomo refine``'s arguments (``--no_align_ref_sym`` as an additional argument)."""
    from subtomo_nb.jobs import values_from_args

    values = values_from_args("refine3d", args)
    if getattr(args, "no_align_ref_sym", False):
        values["other_args"] = f"{values.get('other_args') or ''} --no_align_ref_sym".strip()
    for flag in ("auto_iter_max", "random_seed"):
        if getattr(args, flag, None) is not None:
            values["other_args"] = f"{values.get('other_args') or ''} --{flag} {int(getattr(args, flag))}".strip()
    return values


def _run_refine(args: argparse.Namespace) -> int:
    """``subtomo refine``: relion_refine --auto_refine with RELION's flags; writes run.out beside run_*."""
    from subtomo_nb.jobs.progress import ProgressLog, ProgressPrinter
    from subtomo_nb.jobs.runners import run_refine

    from subtomo_nb.jobs.validate import Output

    out = Path(args.o)
    job_dir = _job_dir_of(out)
    root = job_dir / (out.name if out.name.startswith("run") else "run")
    is_continue = bool(getattr(args, "continue", None))
    # a continued run reads its own run_itNNN files and writes the later ones beside them
    values = _check("refine3d", args, [root.with_name(root.name + "_data.star")] if is_continue
                    else [Output(root, prefix=True)], is_continue=is_continue)
    def stopped(exc: KeyboardInterrupt) -> str:
        return (f" ++++ {'terminated (SIGTERM)' if isinstance(exc, Terminated) else 'interrupted'}; "
                + _continue_hint(job_dir, root))

    forward = ProgressPrinter()
    log = (_in_job_dir(args, job_dir, "refine3d", values, is_continue=is_continue, progress=forward,
                       on_interrupt=stopped)
           or ProgressLog(job_dir, forward=forward))
    for line in getattr(args, "_warnings", []):
        log.write(f"WARNING: {line}")
    # no client given: the job starts (and closes) its own (--j N workers, or one per --gpu GPU)
    outputs = run_refine(values, job_dir, project_dir=Path.cwd(), progress=log)
    for key, value in outputs.items():
        print(f"{key}: {value}")
    return 0


def _run_initial_model(args: argparse.Namespace) -> int:
    """``subtomo initial-model``: relion_refine --grad --denovo_3dref (VDAM), then align symmetry."""
    from subtomo_nb.jobs.initial_model import run_from_args
    from subtomo_nb.jobs.validate import Output

    out = Path(args.o)
    job_dir = _job_dir_of(out)
    values = _check("initial_model", args, [Output(job_dir / "run", prefix=True), job_dir / "initial_model.mrc"])
    _in_job_dir(args, job_dir, "initial_model", values)
    return int(run_from_args(args))


def _run_align_symmetry(args: argparse.Namespace) -> int:
    """``subtomo align-symmetry``: relion_align_symmetry."""
    from subtomo_nb.jobs.align_symmetry import OUTPUT_NAME, run_from_args

    out = Path(args.o if args.o else OUTPUT_NAME)
    if out.suffix.lower() not in (".mrc", ".map"):
        out = out / OUTPUT_NAME
    values = _check("align_symmetry", args, [out])
    _in_job_dir(args, out.parent, "align_symmetry", values)
    return int(run_from_args(args))


def _add_tutorial(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tutorial", help="Run the synthetic tutorial end to end and report the resolution",
                       description="Run the synthetic tutorial end to end: simulate the project, extract the "
                                   "particles at bin 4, reconstruct them with their true orientations, then "
                                   "(unless --skip_refine) run 3D auto-refine from the ground-truth map, or from "
                                   "a 3D initial reference with --initial_model; prints the resolutions.")
    p.add_argument("--o", default="tutorial", help="Project directory (default: tutorial)")
    p.add_argument("--seed", type=int, default=0,
                   help="Random seed of the simulation and of the half-set split (default: 0)")
    p.add_argument("--tiny", action="store_true",
                   help="Use the tiny tutorial project (one tomogram, about 90 particles, the full 41-tilt "
                        "series; about 1.5 min on 2 cores) (default: off)")
    p.add_argument("--j", type=int, default=2,
                   help="Number of threads of the extraction and the reconstruction, and of dask worker processes "
                        "of the local dask cluster that runs the initial model and the auto-refine (default: 2)")
    p.add_argument("--skip_refine", action="store_true",
                   help="Stop after the reconstruction with the true orientations (no auto-refine) (default: off)")
    p.add_argument("--initial_model", action="store_true",
                   help="Make the auto-refine reference with the 3D initial reference job (VDAM) first, "
                        "instead of using the ground-truth map (default: off)")
    p.add_argument("--fast", action="store_true",
                   help="Not RELION's: run the initial model of --initial_model with subtomo_nb's accelerated "
                        "search (subtomo initial-model --fast); used only with --initial_model (default: off: "
                        "RELION's search)")
    p.add_argument("--gpu", nargs="?", const="", default=None, metavar="IDS",
                   help="Run the initial model and the auto-refine on GPUs, as relion_refine's --gpu: no value "
                        "uses every visible GPU, '0,1' names them (default: off)")
    p.set_defaults(func=_run_tutorial)


def _run_tutorial(args: argparse.Namespace) -> int:
    from subtomo_nb.jobs.progress import ProgressPrinter
    from subtomo_nb.jobs.tutorial import run_tutorial
    from subtomo_nb.tasks.tutorial import summary_lines

    _check_directory(args.o, args)
    if args.fast and not (args.initial_model and not args.skip_refine):
        print("subtomo tutorial: --fast is for the initial model of --initial_model (without --skip_refine); "
              "give --initial_model, or leave out --fast", file=sys.stderr)
        return 2
    result = run_tutorial(args.o, seed=args.seed, tiny=args.tiny, n_workers=args.j, refine=not args.skip_refine,
                          initial_model=args.initial_model, gpu=args.gpu, fast=args.fast, progress=ProgressPrinter())
    print("\nsummary")
    for line in summary_lines(result):
        print(f"  {line}")
    return 0


def _int_at_least(low: int):
    """An argparse type: an integer ``>= low`` (a bad value is the parser's one-line error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low} (got {value})")
        return value
    return parse


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``subtomo <command>: error: ...``), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: ``subtomo --help``'s text (plain: argparse prints it as it is written, not as RST).
_DESCRIPTION = ("Subtomogram averaging of RELION 5 tomography projects from the command line. Most "
                "sub-commands run one RELION job, with RELION's option names and output files; simulate and "
                "tutorial make and process a synthetic project.")
_EPILOG = (f"Run 'subtomo SUB-COMMAND --help' for the options of a sub-command. {DEBUG_ENV}=1 shows the "
           f"Python traceback of an error.")


def version() -> str:
    """The installed subtomo_nb version (the package's ``__version__`` when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("subtomo_nb")
    except metadata.PackageNotFoundError:
        import subtomo_nb

        return str(getattr(subtomo_nb, "__version__", "unknown"))


def build_parser() -> argparse.ArgumentParser:
    """The ``subtomo`` argument parser."""
    parser = _Parser(prog="subtomo", description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"subtomo_nb {version()}",
                        help="Print the version of subtomo_nb and exit")
    sub = parser.add_subparsers(dest="command", required=True, title="sub-commands")
    _add_simulate(sub)
    # job types come from the registry, so the CLI and the notebook forms cannot disagree
    from subtomo_nb.jobs import build_argparser

    for name, func in (("extract", _run_extract), ("reconstruct", _run_reconstruct),
                       ("recentre", _run_star_handler), ("refine3d", _run_refine),
                       ("initial_model", _run_initial_model), ("align_symmetry", _run_align_symmetry)):
        job_parser = build_argparser(name, sub)
        job_parser.set_defaults(func=func)
        if name == "refine3d":
            job_parser.add_argument("--no_align_ref_sym", action="store_true",
                                    help="Not RELION's: refine a reference whose symmetry is off RELION's axes as "
                                         "it is, instead of aligning it first (run.out reports the check) "
                                         "(default: off: the reference is aligned to the symmetry axes)")
            job_parser.add_argument("--auto_iter_max", type=_int_at_least(1), default=None,
                                    help="relion_refine's --auto_iter_max: stop after this many iterations "
                                         "(default: 999, in effect until converged)")
            job_parser.add_argument("--random_seed", type=_int_at_least(0), default=None,
                                    help="relion_refine's --random_seed: the seed of the half-set split "
                                         "(default: 0)")
    _add_tutorial(sub)
    return parser


def _continue_hint(job_dir: Path, root: Path) -> str:
    """Which iteration a stopped refine finished last, and the command that continues it."""
    # an iteration is finished when its state (written last, after the optimiser file) is there
    done = sorted(p for p in job_dir.glob(f"{root.name}_it[0-9][0-9][0-9]_state.npz")
                  if p.with_name(p.name.replace("_state.npz", "_optimiser.star")).is_file())
    if not done:
        return "no iteration finished; start the job again"
    last = done[-1].with_name(done[-1].name.replace("_state.npz", "_optimiser.star"))
    return (f"the last finished iteration is {int(last.name[len(root.name) + 3:len(root.name) + 6])}: continue with "
            f"subtomo refine --continue {last} --o {root}")


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _internal_error(args: argparse.Namespace, exc: BaseException) -> str:
    """Write the traceback to the job's ``run.err`` (else a temporary file); returns where."""
    log_dir = getattr(args, "_log_dir", None)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if log_dir is not None and Path(log_dir).is_dir():
        path = Path(log_dir) / "run.err"
        with open(path, "a") as fh:
            fh.write(text)
        return str(path)
    fd, name = tempfile.mkstemp(prefix=f"subtomo-{args.command}-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return name


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``subtomo``; returns the exit status.

    Bad input: 1, with one line naming the file, row and field (:class:`InputError`). An
    unexpected error: 70, with one line saying that it is a bug and where its traceback is. Ctrl-C
    (SIGINT): 130; SIGTERM: 143 (files written so far stay whole: every output is written under a
    temporary name and renamed). ``SUBTOMO_DEBUG=1`` shows the Python traceback instead.
    """
    args = build_parser().parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)   # the command as typed, for note.txt
    keep_freed_memory()   # jobs reuse the memory of their freed arrays (subtomo_nb._memory)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (main() called from a thread): keep the default
        previous = None
    args._stack = contextlib.ExitStack()
    try:
        with args._stack:
            return int(args.func(args))
    except InputError as err:
        if debug:
            raise
        print(f"subtomo {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        if debug:
            raise
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"subtomo {args.command}: {what}; finished outputs are intact", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except OSError as err:
        if debug:
            raise
        name = err.filename if err.filename is not None else "?"
        print(f"subtomo {args.command}: error: {name}: {err.strerror or err}", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            raise
        where = _internal_error(args, exc)
        print(f"subtomo {args.command}: internal error (this is a bug in subtomo_nb, please report it): "
              f"{type(exc).__name__}: {exc}; the traceback is in {where} (or rerun with {DEBUG_ENV}=1)",
              file=sys.stderr)
        return 70
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
