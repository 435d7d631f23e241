"""A cap on the significant samples per particle for VDAM's E-step (RELION's ``maximum_significants``).

RELION's gradient runs keep at most ``100 K`` coarse poses per particle (3D data; ``--maxsig``
overrides; conventions §8.4): the cap decides which coarse samples are oversampled; the fine
pass keeps its 0.999 rule. Early VDAM iterations score particles against a blob, their
posteriors are almost flat, and without the cap the 0.999 significance rule keeps most of the
coarse grid, which makes the oversampled pass explode.

:func:`~subtomo_nb.refine.expectation.expectation_batch` passes no ``max_significant`` to its
weight pruning (:func:`~subtomo_nb.refine.estep.weights_from_diff2`) yet. Until it does, this
module installs the cap where that function is looked up (coarse call only, recognised by its
caller), for the duration of a VDAM job only:
:func:`significance_cap` in this process (serial E-step) and :func:`install_on_workers` /
:func:`remove_from_workers` on a dask client (parallel E-step). Calls that pass their own
``max_significant`` (``--firstiter_cc``; the E-step's own memory bound) keep the smaller of
theirs and the cap. When the E-step grows the argument,
:data:`NATIVE` is True and VDAM passes it directly instead.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import threading
from collections.abc import Iterator
from typing import Any

import subtomo_nb.refine.expectation as _expectation

__all__ = ["NATIVE", "install", "install_on_workers", "remove", "remove_from_workers", "significance_cap"]

#: True when ``expectation_batch`` takes ``max_significant`` itself.
NATIVE = "max_significant" in inspect.signature(_expectation.expectation_batch).parameters

_LOCK = threading.Lock()
_ORIGINAL = _expectation.weights_from_diff2
_depth = 0


def _capped(cap: int) -> Any:
    def weights_from_diff2(*args: Any, max_significant: int | None = None, **kwargs: Any) -> Any:
        # RELION caps the coarse pass only (which coarse samples are oversampled); the fine pass
        # keeps its 0.999 rule. The coarse call is the one made by expectation_batch itself.
        if sys._getframe(1).f_code.co_name == "expectation_batch":
            max_significant = cap if max_significant is None else min(cap, max_significant)
        return _ORIGINAL(*args, max_significant=max_significant, **kwargs)

    weights_from_diff2.cap = cap  # type: ignore[attr-defined]
    return weights_from_diff2


def install(cap: int) -> None:
    """Cap the kept samples of every E-step in this process at ``cap`` (nested installs stack)."""
    global _depth
    with _LOCK:
        _expectation.weights_from_diff2 = _capped(int(cap))
        _depth += 1


def remove() -> None:
    """Undo one :func:`install`; the original pruning is back when none is left."""
    global _depth
    with _LOCK:
        _depth = max(_depth - 1, 0)
        if _depth == 0:
            _expectation.weights_from_diff2 = _ORIGINAL


@contextlib.contextmanager
def significance_cap(cap: int | None) -> Iterator[None]:
    """Context in which this process's E-steps keep at most ``cap`` samples (None or <= 0: no cap)."""
    if cap is None or cap <= 0 or NATIVE:
        yield
        return
    install(cap)
    try:
        yield
    finally:
        remove()


def install_on_workers(client: Any, cap: int | None) -> bool:
    """:func:`install` on every worker of a dask client; returns whether anything was installed."""
    if cap is None or cap <= 0 or NATIVE:
        return False
    client.run(install, int(cap))
    return True


def remove_from_workers(client: Any) -> None:
    """:func:`remove` on every worker (workers that died meanwhile are skipped)."""
    if getattr(client, "status", "running") == "running":
        client.run(remove, on_error="ignore")
