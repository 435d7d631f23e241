"""Command lines from job values: RELION's (as its GUI builds them) and the ``subtomo`` equivalent.

RELION's command lines follow ``src/pipeline_jobs.cpp`` ``getCommands*Job`` (relion-conventions.md
§6.1 auto-refine, §8.1 initial model, §10.3 extract / reconstruct, §7.3 align symmetry, §3 star
handler), flag for flag and in the same order. The ``subtomo`` command line is generated from the
registry's CLI fields and is the exact inverse of :func:`subtomo_nb.jobs.cli.build_argparser`:
parsing it gives back the same values.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any

from .params import JobType, Param, format_number
from .registry import get_job_type
from .units import healpix_order, to_flag

__all__ = [
    "command_line",
    "relion_commands",
    "subtomo_command",
    "format_command",
    "job_prefix",
    "healpix_order",
    "output_name",
    "SINGLE_INPUT_JOBS",
]

#: Job types whose ``subtomo`` command takes one ``--i`` (optimisation set or particles) plus
#: ``--tomograms`` instead of relion_refine's ``--ios`` / ``--i --tomograms``.
SINGLE_INPUT_JOBS = frozenset({"extract", "reconstruct"})


def job_prefix(job_type: JobType, job_dir: str | os.PathLike | None) -> str:
    """The job directory as RELION writes it in commands: project-relative, ending in ``/``."""
    if job_dir is None:
        return f"{job_type.process}/jobXXX/"
    text = os.fspath(job_dir)
    return text if text.endswith("/") else text + "/"


def _n(x: float) -> str:
    return format_number(x)


def _tomo_input(v: Mapping[str, Any], *, for_refine: bool) -> list[str]:
    """RELION's ``getTomoInputCommmand``."""
    if not v["use_direct_entries"]:
        return ["--ios" if for_refine else "--i", v["in_optimisation"]]
    out: list[str] = []
    if for_refine:
        out += ["--i", v["in_particles"], "--tomograms", v["in_tomograms"]]
        if v.get("in_trajectories"):
            out += ["--trajectories", v["in_trajectories"]]
        return out
    if v.get("in_particles"):
        out += ["--p", v["in_particles"]]
    if v.get("in_tomograms"):
        out += ["--t", v["in_tomograms"]]
    if v.get("in_trajectories"):
        out += ["--mot", v["in_trajectories"]]
    return out


def _compute_flags(v: Mapping[str, Any], *, pad: int | None) -> list[str]:
    out: list[str] = []
    if not v["do_combine_thru_disc"]:
        out.append("--dont_combine_weights_via_disc")
    if not v["do_parallel_discio"]:
        out.append("--no_parallel_disc_io")
    if v["do_preread_images"]:
        out.append("--preread_images")
    elif v["scratch_dir"]:
        out += ["--scratch_dir", v["scratch_dir"]]
    out += ["--pool", _n(v["nr_pool"])]
    out += ["--pad", str(pad if pad is not None else (1 if v["do_pad1"] else 2))]
    return out


def _tail(v: Mapping[str, Any]) -> list[str]:
    """``--j``, ``--gpu`` and the additional arguments, as every relion_refine job ends."""
    out = ["--j", _n(v["nr_threads"])]
    if v["use_gpu"]:
        out += ["--gpu", v["gpu_ids"]]
    return out + shlex.split(v.get("other_args", "") or "")


def _clip(x: float, lo: float, hi: float | None) -> float:
    x = max(lo, x)
    return min(hi, x) if hi is not None else x


