"""Job directories: numbering, job.star round trip, note.txt, run.out, RELION's exit markers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from subtomo_nb.io import read_star
from subtomo_nb.jobs import (
    JobFailedError,
    JobValidationError,
    Progress,
    create_job_dir,
    get_job_type,
    next_job_number,
    read_job,
    read_progress,
    run_job,
    write_job_star,
)
from subtomo_nb.jobs.jobdir import resolve_run_function

from ._helpers import digest, write_particles

RELION_JOB_STAR = """
# version 50001

data_job

_rlnJobTypeLabel             relion.reconstructparticletomo
_rlnJobIsContinue                       0
_rlnJobIsTomo                           0


# version 50001

data_joboptions_values

loop_
_rlnJobOptionVariable #1
_rlnJobOptionValue #2
   binning          6
  box_size        192
 crop_size         96
  do_queue        Yes
in_optimisation Extract/job010/optimisation_set.star
in_particles         ""
min_dedicated        112
    nr_mpi          5
nr_threads        112
other_args         ""
      qsub "sbatch --ntasks=5"
qsub_extra1       auto
 queuename        cpu
       snr          0
  sym_name         C6
use_direct_entries         No
"""


def test_numbering_across_processes(tmp_path):
    assert next_job_number(tmp_path) == 1
    (tmp_path / "Extract/job002").mkdir(parents=True)
    (tmp_path / "Refine3D/job007").mkdir(parents=True)
    (tmp_path / "Refine3D/notajob").mkdir()
    (tmp_path / "Reconstruct/job1000").mkdir(parents=True)
    assert next_job_number(tmp_path) == 1001
    (tmp_path / "Reconstruct/job1000").rmdir()
    assert next_job_number(tmp_path) == 8
    d = create_job_dir("recentre", tmp_path)
    assert d == tmp_path / "Select" / "job008" and d.is_dir()
    assert create_job_dir("refine3d", tmp_path).name == "job009"
    (tmp_path / "default_pipeline.star").write_text("data_pipeline_general\n_rlnPipeLineJobCounter 23\n")
    assert next_job_number(tmp_path) == 23
    assert create_job_dir("extract", tmp_path) == tmp_path / "Extract" / "job023"


def test_job_star_round_trip(tmp_path):
    jt = get_job_type("refine3d")
    values = jt.complete({"in_optimisation": "Extract/job010/optimisation_set.star", "fn_ref": "ref.mrc",
                          "sampling": "3.7 degrees", "offset_step": 0.75, "sym_name": "C6", "use_gpu": True,
                          "gpu_ids": "0:1", "other_args": "--maxsig 500", "scratch_dir": "", "sigma_tilt": 10})
    path = write_job_star(tmp_path, jt, values)
    blocks = read_star(path)  # RELION-layout STAR that our reader (and RELION's labels) accept
    assert blocks["job"] == {"rlnJobTypeLabel": "relion.refine3d.tomo", "rlnJobIsContinue": 0, "rlnJobIsTomo": 1}
    table = blocks["joboptions_values"]
    assert list(table.columns) == ["rlnJobOptionVariable", "rlnJobOptionValue"]
    assert list(table["rlnJobOptionVariable"]) == sorted(jt.keys())
    raw = dict(zip(table["rlnJobOptionVariable"], table["rlnJobOptionValue"].astype(str)))
    assert raw["sampling"] == "3.7 degrees" and raw["do_ctf_correction"] == "Yes" and raw["offset_step"] == "0.75"
    text = path.read_text()
    assert 'sampling "3.7 degrees"' in text and 'fn_mask ""' in text
    record = read_job(tmp_path)
    assert record.job_type is jt and record.values == values
    assert record.is_continue is False and record.is_tomo is True and record.extra == {}


def test_read_relion_written_job_star(tmp_path):
    d = tmp_path / "Reconstruct" / "job011"
    d.mkdir(parents=True)
    (d / "job.star").write_text(RELION_JOB_STAR)
    record = read_job(d)
    assert record.job_type.name == "reconstruct"
    v = record.values
    assert (v["binning"], v["box_size"], v["crop_size"], v["sym_name"], v["nr_mpi"]) == (6.0, 192, 96, "C6", 5)
    assert v["do_queue"] is True and v["qsub"] == "sbatch --ntasks=5" and v["in_particles"] == ""
    assert v["pad"] == 2  # not in RELION's job.star: our default
    assert record.extra == {"qsub_extra1": "auto"}
    assert record.status == "running"
    # rewrite keeps the extra entry
    write_job_star(tmp_path, record.job_type, v, extra=record.extra)
    assert read_job(tmp_path).extra == {"qsub_extra1": "auto"}


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    write_particles(tmp_path / "Refine3D" / "job003" / "run_data.star", n=6, pixel=4.0)
    return tmp_path


def test_run_recentre_job(project):
    before = digest(project)
    events: list[Progress] = []
    job = run_job("recentre", {"fn_in": "Refine3D/job003/run_data.star", "center_z": 2.75}, project,
                  progress=events.append)
    assert job == project / "Select" / "job004"
    names = {p.name for p in job.iterdir()}
    assert {"job.star", "note.txt", "run.out", "particles.star", "RELION_JOB_EXIT_SUCCESS"} <= names
    assert "RELION_JOB_EXIT_FAILURE" not in names
    # inputs untouched, nothing written outside the job directory
    after = digest(project)
    assert {k: v for k, v in after.items() if not k.startswith("Select/job004/")} == before
    # the output is the re-centred table: origins moved by -pixel * A c
    from subtomo_nb.geometry.euler import euler_to_matrix

    src = read_star(project / "Refine3D/job003/run_data.star")["particles"]
    out = read_star(job / "particles.star")["particles"]
    A = euler_to_matrix(src["rlnAngleRot"].to_numpy(), src["rlnAngleTilt"].to_numpy(), src["rlnAnglePsi"].to_numpy())
    shift = -4.0 * (A @ np.array([0.0, 0.0, 2.75]))
    np.testing.assert_allclose(out[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy(), shift,
                               atol=1e-9)
    note = (job / "note.txt").read_text()
    assert "relion_star_handler --i Refine3D/job003/run_data.star --o Select/job004/particles.star --center" in note
    assert "subtomo star-handler --o Select/job004/particles.star --center --i Refine3D/job003/run_data.star" in note
    run_out = (job / "run.out").read_text()
    assert "re-centring run_data.star" in run_out and "finished successfully" in run_out
    assert [e.message for e in events] == [e.message for e in read_progress(job)]
    record = read_job(job)
    assert record.status == "succeeded" and record.values["center_z"] == 2.75
    assert record.values["fn_in"] == "Refine3D/job003/run_data.star"


def test_failing_run_records_failure(project):
    write_particles(project / "Refine3D/job003/no_origins.star", with_origins=False)
    before = digest(project)
    with pytest.raises(JobFailedError) as info:
        run_job("recentre", {"fn_in": "Refine3D/job003/no_origins.star"}, project)
    job = info.value.job_dir
    assert job == project / "Select" / "job004"
    assert (job / "RELION_JOB_EXIT_FAILURE").exists() and not (job / "RELION_JOB_EXIT_SUCCESS").exists()
    run_out = (job / "run.out").read_text()
    assert "ERROR: InputError" in run_out and "rlnOriginXAngst" in run_out
    assert "Traceback" in (job / "run.err").read_text()
    assert not (job / "particles.star").exists()
    assert {k: v for k, v in digest(project).items() if not k.startswith("Select/job004/")} == before
    assert read_job(job).status == "failed"
    # raise_errors=False returns the directory instead
    job2 = run_job("recentre", {"fn_in": "Refine3D/job003/no_origins.star"}, project, raise_errors=False)
    assert job2.name == "job005" and (job2 / "RELION_JOB_EXIT_FAILURE").exists()


def test_invalid_values_create_no_directory(project):
    with pytest.raises(JobValidationError) as info:
        run_job("recentre", {"fn_in": "Refine3D/job003/missing.star"}, project)
    assert list(info.value.errors) == ["fn_in"]
    assert not (project / "Select").exists()


def test_run_function_not_available_yet(project, monkeypatch):
    with pytest.raises(ImportError, match="subtomo_nb.refine.nowhere"):
        resolve_run_function("subtomo_nb.refine.nowhere.run")
    # every registered job type has its run function now: point one at a module that does not exist
    import dataclasses

    jt = dataclasses.replace(get_job_type("align_symmetry"), run="subtomo_nb.initial_model.nowhere.run_job")
    import numpy as np

    from subtomo_nb.io.mrc import write_map

    write_map(project / "map.mrc", np.zeros((8, 8, 8), np.float32), 2.0)  # validation reads the map first
    job = run_job(jt, {"fn_in": "map.mrc", "sym_name": "C6"}, project, raise_errors=False)
    assert job.parent.name == "External" and (job / "RELION_JOB_EXIT_FAILURE").exists()
    assert "is not available" in (job / "run.out").read_text()


def test_continue_in_existing_job_dir(project):
    job = run_job("recentre", {"fn_in": "Refine3D/job003/run_data.star", "center_x": 1}, project)
    again = run_job("recentre", {"fn_in": "Refine3D/job003/run_data.star", "center_x": 2}, project,
                    job_dir="Select/job004")
    assert again == job
    assert read_job(job).is_continue is True and read_job(job).values["center_x"] == 2
    assert (job / "note.txt").read_text().count("Executing new job") == 2


def test_scratch_of_jobs_ending_in_any_order_restores_the_temporary_directory(tmp_path):
    """Two jobs of a sweep overlap and the first one started ends last: afterwards tempfile's
    directory is what it was before either, never a removed scratch directory."""
    import tempfile

    from subtomo_nb.jobs.scratch import job_scratch

    before = tempfile.tempdir
    a = job_scratch(tmp_path / "A")
    b = job_scratch(tmp_path / "B")
    sa = a.__enter__()
    sb = b.__enter__()
    assert tempfile.gettempdir() == str(sb)
    b.__exit__(None, None, None)
    assert tempfile.tempdir == str(sa) and sa.is_dir()       # A still runs: its scratch
    a.__exit__(None, None, None)
    assert tempfile.tempdir == before and not sa.exists() and not sb.exists()
    c = job_scratch(tmp_path / "C")
    c.__enter__()
    a2 = job_scratch(tmp_path / "A2")
    sa2 = a2.__enter__()
    c.__exit__(None, None, None)                              # the older one ends first
    assert tempfile.tempdir == str(sa2)
    a2.__exit__(None, None, None)
    assert tempfile.tempdir == before
    with tempfile.TemporaryFile():                            # usable
        pass
