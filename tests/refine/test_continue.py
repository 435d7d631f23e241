"""``--continue run_it003_optimiser.star`` gives the same final map as the uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest

from subtomo_nb.io.errors import InputError
from subtomo_nb.io.mrc import read_map
from subtomo_nb.refine.autorefine import AutoRefine, RefineOptions

from .test_autorefine import _options


@pytest.fixture(scope="module")
def uninterrupted(tiny_project, tiny_extract_3d, tmp_path_factory):
    out = tmp_path_factory.mktemp("refine_whole")
    job = AutoRefine.from_options(_options(tiny_project, tiny_extract_3d, out, auto_iter_max=5))
    job.run()
    return out, job


def test_continue_from_iteration_3_equals_uninterrupted_run(uninterrupted, tmp_path):
    out, whole = uninterrupted
    assert whole.state.iteration == 5 and (out / "run_it003_state.npz").exists()
    # the continued run reads only the stopped run's files (options, poses, maps, noise, RNG)
    job = AutoRefine.from_options(RefineOptions(particles="", reference="", output_root=tmp_path / "run",
                                   continue_from=out / "run_it003_optimiser.star"))
    assert job.state.iteration == 3 and job.opts.sym == "C6" and job.opts.auto_iter_max == 5
    job.run()
    assert job.state.iteration == 5
    assert not (tmp_path / "run_it003_optimiser.star").exists()  # iterations 4 and 5 only
    assert (tmp_path / "run_it004_optimiser.star").exists()
    a, _ = read_map(out / "run_class001.mrc")
    b, _ = read_map(tmp_path / "run_class001.mrc")
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * float(np.abs(a).max()))
    np.testing.assert_allclose(job.poses.angles, whole.poses.angles, atol=1e-9)
    np.testing.assert_allclose(job.poses.offsets_A, whole.poses.offsets_A, atol=1e-9)


def test_continue_without_saved_state_names_the_file(tmp_path):
    missing = tmp_path / "run_it003_optimiser.star"
    missing.write_text("data_optimiser_general\n\n_rlnCurrentIteration 3\n")
    with pytest.raises(InputError, match="run_it003_state.npz"):
        AutoRefine.from_options(RefineOptions(particles="", reference="", output_root=tmp_path / "ct" / "run",
                                 continue_from=missing))
