"""Count the particles of an iteration whose E-step has finished, for a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["batch_counter"]


def batch_counter(sizes: Sequence[int], batch_size: int, iteration: int,
                  emit: Callable[[dict], None]) -> Callable[[int, int, int], None]:
    """A ``progress(half, batches_done, batches_total)`` callback that emits particle counts.

    Parameters
    ----------
    sizes
        Particles in each half-set.
    batch_size
        Particles per batch (the last batch of a half-set holds the rest).
    iteration
        The iteration the counts belong to.
    emit
        Called with ``{"kind": "particles", "iteration", "done", "of"}`` after each batch, with the
        particles done in all half-sets together.
    """
    done = [0] * len(sizes)
    total = int(sum(sizes))

    def count(half: int, batches_done: int, batches_total: int) -> None:
        done[half] = sizes[half] if batches_done >= batches_total else min(batches_done * batch_size, sizes[half])
        emit({"kind": "particles", "iteration": iteration, "done": int(sum(done)), "of": total})

    return count