def _refine(v: Mapping[str, Any], job: str, is_continue: bool) -> list[list[str]]:
    program = "relion_refine_mpi" if v["nr_mpi"] > 1 else "relion_refine"
    c = [program]
    if is_continue:
        c += ["--continue", v["fn_cont"]]
    c += ["--o", job + "run"]
    if not is_continue:
        c += ["--auto_refine", "--split_random_halves"]
        c += _tomo_input(v, for_refine=True)
        if v["sigma_tilt"] > 0:
            c += ["--sigma_tilt", _n(v["sigma_tilt"])]
        c += ["--ref", v["fn_ref"]]
        if not v["ref_correct_greyscale"]:
            c.append("--firstiter_cc")
        if v["trust_ref_size"]:
            c.append("--trust_ref_size")
        if v["ini_high"] > 0:
            c += ["--ini_high", _n(v["ini_high"])]
        if v["do_blush"]:
            c.append("--blush")
    c += _compute_flags(v, pad=None)
    if v["auto_faster"]:
        c += ["--auto_ignore_angles", "--auto_resol_angles"]
    if not is_continue:
        if v["do_ctf_correction"]:
            c.append("--ctf")
            if v["ctf_intact_first_peak"]:
                c.append("--ctf_intact_first_peak")
        c += ["--particle_diameter", _n(v["particle_diameter"]), "--flatten_solvent"]
        if v["do_zero_mask"]:
            c.append("--zero_mask")
        if v["fn_mask"]:
            c += ["--solvent_mask", v["fn_mask"]]
            if v["do_solvent_fsc"]:
                c.append("--solvent_correct_fsc")
        c += ["--oversampling", "1", "--healpix_order", str(healpix_order(v["sampling"])),
              "--auto_local_healpix_order", str(healpix_order(v["auto_local_sampling"])),
              "--offset_range", _n(v["offset_range"]), "--offset_step", _n(2 * v["offset_step"]),
              "--sym", v["sym_name"], "--low_resol_join_halves", "40", "--norm", "--scale"]
        if v["do_helix"]:
            c += _helix(v)
        if v["relax_sym"]:
            c += ["--relax_sym", v["relax_sym"]]
    return [c + _tail(v)]


def _helix(v: Mapping[str, Any]) -> list[str]:
    """The helical flags of ``getCommandsAutorefineJob``."""
    c = ["--helix"]
    if v["helical_tube_inner_diameter"] > 0:
        c += ["--helical_inner_diameter", _n(v["helical_tube_inner_diameter"])]
    c += ["--helical_outer_diameter", _n(v["helical_tube_outer_diameter"])]
    if v["do_apply_helical_symmetry"]:
        c += ["--helical_nr_asu", _n(v["helical_nr_asu"]),
              "--helical_twist_initial", _n(v["helical_twist_initial"]),
              "--helical_rise_initial", _n(v["helical_rise_initial"]),
              "--helical_z_percentage", _n(v["helical_z_percentage"] / 100.0)]
        if v["do_local_search_helical_symmetry"]:
            c += ["--helical_symmetry_search",
                  "--helical_twist_min", _n(v["helical_twist_min"]), "--helical_twist_max", _n(v["helical_twist_max"])]
            if v["helical_twist_inistep"] > 0:
                c += ["--helical_twist_inistep", _n(v["helical_twist_inistep"])]
            c += ["--helical_rise_min", _n(v["helical_rise_min"]), "--helical_rise_max", _n(v["helical_rise_max"])]
            if v["helical_rise_inistep"] > 0:
                c += ["--helical_rise_inistep", _n(v["helical_rise_inistep"])]
    else:
        c.append("--ignore_helical_symmetry")
    if v["sampling"] != v["auto_local_sampling"]:
        c += ["--sigma_tilt", _n(_clip(v["range_tilt"], 0, 90) / 3.0),
              "--sigma_psi", _n(_clip(v["range_psi"], 0, 90) / 3.0),
              "--sigma_rot", _n(_clip(v["range_rot"], 0, None) / 3.0)]
        if v["helical_range_distance"] > 0:
            c += ["--helical_sigma_distance", _n(v["helical_range_distance"] / 3.0)]
    if v["keep_tilt_prior_fixed"]:
        c.append("--helical_keep_tilt_prior_fixed")
    return c


