"""The job record (job.star, note.txt, run.out, exit marker) of jobs not run through ``run_job``'s
numbering: the tutorial's Extract/job002 and Reconstruct/job003, and ``--j`` as the workers used."""

from __future__ import annotations

from pathlib import Path

from subtomo_nb.jobs.jobdir import read_job, with_worker_count


class _Client:
    """Stands for a dask client of ``n`` workers (only what the record asks of it)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def scheduler_info(self) -> dict:
        return {"workers": {f"tcp://w{i}": {"nthreads": 1} for i in range(self.n)}}


def test_the_record_says_the_workers_of_the_client_the_job_ran_on():
    assert with_worker_count({"nr_threads": 1}, _Client(2))["nr_threads"] == 2
    assert with_worker_count({"nr_threads": 3}, None)["nr_threads"] == 3
    # a job attached to a cluster of its own keeps its value (that cluster is described in run.out)
    assert with_worker_count({"nr_threads": 1, "scheduler_file": "s.json"}, _Client(4))["nr_threads"] == 1


def test_tutorial_jobs_record_themselves_with_the_real_worker_count(tmp_path):
    from subtomo_nb.jobs.tutorial import run_tutorial

    project = tmp_path / "tut"
    run_tutorial(project, tiny=True, n_workers=2, refine=False, snr=None)
    for job, program in (("Extract/job002", "relion_tomo_subtomo"),
                         ("Reconstruct/job003", "relion_tomo_reconstruct_particle")):
        d = project / job
        record = read_job(d)
        assert record.status == "succeeded" and record.values["nr_threads"] == 2, job
        note = (d / "note.txt").read_text()
        relion = next(line for line in note.splitlines() if line.startswith(program))
        assert " --j 2" in relion and f"--o {job}/" in relion
        assert "--j 2" in note.split("run by subtomo_nb as:")[1]
        run_out = (d / "run.out").read_text().splitlines()
        assert run_out[0].startswith(" ++++ subtomo_nb version ") and f" in {job}/, started " in run_out[0]
        assert run_out[-1].startswith(" ++++ finished successfully at ")
    # names in the tutorial's STAR files are project-relative, as RELION writes them
    from subtomo_nb.io.star import read_star

    oset = read_star(project / "Reconstruct/job003/optimisation_set.star")["optimisation_set"]
    assert oset["rlnTomoParticlesFile"] == "Reconstruct/job003/particles_true.star"
    assert oset["rlnTomoTomogramsFile"] == "tomograms.star"
    parts = read_star(project / "Reconstruct/job003/particles_true.star")["particles"]
    assert all(not Path(n).is_absolute() and (project / n).exists() for n in parts["rlnImageName"])
