"""Job types as data: :class:`Param` (one field of a RELION job form) and :class:`JobType`.

A parameter is described once: its RELION ``job.star`` key, the GUI label exactly as RELION
writes it (trailing spaces included, as in ``src/pipeline_jobs.cpp``), the GUI tab, the value
type, RELION's default, the slider range or the radio choices, a help text in our own words, the
RELION command-line flag with the rule that maps the value to flags, and how the ``subtomo``
command line spells it. Forms (ipywidgets), the command line (argparse) and ``job.star`` are all
generated from these records.

Values are Python values of the parameter's type: ``bool`` for Yes/No fields, ``int`` /
``float`` for numbers, ``str`` for text, file names and radio choices (the choice text, e.g.
``"7.5 degrees"``). In ``job.star`` they are written as RELION writes them (``Yes``/``No``,
numbers without trailing zeros) by :func:`to_relion_string` and read back by
:func:`from_relion_string`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Param",
    "JobType",
    "ParamType",
    "CliKind",
    "coerce",
    "to_relion_string",
    "from_relion_string",
    "format_number",
]

#: Value types of a parameter (RELION widget: boolean, slider/number, text, file/node, radio).
ParamType = Literal["bool", "int", "float", "str", "file", "choice"]

#: How the ``subtomo`` command line spells a parameter (see :class:`Param`).
CliKind = Literal["value", "true", "false", "x2", "third", "healpix", "gpu", "pad1", "percent"]


def format_number(value: float) -> str:
    """A number as RELION writes it in ``job.star`` and on command lines (``floatToString``).

    Integral values without a decimal point (``60``), others in their shortest form (``0.1``).

    Parameters
    ----------
    value : float
        The number.

    Returns
    -------
    str
    """
    v = float(value)
    if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v) if abs(v) >= 1e-4 or v == 0 else f"{v:g}"


@dataclass(frozen=True)
class Param:
    """One field of a job form.

    Attributes
    ----------
    key : str
        RELION's ``job.star`` key (``rlnJobOptionVariable``), e.g. ``"ini_high"``.
    label : str
        GUI label exactly as RELION's, e.g. ``"Initial low-pass filter (A):"``.
    tab : str
        GUI tab: ``"I/O"``, ``"Reference"``, ``"CTF"``, ``"Optimisation"``, ``"Auto-sampling"``,
        ``"Helix"``, ``"Compute"``, ``"Running"``, ...
    type : ParamType
        ``"bool"``, ``"int"``, ``"float"``, ``"str"``, ``"file"`` or ``"choice"``.
    default : bool or int or float or str
        RELION's default value.
    help : str
        What the field does, in our own words.
    flag : str or None
        The RELION command-line flag the field feeds (None: it only steers other flags).
    maps : str
        How the value becomes flags, in words (e.g. ``"No => --firstiter_cc"``).
    min, max, step : float or None
        RELION's slider range and step.
    choices : tuple of str
        Radio-button texts (``type == "choice"``).
    pattern : str
        File-name filter of a file field (e.g. ``"*optimisation_set.star"``).
    env_default : str or None
        Environment variable that overrides the default in RELION (e.g. ``RELION_QSUB_NRMPI``).
    strict_range : bool
        Whether a value outside ``[min, max]`` is an error (RELION's sliders accept typed values
        beyond the slider for some fields; those have ``strict_range=False``).
    active_if : tuple of (str, object) or None
        ``(key, value)``: the field is only used when field ``key`` has that value (the form may
        grey it out otherwise), e.g. ``("do_ctf_correction", True)``.
    relion : bool
        False for fields we add that RELION's form does not have (kept in ``job.star``; RELION
        ignores unknown keys with a warning).
    cli : tuple of str
        Option strings of the ``subtomo`` command line (first one names the argparse ``dest``);
        empty: not on the command line.
    cli_kind : CliKind
        ``"value"`` (``--flag VALUE``), ``"true"`` (flag present => Yes), ``"false"`` (flag
        present => No), ``"x2"`` (value given doubled, RELION's offset step), ``"healpix"``
        (HEALPix order = index of the choice), ``"gpu"`` (``--gpu [ids]`` sets this flag and
        ``gpu_ids``), ``"pad1"`` (``--pad 1`` => Yes), ``"percent"`` (fraction on the command
        line, percent in the form), ``"third"`` (a third of the form value on the command line,
        RELION's prior widths from search ranges).
    cli_off : tuple of str
        Option strings that set the opposite of a ``"true"``/``"false"`` flag (then the absence
        of both means the default).
    cli_absent : object
        Value when the option is absent from the command line; ``None`` means :attr:`default`
        for ``"value"`` options and the flag-absent state for ``"true"``/``"false"`` options.
    cli_help : str
        Help of the command-line option when :attr:`help` (which describes the form field) does
        not say what giving the option does, e.g. a ``"false"`` flag such as ``--firstiter_cc``
        (given: the form's No). Empty: :attr:`help`.
    cli_off_help : str
        Help of the :attr:`cli_off` option (what giving it does).
    """

    key: str
    label: str
    tab: str
    type: ParamType
    default: Any
    help: str
    flag: str | None = None
    maps: str = ""
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str = ""
    env_default: str | None = None
    strict_range: bool = True
    active_if: tuple[str, Any] | None = None
    relion: bool = True
    cli: tuple[str, ...] = ()
    cli_kind: CliKind = "value"
    cli_off: tuple[str, ...] = ()
    cli_absent: Any = None
    cli_help: str = ""
    cli_off_help: str = ""

    def __post_init__(self) -> None:
        if self.type == "choice" and self.default not in self.choices:
            raise ValueError(f"{self.key}: default {self.default!r} is not one of its choices")
        if self.type == "bool" and not isinstance(self.default, bool):
            raise ValueError(f"{self.key}: a bool field needs a bool default")

    @property
    def dest(self) -> str | None:
        """The argparse ``dest`` of the field (first CLI option without dashes), or None."""
        return self.cli[0].lstrip("-") if self.cli else None

    def default_value(self, environ: Mapping[str, str] | None = None) -> Any:
        """The default, with RELION's environment-variable override applied.

        Parameters
        ----------
        environ : mapping, optional
            Environment to read ``env_default`` from (``os.environ`` by default).

        Returns
        -------
        object
            A value of the field's type.
        """
        env = os.environ if environ is None else environ
        if self.env_default and env.get(self.env_default, "") != "":
            try:
                return from_relion_string(self, env[self.env_default])
            except ValueError:
                return self.default
        return self.default


@dataclass(frozen=True)
class JobType:
    """A job type: RELION's job form and how we run it.

    Attributes
    ----------
    name : str
        Registry key (``"extract"``, ``"initial_model"``, ``"refine3d"``, ``"reconstruct"``,
        ``"recentre"``, ``"align_symmetry"``).
    title : str
        The job type's name in RELION's GUI, e.g. ``"3D auto-refine"``.
    process : str
        RELION process directory name (``Refine3D`` -> ``Refine3D/job012/``).
    type_label : str
        ``rlnJobTypeLabel`` written to ``job.star`` (e.g. ``"relion.refine3d.tomo"``).
    is_tomo : bool
        ``rlnJobIsTomo``.
    params : tuple of Param
        The fields, in form order.
    tabs : tuple of str
        Tab names in GUI order.
    run : str
        Dotted path of the run function (``"package.module.function"``), imported only when the
        job runs. Signature: ``run(values, job_dir, *, project_dir, progress, client=None)``.
    cli_name : str
        ``subtomo`` sub-command (``"refine"``).
    program : str
        RELION program the job runs (``"relion_refine"``).
    fixed_flags : tuple of (str, int)
        Flags RELION always adds (flag, number of values); the ``subtomo`` parser accepts and
        ignores them so that RELION's command line can be pasted.
    outputs : tuple of str
        Main output files, relative to the job directory.
    description : str
        One line on what the job does.
    subtomo_flags : tuple of str
        Flags always written on the ``subtomo`` command line (``--center`` of star-handler).
    """

    name: str
    title: str
    process: str
    type_label: str
    is_tomo: bool
    params: tuple[Param, ...]
    tabs: tuple[str, ...]
    run: str
    cli_name: str
    program: str
    fixed_flags: tuple[tuple[str, int], ...] = ()
    outputs: tuple[str, ...] = ()
    description: str = ""
    subtomo_flags: tuple[str, ...] = ()
    _index: dict[str, Param] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {p.key: p for p in self.params}
        if len(index) != len(self.params):
            dup = sorted({p.key for p in self.params if sum(q.key == p.key for q in self.params) > 1})
            raise ValueError(f"{self.name}: duplicate parameter keys {dup}")
        for p in self.params:
            if p.tab not in self.tabs:
                raise ValueError(f"{self.name}: parameter {p.key} is on unknown tab {p.tab!r}")
        object.__setattr__(self, "_index", index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def param(self, key: str) -> Param:
        """The parameter with job.star key ``key`` (KeyError naming the job type if absent)."""
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"job type {self.name!r} has no parameter {key!r}") from None

    def keys(self) -> list[str]:
        """The job.star keys, in form order."""
        return [p.key for p in self.params]

    def tab_params(self, tab: str) -> list[Param]:
        """The parameters on one tab, in form order."""
        return [p for p in self.params if p.tab == tab]

    def defaults(self, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """All default values (RELION's, with its environment overrides), key -> value."""
        return {p.key: p.default_value(environ) for p in self.params}

    def complete(self, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated with ``values``, each converted to the parameter's type.

        Parameters
        ----------
        values : mapping, optional
            Some or all values, as Python values or RELION strings (``"Yes"``, ``"60"``).

        Returns
        -------
        dict
            Every key of the job type.

        Raises
        ------
        KeyError
            For a key the job type does not have.
        ValueError
            For a value that cannot be converted (the message names the key).
        """
        out = self.defaults()
        for key, value in (values or {}).items():
            out[key] = coerce(self.param(key), value)
        return out


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("yes", "true", "1", "y", "on"):
        return True
    if t in ("no", "false", "0", "n", "off", ""):
        return False
    raise ValueError(f"not Yes/No: {text!r}")


def coerce(param: Param, value: Any) -> Any:
    """Convert a value (Python value or RELION string) to the parameter's type.

    Parameters
    ----------
    param : Param
    value : object

    Returns
    -------
    bool or int or float or str

    Raises
    ------
    ValueError
        When the value does not fit the type (the message names the key).
    """
    if isinstance(value, str):
        return from_relion_string(param, value)
    try:
        if param.type == "bool":
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError(f"not Yes/No: {value!r}")
        if param.type == "int":
            f = float(value)
            if not math.isfinite(f) or f != int(f):
                raise ValueError(f"not a whole number: {value!r}")
            return int(f)
        if param.type == "float":
            return float(value)
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{param.key}: {exc}") from None


def to_relion_string(param: Param, value: Any) -> str:
    """A value as RELION writes it in ``job.star`` (``Yes``/``No``, ``60``, ``0.1``, text).

    Parameters
    ----------
    param : Param
    value : object
        A value of the parameter's type (or convertible to it).

    Returns
    -------
    str
    """
    v = coerce(param, value)
    if param.type == "bool":
        return "Yes" if v else "No"
    if param.type in ("int", "float"):
        return format_number(v)
    return str(v)


def from_relion_string(param: Param, text: str) -> Any:
    """Parse a ``job.star`` value string into the parameter's type.

    Parameters
    ----------
    param : Param
    text : str

    Returns
    -------
    bool or int or float or str

    Raises
    ------
    ValueError
        When the text does not fit the type (the message names the key).
    """
    try:
        if param.type == "bool":
            return _parse_bool(text)
        if param.type == "int":
            f = float(text)
            if not math.isfinite(f) or f != int(f):
                raise ValueError(f"not a whole number: {text!r}")
            return int(f)
        if param.type == "float":
            return float(text)
    except ValueError as exc:
        msg = str(exc) if str(exc).startswith("not ") else f"not a number: {text!r}"
        raise ValueError(f"{param.key}: {msg}") from None
    return text