def _initial_model(v: Mapping[str, Any], job: str, is_continue: bool) -> list[list[str]]:
    c = ["relion_refine"]
    if is_continue:
        c += ["--continue", v["fn_cont"]]
    c += ["--o", job + "run", "--iter", _n(v["nr_iter"])]
    if not is_continue:
        c += ["--grad", "--denovo_3dref"]
        c += _tomo_input(v, for_refine=True)
        if v["sigma_tilt"] > 0:
            c += ["--sigma_tilt", _n(v["sigma_tilt"])]
        if v["do_ctf_correction"]:
            c.append("--ctf")
            if v["ctf_intact_first_peak"]:
                c.append("--ctf_intact_first_peak")
        c += ["--K", _n(v["nr_classes"]), "--sym", "C1" if v["do_run_C1"] else v["sym_name"]]
        if v["do_solvent"]:
            c.append("--flatten_solvent")
        c.append("--zero_mask")
    c += _compute_flags(v, pad=1)
    c += ["--particle_diameter", _n(v["particle_diameter"]), "--oversampling", "1", "--healpix_order", "1",
          "--offset_range", "6", "--offset_step", "2", "--auto_sampling", "--tau2_fudge", _n(v["tau_fudge"])]
    c += _tail(v)
    sym = v["sym_name"]
    align_sym = sym if v["do_run_C1"] and sym.upper() != "C1" else "C1"
    align = ["relion_align_symmetry", "--i", f"{job}run_it{int(v['nr_iter']):03d}_model.star",
             "--o", job + "initial_model.mrc", "--sym", align_sym, "--apply_sym", "--select_largest_class"]
    return [c, align]


def _extract(v: Mapping[str, Any], job: str, is_continue: bool) -> list[list[str]]:
    program = "relion_tomo_subtomo_mpi" if v["nr_mpi"] > 1 else "relion_tomo_subtomo"
    c = [program] + _tomo_input(v, for_refine=False) + ["--theme", "classic", "--o", job]
    c += ["--b", _n(v["box_size"])]
    if v["crop_size"] > 0:
        c += ["--crop", _n(v["crop_size"])]
    c += ["--bin", _n(v["binning"])]
    if v["max_dose"] > 0:
        c += ["--max_dose", _n(v["max_dose"])]
    c += ["--min_frames", _n(v["min_frames"])]
    if v["do_stack2d"]:
        c.append("--stack2d")
    if v["do_float16"]:
        c.append("--float16")
    c += ["--j", _n(v["nr_threads"])] + shlex.split(v.get("other_args", "") or "")
    return [c]


def _reconstruct(v: Mapping[str, Any], job: str, is_continue: bool) -> list[list[str]]:
    program = "relion_tomo_reconstruct_particle_mpi" if v["nr_mpi"] > 1 else "relion_tomo_reconstruct_particle"
    c = [program] + _tomo_input(v, for_refine=False) + ["--o", job, "--b", _n(v["box_size"])]
    if v["crop_size"] > 0:
        c += ["--crop", _n(v["crop_size"])]
    c += ["--bin", _n(v["binning"])]
    if v["snr"] > 0:
        c += ["--SNR", _n(v["snr"])]
    c += ["--sym", v["sym_name"], "--j", _n(v["nr_threads"]), "--j_out", _n(v["nr_threads"]), "--j_in", "1"]
    c += shlex.split(v.get("other_args", "") or "")
    out = [c]
    if v["do_helix"]:
        out.append(["relion_helix_toolbox", "--impose", "--i", job + "merged.mrc", "--o", job + "merged_helix.mrc",
                    "--cyl_outer_diameter", _n(v["helical_tube_outer_diameter"]),
                    "--nr_asu", _n(v["helical_nr_asu"]), "--twist", _n(v["helical_twist"]),
                    "--rise", _n(v["helical_rise"]), "--z_percentage", _n(v["helical_z_percentage"] / 100.0)])
    return out


