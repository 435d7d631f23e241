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

Help texts are statements of what giving the option does (:attr:`Param.cli_help`, else
:attr:`Param.help`, after the form's label unless that is a question), and every option's help
ends with what its absence means, ``(default: ...)``, or ``(required)``. Options the job accepts
for RELION compatibility but does not implement, or that have no effect here, say so (from
:mod:`subtomo_nb.jobs.validate`'s tables).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .commands import SINGLE_INPUT_JOBS
from .params import JobType, Param
from .registry import SAMPLING_CHOICES, get_job_type
from .units import from_flag, to_flag

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
    return to_flag(p.cli_kind, value)


#: Angular step (degrees) of HEALPix order n, as RELION's form writes it: 60 / 2**n, truncated
#: (order n + 1 of the list is RELION's sampling choice n, the oversampled step of order n).
_HEALPIX_STEPS = ("60", *(c.split()[0] for c in SAMPLING_CHOICES))

#: What RELION's job gives the fixed flags that take a value (``jobs.commands``), and what they are.
_FIXED_VALUES = {
    "--oversampling": "1 (one adaptive oversampling step, which this job always uses)",
    "--low_resol_join_halves": "40 (Å: half-maps joined below 40 Å, which this job always uses)",
    "--pipeline_control": "the job directory (RELION's pipeline status files)",
    "--theme": "classic (the look of RELION's tomography programs' output)",
    "--j_out": "the --j value (RELION's outer threads; here --j sets the threads)",
    "--j_in": "1 (RELION's inner threads)",
    "--pad": "1 (no padding, which this job always uses)",
    "--healpix_order": "1 (30° steps, oversampled to 15°, which this job always starts with)",
    "--offset_range": "6 (pixels, which this job always uses)",
    "--offset_step": "2 (pixels, which this job always uses)",
}

#: Fixed flags (without a value) that RELION's job gives only sometimes: when.
_FIXED_FLAGS_WHEN = {
    "--auto_resol_angles": "gives it with --auto_ignore_angles (which here sets both)",
}

#: Fixed flags the ``subtomo`` command needs (:attr:`JobType.subtomo_flags`): their help.
_SUBTOMO_FLAGS = {
    "--center": "Re-centre the particles on (--center_X, --center_Y, --center_Z), as relion_star_handler "
                "--center; the only action implemented, so it must be given: without it nothing is done "
                "(exit status 2) (default: off)",
}


def _statement(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", ")")) else text + "."


def healpix_help() -> str:
    """The HEALPix orders with their angular steps, for the help of a ``healpix`` option."""
    orders = ", ".join(f"{n}: {_HEALPIX_STEPS[n]}°" for n in range(len(SAMPLING_CHOICES)))
    return (f"ORDER is the HEALPix order n, an angular step of 60/2^n degrees ({orders}); it is searched "
            f"with one oversampling step, down to half that step (RELION's form shows the halved step).")


def _healpix_default(order: int) -> str:
    return f"{order} = {_HEALPIX_STEPS[order]}°, oversampled to {_HEALPIX_STEPS[order + 1]}°"


def _value_text(value: Any) -> str:
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _notes(p: Param, jt: JobType) -> list[str]:
    """What the job does with an option besides its help: used only with another, refused, no effect."""
    from .validate import _NO_EFFECT, _UNSUPPORTED

    notes = []
    if p.active_if is not None and p.active_if[0] in jt:
        q = jt.param(p.active_if[0])
        if q.cli and q.cli_kind in ("true", "false"):
            given = q.cli_kind == "true"
            notes.append(f"Used only {'with' if bool(p.active_if[1]) == given else 'without'} {q.cli[0]}.")
    if p.key in _UNSUPPORTED.get(jt.name, {}):
        notes.append("Not implemented by subtomo_nb: the job refuses it.")
    if p.key in _NO_EFFECT and jt.name in ("refine3d", "initial_model"):
        notes.append(f"Accepted for RELION compatibility; no effect here ({_NO_EFFECT[p.key][1]}).")
    return notes


def _help(p: Param, jt: JobType | None = None, *, default: str | None = None) -> str:
    """The help of a field's option: what giving it does, notes, and what its absence means.

    Parameters
    ----------
    p : Param
    jt : JobType, optional
        The job type (for the notes on options used only with another, refused or without effect).
    default : str, optional
        The text after ``default:``; None: ``(required)``.
    """
    label = p.label.strip()
    text = _statement(p.cli_help or p.help)
    if not p.cli_help and p.cli_kind not in ("true", "false", "gpu", "pad1") and not label.endswith("?"):
        text = f"{label} {text}"   # the form's field name (with its unit), unless it is a GUI question
    if p.cli_kind == "healpix":
        text += " " + healpix_help()
    parts = [text, *(_notes(p, jt) if jt is not None else [])]
    parts.append("(required)" if default is None else f"(default: {default})")
    return " ".join(parts).replace("%", "%%")


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
                        help="Output: the job directory, or a file / rootname inside it, as RELION's --o "
                             + ("(required)" if require_output else "(default: none)"))
    seen = {"--o"}
    for p in jt.params:
        if not p.cli:
            continue
        dest = p.dest
        kind = p.cli_kind
        absent = _absent(p)
        if p.key == "in_optimisation" and jt.name in SINGLE_INPUT_JOBS:
            p = replace(p, cli_help="Input optimisation set, or a particle STAR file (with --tomograms for 2D "
                                    "stacks).")
        if kind in ("true", "false"):
            on = kind == "true"
            if p.cli_off:
                # a pair: the flag whose state is the default says so, the other names it
                is_default = on == absent
                on_default = "on" if is_default else f"off; {p.cli_off[0]} is the default"
                off_default = "on" if not is_default else f"off; {p.cli[0]} is the default"
            else:
                on_default = off_default = "off"
            parser.add_argument(*p.cli, dest=dest, action="store_const", const=on, default=absent,
                                help=_help(p, jt, default=on_default))
            if p.cli_off:
                off = replace(p, cli_help=p.cli_off_help or f"The opposite of {p.cli[0]}.")
                parser.add_argument(*p.cli_off, dest=dest, action="store_const", const=not on,
                                    help=_help(off, jt, default=off_default))
        elif kind == "gpu":
            parser.add_argument(*p.cli, dest=dest, nargs="?", const="", default=None,
                                help=_help(p, jt, default="off"))
        elif kind == "pad1":
            parser.add_argument(*p.cli, dest=dest, type=int, default=2, choices=(1, 2),
                                help=_help(p, jt, default="2"))
        elif kind == "healpix":
            order = _to_cli(p, absent)
            parser.add_argument(*p.cli, dest=dest, type=int, default=order,
                                choices=range(len(SAMPLING_CHOICES)), metavar="ORDER",
                                help=_help(p, jt, default=_healpix_default(order)))
        else:
            default = _to_cli(p, absent)
            if p.type == "file" and default == "":
                default = None  # as the hand-written CLI: an absent file option is None
            required = require_output and p.key in _REQUIRED_INPUTS.get(jt.name, ())
            parser.add_argument(*p.cli, dest=dest, type=_TYPES[p.type], default=default, required=required,
                                help=_help(p, jt, default=None if required else _value_text(default)))
        seen.update(p.cli + p.cli_off)
    for flag, nargs in jt.fixed_flags:
        if flag in seen:
            continue
        dest = flag.lstrip("-")
        if nargs == 0 and flag in jt.subtomo_flags:
            parser.add_argument(flag, dest=dest, action="store_true", help=_SUBTOMO_FLAGS[flag])
        elif nargs == 0:
            given = _FIXED_FLAGS_WHEN.get(flag, "always gives it")
            parser.add_argument(flag, dest=dest, action="store_true",
                                help=f"RELION's job {given}: accepted, so that a RELION command line can be "
                                     f"pasted, and ignored (default: off; the job is the same either way)")
        else:
            fixed = _FIXED_VALUES.get(flag, "a fixed value")
            parser.add_argument(flag, dest=dest, nargs=nargs if nargs > 1 else None, default=None,
                                help=f"RELION's job always gives it {fixed}: accepted, so that a RELION command "
                                     f"line can be pasted, and ignored (default: none; a value given changes "
                                     f"nothing)".replace("%", "%%"))
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
        values[p.key] = jt.complete({p.key: from_flag(kind, raw)})[p.key]
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
