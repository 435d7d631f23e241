"""VDAM initial-model benchmark: time per mini-batch, resolution against the truth, hand, C6 axis.

Usage::

    python benchmarks/initial_model.py                         # tutorial settings, default dataset (simulated)
    python benchmarks/initial_model.py --project DIR           # a simulated project already there
    python benchmarks/initial_model.py --tiny --iter 20        # the tiny preset
    python benchmarks/initial_model.py --sigma_tilt -1         # without the tilt prior
    python benchmarks/initial_model.py --time_limit 540        # stop after 9 minutes, extrapolate
    python benchmarks/initial_model.py --stop_after 46         # stop after mini-batch 46 of the 100

The project (``simulate_project`` defaults, or ``--tiny``) is simulated into ``--project`` when
it has no ``optimisation_set.star`` yet, and extracted at bin 4, box 32 as 3D pseudo-subtomograms
(``Extract/job002``). Then VDAM runs with the tutorial's settings (100 mini-batches, T = 4, K = 1,
mask 230 Å, C6, run in C1 and aligned afterwards, tilt prior 10°) unless told otherwise, and
prints per iteration: mini-batch size, seconds, RELION's own resolution estimate. Every
``--eval_every`` iterations (and at the end) the written map is superposed onto the ground truth
(:func:`subtomo_nb.initial_model.compare.superpose`, both hands) and its FSC-0.5 resolution
printed; the end reports ``initial_model.mrc``'s FSC, hand, and the angle between its C6 axis
(put on z by ``align_symmetry``) and the truth's, plus the first mini-batch at which 40 Å was
reached (truth FSC 0.5 and RELION's estimate).

``--time_limit`` stops iterating after that many seconds (outputs of the last iteration reached
are still written and aligned) and extrapolates the whole job's time from the seconds per
particle of the mini-batches done at the last HEALPix order and the mini-batch schedule. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _prepare(project: Path, tiny: bool, seed: int, particle: str = "hexamer") -> tuple[Path, Path, Path]:
    """(optimisation set of the bin-4 3D extraction, truth map, truth mask) of a simulated project."""
    from subtomo_nb.simulate import simulate_project, simulate_tiny_project
    from subtomo_nb.tasks.extract import extract_subtomos

    if not (project / "optimisation_set.star").exists():
        t0 = time.perf_counter()
        paths = (simulate_tiny_project if tiny else simulate_project)(project, seed=seed, particle=particle)
        print(f"simulated {paths['n_particles']} particles in {time.perf_counter() - t0:.0f} s", flush=True)
    extract = project / "Extract" / "job002"
    if not (extract / "optimisation_set.star").exists():
        t0 = time.perf_counter()
        extract_subtomos(project / "optimisation_set.star", None, extract, binning=4, box=32, stack2d=False, n_workers=2)
        print(f"extracted at bin 4, box 32 in {time.perf_counter() - t0:.0f} s", flush=True)
    return extract / "optimisation_set.star", project / "ground_truth" / "map_bin4.mrc", project / "masks" / "mask_align_bin4.mrc"


def _evaluate(path: Path, truth: np.ndarray, pix: float) -> object:
    from subtomo_nb.initial_model.compare import superpose
    from subtomo_nb.io.mrc import read_map

    vol, _ = read_map(path)
    return superpose(vol, truth, pix)


def main() -> None:
    from subtomo_nb.initial_model import schedules
    from subtomo_nb.initial_model.compare import symmetry_axes_error_deg
    from subtomo_nb.initial_model.outputs import finish_job, write_iteration
    from subtomo_nb.initial_model.vdam import InitialModel, VdamOptions
    from subtomo_nb.io.mrc import read_map

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=Path("bench_initial_model"), help="simulated project directory")
    ap.add_argument("--tiny", action="store_true", help="simulate the tiny preset instead of the default dataset")
    ap.add_argument("--seed", type=int, default=0, help="simulation seed")
    ap.add_argument("--out", type=Path, default=None, help="job directory (default <project>/InitialModel/bench_...)")
    ap.add_argument("--iter", type=int, default=100, help="VDAM mini-batches (--iter)")
    ap.add_argument("--tau2_fudge", type=float, default=4.0)
    ap.add_argument("--sigma_tilt", type=float, default=10.0, help="tilt prior width (deg); <= 0: none")
    ap.add_argument("--sym", default="C6")
    ap.add_argument("--no_run_c1", action="store_true", help="impose the symmetry during VDAM instead")
    ap.add_argument("--maxsig", type=int, default=-1, help="significant poses per particle (-1: RELION's 100 K)")
    ap.add_argument("--random_seed", type=int, default=1)
    ap.add_argument("--fast", action="store_true", help="subtomo_nb's accelerated search (initial_model/fast.py)")
    ap.add_argument("--fast_without", default="", help="with --fast, rules switched off to measure their share: "
                    "comma-separated of marching, order, subset")
    ap.add_argument("--particle", default="hexamer", help="phantom of a project simulated here (hexamer, d2)")
    ap.add_argument("--j", type=int, default=1, help="dask workers for the E-step (1: serial)")
    ap.add_argument("--eval_every", type=int, default=10, help="truth FSC of the map every N iterations (0: end only)")
    ap.add_argument("--time_limit", type=float, default=0.0, help="stop iterating after this many seconds (0: none)")
    ap.add_argument("--stop_after", type=int, default=0,
                    help="stop after this mini-batch of the --iter schedule (0: none); the same maps on any machine load")
    args = ap.parse_args()
    from subtomo_nb._memory import keep_freed_memory

    keep_freed_memory()   # as the CLI and job runner do (subtomo_nb._memory)

    oset, truth_path, _ = _prepare(args.project.absolute(), args.tiny, args.seed, args.particle)
    truth, pix = read_map(truth_path)
    truth = np.asarray(truth, np.float64)
    fast_tag = "fast_" + "".join(f"no{w}_" for w in args.fast_without.split(",") if w) if args.fast else ""
    tag = f"bench_{fast_tag}it{args.iter}_tilt{args.sigma_tilt:g}_{'sym' if args.no_run_c1 else 'c1'}_maxsig{args.maxsig}"
    out = args.out or (args.project.absolute() / "InitialModel" / tag)
    write_every = args.eval_every if args.eval_every > 0 else 10
    opts = VdamOptions(particles=oset, output_root=out / "run", nr_iter=args.iter, tau2_fudge=args.tau2_fudge,
                       particle_diameter=230.0, sym=args.sym, run_in_c1=not args.no_run_c1,
                       sigma_tilt=args.sigma_tilt, random_seed=args.random_seed, max_significant=args.maxsig,
                       grad_write_iter=write_every, n_workers=args.j, project_dir=args.project.absolute(),
                       fast=args.fast)
    executor = None
    if args.j > 1:
        from subtomo_nb.parallel import DaskExecutor, get_client

        executor = DaskExecutor(get_client(args.j, dashboard_address=None), name="inimodel")
    t_start = time.perf_counter()
    job = InitialModel.from_options(opts, executor=executor)
    print(f"{job.n} particles, box {job.box}, {job.pix:.2f} Å/px; mini-batches {schedules.subset_sizes(job.n)}; "
          f"{'C1 then ' + args.sym if opts.run_in_c1 else args.sym}; tilt prior {args.sigma_tilt:g}°; "
          f"max significant {job.max_significant}", flush=True)
    without = {w for w in args.fast_without.split(",") if w}
    if without - {"marching", "order", "subset"} or (without and job.fast is None):
        ap.error("--fast_without takes marching, order, subset, with --fast")
    if without:
        from dataclasses import replace

        off = {"marching": {"incr_size": 10, "max_resolution_A": 0.0}, "order": {"max_healpix_order": 99},
               "subset": {"subset": None}}
        job.fast = replace(job.fast, **{k: v for w in without for k, v in off[w].items()})
        print(f"--fast without: {', '.join(sorted(without))} ({job.fast})", flush=True)
    for line in job.fast_changes():
        print(line, flush=True)
    job.start()
    write_iteration(job)
    rows = []
    first_40 = {"truth": None, "relion": None}
    stopped = False
    while job.state.iteration < opts.nr_iter:
        e = job.iterate()
        it = e["iteration"]
        line = (f"it {it:3d}  batch {e['subset']:4d}  {e['seconds']:6.1f} s  RELION res {e['resolution_A']:6.1f} Å  "
                f"order {e['healpix_order']}  step {e['step']:.2f}  T {e['tau2_fudge']:.2f}")
        if first_40["relion"] is None and e["resolution_A"] <= 40.0:
            first_40["relion"] = it
        written = it == opts.nr_iter or it % write_every == 0
        over = ((args.time_limit > 0 and time.perf_counter() - t_start > args.time_limit)
                or (args.stop_after > 0 and it >= args.stop_after))
        if written or over:
            write_iteration(job)
            if args.eval_every > 0:
                s = _evaluate(Path(f"{opts.output_root}_it{it:03d}_class001.mrc"), truth, pix)
                line += f"  | truth FSC0.5 {s.resolution_05_A:6.1f} Å ({s.hand})"
                if first_40["truth"] is None and s.resolution_05_A <= 40.0:
                    first_40["truth"] = it
        rows.append((it, e["subset"], e["seconds"], e["healpix_order"]))
        print(line, flush=True)
        if over:
            stopped = True
            break
    t_iter = time.perf_counter() - t_start
    job.outputs = finish_job(job)
    print(f"finishing (initial_model.mrc, symmetry alignment): {time.perf_counter() - t_start - t_iter:.1f} s")
    t_total = time.perf_counter() - t_start
    if executor is not None:
        from subtomo_nb.parallel import close_if_owned

        executor.release()
        close_if_owned(executor.client)

    s = _evaluate(job.outputs["initial_model"], truth, pix)
    print(f"\ninitial_model.mrc: FSC 0.5 at {s.resolution_05_A:.1f} Å, 0.143 at {s.resolution_0143_A:.1f} Å; "
          f"hand {s.hand} (correlation {s.correlation:.3f} vs other hand {s.correlation_other_hand:.3f})")
    print(f"{args.sym} axes after align_symmetry vs truth: {symmetry_axes_error_deg(s.matrix, args.sym):.2f}° (worst axis)")
    print("FSC:", " ".join(f"{x:.2f}" for x in s.fsc))
    print(f"first mini-batch at 40 Å: truth FSC 0.5 {first_40['truth']} (maps every {write_every}), "
          f"RELION's estimate {first_40['relion']}")
    done = sum(r[1] for r in rows)
    sec = sum(r[2] for r in rows)
    print(f"wall time: {t_total:.0f} s ({t_iter:.0f} s iterating {len(rows)} mini-batches, "
          f"{sec / max(done, 1):.3f} s per particle)")
    if stopped:
        todo = sum(job.subset_of(i) for i in range(len(rows) + 1, opts.nr_iter + 1))
        # the remaining mini-batches run at the last HEALPix order (VDAM's auto-sampling never
        # goes past order 3): their rate, not the mean over the cheaper early orders
        last = [r for r in rows if r[3] == rows[-1][3]]
        rate = sum(r[2] for r in last) / max(sum(r[1] for r in last), 1)
        print(f"stopped after mini-batch {len(rows)}: the whole job would take about "
              f"{t_total + todo * rate:.0f} s at {rate:.3f} s per particle (the HEALPix order {rows[-1][3]} "
              f"mini-batches')")


if __name__ == "__main__":
    main()
