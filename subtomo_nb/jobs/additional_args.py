"""The relion_refine flags a job honours in its "Additional arguments" field (``other_args``).

RELION's GUI pastes that field at the end of the command line; the jobs here read the few flags
they implement from it (:func:`parse_additional_arguments`) and report the other words as not
used. One parser serves every job type; the flags each job type honours are tables below.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from subtomo_nb.io.errors import InputError

__all__ = ["REFINE_FLAGS", "INITIAL_MODEL_FLAGS", "parse_additional_arguments"]

#: A flag -> (option name, value type); type None: a flag without a value (True when given).
FlagTable = Mapping[str, "tuple[str, type | None]"]

#: relion_refine --auto_refine flags honoured by the 3D auto-refine job -> RefineOptions field.
#: ``--no_align_ref_sym`` is subtomo_nb's (``subtomo refine --no_align_ref_sym``), not RELION's.
REFINE_FLAGS: FlagTable = {"--auto_iter_max": ("auto_iter_max", int), "--random_seed": ("random_seed", int),
                           "--no_align_ref_sym": ("no_align_ref_sym", None)}

#: relion_refine --grad --denovo_3dref flags honoured by the 3D initial reference job -> VdamOptions field.
INITIAL_MODEL_FLAGS: FlagTable = {
    "--maxsig": ("max_significant", int), "--random_seed": ("random_seed", int),
    "--grad_write_iter": ("grad_write_iter", int), "--grad_ini_subset": ("grad_ini_subset", int),
    "--grad_fin_subset": ("grad_fin_subset", int), "--grad_ini_frac": ("grad_ini_frac", float),
    "--grad_fin_frac": ("grad_fin_frac", float), "--grad_stepsize": ("grad_stepsize", float),
    "--mu": ("mu", float),
}


def parse_additional_arguments(text: str | None, flags: FlagTable) -> tuple[dict[str, Any], list[str]]:
    """The known flags of an "Additional arguments" string, and the words not used.

    Parameters
    ----------
    text
        The field's text (shell words, e.g. ``"--maxsig 20 --random_seed 7"``); None or empty: none.
    flags
        Flag -> ``(name, type)``; ``type`` None for a flag without a value.

    Returns
    -------
    values : dict
        Option name -> value (``True`` for a flag without a value).
    unused : list of str
        The other words, in order.

    Raises
    ------
    subtomo_nb.io.errors.InputError
        A known flag without a value or with a value of the wrong type (field ``other_args``).
    """
    words = shlex.split(text or "")
    out: dict[str, Any] = {}
    unused: list[str] = []
    i = 0
    while i < len(words):
        flag = words[i]
        if flag not in flags:
            unused.append(flag)
            i += 1
            continue
        name, kind = flags[flag]
        if kind is None:
            out[name] = True
            i += 1
            continue
        try:
            out[name] = kind(words[i + 1])
        except (IndexError, ValueError):
            raise InputError(None, what=f"{flag} needs a{'n integer' if kind is int else ' number'} value",
                             field="other_args") from None
        i += 2
    return out, unused
