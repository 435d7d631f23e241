"""Exact state of a 3D auto-refine after an iteration, for ``--continue``.

RELION continues from ``run_itNNN_optimiser.star`` and the model/data/sampling files it names.
Those hold the maps as float32 MRC and the noise spectra as printed decimals, which is not enough
for a continued run to repeat an uninterrupted one: a pose that wins by less than the rounding
changes, and the runs part. So beside each iteration's RELION files we write
``run_itNNN_state.npz`` with everything the next iteration reads, at full precision: the options,
the optimiser state (:class:`~subtomo_nb.refine.autorefine.RefineState`, its
:class:`~subtomo_nb.refine.sampling.Sampling`), both half-sets' references, sigma2, tau2 and
SSNR, the poses, the per-particle statistics and the random generator's state. The saved state
holds host arrays; the references go back to the job's device on loading.

``--continue run_itNNN_optimiser.star`` reads the ``_state.npz`` of the same stem; the RELION
files stay the ones other programs read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from subtomo_nb.io.errors import InputError
from subtomo_nb.refine.sampling import Sampling

if TYPE_CHECKING:  # pragma: no cover
    from subtomo_nb.refine.autorefine import AutoRefine

__all__ = ["state_path", "save_state", "load_state", "stored_options"]

_HALF_ARRAYS = ("rows", "reference", "sigma2", "tau2", "ssnr")


def state_path(optimiser_star: str | os.PathLike) -> Path:
    """``run_itNNN_state.npz`` beside ``run_itNNN_optimiser.star``."""
    p = Path(optimiser_star)
    stem = p.name[: -len("_optimiser.star")] if p.name.endswith("_optimiser.star") else p.stem
    return p.with_name(f"{stem}_state.npz")


def _jsonable(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def save_state(job: "AutoRefine", path: str | os.PathLike) -> Path:
    """Write the job's exact state after its current iteration to ``path`` (npz)."""
    s = job.state
    scalars = {f.name: _jsonable(getattr(s, f.name)) for f in dataclasses.fields(s)
               if f.name not in ("sampling", "fsc", "history")}
    meta = {
        "options": {k: _jsonable(v) for k, v in dataclasses.asdict(job.opts).items()},
        "state": scalars,
        "sampling": dataclasses.asdict(s.sampling),
        "history": s.history,
        "rng": job.rng.bit_generator.state,
        "stats_columns": list(job.poses.stats.columns),
    }
    arrays: dict[str, np.ndarray] = {
        **job.poses.state_arrays(),
        "random_subset": job.pset.particles["rlnRandomSubset"].to_numpy(),
        "fsc": np.asarray(s.fsc if s.fsc is not None else []),
    }
    for i, h in enumerate(job.halves, start=1):
        for name in _HALF_ARRAYS:
            # the reference lives on the job's device: its host copy (the map just written)
            value = h.host_reference(job.backend) if name == "reference" else getattr(h, name)
            if value is not None:
                arrays[f"half{i}:{name}"] = np.asarray(value)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)  # a job killed while writing leaves the previous iteration's state intact
    return path


def _read(path: Path) -> tuple[dict, Any]:
    if not path.exists():
        raise InputError(what="no exact state saved beside this optimiser file (run_itNNN_state.npz); "
                              "it is written after every finished iteration", path=path)
    data = np.load(path, allow_pickle=False)
    return json.loads(str(data["meta"])), data


def stored_options(optimiser_star: str | os.PathLike) -> dict[str, Any]:
    """The :class:`~subtomo_nb.refine.autorefine.RefineOptions` fields the run was started with."""
    meta, _ = _read(state_path(optimiser_star))
    return meta["options"]


def load_state(job: "AutoRefine", optimiser_star: str | os.PathLike) -> None:
    """Restore the state saved after the iteration of ``optimiser_star`` into ``job`` (in place)."""
    from subtomo_nb.refine.autorefine import RefineState

    path = state_path(optimiser_star)
    meta, data = _read(path)
    n = len(job.pset.particles)
    if data["angles"].shape != (n, 3):
        raise InputError(what=f"the saved state has {data['angles'].shape[0]} particles, the input {n}",
                         path=path, field="rlnAngleRot")
    fsc = data["fsc"]
    job.state = RefineState(sampling=Sampling(**meta["sampling"]), fsc=fsc if fsc.size else None,
                            history=list(meta["history"]), **meta["state"])
    job.poses.restore(data, meta["stats_columns"])
    tab = job.pset.particles.copy()
    tab["rlnRandomSubset"] = data["random_subset"]
    job.pset.particles = tab
    for i, h in enumerate(job.halves, start=1):
        for name in _HALF_ARRAYS:
            key = f"half{i}:{name}"
            value = data[key].copy() if key in data else None
            if name == "reference":
                h.set_reference(job.backend.to_device(value, "map"), host=value)
            else:
                setattr(h, name, value)
    job.rng.bit_generator.state = meta["rng"]