def _recentre(v: Mapping[str, Any], job: str, is_continue: bool) -> list[list[str]]:
    c = ["relion_star_handler", "--i", v["fn_in"], "--o", job + "particles.star", "--center",
         "--center_X", _n(v["center_x"]), "--center_Y", _n(v["center_y"]), "--center_Z", _n(v["center_z"])]
    if v["do_ignore_optics"]:
        c += ["--ignore_optics", "--angpix", _n(v["angpix"])]
    return [c + shlex.split(v.get("other_args", "") or "")]


def _align_symmetry(v: Mapping[str, Any], job: str, is_continue: bool) -> list[list[str]]:
    c = ["relion_align_symmetry", "--i", v["fn_in"], "--o", job + "aligned.mrc", "--sym", v["sym_name"]]
    for key, flag in (("do_select_largest_class", "--select_largest_class"),
                      ("do_select_highest_resol", "--select_highest_resol")):
        if v[key]:
            c.append(flag)
    c += ["--box_size", _n(v["box_size"])]
    if v["do_keep_centre"]:
        c.append("--keep_centre")
    if v["angpix"] > 0:
        c += ["--angpix", _n(v["angpix"])]
    if v["do_only_rot"]:
        c.append("--only_rot")
    c += ["--nr_uniform", _n(v["nr_uniform"])]
    if v["maxres"] > 0:
        c += ["--maxres", _n(v["maxres"])]
    c += ["--local_search_range", _n(v["local_search_range"]), "--local_search_step", _n(v["local_search_step"]),
          "--pad", _n(v["pad"])]
    if v["do_apply_sym"]:
        c.append("--apply_sym")
    if v["do_nn"]:
        c.append("--NN")
    return [c + shlex.split(v.get("other_args", "") or "")]


_BUILDERS = {
    "refine3d": _refine,
    "initial_model": _initial_model,
    "extract": _extract,
    "reconstruct": _reconstruct,
    "recentre": _recentre,
    "align_symmetry": _align_symmetry,
}


def relion_commands(
    job_type: str | JobType,
    values: Mapping[str, Any],
    job_dir: str | os.PathLike | None = None,
    *,
    is_continue: bool = False,
) -> list[list[str]]:
    """All commands RELION's GUI would run for a job, each as an argument list.

    Parameters
    ----------
    job_type : str or JobType
    values : mapping
        Job values (missing keys take their defaults).
    job_dir : str or os.PathLike, optional
        Project-relative job directory (``"Refine3D/job012/"``); placeholder ``<Process>/jobXXX/``.
    is_continue : bool
        Continue mode (``--continue <fn_cont>``; refine and initial model only).

    Returns
    -------
    list of list of str
        E.g. for the initial model: ``relion_refine ...`` then ``relion_align_symmetry ...``.
        The ``mpirun -n N`` prefix of MPI runs is not included (see :func:`format_command`).
    """
    jt = get_job_type(job_type)
    v = jt.complete(values)
    return _BUILDERS[jt.name](v, job_prefix(jt, job_dir), is_continue)


def _cli_tokens(p: Param, value: Any, v: Mapping[str, Any]) -> list[str]:
    """The ``subtomo`` tokens of one field (empty when the value is what absence means)."""
    opt = p.cli[0]
    kind = p.cli_kind
    if kind == "true" or kind == "false":
        on = kind == "true"
        absent = p.default if p.cli_off else (not on)
        if bool(value) == absent:
            return []
        if bool(value) == on:
            return [opt]
        return [p.cli_off[0]]
    if kind == "gpu":
        return [opt, v["gpu_ids"]] if value else []
    if kind == "pad1":
        return [opt, "1"] if value else []
    absent = p.default if p.cli_absent is None else p.cli_absent
    if value == absent:
        return []
    if kind == "healpix":
        return [opt, str(to_flag(kind, value))]
    if kind in ("x2", "third", "percent"):
        return [opt, _n(to_flag(kind, value))]
    return [opt, _n(value) if p.type in ("int", "float") else str(value)]


