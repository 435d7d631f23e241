"""Command lines: RELION's as its GUI builds them (§6.1, §8.1) and the ``subtomo`` equivalent."""

from __future__ import annotations

import argparse

import pytest

from subtomo_nb.jobs import REGISTRY, build_argparser, command_line, get_job_type, relion_commands, values_from_args
from subtomo_nb.jobs.commands import format_command, subtomo_command

# The tutorial's first auto-refine (RELION 5 tomo tutorial project, Refine3D/job012/job.star):
# bin-6 particles of Extract/job010, reference Reconstruct/job011/merged.mrc, C6.
TUTORIAL_REFINE = {
    "in_optimisation": "Extract/job010/optimisation_set.star",
    "use_direct_entries": False,
    "fn_ref": "Reconstruct/job011/merged.mrc",
    "ref_correct_greyscale": True,
    "trust_ref_size": True,
    "ini_high": 60,
    "sym_name": "C6",
    "do_ctf_correction": True,
    "particle_diameter": 500,
    "do_zero_mask": True,
    "sampling": "7.5 degrees",
    "offset_range": 5,
    "offset_step": 1,
    "auto_local_sampling": "1.8 degrees",
    "sigma_tilt": 10,
    "nr_pool": 30,
    "scratch_dir": "",
    "nr_mpi": 5,
    "nr_threads": 6,
    "use_gpu": True,
    "gpu_ids": "",
}

# §6.1, filled in with the settings above, flag by flag.
TUTORIAL_REFINE_RELION = [
    "relion_refine_mpi", "--o", "Refine3D/job012/run", "--auto_refine", "--split_random_halves",
    "--ios", "Extract/job010/optimisation_set.star", "--sigma_tilt", "10",
    "--ref", "Reconstruct/job011/merged.mrc", "--trust_ref_size", "--ini_high", "60",
    "--dont_combine_weights_via_disc", "--pool", "30", "--pad", "2",
    "--ctf", "--particle_diameter", "500", "--flatten_solvent", "--zero_mask",
    "--oversampling", "1", "--healpix_order", "2", "--auto_local_healpix_order", "4",
    "--offset_range", "5", "--offset_step", "2", "--sym", "C6",
    "--low_resol_join_halves", "40", "--norm", "--scale", "--j", "6", "--gpu", "",
]


def _pairs(argv: list[str]) -> list[tuple[str, ...]]:
    """Split an argument list into (flag, values...) groups, for readable failures."""
    groups: list[tuple[str, ...]] = []
    for token in argv[1:]:
        if token.startswith("--"):
            groups.append((token,))
        else:
            groups[-1] = groups[-1] + (token,)
    return groups


def test_tutorial_autorefine_equals_relion_command():
    argv = command_line("refine3d", TUTORIAL_REFINE, job_dir="Refine3D/job012/")
    assert argv[0] == TUTORIAL_REFINE_RELION[0]
    assert _pairs(argv) == _pairs(TUTORIAL_REFINE_RELION)
    assert argv == TUTORIAL_REFINE_RELION
    assert format_command(argv, 5).startswith("mpirun -n 5 relion_refine_mpi --o Refine3D/job012/run ")


def test_autorefine_flag_mappings():
    values = dict(
        TUTORIAL_REFINE,
        use_direct_entries=True, in_optimisation="", in_particles="Select/job020/particles.star",
        in_tomograms="Tomograms/job008/tomograms.star", in_trajectories="Polish/job030/motion.star",
        ref_correct_greyscale=False, trust_ref_size=False, ini_high=0, do_blush=True,
        do_parallel_discio=False, do_preread_images=True, scratch_dir="/ssd", do_pad1=True, auto_faster=True,
        ctf_intact_first_peak=True, do_zero_mask=False, fn_mask="masks/mask.mrc", do_solvent_fsc=True,
        sampling="15 degrees", auto_local_sampling="0.9 degrees", offset_range=3, offset_step=0.75,
        relax_sym="C3", sigma_tilt=-1, nr_mpi=1, use_gpu=True, gpu_ids="0:1", other_args="--maxsig 500",
    )
    argv = command_line("refine3d", values, job_dir="Refine3D/job013/")
    expected = [
        "relion_refine", "--o", "Refine3D/job013/run", "--auto_refine", "--split_random_halves",
        "--i", "Select/job020/particles.star", "--tomograms", "Tomograms/job008/tomograms.star",
        "--trajectories", "Polish/job030/motion.star",
        "--ref", "Reconstruct/job011/merged.mrc", "--firstiter_cc", "--blush",
        "--dont_combine_weights_via_disc", "--no_parallel_disc_io", "--preread_images", "--pool", "30", "--pad", "1",
        "--auto_ignore_angles", "--auto_resol_angles", "--ctf", "--ctf_intact_first_peak",
        "--particle_diameter", "500", "--flatten_solvent", "--solvent_mask", "masks/mask.mrc", "--solvent_correct_fsc",
        "--oversampling", "1", "--healpix_order", "1", "--auto_local_healpix_order", "5",
        "--offset_range", "3", "--offset_step", "1.5", "--sym", "C6", "--low_resol_join_halves", "40", "--norm",
        "--scale", "--relax_sym", "C3", "--j", "6", "--gpu", "0:1", "--maxsig", "500",
    ]
    assert _pairs(argv) == _pairs(expected)
    assert argv == expected


