"""``subtomo initial-model --fast`` against its acceptance criteria, on two simulated projects.

Usage::

    python benchmarks/initial_model_fast.py --o fast_bench               # both projects, ~45 min on 2 cores
    python benchmarks/initial_model_fast.py --o fast_bench --particles d2
    python benchmarks/initial_model_fast.py --o smoke --tiny --iter 3 --skip_refine   # a quick look

For each particle (``hexamer``: C6, the tutorial's; ``d2``: D2), in ``<o>/<particle>/``:

1. simulate the project (``subtomo simulate --particle P``; seed 0 for the hexamer, 1 for D2)
   and extract it at bin 4, box 32 as 3D pseudo-subtomograms, unless already there;
2. run ``subtomo initial-model --fast`` with the tutorial's settings (``--iter 100 --tau2_fudge 4
   --K 1 --run_C1 --sym S --particle_diameter 230 --sigma_tilt 10 --ctf --flatten_solvent``) and
   time the whole command;
3. superpose ``initial_model.mrc`` onto the ground truth (both hands) and print its FSC-0.5
   resolution, the hand, and the largest angle between its symmetry axes (put on RELION's axes by
   the job's symmetry alignment) and the truth's;
4. unless ``--skip_refine``: 3D auto-refine (the tutorial's ``--ini_high 50 --sym S
   --particle_diameter 230 --firstiter_cc --ctf --auto_ignore_angles --auto_resol_angles``) from the
   ground truth and from the initial model, and compare their final resolutions.

Prints the numbers and a verdict per criterion (whole job < 10 min, FSC 0.5 <= 30 Å, axes
within 3°, refined resolution within 5 % of the one from the truth); exits 1 when one fails.
Run it with nothing else on the machine: the first criterion is a time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SYMMETRY = {"hexamer": "C6", "d2": "D2"}
SEED = {"hexamer": 0, "d2": 1}


def _run(cmd: list[str], cwd: Path, log: Path) -> float:
    """Run ``cmd`` in ``cwd`` with its output in ``log``; seconds taken (exits on failure)."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.call(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if rc != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def _final_resolution(job_dir: Path) -> float:
    from subtomo_nb.io.star import read_star

    general = read_star(job_dir / "run_model.star")["model_general"]
    return float(general["rlnCurrentResolution"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--o", type=Path, required=True, help="benchmark directory (one project per particle)")
    ap.add_argument("--particles", default="hexamer,d2", help="comma-separated: hexamer, d2")
    ap.add_argument("--tiny", action="store_true", help="the tiny projects (a smoke run; the criteria are for the default ones)")
    ap.add_argument("--iter", type=int, default=100, help="VDAM mini-batches (the tutorial's 100)")
    ap.add_argument("--skip_refine", action="store_true", help="no auto-refine comparison")
    args = ap.parse_args()

    import numpy as np

    from subtomo_nb.initial_model.compare import superpose, symmetry_axes_error_deg
    from subtomo_nb.io.mrc import read_map

    failed = []
    for particle in [p for p in args.particles.split(",") if p]:
        sym = SYMMETRY[particle]
        project = (args.o / particle).absolute()
        project.parent.mkdir(parents=True, exist_ok=True)
        if not (project / "optimisation_set.star").exists():
            cmd = ["subtomo", "simulate", "--o", str(project), "--particle", particle, "--seed", str(SEED[particle])]
            _run(cmd + (["--tiny"] if args.tiny else []), project.parent, args.o / f"{particle}_simulate.log")
        oset = "Extract/job002/optimisation_set.star"
        if not (project / oset).exists():
            _run(["subtomo", "extract", "--ios", "optimisation_set.star", "--o", "Extract/job002", "--bin", "4",
                  "--b", "32", "--no_stack2d"], project, project / "extract.log")
        job = project / "InitialModel" / "job_fast"
        seconds = _run(["subtomo", "initial-model", "--ios", oset, "--o", "InitialModel/job_fast/run",
                        "--iter", str(args.iter), "--tau2_fudge", "4", "--K", "1", "--sym", sym, "--run_C1",
                        "--particle_diameter", "230", "--sigma_tilt", "10", "--ctf", "--flatten_solvent", "--fast"],
                       project, project / "initial_model_fast.log")
        truth, pix = read_map(project / "ground_truth" / "map_bin4.mrc")
        model, _ = read_map(job / "initial_model.mrc")
        s = superpose(np.asarray(model, float), np.asarray(truth, float), pix)
        axes = symmetry_axes_error_deg(s.matrix, sym)
        print(f"{particle} ({sym}): --fast initial model {seconds:.0f} s (whole command); FSC 0.5 with the truth "
              f"{s.resolution_05_A:.1f} Å; hand {s.hand} (correlation {s.correlation:.3f} vs {s.correlation_other_hand:.3f} "
              f"mirrored); {sym} axes {axes:.2f}° from the truth's", flush=True)
        checks = {"whole job < 10 min": seconds < 600, "FSC 0.5 <= 30 Å": s.resolution_05_A <= 30.0,
                  "right hand": s.hand == "same", f"{sym} axes within 3°": axes <= 3.0}
        if not args.skip_refine:
            res = {}
            for name, ref in (("truth", "ground_truth/map_bin4.mrc"), ("fast", "InitialModel/job_fast/initial_model.mrc")):
                out = f"Refine3D/from_{name}"
                t = _run(["subtomo", "refine", "--ios", oset, "--ref", ref, "--o", out, "--firstiter_cc", "--ctf",
                          "--ini_high", "50", "--sym", sym, "--particle_diameter", "230", "--auto_ignore_angles",
                          "--auto_resol_angles", "--j", "1"], project, project / f"refine_{name}.log")
                res[name] = _final_resolution(project / out)
                # finer than the gold-standard resolution (which stops at Nyquist): the refined map against the truth
                refined, _ = read_map(project / out / "run_class001.mrc")
                r = superpose(np.asarray(refined, float), np.asarray(truth, float), pix)
                print(f"{particle}: auto-refine from the {name:5s} {res[name]:.2f} Å ({t:.0f} s); its map against the "
                      f"truth: FSC 0.5 {r.resolution_05_A:.1f} Å, hand {r.hand}, {sym} axes "
                      f"{symmetry_axes_error_deg(r.matrix, sym):.2f}°", flush=True)
            checks["refined within 5 % of from the truth"] = res["fast"] <= 1.05 * res["truth"]
        for name, ok in checks.items():
            print(f"  {'PASS' if ok else 'FAIL'}  {name}")
            if not ok:
                failed.append(f"{particle}: {name}")
    print("all criteria hold" if not failed else "failed: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
