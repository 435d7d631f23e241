"""Bad input, as a new user gives it: one line naming the file, row and field, exit 1, nothing written.

Every case runs ``subtomo`` (in this process) in a copy of the tiny simulated project and asserts
the exact message, the exit code, and that no file of the project was changed, added or removed
(sha256 of every file before and after).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from subtomo_nb.cli.main import main
from subtomo_nb.io.mrc import read_map, write_map
from subtomo_nb.io.star import read_star, write_star

from ._helpers import digest

R = "Extract/job_3d/particles.star"                # extracted 3D pseudo-subtomograms (box 32, 10.8 Å)
OS = "Extract/job_3d/optimisation_set.star"
REF = "ground_truth/map_bin4.mrc"
MASK = "masks/mask_align_bin4.mrc"
REFINE = ["refine", "--ios", OS, "--ref", REF, "--o", "Refine3D/job010/run", "--particle_diameter", "230",
          "--sym", "C6"]
INIMODEL = ["initial-model", "--ios", OS, "--o", "InitialModel/job011/run", "--particle_diameter", "230"]
EXTRACT = ["extract", "--ios", "optimisation_set.star", "--o", "Extract/job012", "--b", "32", "--bin", "4"]
GROUPS = "C1, Cn, Ci, Cs, Cnv, Cnh, Sn, Dn, Dnv, Dnh, T, Td, Th, O, Oh, I, In, Ih, Inh"


@pytest.fixture(scope="module")
def project(tiny_project, tiny_extract_3d, tmp_path_factory) -> Path:
    """A copy of the tiny project with the bad files of the cases below."""
    root = tmp_path_factory.mktemp("bad_inputs") / "project"
    shutil.copytree(tiny_project["project_dir"], root, ignore=shutil.ignore_patterns("job_2d"))
    shutil.copy(root / R, root / "truth.star")
    blocks = read_star(root / R)
    empty = dict(blocks)
    empty["particles"] = blocks["particles"].iloc[:0]
    write_star(root / "empty.star", empty)
    zero = dict(blocks)
    zero["optics"] = blocks["optics"].assign(rlnImagePixelSize=[0.0])
    write_star(root / "pix0.star", zero)
    for name, label, value in (("box48.star", "rlnImageSize", 48), ("pix54.star", "rlnImagePixelSize", 5.4)):
        changed = dict(blocks)
        changed["optics"] = blocks["optics"].assign(**{label: [value]})
        write_star(root / name, changed)
    write_star(root / "noparticles.star", {"general": blocks["general"], "optics": blocks["optics"]})
    (root / "notes.txt").write_text("a note, not a STAR file\n")
    ref, pix = read_map(root / REF)
    bad = ref.copy()
    bad[3, 4, 5] = np.nan
    write_map(root / "nan_ref.mrc", np.nan_to_num(ref), pix)
    raw = bytearray((root / "nan_ref.mrc").read_bytes())   # write_map refuses NaN: put one in the data
    raw[1024:1028] = np.array([np.nan], np.float32).tobytes()
    (root / "nan_ref.mrc").write_bytes(bytes(raw))
    write_map(root / "box48.mrc", np.zeros((48, 48, 48), np.float32), pix)
    write_map(root / "pix5.mrc", ref, 5.4)
    mask, _ = read_map(root / MASK)
    write_map(root / "mask_over.mrc", 1.5 * mask, pix)
    (root / "trunc.mrc").write_bytes((root / REF).read_bytes()[:5000])
    return root


def _cases() -> list[tuple[str, list[str], str]]:
    """(id, argv, the one line on stderr); ``{P}`` is the project directory."""
    return [
        # paths
        ("reconstruct-o-is-the-input", ["reconstruct", "--i", "truth.star", "--o", "truth.star"],
         "subtomo reconstruct: error: truth.star: field --o: the output map must be an .mrc (or .map) file"),
        ("reconstruct-o-is-a-read-image", ["reconstruct", "--i", R, "--o", "Extract/job_3d/Subtomograms/TS_01/1_data.mrc"],
         "subtomo reconstruct: error: Extract/job_3d/Subtomograms/TS_01/1_data.mrc: field --o: the output would "
         "overwrite an input the job reads (rlnImageName of particles.star: {P}/Extract/job_3d/Subtomograms/TS_01/"
         "1_data.mrc); choose another output name"),
        ("reconstruct-missing-input", ["reconstruct", "--i", "missing.star", "--o", "Reconstruct/job1/merged.mrc"],
         "subtomo reconstruct: error: {P}/missing.star: field --i: file not found"),
        ("reconstruct-parent-is-a-file", ["reconstruct", "--i", R, "--o", f"{R}/run/merged.mrc"],
         "subtomo reconstruct: error: {P}/Extract/job_3d/particles.star: field --o: is a file, not a directory: "
         "cannot create {P}/Extract/job_3d/particles.star/run in it"),
        ("reconstruct-not-a-star-file", ["reconstruct", "--i", "notes.txt", "--o", "Reconstruct/job1/merged.mrc"],
         "subtomo reconstruct: error: {P}/notes.txt: line 1: text before the first data_ block: 'a note, not a STAR file'"),
        ("reconstruct-no-particles-block", ["reconstruct", "--i", "noparticles.star", "--o", "Reconstruct/job1/merged.mrc"],
         "subtomo reconstruct: error: {P}/noparticles.star: no data_particles block (a RELION 3.1+ particle file needs "
         "data_optics and data_particles)"),
        # emptiness and consistency
        ("reconstruct-empty-particle-set", ["reconstruct", "--i", "empty.star", "--o", "Reconstruct/job1/merged.mrc"],
         "subtomo reconstruct: error: {P}/empty.star: field data_particles: the particle set is empty (no rows)"),
        ("reconstruct-pixel-size-0", ["reconstruct", "--i", "pix0.star", "--o", "Reconstruct/job1/merged.mrc"],
         "subtomo reconstruct: error: {P}/pix0.star: row 1, field rlnImagePixelSize: pixel size 0 in data_optics is not positive"),
        ("reconstruct-optics-box-not-the-images", ["reconstruct", "--i", "box48.star", "--o", "Reconstruct/job1/merged.mrc"],
         "subtomo reconstruct: error: {P}/box48.star: row 1, field rlnImageSize: the image {IMG}_data.mrc holds shape "
         "(32, 32, 32) [z, y, x], the optics table's box is 48"),
        ("reconstruct-optics-pixel-not-the-images", ["reconstruct", "--i", "pix54.star", "--o", "Reconstruct/job1/merged.mrc"],
         "subtomo reconstruct: error: {P}/pix54.star: row 1, field rlnImagePixelSize: the image {IMG}_data.mrc has "
         "pixel size 10.8 Å in its header, the optics table says 5.4 Å"),
        # names and ranges
        ("reconstruct-sym-Q3", ["reconstruct", "--i", R, "--o", "Reconstruct/job1/merged.mrc", "--sym", "Q3"],
         f"subtomo reconstruct: error: field --sym: Symmetry: unknown symmetry 'Q3' (RELION point groups: {GROUPS}): "
         "unknown symmetry group 'Q3'"),
        ("reconstruct-sym-C0", ["reconstruct", "--i", R, "--o", "Reconstruct/job1/merged.mrc", "--sym", "C0"],
         f"subtomo reconstruct: error: field --sym: Symmetry: unknown symmetry 'C0' (RELION point groups: {GROUPS}): "
         "symmetry group 'C0': order must be >= 1"),
        ("reconstruct-sym-D0", ["reconstruct", "--i", R, "--o", "Reconstruct/job1/merged.mrc", "--sym", "D0"],
         f"subtomo reconstruct: error: field --sym: Symmetry: unknown symmetry 'D0' (RELION point groups: {GROUPS}): "
         "symmetry group 'D0': order must be >= 1"),
        ("reconstruct-j-0", ["reconstruct", "--i", R, "--o", "Reconstruct/job1/merged.mrc", "--j", "0"],
         "subtomo reconstruct: error: field --j: Number of threads: must be >= 1 (got 0)"),
        ("reconstruct-odd-box", ["reconstruct", "--i", R, "--o", "Reconstruct/job1/merged.mrc", "--b", "33"],
         "subtomo reconstruct: error: field --b: Box size (pix): must be an even number of pixels (got 33)"),
        # unsupported options
        ("reconstruct-crop", ["reconstruct", "--i", R, "--o", "Reconstruct/job1/merged.mrc", "--crop", "16"],
         "subtomo reconstruct: error: field --crop: Cropped box size (pix): is refused: --crop is not implemented by "
         "subtomo_nb; set it to -1"),
        ("reconstruct-bin", ["reconstruct", "--i", R, "--o", "Reconstruct/job1/merged.mrc", "--bin", "2"],
         "subtomo reconstruct: error: field --bin: Binning factor: is refused: --bin (re-binning; the particles are "
         "averaged at their own extraction binning) is not implemented by subtomo_nb; set it to 1"),
        ("reconstruct-snr", ["reconstruct", "--i", R, "--o", "Reconstruct/job1/merged.mrc", "--SNR", "1"],
         "subtomo reconstruct: error: field --SNR: Wiener SNR constant: is refused: --SNR (Wiener filter) is not "
         "implemented by subtomo_nb; set it to 0"),
        # refine
        ("refine-without-ref", [a for a in REFINE if a not in ("--ref", REF)],
         "subtomo refine: error: field --ref: Reference map: is required"),
        ("refine-negative-diameter", REFINE + ["--particle_diameter", "-230"],
         "subtomo refine: error: field --particle_diameter: Mask diameter (A): must be > 0 (got -230)"),
        ("refine-diameter-beyond-box", REFINE + ["--particle_diameter", "500"],
         "subtomo refine: error: field --particle_diameter: Mask diameter (A): 500 Å is larger than the particle box "
         "(32 px x 10.8 Å = 345.6 Å in particles.star)"),
        ("refine-blush", REFINE + ["--blush"],
         "subtomo refine: error: field --blush: Use Blush regularisation? is refused: --blush (Blush regularisation) "
         "is not implemented by subtomo_nb; set it to No"),
        ("refine-helix", REFINE + ["--helix"],
         "subtomo refine: error: field --helix: Do helical reconstruction? is refused: --helix (helical "
         "reconstruction) is not implemented by subtomo_nb; set it to No"),
        ("refine-relax-sym", REFINE + ["--relax_sym", "C3"],
         "subtomo refine: error: field --relax_sym: Relax symmetry: is refused: --relax_sym is not implemented by "
         "subtomo_nb; set it to empty"),
        ("refine-nan-reference", REFINE + ["--ref", "nan_ref.mrc"],
         "subtomo refine: error: {P}/nan_ref.mrc: map contains NaN or infinite values"),
        ("refine-reference-box", REFINE + ["--ref", "box48.mrc"],
         "subtomo refine: error: {P}/box48.mrc: field nx, ny, nz: box 48 differs from the particles' box 32 "
         "(rlnImageSize of particles.star)"),
        ("refine-reference-pixel", REFINE + ["--ref", "pix5.mrc"],
         "subtomo refine: error: {P}/pix5.mrc: field voxel size: pixel size 5.4 Å differs from the particles' "
         "10.8 Å (rlnImagePixelSize of particles.star)"),
        ("refine-truncated-reference", REFINE + ["--ref", "trunc.mrc"],
         "subtomo refine: error: {P}/trunc.mrc: truncated MRC file: 5000 bytes, header needs 132096"),
        ("refine-mask-above-1", REFINE + ["--solvent_mask", "mask_over.mrc"],
         "subtomo refine: error: {P}/mask_over.mrc: mask values must lie within [0, 1], found 0 to 1.5"),
        ("refine-offset-range", REFINE + ["--offset_range", "-1"],
         "subtomo refine: error: field --offset_range: Initial offset range (pix): must be >= 0 (got -1)"),
        ("refine-ini-high", REFINE + ["--ini_high", "-5"],
         "subtomo refine: error: field --ini_high: Initial low-pass filter (A): must be >= 0 (got -5)"),
        # initial model
        ("initial-model-iter-0", INIMODEL + ["--iter", "0"],
         "subtomo initial-model: error: field --iter: Number of VDAM mini-batches: must be >= 1 (got 0)"),
        ("initial-model-K-0", INIMODEL + ["--K", "0"],
         "subtomo initial-model: error: field --K: Number of classes: must be between 1 and 50 (got 0)"),
        ("initial-model-T-0", INIMODEL + ["--tau2_fudge", "0"],
         "subtomo initial-model: error: field --tau2_fudge: Regularisation parameter T: must be between 0.1 and 10 (got 0)"),
        ("initial-model-sym", INIMODEL + ["--sym", "X"],
         f"subtomo initial-model: error: field --sym: Symmetry: unknown symmetry 'X' (RELION point groups: {GROUPS}): "
         "unknown symmetry group 'X'"),
        # extract
        ("extract-bin-0", EXTRACT + ["--bin", "0"],
         "subtomo extract: error: field --bin: Binning factor: must be >= 1 (got 0)"),
        ("extract-crop-beyond-box", EXTRACT + ["--crop", "48"],
         "subtomo extract: error: field --crop: Cropped box size (pix): must not exceed the box size 32 (got 48)"),
        ("extract-odd-crop", EXTRACT + ["--crop", "23"],
         "subtomo extract: error: field --crop: Cropped box size (pix): must be an even number of pixels (got 23)"),
        ("extract-into-the-project", [a if a != "Extract/job012" else "." for a in EXTRACT],
         "subtomo extract: error: particles.star: field --o: the output would overwrite an input the job reads "
         "(particle set: {P}/particles.star); choose another output name"),
        # star handler, align symmetry
        ("star-handler-o-is-the-input", ["star-handler", "--i", R, "--o", R, "--center"],
         "subtomo star-handler: error: Extract/job_3d/particles.star: field --o: the output would overwrite an input "
         "the job reads (Input particles: {P}/Extract/job_3d/particles.star); choose another output name"),
        ("star-handler-empty", ["star-handler", "--i", "empty.star", "--o", "Select/job013/particles.star", "--center"],
         "subtomo star-handler: error: {P}/empty.star: field data_particles: the particle set is empty (no rows)"),
        ("align-symmetry-nan", ["align-symmetry", "--i", "nan_ref.mrc", "--o", "External/job014/aligned.mrc", "--sym", "C6"],
         "subtomo align-symmetry: error: {P}/nan_ref.mrc: map contains NaN or infinite values"),
        ("align-symmetry-o-is-the-input", ["align-symmetry", "--i", REF, "--o", REF, "--sym", "C6"],
         "subtomo align-symmetry: error: ground_truth/map_bin4.mrc: field --o: the output would overwrite an input "
         "the job reads (Input map or model.star: {P}/ground_truth/map_bin4.mrc); choose another output name"),
        # simulate, tutorial
        ("simulate-o-is-a-file", ["simulate", "--o", "particles.star", "--tiny"],
         "subtomo simulate: error: particles.star: field --o: exists and is not a directory"),
        ("simulate-negative-snr", ["simulate", "--o", "sim", "--tiny", "--snr", "-1"],
         "subtomo simulate: error: field --snr: must be a positive number (got -1)"),
        ("tutorial-j-0", ["tutorial", "--o", "tut", "--tiny", "--j", "0"],
         "subtomo tutorial: error: field --j: must be >= 1 (got 0)"),
    ]


CASES = _cases()


def test_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_1_inputs_unchanged(project, monkeypatch, capsys, argv, expected):
    monkeypatch.chdir(project)
    before = digest(project)
    rc = main(argv)
    err = capsys.readouterr().err
    first = read_star(project / R)["particles"]["rlnImageName"].iloc[0]
    assert err == expected.replace("{P}", str(project)).replace("{IMG}", Path(first).name[:-len("_data.mrc")]) + "\n"
    assert rc == 1
    assert digest(project) == before   # no input changed, nothing written (no file added or removed)


def test_gpu_without_cupy_is_refused(project, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)      # import cupy fails, as on a machine without it
    monkeypatch.chdir(project)
    before = digest(project)
    assert main(REFINE + ["--gpu"]) == 1
    assert capsys.readouterr().err == (
        "subtomo refine: error: field --gpu: Use GPU acceleration? needs cupy: pip install 'subtomo_nb[gpu]'; "
        "leave out --gpu (set it to No) to run on the CPU\n")
    assert digest(project) == before


def test_unknown_subtomo_backend_is_refused(project, monkeypatch, capsys):
    monkeypatch.setenv("SUBTOMO_BACKEND", "jax")
    monkeypatch.chdir(project)
    before = digest(project)
    assert main(REFINE) == 1
    assert capsys.readouterr().err == (
        "subtomo refine: error: field SUBTOMO_BACKEND: unknown backend 'jax': choose one of numpy, cupy, strict\n")
    assert digest(project) == before


def test_output_directory_not_writable(project, monkeypatch, capsys):
    import importlib

    validate = importlib.import_module("subtomo_nb.jobs.validate")
    (project / "locked").mkdir(exist_ok=True)
    monkeypatch.setattr(validate, "_writable_dir", lambda path: Path(path).name != "locked")
    monkeypatch.chdir(project)
    before = digest(project)
    assert main(["reconstruct", "--i", R, "--o", "locked/Reconstruct/job1/merged.mrc"]) == 1
    assert capsys.readouterr().err == (
        f"subtomo reconstruct: error: {project}/locked: field --o: directory is not writable (permission denied)\n")
    assert digest(project) == before
    assert not (project / "locked" / "Reconstruct").exists()


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root writes into read-only directories")
def test_output_directory_read_only_for_real(project, monkeypatch, capsys):
    locked = project / "ro"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o555)
    try:
        monkeypatch.chdir(project)
        assert main(["reconstruct", "--i", R, "--o", "ro/merged.mrc"]) == 1
        assert capsys.readouterr().err == (
            f"subtomo reconstruct: error: {project}/ro: field --o: directory is not writable (permission denied)\n")
    finally:
        locked.chmod(0o755)


def test_internal_error_says_bug_and_where_the_traceback_is(project, monkeypatch, capsys):
    import subtomo_nb.tasks.reconstruct as reconstruct

    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(reconstruct, "reconstruct_particles", broken)
    monkeypatch.chdir(project)
    monkeypatch.delenv("SUBTOMO_DEBUG", raising=False)
    assert main(["reconstruct", "--i", R, "--o", "Reconstruct/job030/merged.mrc"]) == 70
    log = project / "Reconstruct" / "job030" / "run.err"
    assert capsys.readouterr().err == (
        "subtomo reconstruct: internal error (this is a bug in subtomo_nb, please report it): ZeroDivisionError: "
        "float division by zero; the traceback is in Reconstruct/job030/run.err (or rerun with SUBTOMO_DEBUG=1)\n")
    text = log.read_text()
    assert text.startswith("Traceback (most recent call last):") and "ZeroDivisionError" in text
    shutil.rmtree(project / "Reconstruct" / "job030")


def test_subtomo_debug_shows_the_traceback(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.setenv("SUBTOMO_DEBUG", "1")
    before = digest(project)
    with pytest.raises(Exception) as info:
        main(["reconstruct", "--i", R, "--o", "Reconstruct/job1/merged.mrc", "--sym", "Q3"])
    assert type(info.value).__name__ == "InputError" and "unknown symmetry 'Q3'" in str(info.value)
    assert digest(project) == before


def test_api_run_function_checks_first(project, tmp_path):
    """The Python API's run functions go through the same check (an unknown symmetry, nothing written)."""
    from subtomo_nb.io.errors import InputError
    from subtomo_nb.jobs.runners import run_reconstruct

    job = tmp_path / "Reconstruct" / "job031"
    with pytest.raises(InputError, match=r"^field --sym: Symmetry: unknown symmetry 'Q3'"):
        run_reconstruct({**__import__("subtomo_nb.jobs", fromlist=["get_job_type"]).get_job_type("reconstruct")
                         .defaults(), "use_direct_entries": True, "in_particles": str(project / R), "sym_name": "Q3"},
                        job, project_dir=project, progress=lambda event: None)
    assert not job.exists()