def subtomo_command(
    job_type: str | JobType,
    values: Mapping[str, Any],
    output: str | os.PathLike | None = None,
) -> list[str]:
    """The ``subtomo`` command line equivalent to a job's values.

    Only options whose value differs from what their absence means are written, and only for
    active fields (a helical option is left out when helical reconstruction is off); parsing the
    result with :func:`subtomo_nb.jobs.cli.build_argparser` and
    :func:`subtomo_nb.jobs.cli.values_from_args` gives back ``values`` (for the active fields that
    are on the command line).

    Parameters
    ----------
    job_type : str or JobType
    values : mapping
    output : str or os.PathLike, optional
        The ``--o`` argument; default ``<Process>/jobXXX/`` + the job's output name.

    Returns
    -------
    list of str
        ``["subtomo", "<sub-command>", "--o", ..., ...]``.
    """
    jt = get_job_type(job_type)
    v = jt.complete(values)
    if output is None:
        output = job_prefix(jt, None) + output_name(jt)
    out = ["subtomo", jt.cli_name, "--o", os.fspath(output), *jt.subtomo_flags]
    single = jt.name in SINGLE_INPUT_JOBS
    for p in jt.params:
        if not p.cli:
            continue
        if p.active_if is not None and p.key not in ("in_particles", "in_tomograms", "in_trajectories"):
            other, wanted = p.active_if
            if v[other] != wanted:
                continue  # an inactive field changes nothing; keep the command short
        if p.key == "in_optimisation" and single:
            src = v["in_particles"] if v["use_direct_entries"] else v["in_optimisation"]
            if src:
                out += [p.cli[0], src]
            continue
        if p.key in ("in_particles", "in_tomograms", "in_trajectories") and not v["use_direct_entries"]:
            continue
        if p.key == "in_optimisation" and v["use_direct_entries"]:
            continue
        out += _cli_tokens(p, v[p.key], v)
    return out


def output_name(job_type: str | JobType) -> str:
    """What ``--o`` names inside the job directory: a rootname, a file or the directory itself."""
    jt = get_job_type(job_type)
    return {"refine3d": "run", "initial_model": "run", "extract": "", "reconstruct": "merged.mrc",
            "recentre": "particles.star", "align_symmetry": "aligned.mrc"}[jt.name]


def command_line(
    job_type: str | JobType,
    values: Mapping[str, Any],
    *,
    job_dir: str | os.PathLike | None = None,
    flavour: str = "relion",
    is_continue: bool = False,
) -> list[str]:
    """The main command line of a job, as an argument list.

    Parameters
    ----------
    job_type : str or JobType
    values : mapping
        Job values (missing keys take their defaults).
    job_dir : str or os.PathLike, optional
        Project-relative job directory (``"Refine3D/job012/"``).
    flavour : {"relion", "subtomo"}
        ``"relion"``: the first command RELION's GUI builds (``relion_refine ...``, §6.1/§8.1);
        ``"subtomo"``: the equivalent ``subtomo <sub-command> ...``.
    is_continue : bool
        Continue mode (RELION flavour).

    Returns
    -------
    list of str
    """
    jt = get_job_type(job_type)
    if flavour == "relion":
        return relion_commands(jt, values, job_dir, is_continue=is_continue)[0]
    if flavour == "subtomo":
        return subtomo_command(jt, values, job_prefix(jt, job_dir) + output_name(jt))
    raise ValueError(f"flavour must be 'relion' or 'subtomo', got {flavour!r}")


def format_command(argv: list[str], nr_mpi: int = 1) -> str:
    """A shell-quoted command line (with ``mpirun -n N`` for MPI programs, as RELION)."""
    text = shlex.join(argv)
    if nr_mpi > 1 and argv and argv[0].endswith("_mpi"):
        text = f"mpirun -n {int(nr_mpi)} " + text
    return text
