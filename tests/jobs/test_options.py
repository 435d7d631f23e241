"""options_from: one conversion of job values into what the job runs with, agreeing with RELION's
command line, with the registry's defaults, and one "Additional arguments" parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from subtomo_nb.io.errors import InputError
from subtomo_nb.jobs import get_job_type, relion_commands
from subtomo_nb.jobs.additional_args import INITIAL_MODEL_FLAGS, REFINE_FLAGS, parse_additional_arguments
from subtomo_nb.jobs.options import options_from


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_defaults_are_the_registrys(tmp_path):
    refine = options_from("refine3d", {"in_optimisation": "o.star", "fn_ref": "ref.mrc"}, tmp_path, tmp_path)
    vdam = options_from("initial_model", {"in_optimisation": "o.star"}, tmp_path, tmp_path)
    for opts, name in ((refine, "refine3d"), (vdam, "initial_model")):
        assert opts.particle_diameter == get_job_type(name).param("particle_diameter").default == 200.0
    assert refine.ini_high == get_job_type("refine3d").param("ini_high").default
    assert vdam.nr_iter == get_job_type("initial_model").param("nr_iter").default


@pytest.mark.parametrize("sampling, local, step", [("7.5 degrees", "1.8 degrees", 1.0), ("3.7 degrees", "0.9 degrees", 0.5)])
def test_refine_options_agree_with_relions_command_line(tmp_path, sampling, local, step):
    values = {"in_optimisation": "o.star", "fn_ref": "ref.mrc", "sampling": sampling, "auto_local_sampling": local,
              "offset_step": step, "offset_range": 4.0, "particle_diameter": 230.0, "sym_name": "C6"}
    argv = relion_commands("refine3d", values)[0]
    opts = options_from("refine3d", values, tmp_path / "Refine3D" / "job001", tmp_path)
    assert opts.healpix_order == int(_flag(argv, "--healpix_order"))
    assert opts.auto_local_healpix_order == int(_flag(argv, "--auto_local_healpix_order"))
    assert opts.offset_step_px == float(_flag(argv, "--offset_step"))
    assert opts.offset_range_px == float(_flag(argv, "--offset_range"))
    assert opts.particle_diameter == float(_flag(argv, "--particle_diameter"))
    assert opts.sym == _flag(argv, "--sym")
    assert Path(opts.particles) == tmp_path / "o.star" and opts.output_root == tmp_path / "Refine3D" / "job001" / "run"


def test_additional_arguments_one_parser():
    extra, unused = parse_additional_arguments("--maxsig 20 --random_seed 7 --unknown x", INITIAL_MODEL_FLAGS)
    assert extra == {"max_significant": 20, "random_seed": 7} and unused == ["--unknown", "x"]
    extra, unused = parse_additional_arguments("--auto_iter_max 3 --no_align_ref_sym", REFINE_FLAGS)
    assert extra == {"auto_iter_max": 3, "no_align_ref_sym": True} and unused == []
    assert parse_additional_arguments(None, REFINE_FLAGS) == ({}, [])


@pytest.mark.parametrize("job_type, text", [("refine3d", "--random_seed x"), ("refine3d", "--auto_iter_max"),
                                            ("initial_model", "--grad_ini_frac y")])
def test_bad_additional_arguments_name_the_field(tmp_path, job_type, text):
    with pytest.raises(InputError) as err:
        options_from(job_type, {"in_optimisation": "o.star", "fn_ref": "r.mrc", "other_args": text}, tmp_path, tmp_path)
    assert err.value.field == "other_args"


def test_task_options_are_the_task_functions_keywords(tmp_path):
    import inspect

    from subtomo_nb.tasks.align_symmetry import align_symmetry_file
    from subtomo_nb.tasks.extract import extract_subtomos
    from subtomo_nb.tasks.reconstruct import reconstruct_particles
    from subtomo_nb.tasks.recentre import recentre_star

    for job_type, func in (("extract", extract_subtomos), ("reconstruct", reconstruct_particles),
                           ("recentre", recentre_star), ("align_symmetry", align_symmetry_file)):
        options = options_from(job_type, {"in_optimisation": "o.star", "fn_in": "x.star"}, tmp_path, tmp_path)
        inspect.signature(func).bind(**options)     # every keyword is one the task function takes
    from subtomo_nb.initial_model.align_symmetry import align_symmetry

    options = options_from("align_symmetry", {"fn_in": "x.star"}, tmp_path, tmp_path)
    named = set(inspect.signature(align_symmetry_file).parameters)
    passed_on = {k: v for k, v in options.items() if k not in named}
    inspect.signature(align_symmetry).bind(None, "C1", 1.0, **passed_on)   # the rest is align_symmetry's


@pytest.mark.parametrize("argv, fast", [(["--ios", "o.star"], False), (["--ios", "o.star", "--fast"], True)])
def test_fast_flag_reaches_vdam_options(tmp_path, argv, fast):
    """``subtomo initial-model --fast`` (subtomo_nb's own search) is ``VdamOptions.fast``; absent: RELION's."""
    from subtomo_nb.jobs import parse_job_args

    values, _ = parse_job_args("initial_model", argv)
    assert values["do_fast"] is fast
    assert options_from("initial_model", values, tmp_path, tmp_path).fast is fast
    # a job.star written before the field existed (no do_fast) runs RELION's search
    assert options_from("initial_model", {"in_optimisation": "o.star"}, tmp_path, tmp_path).fast is False