@pytest.mark.parametrize("argv, expected", [
    (REFINE + ["--healpix_order", "12"],
     "subtomo refine: error: argument --healpix_order: invalid choice: 12 (choose from 0, 1, 2, 3, 4, 5, 6, 7, 8) "
     "(see subtomo refine --help)"),
    (REFINE + ["--auto_iter_max", "-3"],
     "subtomo refine: error: argument --auto_iter_max: must be >= 1 (got -3) (see subtomo refine --help)"),
    (REFINE + ["--random_seed", "x"],
     "subtomo refine: error: argument --random_seed: not an integer: 'x' (see subtomo refine --help)"),
    (["reconstruct", "--i", R, "--o", "Reconstruct/job1/merged.mrc", "--bogus"],
     "subtomo: error: unrecognized arguments: --bogus (see subtomo --help)"),
    (["reconstruct", "--i", R, "--o", "Reconstruct/job1/merged.mrc", "--sym"],
     "subtomo reconstruct: error: argument --sym: expected one argument (see subtomo reconstruct --help)"),
], ids=["healpix-order-12", "auto-iter-max-negative", "random-seed-not-int", "unknown-option", "option-without-value"])
def test_command_line_errors_are_one_line_exit_2(project, monkeypatch, capsys, argv, expected):
    monkeypatch.chdir(project)
    before = digest(project)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err == expected + "\n"
    assert digest(project) == before


