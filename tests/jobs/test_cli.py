"""The generated sub-parsers accept the hand-written ``subtomo`` CLI's flags with the same meaning."""

from __future__ import annotations

import argparse

import pytest

from subtomo_nb.cli.main import build_parser as hand_written_parser
from subtomo_nb.jobs import build_argparser, values_from_args
from subtomo_nb.jobs.cli import parse_job_args


def _generated() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="subtomo")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("extract", "reconstruct", "recentre"):
        build_argparser(name, sub)
    return parser


CASES = [
    ["extract", "--ios", "Picks/optimisation_set.star", "--o", "Extract/job002"],
    ["extract", "--i", "picks.star", "--tomograms", "tomograms.star", "--o", "out", "--bin", "4", "--b", "32",
     "--crop", "24", "--max_dose", "60", "--min_frames", "3", "--no_stack2d", "--float32", "--j", "2"],
    ["extract", "--ios", "o.star", "--o", "x", "--stack2d", "--float16"],
    ["reconstruct", "--i", "particles.star", "--o", "map.mrc"],
    ["reconstruct", "--i", "p.star", "--tomograms", "t.star", "--o", "m.mrc", "--sym", "C6", "--ctf", "--pad", "1",
     "--j", "3"],
    ["star-handler", "--i", "in.star", "--o", "out.star", "--center", "--center_Z", "2.75"],
    ["star-handler", "--i", "in.star", "--o", "out.star", "--center", "--center_X", "1", "--center_Y", "-2",
     "--ignore_optics", "--angpix", "3.5"],
    ["star-handler", "--i", "in.star", "--o", "out.star"],
]


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(c[:3]) for c in CASES])
def test_same_namespace_as_hand_written_cli(argv):
    old = vars(hand_written_parser().parse_args(argv))
    new = vars(_generated().parse_args(argv))
    for dest, value in old.items():
        if dest in ("func", "command"):
            continue
        assert dest in new, dest
        assert new[dest] == value and type(new[dest]) in (type(value), float, int), (dest, new[dest], value)


@pytest.mark.parametrize("argv", [["extract", "--o", "x"], ["reconstruct", "--o", "m.mrc"],
                                  ["star-handler", "--o", "out.star"], ["star-handler", "--i", "in.star"]])
def test_required_options_as_before(argv, capsys):
    for parser in (hand_written_parser(), _generated()):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_values_from_extract_args(tmp_path):
    oset = tmp_path / "picks_optimisation_set.star"
    oset.write_text("data_optimisation_set\n_rlnTomoParticlesFile picks.star\n_rlnTomoTomogramsFile t.star\n")
    ns = _generated().parse_args(["extract", "--ios", str(oset), "--o", "x", "--bin", "4", "--no_stack2d"])
    v = values_from_args("extract", ns)
    got = (v["in_optimisation"], v["use_direct_entries"], v["binning"], v["do_stack2d"])
    assert got == (str(oset), False, 4.0, False)
    ns = _generated().parse_args(["extract", "--i", "picks.star", "--tomograms", "t.star", "--o", "x"])
    v = values_from_args("extract", ns)
    assert (v["in_optimisation"], v["in_particles"], v["in_tomograms"], v["use_direct_entries"]) == \
        ("", "picks.star", "t.star", True)


def test_refine_parser_uses_relion_refine_names():
    values, out = parse_job_args("refine3d", [
        "--o", "Refine3D/job003/run", "--i", "p.star", "--tomograms", "t.star", "--ref", "ref.mrc", "--firstiter_cc",
        "--ini_high", "40", "--ctf", "--particle_diameter", "150", "--zero_mask", "--healpix_order", "3",
        "--auto_local_healpix_order", "5", "--offset_range", "4", "--offset_step", "1", "--sym", "C4",
        "--pad", "1", "--gpu", "--j", "4", "--auto_refine", "--split_random_halves", "--flatten_solvent",
        "--oversampling", "1", "--low_resol_join_halves", "40", "--norm", "--scale"])
    assert out == "Refine3D/job003/run"
    assert values["use_direct_entries"] is True and values["in_particles"] == "p.star"
    assert values["ref_correct_greyscale"] is False and values["ini_high"] == 40
    assert values["sampling"] == "3.7 degrees" and values["auto_local_sampling"] == "0.9 degrees"
    assert values["offset_step"] == 0.5 and values["do_pad1"] is True
    assert values["use_gpu"] is True and values["gpu_ids"] == "" and values["nr_threads"] == 4
    assert values["trust_ref_size"] is False  # relion_refine semantics: absent flag = No