def test_autorefine_continue_and_helix():
    argv = command_line("refine3d", dict(TUTORIAL_REFINE, fn_cont="Refine3D/job012/run_it010_optimiser.star"),
                        job_dir="Refine3D/job012/", is_continue=True)
    assert argv[:5] == ["relion_refine_mpi", "--continue", "Refine3D/job012/run_it010_optimiser.star", "--o",
                        "Refine3D/job012/run"]
    assert "--ref" not in argv and "--auto_refine" not in argv and argv[-4:] == ["--j", "6", "--gpu", ""]
    helix = command_line("refine3d", dict(TUTORIAL_REFINE, do_helix=True, helical_tube_outer_diameter=200,
                                          helical_twist_initial=-1.5, helical_rise_initial=4.75),
                         job_dir="Refine3D/job014/")
    i = helix.index("--helix")
    assert helix[i:i + 19] == ["--helix", "--helical_outer_diameter", "200", "--helical_nr_asu", "1",
                               "--helical_twist_initial", "-1.5", "--helical_rise_initial", "4.75",
                               "--helical_z_percentage", "0.3", "--sigma_tilt", "5",
                               "--sigma_psi", "3.3333333333333335",
                               "--sigma_rot", "0", "--helical_keep_tilt_prior_fixed", "--j"]


def test_initial_model_commands_follow_relion():
    values = {"in_optimisation": "Extract/job010/optimisation_set.star", "sym_name": "C6", "sigma_tilt": 10,
              "particle_diameter": 500, "nr_threads": 12, "use_gpu": True, "gpu_ids": "", "scratch_dir": ""}
    refine, align = relion_commands("initial_model", values, "InitialModel/job011/")
    assert refine == [
        "relion_refine", "--o", "InitialModel/job011/run", "--iter", "200", "--grad", "--denovo_3dref",
        "--ios", "Extract/job010/optimisation_set.star", "--sigma_tilt", "10", "--ctf", "--K", "1", "--sym", "C1",
        "--flatten_solvent", "--zero_mask", "--dont_combine_weights_via_disc", "--pool", "3", "--pad", "1",
        "--particle_diameter", "500", "--oversampling", "1", "--healpix_order", "1", "--offset_range", "6",
        "--offset_step", "2", "--auto_sampling", "--tau2_fudge", "4", "--j", "12", "--gpu", "",
    ]
    assert align == ["relion_align_symmetry", "--i", "InitialModel/job011/run_it200_model.star", "--o",
                     "InitialModel/job011/initial_model.mrc", "--sym", "C6", "--apply_sym", "--select_largest_class"]
    refine2, align2 = relion_commands("initial_model", dict(values, do_run_C1=False), "InitialModel/job011/")
    assert refine2[refine2.index("--sym") + 1] == "C6" and align2[align2.index("--sym") + 1] == "C1"


def test_fast_is_not_on_relions_command_line():
    """--fast is subtomo_nb's: RELION's commands are the same with and without it; the subtomo line has it."""
    values = {"in_optimisation": "Extract/job010/optimisation_set.star", "sym_name": "C6"}
    fast = dict(values, do_fast=True)
    assert relion_commands("initial_model", fast, "InitialModel/job011/") == \
        relion_commands("initial_model", values, "InitialModel/job011/")
    assert not any("fast" in word for argv in relion_commands("initial_model", fast) for word in argv)
    assert "--fast" in subtomo_command("initial_model", fast)
    assert "--fast" not in subtomo_command("initial_model", values)
    assert get_job_type("initial_model").param("do_fast").relion is False


