"""A form value in the units of its RELION flag, and back: the one place these conversions live.

RELION's job forms and its programs count some quantities differently (the form's offset step is
half of ``--offset_step``; the form's angular sampling is a text whose index is
``--healpix_order``; helical ranges are three sigmas, percentages are fractions). The
``subtomo`` command line (:mod:`subtomo_nb.jobs.cli`), RELION's command lines
(:mod:`subtomo_nb.jobs.commands`) and the options the jobs run with
(:mod:`subtomo_nb.jobs.options`) all convert through :func:`to_flag` and :func:`from_flag`, by the
field's :attr:`~subtomo_nb.jobs.params.Param.cli_kind`.
"""

from __future__ import annotations

from typing import Any

from .registry import SAMPLING_CHOICES

__all__ = ["healpix_order", "to_flag", "from_flag"]


def healpix_order(choice: str) -> int:
    """HEALPix order of an angular-sampling choice with oversampling 1 (RELION: index + 1 - 1).

    Parameters
    ----------
    choice : str
        One of RELION's sampling texts, e.g. ``"7.5 degrees"``.

    Returns
    -------
    int
        ``2`` for 7.5 degrees, ``4`` for 1.8 degrees.
    """
    return SAMPLING_CHOICES.index(choice)


def to_flag(kind: str | None, value: Any) -> Any:
    """A form value in its flag's units.

    Parameters
    ----------
    kind : str or None
        The field's ``cli_kind``: ``"x2"`` (the form's fine offset step; the flag is twice it),
        ``"third"`` (a range; the flag is a sigma, a third of it), ``"percent"`` (the flag is a
        fraction), ``"healpix"`` (a sampling text; the flag is its HEALPix order); anything
        else: unchanged.
    value
        The form's value.
    """
    if kind == "x2":
        return 2 * value
    if kind == "third":
        return value / 3.0
    if kind == "percent":
        return value / 100.0
    if kind == "healpix":
        return healpix_order(value)
    return value


def from_flag(kind: str | None, raw: Any) -> Any:
    """The form value of a flag's value: the inverse of :func:`to_flag`."""
    if kind == "x2":
        return raw / 2.0
    if kind == "third":
        return raw * 3.0
    if kind == "percent":
        return raw * 100.0
    if kind == "healpix":
        return SAMPLING_CHOICES[int(raw)]
    return raw
