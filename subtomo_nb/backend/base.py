"""Backends: the array namespace, FFT, scatter/sort primitives, counted transfers, memory."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["Backend", "TransferCounter", "get_backend", "backend_of", "backend_from_env", "namespace",
           "BACKEND_NAMES", "BackendError"]

#: Backends a job can name (``SUBTOMO_BACKEND``, :func:`get_backend`).
BACKEND_NAMES = ("numpy", "cupy", "strict")


class BackendError(ValueError):
    """A backend that cannot be used here (unknown name, missing package, no GPU)."""


@dataclass
class TransferCounter:
    """Host↔device copies made through :meth:`Backend.to_device` / :meth:`Backend.to_host`, by kind.

    ``h2d[kind]`` and ``d2h[kind]`` are ``[copies, bytes]``. Kinds used by the engine:
    ``"particles"`` (pseudo-subtomogram data, CTF², multiplicity), ``"reference"`` (a half-set's
    reference map), ``"sums"`` (back-projector and noise sums), ``"metadata"`` (poses, priors,
    sampling tables), ``"results"`` (per-particle results), ``"map"`` (maps written or read).
    """

    h2d: dict[str, list[int]] = field(default_factory=dict)
    d2h: dict[str, list[int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, direction: str, kind: str, nbytes: int) -> None:
        table = self.h2d if direction == "h2d" else self.d2h
        with self._lock:
            entry = table.setdefault(kind, [0, 0])
            entry[0] += 1
            entry[1] += int(nbytes)

    def copies(self, direction: str, kind: str) -> int:
        """Number of copies of ``kind`` in ``direction`` (``"h2d"`` or ``"d2h"``)."""
        return (self.h2d if direction == "h2d" else self.d2h).get(kind, [0, 0])[0]

    def nbytes(self, direction: str, kind: str) -> int:
        """Bytes of ``kind`` copied in ``direction``."""
        return (self.h2d if direction == "h2d" else self.d2h).get(kind, [0, 0])[1]

    def snapshot(self) -> dict[str, dict[str, tuple[int, int]]]:
        """A copy: ``{"h2d": {kind: (copies, bytes)}, "d2h": {...}}``."""
        with self._lock:
            return {"h2d": {k: tuple(v) for k, v in self.h2d.items()},
                    "d2h": {k: tuple(v) for k, v in self.d2h.items()}}

    def reset(self) -> None:
        with self._lock:
            self.h2d.clear()
            self.d2h.clear()


class Backend:
    """Base: everything a device-path function needs besides the array-API namespace.

    Attributes
    ----------
    name : ``"numpy"``, ``"cupy"`` or ``"strict"``.
    xp : the array-API namespace of the backend's arrays.
    device : the device arrays are created on (``device=be.device`` in creation functions).
    transfers : the process's :class:`TransferCounter` for this backend.
    """

    name = "base"
    xp: ModuleType
    device: Any

    def __init__(self) -> None:
        self.transfers = TransferCounter()

    # -- arrays --------------------------------------------------------------------------------
    def owns(self, a: Any) -> bool:
        """Whether ``a`` is an array of this backend."""
        raise NotImplementedError

    def to_device(self, a: Any, kind: str = "data", dtype: Any = None) -> Any:
        """Copy the host array ``a`` to the device (counted as ``kind``); device arrays pass through."""
        if self.owns(a):
            return a if dtype is None else self.xp.astype(a, dtype, copy=False)
        host = np.asarray(a) if dtype is None else np.asarray(a, dtype=_np_dtype(dtype))
        self.transfers.add("h2d", kind, host.nbytes)
        return self._upload(np.ascontiguousarray(host))

    def to_host(self, a: Any, kind: str = "results") -> np.ndarray:
        """Copy the device array ``a`` to a numpy array (counted as ``kind``); host arrays pass through."""
        if not self.owns(a):
            return np.asarray(a)
        host = self._download(a)
        self.transfers.add("d2h", kind, host.nbytes)
        return host

    def _upload(self, host: np.ndarray) -> Any:
        raise NotImplementedError

    def _download(self, a: Any) -> np.ndarray:
        raise NotImplementedError

    def dtype(self, np_dtype: Any) -> Any:
        """The backend's dtype for a numpy dtype (``np.float32`` → ``xp.float32``)."""
        return getattr(self.xp, np.dtype(np_dtype).name)

    # -- primitives beyond the standard ----------------------------------------------------------
    def fft(self) -> Any:
        """An FFT module with ``rfftn``, ``irfftn``, ``fftn``, ``ifftn``, ``fftshift``, ``ifftshift``."""
        raise NotImplementedError

    def scatter_add(self, target: Any, index: Any, values: Any) -> Any:
        """``target[index] += values`` with repeated indices summed, in place; returns ``target``.

        ``index`` indexes the leading axis (an integer array) or the leading axes (a tuple of them).
        """
        return self._host_call(_np_scatter_add, target, index, values)

    def bincount(self, index: Any, weights: Any, minlength: int) -> Any:
        """``(minlength,)`` sums of ``weights`` (float64) by non-negative integer ``index`` (both flat)."""
        return self._host_call(lambda i, w: np.bincount(i, weights=w, minlength=minlength)[:minlength],
                               index, weights)

    def argpartition(self, a: Any, kth: int, axis: int = -1) -> Any:
        """Indices that partition ``a`` around its ``kth`` element along ``axis`` (``np.argpartition``)."""
        return self._host_call(lambda x: np.argpartition(x, kth, axis=axis), a)

    def kernel(self, name: str) -> Callable[..., Any] | None:
        """A compiled kernel of :mod:`subtomo_nb.refine._kernels` or :mod:`subtomo_nb.fourier._kernels`
        that runs on this backend's arrays, or None (use the array expression)."""
        return None

    def memory(self) -> tuple[int, int] | None:
        """``(free, total)`` device memory in bytes, or None for host memory."""
        return None

    def free_pool(self) -> None:
        """Give cached device memory back (end of a job)."""

    def describe(self, n_devices: int = 1) -> str:
        """What ``run.out`` says of the backend, e.g. ``strict (array-api-strict, device1)``."""
        return self.name

    def _host_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a numpy implementation as this backend's kernel (numpy: directly)."""
        raise NotImplementedError

    def set_rows(self, target: Any, index: Any, values: Any) -> Any:
        """``target[index] = values`` along the leading axis, in place; returns ``target``.

        ``index`` is a 1-D integer array of the backend (distinct rows); ``values`` has
        ``len(index)`` rows. The array API has no integer-array ``__setitem__``; this is it.
        """
        self._host_call(_np_set_rows, target, index, values)
        return target


