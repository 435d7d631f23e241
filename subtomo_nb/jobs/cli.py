"""argparse sub-parsers generated from the job registry.

Every field with CLI option strings becomes an option; its ``dest`` is the first option string
without dashes (``--ios`` -> ``args.ios``, ``--center_X`` -> ``args.center_X``), which are the
names the hand-written ``subtomo`` CLI used, so its run functions keep working. Argparse
defaults are what the option's absence means, in command-line units (``--offset_step`` is
RELION's doubled step). :func:`values_from_args` turns a parsed namespace back into job values.

Flag semantics follow the RELION programs: a flag such as ``--ctf`` or ``--zero_mask`` present
means Yes and absent means No; ``--firstiter_cc`` present means "Ref. map is on absolute
greyscale? No". Fields with an explicit opposite flag (``--stack2d`` / ``--no_stack2d``) keep
their default when neither is given. The flags RELION always adds (``--auto_refine``,
``--norm``...) are accepted and ignored, so a RELION command line can be pasted.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .commands import SINGLE_INPUT_JOBS
from .params import JobType, Param
from .registry import SAMPLING_CHOICES, get_job_type

__all__ = ["build_argparser", "values_from_args", "parse_job_args", "is_optimisation_set"]

_TYPES = {"int": int, "float": float, "str": str, "file": str, "choice": str}

#: Input options the command line requires (with ``require_output``), per job type.
_REQUIRED_INPUTS = {"extract": ("in_optimisation",), "reconstruct": ("in_optimisation",),
                    "recentre": ("fn_in",), "align_symmetry": ("fn_in",)}


def _absent(p: Param) -> Any:
    """What the absence of a field's option means, in job units."""
    if p.cli_kind in ("true", "false"):
        return p.default if p.cli_off else (p.cli_kind == "false")
    if p.cli_kind in ("gpu", "pad1"):
        return False
    return p.default if p.cli_absent is None else p.cli_absent


def _to_cli(p: Param, value: Any) -> Any:
    """A job value in command-line units (the argparse default)."""
    if p.cli_kind == "x2":
        return 2 * value
    if p.cli_kind == "third":
        return value / 3.0
    if p.cli_kind == "percent":
        return value / 100.0
    if p.cli_kind == "healpix":
        return SAMPLING_CHOICES.index(value)
    return value


def _help(p: Param) -> str:
    text = f"{p.label.strip()} {p.help}"
    return text.replace("%", "%%")


def build_argparser(
    job_type: str | JobType,
    subparsers: Any = None,
    *,
    require_output: bool = True,
) -> argparse.ArgumentParser:
    """An argparse parser for a job type, generated from the registry.

    Parameters
    ----------
    job_type : str or JobType
        E.g. ``"refine3d"`` or ``"extract"``.
    subparsers : argparse._SubParsersAction, optional
        Add the parser as the sub-command ``job_type.cli_name`` of this; otherwise a stand-alone
        parser with ``prog="subtomo <cli_name>"`` is returned.
    require_output : bool
        Whether ``--o`` and the main input (``--i``/``--ios`` of extract, reconstruct,
        star-handler, align-symmetry) are required, as in the ``subtomo`` CLI.

    Returns
    -------
    argparse.ArgumentParser
        Its namespace carries ``job_type`` (the registry name) besides the options.
    """
    jt = get_job_type(job_type)
    kwargs = {"description": f"{jt.title}: {jt.description} RELION program: {jt.program}."}
    if subparsers is not None:
        parser = subparsers.add_parser(jt.cli_name, help=jt.description, **kwargs)
    else:
        parser = argparse.ArgumentParser(prog=f"subtomo {jt.cli_name}", **kwargs)
    parser.add_argument("--o", required=require_output, default=None,
                        help="output (job directory, or a file / rootname inside it, as RELION's --o)")
    seen = {"--o"}
    for p in jt.params:
        if not p.cli:
            continue
        dest = p.dest
        if p.key == "in_optimisation" and jt.name in SINGLE_INPUT_JOBS:
            help_text = "input optimisation set, or a particle STAR file (with --tomograms for 2D stacks)"
        else:
            help_text = _help(p)
        kind = p.cli_kind
        absent = _absent(p)
        if kind in ("true", "false"):
            on = kind == "true"
            parser.add_argument(*p.cli, dest=dest, action="store_const", const=on, default=absent, help=help_text)
            if p.cli_off:
                parser.add_argument(*p.cli_off, dest=dest, action="store_const", const=not on,
                                    help=f"opposite of {p.cli[0]}")
        elif kind == "gpu":
            parser.add_argument(*p.cli, dest=dest, nargs="?", const="", default=None,
                                help="use GPUs (optionally which: '0,1'); " + help_text)
        elif kind == "pad1":
            parser.add_argument(*p.cli, dest=dest, type=int, default=2, choices=(1, 2),
                                help="padding factor (1 = skip padding); " + help_text)
        elif kind == "healpix":
            parser.add_argument(*p.cli, dest=dest, type=int, default=_to_cli(p, absent),
                                choices=range(len(SAMPLING_CHOICES)), metavar="ORDER", help=help_text)
        else:
            default = _to_cli(p, absent)
            if p.type == "file" and default == "":
                default = None  # as the hand-written CLI: an absent file option is None
            required = require_output and p.key in _REQUIRED_INPUTS.get(jt.name, ())
            parser.add_argument(*p.cli, dest=dest, type=_TYPES[p.type], default=default, required=required,
                                help=help_text)
        seen.update(p.cli + p.cli_off)
    for flag, nargs in jt.fixed_flags:
        if flag in seen:
            continue
        dest = flag.lstrip("-")
        if nargs == 0:
            parser.add_argument(flag, dest=dest, action="store_true", help="always set by RELION; accepted")
        else:
            parser.add_argument(flag, dest=dest, nargs=nargs if nargs > 1 else None, default=None,
                                help="fixed by RELION's job; accepted and ignored")
        seen.add(flag)
    parser.set_defaults(job_type=jt.name)
    return parser


