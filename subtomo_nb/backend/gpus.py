"""The CUDA devices this process sees, and the ``CUDA_VISIBLE_DEVICES`` of GPU workers.

``--gpu`` numbers (relion_refine's) count this process's visible devices. The job layer checks them
(:mod:`subtomo_nb.jobs.devices`) and the dask clients start one worker per GPU
(:mod:`subtomo_nb.parallel.client`) with these functions: one count, one mapping. Light: no
dask, no cupy until asked.
"""

from __future__ import annotations

import os

__all__ = ["visible_gpu_count", "cuda_visible_devices", "select_gpus", "worker_visible_devices"]


def visible_gpu_count() -> int:
    """Number of CUDA devices visible to this process (0 when none, or no way to ask); never raises.

    cupy's count (the CUDA runtime's, after ``CUDA_VISIBLE_DEVICES``); without cupy, dask-cuda's.
    The one count the jobs' ``--gpu`` checks and :mod:`subtomo_nb.parallel.client` use.
    """
    try:
        import cupy  # type: ignore[import-not-found]  # noqa: PLC0415

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no cupy, no driver, no device: none visible
        pass
    try:
        from dask_cuda.utils import get_n_gpus  # type: ignore[import-not-found]  # noqa: PLC0415

        return int(get_n_gpus())
    except Exception:  # noqa: BLE001
        return 0


#: ``CUDA_VISIBLE_DEVICES`` entries that hide every device from the point they appear (CUDA ignores
#: an invalid entry and everything after it; ``-1`` and ``NoDevFiles`` are the usual ways to hide all).
_HIDING = ("-1", "NoDevFiles")


def cuda_visible_devices() -> list[str] | None:
    """The entries of this process's ``CUDA_VISIBLE_DEVICES``, as CUDA reads them (None when unset).

    Entries are numbers, ``GPU-<uuid>`` or ``MIG-<uuid>`` names, stripped of spaces; the list stops
    at ``-1`` / ``NoDevFiles`` (CUDA sees nothing from there), so ``"-1"`` or ``""`` give ``[]``:
    set, no device. The one parser of the variable: :func:`worker_visible_devices` maps ``--gpu``
    numbers through it, and :mod:`subtomo_nb.parallel.client` asks each worker with it whether it
    runs on a GPU.
    """
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    entries: list[str] = []
    for entry in (e.strip() for e in text.split(",")):
        if entry in _HIDING:
            break
        if entry:
            entries.append(entry)
    return entries


def select_gpus(ids: list[int] | tuple[int, ...] | None) -> tuple[int, ...]:
    """The GPUs of a ``--gpu`` list, checked against the devices this process sees.

    Parameters
    ----------
    ids
        Device numbers as ``--gpu`` counts them (relion_refine's: the visible devices, 0 first);
        None: every visible GPU.

    Returns
    -------
    tuple of int

    Raises
    ------
    InputError
        No GPU named, or a number beyond the visible devices (field ``--gpu``).
    """
    from subtomo_nb.io.errors import InputError  # noqa: PLC0415

    n = visible_gpu_count()
    if ids is None:
        ids = list(range(n))
    if not ids:
        raise InputError(None, what="no GPU named" if n else "no CUDA GPU is visible to this process", field="--gpu")
    beyond = [i for i in ids if not 0 <= i < n]
    if beyond:
        raise InputError(None, what=f"GPU {beyond[0]} is not visible: this process sees {n} CUDA "
                         f"device{'s' if n != 1 else ''}" + (f" (0 to {n - 1})" if n else ""), field="--gpu")
    return tuple(int(i) for i in ids)


def worker_visible_devices(ids: list[int] | tuple[int, ...]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for one worker per GPU of ``ids``, in the physical names the workers need.

    ``--gpu`` numbers count this process's visible devices (as relion_refine's); dask-cuda gives
    each worker the literal entries it is handed. So each number is mapped through this process's
    ``CUDA_VISIBLE_DEVICES`` when it is set (its entries may be numbers, ``GPU-<uuid>`` or
    ``MIG-<uuid>`` names): with ``CUDA_VISIBLE_DEVICES=2,3``, ``--gpu 0,1`` gives ``"2,3"``.

    Raises
    ------
    InputError
        A number beyond the entries of ``CUDA_VISIBLE_DEVICES``.
    """
    from subtomo_nb.io.errors import InputError  # noqa: PLC0415

    parent = cuda_visible_devices()
    if parent is None:
        return ",".join(str(int(i)) for i in ids)
    beyond = [i for i in ids if not 0 <= i < len(parent)]
    if beyond:
        raise InputError(None, what=f"GPU {beyond[0]} is not visible: CUDA_VISIBLE_DEVICES names {len(parent)} "
                         f"device{'s' if len(parent) != 1 else ''} ({','.join(parent)})", field="--gpu")
    return ",".join(parent[i] for i in ids)