def _np_set_rows(target: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    target[index] = values


def _np_dtype(dtype: Any) -> np.dtype:
    if isinstance(dtype, np.dtype) or isinstance(dtype, type):
        return np.dtype(dtype)
    return np.dtype(str(dtype).rsplit(".", 1)[-1])


def _np_scatter_add(target: np.ndarray, index: Any, values: np.ndarray) -> np.ndarray:
    if (not isinstance(index, tuple) and target.ndim == 2 and values.ndim == 2 and target.flags.c_contiguous
            and values.dtype == target.dtype):
        from subtomo_nb.refine import _kernels  # noqa: PLC0415 - numba, compiled on first use

        if _kernels.HAVE_NUMBA:
            # the serial row kernel: repeated rows are summed (the parallel one needs distinct rows)
            _kernels._add_rows(target, np.ascontiguousarray(index, dtype=np.int64), np.ascontiguousarray(values))
            return target
    np.add.at(target, index, values)
    return target


class NumpyBackend(Backend):
    """numpy arrays on the host; numba kernels."""

    name = "numpy"

    def __init__(self) -> None:
        super().__init__()
        import array_api_compat.numpy as xp  # noqa: PLC0415

        self.xp = xp
        self.device = "cpu"

    def owns(self, a: Any) -> bool:
        return isinstance(a, np.ndarray)

    def _upload(self, host: np.ndarray) -> np.ndarray:
        return host

    def _download(self, a: np.ndarray) -> np.ndarray:
        return a

    def fft(self) -> Any:
        import scipy.fft  # noqa: PLC0415

        return scipy.fft

    def _host_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def kernel(self, name: str) -> Callable[..., Any] | None:
        return _numba_kernel(name)

    def describe(self, n_devices: int = 1) -> str:
        return "numpy (CPU)"


def _numba_kernel(name: str) -> Callable[..., Any] | None:
    from subtomo_nb.fourier import _kernels as fk  # noqa: PLC0415
    from subtomo_nb.refine import _kernels as rk  # noqa: PLC0415

    if not fk.HAVE_NUMBA:
        return None
    return getattr(rk, name, None) or getattr(fk, name, None)


class StrictBackend(Backend):
    """array-api-strict arrays on ``device1``: refuse host conversion and mixing with host arrays."""

    name = "strict"

    def __init__(self) -> None:
        super().__init__()
        try:
            import array_api_strict as xp  # noqa: PLC0415
        except ImportError as exc:  # pragma: no cover - test extra
            raise BackendError("the strict backend needs array-api-strict (pip install 'subtomo_nb[test]')") from exc
        from array_api_strict._array_object import Array  # noqa: PLC0415

        self.xp = xp
        self.device = xp.Device("device1")
        self._Array = Array

    def owns(self, a: Any) -> bool:
        return isinstance(a, self._Array)

    def _upload(self, host: np.ndarray) -> Any:
        return self._Array._new(host.copy(), device=self.device)

    def _download(self, a: Any) -> np.ndarray:
        return np.array(a._array, copy=True)

    def _unwrap(self, x: Any) -> Any:
        if isinstance(x, self._Array):
            if x.device != self.device:
                raise ValueError(f"array on {x.device}, not on the strict backend's {self.device}")
            return x._array
        if isinstance(x, tuple):
            return tuple(self._unwrap(v) for v in x)
        if isinstance(x, list):
            return [self._unwrap(v) for v in x]
        if isinstance(x, np.ndarray):
            raise TypeError("a host (numpy) array passed to a strict-backend kernel: copy it with to_device first")
        return x

    def _wrap(self, y: Any) -> Any:
        if isinstance(y, np.ndarray):
            return self._Array._new(y, device=self.device)
        if isinstance(y, np.generic):
            return self._Array._new(np.asarray(y), device=self.device)
        if isinstance(y, tuple):
            return tuple(self._wrap(v) for v in y)
        if isinstance(y, list):
            return [self._wrap(v) for v in y]
        return y

    def _host_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._wrap(fn(*self._unwrap(args)))

    def fft(self) -> Any:
        import scipy.fft  # noqa: PLC0415

        return _WrappedModule(self, scipy.fft)

    def kernel(self, name: str) -> Callable[..., Any] | None:
        """None: the strict device runs the array expressions a GPU runs (cupy has no numba
        kernels), so the tests check the GPU's code, not the CPU's compiled kernels."""
        return None

    def describe(self, n_devices: int = 1) -> str:
        return f"strict (array-api-strict, {self.device._device})"


class _WrappedModule:
    """A host module's functions as strict-device kernels (the simulated device's library)."""

    def __init__(self, backend: StrictBackend, module: ModuleType) -> None:
        self._backend = backend
        self._module = module

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._module, name)
        be = self._backend
        return lambda *args, **kw: be._wrap(fn(*be._unwrap(args), **{k: be._unwrap(v) for k, v in kw.items()}))