def is_optimisation_set(path: str | os.PathLike) -> bool:
    """Whether a STAR file is an optimisation set (a file naming ``rlnTomoParticlesFile``...).

    Files that cannot be read are judged by name (``*optimisation_set.star``).
    """
    p = Path(path)
    try:
        text = p.read_text(errors="replace")[:20000]
    except OSError:
        return p.name.endswith("optimisation_set.star")
    if "_rlnImageName" in text or "data_particles" in text:
        return False
    return "_rlnTomoParticlesFile" in text or "_rlnTomoTomogramsFile" in text


def values_from_args(job_type: str | JobType, args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """Job values from a namespace parsed with :func:`build_argparser`.

    Fields not on the command line keep their defaults. ``use_direct_entries`` is set when the
    particle set is given directly: ``--i`` for relion_refine jobs; for extract and reconstruct,
    when ``--tomograms`` is given or the ``--i`` file is not an optimisation set.

    Parameters
    ----------
    job_type : str or JobType
    args : argparse.Namespace or mapping
        The parsed options (dest -> value).

    Returns
    -------
    dict
        Every key of the job type.
    """
    jt = get_job_type(job_type)
    ns = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    values = jt.defaults()
    for p in jt.params:
        if not p.cli or p.dest not in ns:
            continue
        raw = ns[p.dest]
        kind = p.cli_kind
        if kind == "gpu":
            values[p.key] = raw is not None
            if raw is not None and "gpu_ids" in jt:
                values["gpu_ids"] = str(raw)
            continue
        if kind == "pad1":
            values[p.key] = int(raw) == 1
            continue
        if raw is None:
            continue
        if kind == "x2":
            raw = raw / 2.0
        elif kind == "third":
            raw = raw * 3.0
        elif kind == "percent":
            raw = raw * 100.0
        elif kind == "healpix":
            raw = SAMPLING_CHOICES[int(raw)]
        values[p.key] = jt.complete({p.key: raw})[p.key]
    if jt.name in SINGLE_INPUT_JOBS:
        src = values["in_optimisation"]
        if src and (values["in_tomograms"] or not is_optimisation_set(src)):
            values["in_particles"], values["in_optimisation"] = src, ""
            values["use_direct_entries"] = True
    elif "use_direct_entries" in jt:
        values["use_direct_entries"] = bool(values.get("in_particles"))
    return values


def parse_job_args(job_type: str | JobType, argv: list[str]) -> tuple[dict[str, Any], str | None]:
    """Parse a ``subtomo <sub-command>`` argument list (without the two leading words).

    Parameters
    ----------
    job_type : str or JobType
    argv : list of str

    Returns
    -------
    values : dict
        Job values.
    output : str or None
        The ``--o`` argument.
    """
    ns = build_argparser(job_type, require_output=False).parse_args(argv)
    return values_from_args(job_type, ns), ns.o
