"""The ``subtomo`` command line: simulate, extract, reconstruct and re-centre from the shell's view."""

from __future__ import annotations

import numpy as np

from subtomo_nb.cli.main import main
from subtomo_nb.geometry.euler import euler_to_matrix
from subtomo_nb.io.mrc import read_map
from subtomo_nb.io.particles import read_particles
from subtomo_nb.io.star import read_star


def test_simulate_extract_reconstruct_recentre(tmp_path, capsys):
    project = tmp_path / "tutorial"
    assert main(["simulate", "--o", str(project), "--tiny", "--noise_free"]) == 0
    out = capsys.readouterr().out
    assert "n_particles: 92" in out
    ext = project / "Extract" / "job002"
    assert main(["extract", "--ios", str(project / "optimisation_set.star"), "--o", str(ext),
                 "--bin", "4", "--b", "32", "--no_stack2d", "--float32"]) == 0
    pset = read_particles(ext / "particles.star")
    assert len(pset) == 92
    assert float(pset.optics["rlnImagePixelSize"].iloc[0]) == 10.8
    assert int(pset.optics["rlnImageDimensionality"].iloc[0]) == 3
    merged = project / "Reconstruct" / "job003" / "merged.mrc"
    assert main(["reconstruct", "--i", str(ext / "particles.star"), "--o", str(merged), "--sym", "C6", "--ctf"]) == 0
    vol, pix = read_map(merged)
    assert vol.shape == (32, 32, 32) and abs(pix - 10.8) < 1e-4 and np.isfinite(vol).all()
    centred = project / "Select" / "job004" / "particles.star"
    assert main(["star-handler", "--i", str(ext / "particles.star"), "--o", str(centred), "--center",
                 "--center_Z", "2.75"]) == 0
    a = read_star(ext / "particles.star")["particles"]
    b = read_star(centred)["particles"]
    assert list(a.columns) == list(b.columns)
    # the picks' pose is (0, 90, 0): the reference z axis lies along -x of the subtomogram, so the
    # new origin is 2.75 px * 10.8 Å further along +x (relion_star_handler's -pixel * A c)
    cols = ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]
    A = euler_to_matrix(a["rlnAngleRot"], a["rlnAngleTilt"], a["rlnAnglePsi"])
    expected = a[cols].to_numpy(float) - 10.8 * (A @ np.array([0.0, 0.0, 2.75]))
    np.testing.assert_allclose(b[cols].to_numpy(float), expected, atol=1e-4)
    assert np.allclose(b["rlnOriginXAngst"] - a["rlnOriginXAngst"], 29.7, atol=1e-3)


def test_bad_input_exits_1_with_the_file_named(tmp_path, capsys):
    missing = tmp_path / "nope.star"
    assert main(["reconstruct", "--i", str(missing), "--o", str(tmp_path / "m.mrc")]) == 1
    err = capsys.readouterr().err
    assert "nope.star" in err


def test_no_align_ref_sym_reaches_the_refine_options(tmp_path):
    from subtomo_nb.cli.main import build_parser, refine_values
    from subtomo_nb.jobs.options import options_from

    common = ["refine", "--i", "particles.star", "--ref", "ref.mrc", "--o", str(tmp_path / "run"), "--sym", "C6"]
    on = options_from("refine3d", refine_values(build_parser().parse_args(common)), tmp_path, tmp_path)
    off = options_from("refine3d", refine_values(build_parser().parse_args(common + ["--no_align_ref_sym"])), tmp_path,
                       tmp_path)
    assert on.align_reference_symmetry and not off.align_reference_symmetry
    assert on.sym == off.sym == "C6"


def test_simulate_particle_option(tmp_path, capsys):
    """``--particle`` parses (hexamer by default, d2, nothing else) and reaches the simulator."""
    import pytest

    from subtomo_nb.cli.main import build_parser
    from subtomo_nb.simulate.phantom import render_map

    parser = build_parser()
    assert parser.parse_args(["simulate", "--o", "p"]).particle == "hexamer"
    assert parser.parse_args(["simulate", "--o", "p", "--particle", "d2"]).particle == "d2"
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["simulate", "--o", "p", "--particle", "d4"])
    assert exc.value.code == 2
    capsys.readouterr()
    project = tmp_path / "d2"
    assert main(["simulate", "--o", str(project), "--tiny", "--noise_free", "--particle", "d2"]) == 0
    out = capsys.readouterr().out
    assert "n_particles: 92" in out and "particle: d2" in out and "symmetry: D2" in out
    truth, pix = read_map(project / "ground_truth" / "map_bin4.mrc")
    np.testing.assert_allclose(truth, render_map(32, pix, scale=1.8, particle="d2"), atol=1e-6)