class CupyBackend(Backend):
    """cupy arrays on the current CUDA device; cupyx for FFT and scatter-add.

    The backend is one per process; its :attr:`device` is the calling thread's current CUDA
    device (``cupy.cuda.Device()``), which the job layer sets to the job's first GPU
    (:func:`subtomo_nb.jobs.devices.use_driver_gpu`, a block around the whole job, restoring the
    previous device after it).
    """

    name = "cupy"

    def __init__(self) -> None:
        super().__init__()
        try:
            import array_api_compat.cupy as xp  # noqa: PLC0415
            import cupy  # noqa: PLC0415
        except ImportError as exc:
            raise BackendError("--gpu needs cupy: pip install 'subtomo_nb[gpu]'") from exc
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except cupy.cuda.runtime.CUDARuntimeError as exc:
            raise BackendError(f"--gpu: no usable CUDA device ({exc})") from exc
        if n < 1:
            raise BackendError("--gpu: no CUDA device is visible")
        self._cupy = cupy
        self.xp = xp

    @property
    def device(self) -> Any:
        """The current CUDA device of the calling thread (where cupy allocates)."""
        return self._cupy.cuda.Device()

    def owns(self, a: Any) -> bool:
        return isinstance(a, self._cupy.ndarray)

    def _upload(self, host: np.ndarray) -> Any:
        return self._cupy.asarray(host)

    def _download(self, a: Any) -> np.ndarray:
        return self._cupy.asnumpy(a)

    def fft(self) -> Any:
        import cupyx.scipy.fft  # noqa: PLC0415

        return cupyx.scipy.fft

    def scatter_add(self, target: Any, index: Any, values: Any) -> Any:
        import cupyx  # noqa: PLC0415

        cp = self._cupy
        values = cp.asarray(values)
        if target.dtype.kind == "c":
            # cupyx.scatter_add takes real types only: the real and imaginary parts (views) one by one
            cupyx.scatter_add(target.real, index, cp.real(values).astype(target.real.dtype, copy=False))
            cupyx.scatter_add(target.imag, index, cp.imag(values).astype(target.real.dtype, copy=False))
        elif target.dtype in (cp.int64, cp.int8, cp.int16, cp.uint8, cp.uint16, cp.bool_):
            # no atomic add of these types: sums in float64 (exact below 2**53), then added
            sums = cp.zeros(target.shape, dtype=cp.float64)
            cupyx.scatter_add(sums, index, values.astype(cp.float64))
            target += sums.astype(target.dtype)
        else:
            cupyx.scatter_add(target, index, values.astype(target.dtype, copy=False))
        return target

    def bincount(self, index: Any, weights: Any, minlength: int) -> Any:
        return self._cupy.bincount(index, weights=weights, minlength=minlength)[:minlength]

    def argpartition(self, a: Any, kth: int, axis: int = -1) -> Any:
        return self._cupy.argpartition(a, kth, axis=axis)

    def _host_call(self, fn: Callable[..., Any], *args: Any) -> Any:  # pragma: no cover - GPU
        raise NotImplementedError("no host implementation runs on cupy arrays")

    def set_rows(self, target: Any, index: Any, values: Any) -> Any:  # pragma: no cover - GPU
        target[index] = values
        return target

    def memory(self) -> tuple[int, int]:
        free, total = self._cupy.cuda.runtime.memGetInfo()
        return int(free), int(total)

    def free_pool(self) -> None:
        self._cupy.get_default_memory_pool().free_all_blocks()

    def describe(self, n_devices: int = 1) -> str:
        return f"cupy ({n_devices} GPU{'s' if n_devices != 1 else ''})"


_LOCK = threading.Lock()


@lru_cache(maxsize=None)
def _make(name: str) -> Backend:
    return {"numpy": NumpyBackend, "strict": StrictBackend, "cupy": CupyBackend}[name]()


def get_backend(name: str = "numpy") -> Backend:
    """The process's backend called ``name`` (one per process: its transfer counter is shared)."""
    if name not in BACKEND_NAMES:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
    with _LOCK:
        return _make(name)


def backend_from_env(gpu: str | None = None) -> Backend:
    """The backend of a job: cupy when ``--gpu`` was given (``gpu`` not None), else ``SUBTOMO_BACKEND``
    (``numpy`` when unset)."""
    if gpu is not None:
        return get_backend("cupy")
    return get_backend(os.environ.get("SUBTOMO_BACKEND", "").strip() or "numpy")


def backend_of(*arrays: Any) -> Backend:
    """The backend whose arrays these are (numpy for host arrays, scalars and None)."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("array_api_strict"):
            return get_backend("strict")
        if mod.startswith("cupy"):
            return get_backend("cupy")
    return get_backend("numpy")


def namespace(*arrays: Any) -> ModuleType:
    """The array-API namespace of the arrays (``backend_of(...).xp``)."""
    return backend_of(*arrays).xp