def test_gpu_numbers_beyond_the_visible_devices_are_refused(project, monkeypatch, fake_gpus):
    """With two (fake) GPUs visible: --gpu 0:1 passes without a warning, --gpu 0,3 is refused."""
    import importlib.util

    import subtomo_nb.jobs.devices as devices
    from subtomo_nb.cli.main import build_parser, refine_values
    from subtomo_nb.io.errors import InputError
    from subtomo_nb.jobs.validate import check_job

    fake_gpus(2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "dask_cuda"
                        else find_spec(name, *a))                       # dask-cuda "installed"
    monkeypatch.chdir(project)
    values = refine_values(build_parser().parse_args(REFINE + ["--gpu", "0:1"]))
    assert values["use_gpu"] is True and values["gpu_ids"] == "0:1"
    assert check_job("refine3d", values, project_dir=project) == []
    assert devices.job_devices(values) == devices.JobDevices("cupy", (0, 1), "cupy (2 GPUs)")
    values = refine_values(build_parser().parse_args(REFINE + ["--gpu", "0,3"]))
    with pytest.raises(InputError, match=r"field --gpu: Use GPU acceleration\? GPU 3 is not visible: this process "
                                         r"sees 2 CUDA devices \(0 to 1\)"):
        check_job("refine3d", values, project_dir=project)


