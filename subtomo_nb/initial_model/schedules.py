"""VDAM's schedules: iteration phases, mini-batch sizes, step size and regularisation T.

RELION's gradient-driven initial model (``relion_refine --grad --denovo_3dref``; conventions
§8.2-§8.3) runs a fixed number of mini-batch iterations in three phases: ``ini`` iterations with
small mini-batches, ``between`` iterations over which the mini-batch grows linearly, and ``fin``
iterations with the final size. The step size falls and the regularisation parameter T rises
along sigmoids placed inside the middle phase. Iterations are numbered from 1, as RELION's.

All functions are pure and cheap; :class:`~subtomo_nb.initial_model.vdam.InitialModel` calls them
once per iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "Budget",
    "iteration_budget",
    "phase_sigmoid",
    "step_size",
    "subset_size",
    "subset_sizes",
    "tau2_fudge",
]


@dataclass(frozen=True)
class Budget:
    """The three phases of a VDAM run (numbers of iterations).

    Attributes
    ----------
    nr_iter : int -- ``--iter``.
    ini : int -- initial iterations at the initial mini-batch size.
    between : int -- iterations over which the mini-batch grows.
    fin : int -- final iterations at the final size.
    """

    nr_iter: int
    ini: int
    between: int
    fin: int


def iteration_budget(nr_iter: int, ini_frac: float = 0.3, fin_frac: float = 0.2) -> Budget:
    """Split ``nr_iter`` into RELION's initial / in-between / final phases.

    ``ini = nr_iter * ini_frac``, ``fin = nr_iter * fin_frac`` (truncated), ``between`` the rest;
    when ``ini_frac + fin_frac > 0.9`` both are first divided by their sum + 0.1
    (``--grad_ini_frac 0.3``, ``--grad_fin_frac 0.2``).

    Examples
    --------
    >>> iteration_budget(200)
    Budget(nr_iter=200, ini=60, between=100, fin=40)
    """
    if nr_iter < 1:
        raise ValueError(f"the number of iterations must be at least 1, got {nr_iter}")
    total = ini_frac + fin_frac
    if total > 0.9:
        ini_frac, fin_frac = ini_frac / (total + 0.1), fin_frac / (total + 0.1)
    ini = int(nr_iter * ini_frac)
    fin = int(nr_iter * fin_frac)
    return Budget(nr_iter=int(nr_iter), ini=ini, between=int(nr_iter) - ini - fin, fin=fin)


def subset_sizes(n_particles: int, ini_subset: int = -1, fin_subset: int = -1) -> tuple[int, int]:
    """Initial and final mini-batch sizes of a 3D initial model (``--denovo_3dref``).

    ``ini = max(min(0.005 Np, 5000), 200)``, ``fin = max(min(0.1 Np, 50000), 1000)``, unless
    given (``--grad_ini_subset``, ``--grad_fin_subset`` > 0).

    Examples
    --------
    >>> subset_sizes(300)
    (200, 1000)
    >>> subset_sizes(100_000)
    (500, 10000)
    """
    ini = ini_subset if ini_subset > 0 else int(max(min(0.005 * n_particles, 5000), 200))
    fin = fin_subset if fin_subset > 0 else int(max(min(0.1 * n_particles, 50000), 1000))
    return ini, fin


def subset_size(iteration: int, budget: Budget, n_particles: int, ini_subset: int = -1,
                fin_subset: int = -1) -> int:
    """Mini-batch size of an iteration (RELION's ``updateSubsetSize``); ``n_particles`` means all.

    ``iteration < ini``: the initial size; ``ini <= iteration < ini + between``: the initial size
    plus ``round((iteration - ini) / between * (fin - ini))``; afterwards the final size. A size
    at least ``n_particles`` returns ``n_particles`` (RELION then uses every particle).
    """
    ini, fin = subset_sizes(n_particles, ini_subset, fin_subset)
    if iteration < budget.ini:
        size = ini
    elif iteration < budget.ini + budget.between:
        size = ini + math.floor((iteration - budget.ini) / budget.between * (fin - ini) + 0.5)  # RELION's ROUND
    else:
        size = fin
    return int(min(size, n_particles))


def phase_sigmoid(iteration: int, budget: Budget, width: float) -> float:
    """``1 / (10**((iteration - ini - width/2) / (width/4)) + 1)``: 1 early, 0 late.

    ``width`` is ``between / 2`` for the step size and ``between / 4`` for T; the sigmoid is
    centred at ``ini + width / 2``.
    """
    if width <= 0:
        return 1.0 if iteration < budget.ini else 0.0
    x = (iteration - budget.ini - width / 2.0) / (width / 4.0)
    if x > 300:  # 10**x overflows; the sigmoid is 0 to double precision
        return 0.0
    return 1.0 / (10.0 ** x + 1.0)


def step_size(iteration: int, budget: Budget, base: float = 0.5, inflate: float = 1.8) -> float:
    """Gradient step size (``--grad_stepsize 0.5``, scheme ``"<0.9/base>-step"``: inflate 1.8).

    ``base * inflate * s + base * (1 - s)`` with :func:`phase_sigmoid` of width ``between / 2``:
    about 0.9 early, falling to 0.5 around ``ini + between / 4``.
    """
    s = phase_sigmoid(iteration, budget, budget.between / 2.0)
    return base * inflate * s + base * (1.0 - s)


def tau2_fudge(iteration: int, budget: Budget, base: float = 4.0) -> float:
    """Regularisation parameter T of an iteration (``--tau2_fudge T``, scheme ``"<T>-step"``).

    ``(T / deflate) s + T (1 - s)`` with ``deflate = T`` and :func:`phase_sigmoid` of width
    ``between / 4``: rises from 1 to T around ``ini + between / 8``.
    """
    s = phase_sigmoid(iteration, budget, budget.between / 4.0)
    deflate = base
    return (base / deflate) * s + base * (1.0 - s)
