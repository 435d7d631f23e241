"""The array backend a job runs on: one numerical core for numpy, cupy and a strict test device.

A :class:`Backend` is chosen once per job (:func:`get_backend`, :func:`backend_from_env`) and
carries what the core needs beyond the array-API standard namespace ``xp``:

* FFTs (``scipy.fft`` with threads on the CPU, ``cupyx.scipy.fft`` on the GPU);
* scatter-add, bincount, top-k selection, row sums by index (the E-step's sparse sums);
* host transfers, counted by kind in :class:`TransferCounter` (``"particles"``, ``"reference"``,
  ``"sums"``, ...): :meth:`Backend.to_device` and :meth:`Backend.to_host` are the only sanctioned
  ways across;
* the memory pool (free and total device memory);
* compiled kernels (numba on the CPU) for the memory-bound steps, where the backend has them.

Backends:

``numpy``
    The default: numpy arrays (``array_api_compat.numpy`` namespace), numba kernels.
``cupy``
    cupy arrays on the current CUDA device (``array_api_compat.cupy``), cupyx; the GPU extra.
``strict``
    ``array-api-strict`` arrays on its non-default device ``device1``. They refuse implicit
    conversion to numpy and mixing with host arrays, so any stray ``np.`` call or host copy in
    the device path fails. Its "device kernels" run the numpy backend's implementations on the
    arrays' own buffers (as a GPU runs its kernels on device memory); everything between kernels
    is checked. ``SUBTOMO_BACKEND=strict`` selects it for the jobs; the tests use it.

Writing device-path code (what runs on every backend)
-----------------------------------------------------
``be = backend_of(x)`` (or the job's backend), ``xp = be.xp``; then only array-API calls:
functions not methods (``xp.reshape``, ``xp.astype``, ``xp.real``, ``xp.permute_dims``), creation
functions with ``device=be.device``, ``xp.take``/``xp.take_along_axis`` for integer gathers, every
axis named in an index (``a[:, None, :]``, not ``a[:, None]`` on 2D), no fancy ``__setitem__`` and
no ``out=`` (use :meth:`Backend.scatter_add`, :meth:`Backend.bincount`, ``xp.where``), no
``.view``/``.flags``. Scalars for control flow with ``int(...)``/``float(...)`` (a synchronisation,
not a transfer of data).
"""

from __future__ import annotations

from subtomo_nb.backend.base import Backend, TransferCounter, backend_from_env, backend_of, get_backend, namespace

__all__ = ["Backend", "TransferCounter", "get_backend", "backend_of", "backend_from_env", "namespace"]