def test_other_relion_commands():
    extract = command_line("extract", {"in_optimisation": "Picks/job009/optimisation_set.star", "binning": 6,
                                       "box_size": 96, "crop_size": 64, "max_dose": 50}, job_dir="Extract/job010/")
    assert extract == ["relion_tomo_subtomo", "--i", "Picks/job009/optimisation_set.star", "--theme", "classic",
                       "--o", "Extract/job010/", "--b", "96", "--crop", "64", "--bin", "6", "--max_dose", "50",
                       "--min_frames", "1", "--stack2d", "--float16", "--j", "1"]
    recentre = command_line("recentre", {"fn_in": "Refine3D/job012/run_data.star", "center_z": 2.75},
                            job_dir="Select/job013/")
    assert recentre == ["relion_star_handler", "--i", "Refine3D/job012/run_data.star", "--o",
                        "Select/job013/particles.star", "--center", "--center_X", "0", "--center_Y", "0",
                        "--center_Z", "2.75"]
    recon = command_line("reconstruct", {"use_direct_entries": True, "in_particles": "p.star", "in_tomograms": "t.star",
                                         "sym_name": "C6", "nr_threads": 4}, job_dir="Reconstruct/job011/")
    assert recon == ["relion_tomo_reconstruct_particle", "--p", "p.star", "--t", "t.star", "--o", "Reconstruct/job011/",
                     "--b", "128", "--bin", "1", "--sym", "C6", "--j", "4", "--j_out", "4", "--j_in", "1"]


def _parse(name: str, argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    build_argparser(name, sub)
    return values_from_args(name, parser.parse_args(argv))


NON_DEFAULT = {
    "refine3d": dict(TUTORIAL_REFINE, do_pad1=True, ref_correct_greyscale=False, relax_sym="C2", auto_faster=True,
                     do_blush=True, do_parallel_discio=False, ini_high=0, do_helix=True, range_psi=6, range_rot=3,
                     helical_z_percentage=25, helical_range_distance=1.5, do_apply_helical_symmetry=False,
                     keep_tilt_prior_fixed=False, gpu_ids="0,1"),
    "initial_model": {"use_direct_entries": True, "in_particles": "a.star", "in_tomograms": "t.star", "nr_iter": 100,
                      "tau_fudge": 3.5, "nr_classes": 2, "sym_name": "D7", "do_run_C1": False, "do_solvent": False,
                      "sigma_tilt": 15, "do_ctf_correction": False},
    "extract": {"in_optimisation": "x/optimisation_set.star", "binning": 4, "box_size": 64, "crop_size": 48,
                "max_dose": 80, "min_frames": 5, "do_stack2d": False, "do_float16": False, "nr_threads": 3},
    "reconstruct": {"use_direct_entries": True, "in_particles": "Extract/job002/particles.star",
                    "in_tomograms": "t/tomograms.star", "sym_name": "C4", "do_ctf": False, "pad": 1, "nr_threads": 2},
    "recentre": {"fn_in": "p.star", "center_x": 1.5, "center_y": -2, "center_z": 3.25, "do_ignore_optics": True,
                 "angpix": 4.2},
    "align_symmetry": {"fn_in": "m.mrc", "sym_name": "I3", "do_select_largest_class": False, "box_size": 48,
                       "do_apply_sym": False, "do_nn": True, "angpix": 3.3},
}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_subtomo_command_round_trips(name):
    jt = get_job_type(name)
    values = jt.complete(NON_DEFAULT[name])
    argv = subtomo_command(jt, values, "Job/job001/out")
    assert argv[:4] == ["subtomo", jt.cli_name, "--o", "Job/job001/out"]
    back = _parse(name, argv[1:])
    for p in jt.params:
        if not p.cli:
            continue
        if p.active_if is not None and values[p.active_if[0]] != p.active_if[1]:
            continue
        assert back[p.key] == values[p.key], (p.key, argv)
    if "use_direct_entries" in jt:
        assert back["use_direct_entries"] == values["use_direct_entries"]


def test_relion_command_parses_with_subtomo_cli():
    """RELION's own command line can be pasted after ``subtomo refine``."""
    back = _parse("refine3d", ["refine"] + TUTORIAL_REFINE_RELION[1:])
    jt = get_job_type("refine3d")
    expected = jt.complete(TUTORIAL_REFINE)
    for key in ("in_optimisation", "fn_ref", "ref_correct_greyscale", "trust_ref_size", "ini_high", "sym_name",
                "do_ctf_correction", "particle_diameter", "do_zero_mask", "sampling", "offset_range", "offset_step",
                "auto_local_sampling", "sigma_tilt", "nr_pool", "do_pad1", "nr_threads", "use_gpu", "gpu_ids",
                "do_combine_thru_disc", "do_parallel_discio"):
        assert back[key] == expected[key], key
    inimodel = relion_commands("initial_model", {"in_optimisation": "o_optimisation_set.star", "nr_iter": 120},
                               "InitialModel/job001/")[0]
    back = _parse("initial_model", ["initial-model"] + inimodel[1:])
    assert back["nr_iter"] == 120 and back["in_optimisation"] == "o_optimisation_set.star"
