"""Progress events as a person reads them: run.out lines, the particle bar, the printer."""

from __future__ import annotations

import io
import json

from subtomo_nb.jobs.progress import Progress, ProgressLog, ProgressPrinter, read_progress


def _iteration_event() -> Progress:
    return Progress(message="sampling 7.50° (HEALPix order 2, oversampled once)", iteration=3, resolution_A=31.416,
                    fsc=[1.0, 0.9, 0.5], accuracy_rot_deg=3.15, accuracy_trans_A=2.7, timings={"time": 4.04})


def test_iteration_line_reads_once_in_angstrom_and_degrees():
    line = _iteration_event().format()
    body = line.split("] ", 1)[1]
    assert body == ("iteration 3 | 31.42 Å | angular accuracy 3.15° | translational accuracy 2.70 Å | "
                    "sampling 7.50° (HEALPix order 2, oversampled once) | time 4.0 s")
    assert " A " not in line and "deg" not in line and "FSC over" not in line
    assert body.count("iteration") == 1


def test_particle_counts_move_the_bar_but_stay_out_of_run_out(tmp_path):
    seen = []
    log = ProgressLog(tmp_path, forward=seen.append)
    log(Progress(message="E-step"))
    for done in (12, 24, 92):
        log(Progress(iteration=1, particles_done=done, particles_total=92))
    log(_iteration_event())
    lines = (tmp_path / "run.out").read_text().splitlines()
    assert len(lines) == 2 and "particles" not in (tmp_path / "run.out").read_text()
    assert [e.particles_done for e in seen if e.is_particle_count] == [12, 24, 92]   # forwarded to the bar
    assert len(read_progress(tmp_path)) == 2
    assert all(json.loads(x)["particles_total"] is None for x in (tmp_path / "progress.jsonl").read_text().splitlines())


def test_printer_prints_lines_and_draws_a_tqdm_bar_per_iteration(capsys):
    out = io.StringIO()
    printer = ProgressPrinter(file=out, bar=True)
    printer(Progress(message="3D auto-refine"))
    for done in (30, 60, 92):
        printer(Progress(iteration=1, particles_done=done, particles_total=92))
    printer(_iteration_event())
    printer(Progress(iteration=2, particles_done=46, particles_total=92))
    printer.close()
    text = out.getvalue().splitlines()
    assert len(text) == 2 and text[0].endswith("3D auto-refine") and "iteration 3 | 31.42 Å" in text[1]
    err = capsys.readouterr().err
    assert "iteration 1" in err and "92/92" in err and "particle" in err     # tqdm's bar, on stderr
    assert "iteration 2" in err and "46/92" in err


def test_printer_draws_no_bar_into_a_pipe(capsys):
    out = io.StringIO()
    printer = ProgressPrinter(file=out)     # bar=None: only on a terminal or in a notebook
    printer(Progress(iteration=1, particles_done=92, particles_total=92))
    printer("done")
    assert capsys.readouterr().err == ""
    assert out.getvalue().rstrip().endswith("done")
