"""The "3D initial reference" job (subtomo_nb.jobs.initial_model): run function and command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.star import read_star


# ---------------------------------------------------------------------------------------------
# registry run function (K = 2, run in C1 then aligned) and the command line
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_job_run_function_with_two_classes(tiny_extract_3d, tiny_project, tmp_path):
    from subtomo_nb.jobs.initial_model import run_initial_model_job
    from subtomo_nb.jobs import get_job_type

    values = {**get_job_type("initial_model").defaults(), "in_optimisation": str(Path(tiny_extract_3d).parent / "optimisation_set.star"),
              "nr_iter": 1, "nr_classes": 2, "particle_diameter": 230.0, "sym_name": "C6", "do_run_C1": True,
              "sigma_tilt": 10.0, "other_args": "--maxsig 5 --random_seed 2 --unknown_flag"}
    messages = []
    out = run_initial_model_job(values, tmp_path, project_dir=Path(tiny_project["project_dir"]),
                                progress=lambda e: messages.append(getattr(e, "message", str(e))))
    assert out["initial_model"] == tmp_path / "initial_model.mrc" and out["initial_model"].exists()
    assert (tmp_path / "run_it001_class001.mrc").exists() and (tmp_path / "run_it001_class002.mrc").exists()
    assert any("--unknown_flag" in m for m in messages)
    data = read_star(tmp_path / "run_it001_data.star")["particles"]
    model = read_star(tmp_path / "run_it001_model.star")
    counts = data["rlnClassNumber"].value_counts().reindex([1, 2], fill_value=0).to_numpy()
    assert counts.sum() == len(data) and set(data["rlnClassNumber"]) <= {1, 2}
    # every particle used (mu = 0): the class shares are the particle fractions
    np.testing.assert_allclose(model["model_classes"]["rlnClassDistribution"].to_numpy(), counts / counts.sum())
    assert {"model_class_1", "model_class_2"} <= set(model)
    assert model["model_general"]["rlnNrClasses"] == 2
    # run in C1, then aligned and symmetrised: the written map is C6-symmetric
    from subtomo_nb.geometry.symmetry import point_group, symmetrise_map

    vol, _ = read_map(out["initial_model"])
    sym = symmetrise_map(vol, point_group("C6"))
    assert np.abs(sym - vol).max() < 0.01 * np.abs(vol).max()          # trilinear re-symmetrisation error only


def test_continue_is_refused(tmp_path):
    from subtomo_nb.jobs.initial_model import run_initial_model_job
    from subtomo_nb.io.errors import InputError
    from subtomo_nb.jobs import get_job_type

    values = {**get_job_type("initial_model").defaults(), "in_optimisation": "x.star", "fn_cont": "run_it010_optimiser.star"}
    with pytest.raises(InputError, match="not supported"):
        run_initial_model_job(values, tmp_path, project_dir=tmp_path, progress=lambda e: None)


def test_command_line(tiny_extract_3d, tmp_path, capsys):
    import argparse

    from subtomo_nb.jobs.initial_model import run_from_args
    from subtomo_nb.jobs import build_argparser

    parser = argparse.ArgumentParser(prog="subtomo")
    build_argparser("initial_model", parser.add_subparsers(dest="command")).set_defaults(func=run_from_args)
    oset = Path(tiny_extract_3d).parent / "optimisation_set.star"
    args = parser.parse_args(["initial-model", "--ios", str(oset), "--o", str(tmp_path / "run"), "--iter", "1",
                              "--K", "1", "--sym", "C1", "--particle_diameter", "230", "--ctf", "--flatten_solvent",
                              "--grad", "--denovo_3dref", "--zero_mask", "--pad", "1", "--healpix_order", "1"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "initial_model:" in printed
    assert (tmp_path / "initial_model.mrc").exists() and (tmp_path / "run.out").exists()
    assert not any("--fast" in line for line in (tmp_path / "run.out").read_text().splitlines())  # RELION's job
    a, _ = read_map(tmp_path / "initial_model.mrc")
    b, _ = read_map(tmp_path / "run_it001_class001.mrc")
    np.testing.assert_allclose(a, b)                   # C1: the class map as it is


def test_fast_run_says_what_it_changed_in_run_out(tiny_extract_3d, tmp_path, monkeypatch, capsys):
    """``subtomo initial-model --fast``: run.out says, before iteration 1, that the search is subtomo_nb's and what
    it changed; RELION's command line in note.txt stays without --fast, the subtomo one keeps it."""
    from subtomo_nb.cli.main import main
    from subtomo_nb.jobs.jobdir import read_job

    monkeypatch.chdir(tmp_path)                        # the project: the job directory goes inside it
    oset = Path(tiny_extract_3d).parent / "optimisation_set.star"
    assert main(["initial-model", "--ios", str(oset), "--o", "InitialModel/job001/run", "--iter", "1", "--K", "1",
                 "--sym", "C1", "--particle_diameter", "230", "--ctf", "--flatten_solvent", "--fast"]) == 0
    d = tmp_path / "InitialModel" / "job001"
    assert (d / "initial_model.mrc").is_file() and (d / "RELION_JOB_EXIT_SUCCESS").is_file()
    lines = (d / "run.out").read_text().splitlines()
    expected = ["--fast: an accelerated search that is not RELION's",
                "--fast: image size 2 x (current-resolution shell + 2) instead of + 10",
                "--fast: HEALPix order at most 2 (15°, 7.5° oversampled; RELION's auto-sampling would go to order 3)"]
    where = [next(i for i, line in enumerate(lines) if text in line) for text in expected]
    first_iteration = next(i for i, line in enumerate(lines) if "] iteration 1 |" in line)
    assert where == sorted(where) and where[-1] < first_iteration
    # 92 particles: RELION's mini-batches hold them all from the first, so --fast changes nothing there
    assert not any("mini-batch holds" in line for line in lines)
    assert read_job(d).values["do_fast"] is True
    note = (d / "note.txt").read_text().splitlines()
    relion = [line for line in note if line.startswith(("relion_refine", "relion_align_symmetry"))]
    assert len(relion) == 2 and not any("fast" in line for line in relion)
    assert any(line.startswith("subtomo initial-model") and line.endswith(" --fast") for line in note)