@pytest.mark.parametrize("argv, name", [(REFINE, "Refine3D/job010"), (INIMODEL, "InitialModel/job011")])
@pytest.mark.parametrize("gpu", ["1", "0,1"])
def test_gpus_that_need_dask_cuda_are_refused_before_anything_is_written(project, monkeypatch, capsys, fake_gpus,
                                                                          argv, name, gpu):
    """Without dask-cuda only --gpu 0 runs (in this process): the others stop in check_job, no job directory."""
    import importlib.util

    fake_gpus(2)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "dask_cuda" else find_spec(n, *a))
    monkeypatch.chdir(project)
    shutil.rmtree(project / name, ignore_errors=True)
    before = digest(project)
    assert main(argv + ["--gpu", gpu, "--j", "4"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"subtomo {argv[0]}: error: field --gpu: Use GPU acceleration? GPUs "
                                               f"{gpu} need one dask-cuda worker each, and dask-cuda is not installed")
    assert digest(project) == before and not (project / name).exists()


def test_options_that_gpu_leaves_unused_are_warnings(project, monkeypatch, fake_gpus):
    """--j with --gpu (one worker per GPU), and --gpu with an attached cluster: named by check_job."""
    from subtomo_nb.cli.main import build_parser, refine_values
    from subtomo_nb.jobs.validate import check_job

    fake_gpus(2)
    monkeypatch.chdir(project)

    def warnings(*extra: str) -> list[str]:
        return check_job("refine3d", refine_values(build_parser().parse_args(REFINE + list(extra))),
                         project_dir=project)

    assert warnings("--gpu", "0", "--j", "4") == [
        "--j 4 not used with --gpu: one dask worker per GPU (one GPU: the job runs in this process, on it)"]
    assert warnings("--gpu", "0") == [] and warnings("--j", "4") == []
    assert warnings("--gpu", "1,0", "--scheduler_address", "tcp://localhost:8786") == [
        "--gpu 1,0: the attached dask cluster's workers use their own GPUs; the list only puts this process's "
        "M-step on GPU 1"]


def test_relions_disc_and_memory_options_are_named_as_without_effect(project, monkeypatch):
    """--pool, --preread_images, --scratch_dir...: accepted (a RELION command line pastes), one warning each."""
    from subtomo_nb.cli.main import build_parser, refine_values
    from subtomo_nb.jobs.validate import check_job

    monkeypatch.chdir(project)
    monkeypatch.delenv("RELION_SCRATCH_DIR", raising=False)
    assert check_job("refine3d", refine_values(build_parser().parse_args(REFINE)), project_dir=project) == []
    values = refine_values(build_parser().parse_args(REFINE + ["--pool", "10", "--preread_images",
                                                               "--dont_combine_weights_via_disc"]))
    assert check_job("refine3d", values, project_dir=project) == [
        "--pool: accepted for RELION compatibility and has no effect here (particles are batched by the E-step itself)",
        "--preread_images: accepted for RELION compatibility and has no effect here (particles are read once into "
        "memory anyway)",
    ]


@pytest.mark.parametrize("argv, name", [(REFINE, "Refine3D/job010"), (INIMODEL, "InitialModel/job011")])
def test_a_job_that_cannot_fit_is_refused_before_iteration_1(project, monkeypatch, capsys, argv, name):
    """The memory plan goes to run.out; with (fake) 64 MiB of host memory the job stops in one line."""
    import subtomo_nb.refine.memory_plan as memory_plan

    monkeypatch.setattr(memory_plan, "host_memory", lambda: 64 << 20)
    monkeypatch.delenv("SUBTOMO_BACKEND", raising=False)
    monkeypatch.chdir(project)
    job = project / name
    shutil.rmtree(job, ignore_errors=True)
    try:
        assert main(argv) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"subtomo {argv[0]}: error: field memory: the ")
        assert "working set needs about" in err[0]
        assert err[0].endswith("and 64.0 MiB is available (host RAM per worker); use a smaller batch size or more "
                               "GPUs")
        run_out = (job / "run.out").read_text()
        assert " ++++ backend: numpy (CPU)" in run_out
        assert "memory plan per worker (1 worker): box 32 px" in run_out and "full box: working set" in run_out
        assert not list(job.glob("run_it001*")) and (job / "RELION_JOB_EXIT_FAILURE").exists()
    finally:
        shutil.rmtree(job, ignore_errors=True)
