"""The job types: RELION's tomography job forms, described once as data.

Sources: relion-conventions.md §10 (RELION 5 ``src/pipeline_jobs.cpp`` ``initialise*Job`` and
``src/gui_jobwindow.cpp`` tab placement), §7.3 (``relion_align_symmetry``), §3
(``relion_star_handler --center``). Keys, labels (trailing spaces included) and defaults are
RELION's; help texts are ours.

Process directories and ``rlnJobTypeLabel`` (RELION 5 ``pipeline_jobs.h``):

========================  =====================  ==================================
job type                  process directory      rlnJobTypeLabel
========================  =====================  ==================================
Extract subtomos          ``Extract``            ``relion.pseudosubtomo``
3D initial reference      ``InitialModel``       ``relion.initialmodel.tomo``
3D auto-refine            ``Refine3D``           ``relion.refine3d.tomo``
Reconstruct particle      ``Reconstruct``        ``relion.reconstructparticletomo``
Re-centre (star handler)  ``Select``             ``relion.select.recentre``
Align symmetry            ``External``           ``relion.external.alignsymmetry``
========================  =====================  ==================================

RELION 5 names the directory of its tomo "Reconstruct particle" job ``Reconstruct`` (RELION 4
used ``ReconstructParticleTomo``). RELION has no job for ``relion_star_handler --center`` or for
a stand-alone ``relion_align_symmetry``: re-centring goes under ``Select`` (RELION's
``relion_star_handler``-based "Subset selection" process, whose output is also a
``particles.star``), symmetry alignment under ``External`` (RELION's process for programs
without a job type of their own). RELION reads a label with an extra ``.suffix`` as its parent
type (``get_proc_type`` strips the last component).
"""

from __future__ import annotations

from subtomo_nb.initial_model.fast import (
    FAST_INCR_SIZE,
    FAST_MAX_HEALPIX_ORDER,
    FAST_MAX_RESOLUTION_A,
)

from .params import JobType, Param

__all__ = [
    "REGISTRY",
    "SAMPLING_CHOICES",
    "get_job_type",
    "job_type_for_process",
    "job_type_for_label",
    "EXTRACT",
    "INITIAL_MODEL",
    "REFINE3D",
    "RECONSTRUCT",
    "RECENTRE",
    "ALIGN_SYMMETRY",
]

#: RELION's angular sampling radio options (``job_sampling_options``); index = HEALPix order.
SAMPLING_CHOICES = (
    "30 degrees",
    "15 degrees",
    "7.5 degrees",
    "3.7 degrees",
    "1.8 degrees",
    "0.9 degrees",
    "0.5 degrees",
    "0.2 degrees",
    "0.1 degrees",
)

#: Built-in submission script RELION falls back to without $RELION_QSUB_TEMPLATE.
DEFAULT_QSUB_SCRIPT = "/public/EM/RELION/relion/bin/relion_qsub.csh"


# ----------------------------------------------------------------------------------------------
# Shared groups of fields
# ----------------------------------------------------------------------------------------------


def _tomo_inputs(*, particles: bool, tomograms: bool, trajectories: bool, mode: str) -> list[Param]:
    """RELION's ``addTomoInputOptions``: optimisation set OR direct entries.

    ``mode`` is ``"refine"`` (``--ios`` / ``--i --tomograms --trajectories``, relion_refine's
    names) or ``"extract"`` / ``"reconstruct"`` (our CLI's single ``--i`` plus ``--tomograms``).
    """
    ios_cli = {"refine": ("--ios",), "extract": ("--ios", "--i"), "reconstruct": ("--i",)}[mode]
    out = [
        Param("in_optimisation", "Input optimisation set: ", "I/O", "file", "",
              "Optimisation set naming the particle set, the tomogram set and (optionally) the "
              "trajectories, reference maps and mask to use.",
              flag="--ios" if mode == "refine" else "--i", maps="given unless direct entries are used",
              pattern="*optimisation_set.star", cli=ios_cli),
        Param("use_direct_entries", "OR: use direct entries?", "I/O", "bool", False,
              "Give the particle, tomogram and trajectory sets one by one below instead of an "
              "optimisation set (then the optimisation set must be left empty).",
              maps="Yes => the sets below replace the optimisation set"),
    ]
    if particles:
        out.append(Param("in_particles", "Input particle set: ", "I/O", "file", "",
                         "Particle set (STAR) to use with the direct entries.",
                         flag="--i" if mode == "refine" else "--p", maps="with direct entries",
                         pattern="*.star", active_if=("use_direct_entries", True),
                         cli=("--i",) if mode == "refine" else (),
                         cli_help="Particle set (STAR), given instead of --ios (with --tomograms)."))
    if tomograms:
        out.append(Param("in_tomograms", "Input tomogram set: ", "I/O", "file", "",
                         "Tomogram set (tomograms.star) to use with the direct entries.",
                         flag="--tomograms" if mode == "refine" else "--t", maps="with direct entries",
                         pattern="*.star", active_if=("use_direct_entries", True), cli=("--tomograms",),
                         cli_help="Tomogram set (tomograms.star) of the particles of --i"
                                  + (", given instead of --ios." if mode == "refine"
                                     else " when that is a particle STAR file (needed for 2D stacks).")))
    if trajectories:
        out.append(Param("in_trajectories", "Input trajectory set: ", "I/O", "file", "",
                         "Particle motion trajectories (optional; only after frame alignment).",
                         flag="--trajectories" if mode == "refine" else "--mot",
                         maps="with direct entries, if not empty", pattern="*.star",
                         active_if=("use_direct_entries", True),
                         cli=("--trajectories",) if mode == "refine" else (),
                         cli_help="Particle motion trajectories of the particles of --i (optional; only "
                                  "after frame alignment)."))
    return out


def _compute(*, pad1: bool) -> list[Param]:
    """RELION's Compute tab of relion_refine jobs (auto-refine; initial model without pad1)."""
    out = [
        Param("do_parallel_discio", "Use parallel disc I/O?", "Compute", "bool", True,
              "Let every worker read its own particles from disc (No: one process reads and "
              "sends them on; kinder to slow network file systems).",
              flag="--no_parallel_disc_io", maps="No => --no_parallel_disc_io",
              cli=("--no_parallel_disc_io",), cli_kind="false",
              cli_help="RELION: one process reads the particles from disc and sends them to the others, "
                       "instead of every process reading its own."),
        Param("nr_pool", "Number of pooled particles:", "Compute", "int", 3,
              "Particles read together per thread in one batch; larger batches mean fewer file "
              "accesses and more memory.",
              flag="--pool", maps="--pool N", min=1, max=16, step=1, strict_range=False, cli=("--pool",)),
    ]
    if pad1:
        out.append(Param("do_pad1", "Skip padding?", "Compute", "bool", False,
                         "Use no oversampling of the reference transform (padding 1 instead of 2): "
                         "half the memory, slightly less accurate interpolation.",
                         flag="--pad", maps="Yes => --pad 1, No => --pad 2", cli=("--pad",), cli_kind="pad1",
                         cli_help="Padding factor of the reference transform: 2 (oversampled), or 1 (no "
                                  "padding: half the memory, slightly less accurate interpolation)."))
    out += [
        Param("do_preread_images", "Pre-read all particles into RAM?", "Compute", "bool", False,
              "Read all particles into memory once at the start (fast, needs RAM for all of them).",
              flag="--preread_images", maps="Yes => --preread_images",
              cli=("--preread_images",), cli_kind="true"),
        Param("scratch_dir", "Copy particles to scratch directory:", "Compute", "str", "",
              "Local directory (fast disc) to copy the particles to before the iterations start; "
              "empty: read them where they are.",
              flag="--scratch_dir", maps="--scratch_dir DIR if not empty and not pre-read",
              env_default="RELION_SCRATCH_DIR", active_if=("do_preread_images", False), cli=("--scratch_dir",)),
        Param("do_combine_thru_disc", "Combine iterations through disc?", "Compute", "bool", False,
              "Exchange the partial sums of the workers through files instead of the network.",
              flag="--dont_combine_weights_via_disc", maps="No => --dont_combine_weights_via_disc",
              cli=("--dont_combine_weights_via_disc",), cli_kind="false",
              cli_help="RELION: exchange the partial sums of the MPI processes over the network instead of "
                       "through files (RELION's job always gives it). Accepted for RELION compatibility; no "
                       "effect here (dask exchanges the sums either way)."),
        *_gpu("Compute"),
    ]
    return out


def _gpu(tab: str, *, relion: bool = True) -> list[Param]:
    """RELION's "Use GPU acceleration?" and "Which GPUs to use:" (``--gpu``, relion_refine's).

    ``relion=False``: the fields are ours (reconstruct particle has no GPU option in RELION).
    """
    return [
        Param("use_gpu", "Use GPU acceleration?", tab, "bool", False,
              "Run the job's numerics on GPUs (cupy; one dask worker per GPU).",
              flag="--gpu", maps='Yes => --gpu "<ids>"' + ("" if relion else " (subtomo only)"), cli=("--gpu",),
              cli_kind="gpu", relion=relion,
              cli_help="Run on GPUs, as relion_refine's --gpu: no value (or an empty one) uses every visible GPU, "
                       "a list such as '0,1' (or RELION's '0:1') names them; one dask worker per GPU. Needs "
                       "cupy and a CUDA device (the subtomo_nb[gpu] extra; dask-cuda for more than one GPU). "
                       "Without --gpu the job runs on the CPU, or on the backend named by SUBTOMO_BACKEND "
                       "(numpy, strict, cupy)."),
        Param("gpu_ids", "Which GPUs to use:", tab, "str", "",
              "GPU numbers to use (e.g. 0,1; ':' separates MPI processes); empty: all visible GPUs.",
              flag="--gpu", maps="the value of --gpu", active_if=("use_gpu", True), relion=relion),
    ]


def _running(*, mpi: bool, threads: bool, threads_cli: tuple[str, ...] = ("--j",),
             threads_cli_help: str = "", scheduler: bool = False) -> list[Param]:
    """RELION's Running tab (``RelionJob::initialise``), present on every job form.

    ``scheduler``: also our two fields that attach the job to a dask cluster started elsewhere
    (not RELION's; :func:`subtomo_nb.parallel.client.job_client`). ``threads_cli_help``: what
    ``--j`` does in this job (the command-line help of "Number of threads:").
    """
    out: list[Param] = []
    if mpi:
        out.append(Param("nr_mpi", "Number of MPI procs:", "Running", "int", 1,
                         "Number of processes; more than 1 runs the MPI version of the program "
                         "(here: more dask workers).",
                         flag="mpirun -n", maps="N > 1 => mpirun -n N <program>_mpi",
                         min=1, max=64, step=1, env_default="RELION_QSUB_NRMPI"))
    if threads:
        out.append(Param("nr_threads", "Number of threads:", "Running", "int", 1,
                         "Threads per process.",
                         flag="--j", maps="--j N", min=1, max=16, step=1, strict_range=False,
                         env_default="RELION_QSUB_NRTHREADS", cli=threads_cli, cli_help=threads_cli_help))
    out += [
        Param("do_queue", "Submit to queue?", "Running", "bool", False,
              "Submit the job to a batch queue instead of running it here.",
              env_default="RELION_QUEUE_USE"),
        Param("queuename", "Queue name: ", "Running", "str", "openmpi",
              "Name of the batch queue.", env_default="RELION_QUEUE_NAME", active_if=("do_queue", True)),
        Param("qsub", "Queue submit command:", "Running", "str", "sbatch",
              "Command that submits a script to the queue (sbatch, qsub, bsub...).",
              env_default="RELION_QSUB_COMMAND", active_if=("do_queue", True)),
        Param("qsubscript", "Standard submission script:", "Running", "file", DEFAULT_QSUB_SCRIPT,
              "Template of the submission script (XXXcommandXXX, XXXmpinodesXXX... are filled in).",
              pattern="*.{csh,sh,bash,script}", env_default="RELION_QSUB_TEMPLATE", active_if=("do_queue", True)),
        Param("min_dedicated", "Minimum dedicated cores per node:", "Running", "int", 1,
              "Cores to request per node at least (fills whole nodes).",
              min=1, max=64, step=1, env_default="RELION_MINIMUM_DEDICATED", active_if=("do_queue", True)),
        Param("other_args", "Additional arguments:", "Running", "str", "",
              "Extra command-line arguments appended to the program's command line as they are.",
              maps="appended verbatim"),
    ]
    if scheduler:
        out += [
            Param("scheduler_file", "Dask scheduler file:", "Running", "file", "",
                  "Run the work on the dask cluster whose scheduler wrote this file (dask scheduler "
                  "--scheduler-file, dask-jobqueue's SLURMRunner); the job's files stay here. Empty: no cluster.",
                  flag="--scheduler_file", maps="--scheduler_file F (subtomo only)", pattern="*.json",
                  relion=False, cli=("--scheduler_file",)),
            Param("scheduler_address", "OR: dask scheduler address:", "Running", "str", "",
                  "Run the work on the dask cluster of this scheduler (tcp://host:port, e.g. a "
                  "dask-jobqueue SLURMCluster's scheduler_address). Empty: no cluster.",
                  flag="--scheduler_address", maps="--scheduler_address tcp://HOST:PORT (subtomo only)",
                  relion=False, cli=("--scheduler_address",)),
        ]
    return out


def _ctf(*, tab: str = "CTF") -> list[Param]:
    return [
        Param("do_ctf_correction", "Do CTF-correction?", tab, "bool", True,
              "Model the CTF of every tilt image in the refinement (a Wiener filter in effect).",
              flag="--ctf", maps="Yes => --ctf", cli=("--ctf",), cli_kind="true"),
        Param("ctf_intact_first_peak", "Ignore CTFs until first peak?", tab, "bool", False,
              "Leave the CTF amplitudes uncorrected up to their first maximum (for data whose "
              "low-resolution CTF model is poor; rarely needed).",
              flag="--ctf_intact_first_peak", maps="Yes => --ctf_intact_first_peak (only with CTF correction)",
              active_if=("do_ctf_correction", True), cli=("--ctf_intact_first_peak",), cli_kind="true"),
    ]


def _sigma_tilt(tab: str) -> Param:
    return Param("sigma_tilt", "Prior width on tilt angle (deg):", tab, "float", -1.0,
                 "Width of a Gaussian prior on the tilt angle around the particle's tilt prior "
                 "(e.g. normal to a membrane); searches span +/- 3 widths. Negative: no prior.",
                 flag="--sigma_tilt", maps="--sigma_tilt S if S > 0", min=-1, max=30, step=1,
                 cli=("--sigma_tilt",))


def _fast(tab: str) -> Param:
    """subtomo_nb's "Fast search" of the initial model (``--fast``, :mod:`subtomo_nb.initial_model.fast`).

    Not RELION's: RELION's form and relion_refine have no such option, so the field is marked
    ``relion=False`` and :mod:`~subtomo_nb.jobs.commands` never writes it on RELION's command line
    (only on the ``subtomo`` one). The help states its rules with the numbers of ``fast.py``.
    """
    fine = 360.0 / (6 * 2 ** (FAST_MAX_HEALPIX_ORDER + 1))   # its angular step after one oversampling (°)
    rules = (f"frequency marching (the image size follows the resolution: 2 x (current-resolution shell + "
             f"{FAST_INCR_SIZE}) instead of RELION's + 10, searching no further than {FAST_MAX_RESOLUTION_A:g} Å); "
             f"HEALPix order at most {FAST_MAX_HEALPIX_ORDER} ({fine:g}° after oversampling) instead of RELION's 3 "
             f"({fine / 2:g}°); mini-batches that keep their initial size (--grad_ini_subset) instead of growing "
             f"to the final one, so --grad_fin_subset cannot be given with it. The gradients, step sizes, T, "
             f"noise model and outputs stay RELION's; run.out lists what it changed")
    return Param("do_fast", "Fast search (subtomo_nb, not RELION)?", tab, "bool", False,
                 "subtomo_nb's own accelerated search for an initial model of about 30 Å, not a RELION option "
                 f"(No: RELION's job exactly). It changes what each mini-batch searches and holds: {rules}.",
                 flag="--fast", maps="Yes => --fast (subtomo only; never on RELION's command line)",
                 relion=False, cli=("--fast",), cli_kind="true",
                 cli_help="Not RELION's (relion_refine has no --fast): subtomo_nb's own accelerated search for an "
                          "initial model of about 30 Å; without it the job is RELION's exactly. It changes what "
                          f"each mini-batch searches and holds: {rules}.")


# ----------------------------------------------------------------------------------------------
# 3D auto-refine (§10.1)
# ----------------------------------------------------------------------------------------------

_REFINE_PARAMS = (
    *_tomo_inputs(particles=True, tomograms=True, trajectories=True, mode="refine"),
    Param("fn_ref", "Reference map:", "I/O", "file", "",
          "Starting reference map (MRC), with the box and pixel size of the particles.",
          flag="--ref", maps="--ref MAP", pattern="*.mrc", cli=("--ref",)),
    Param("fn_mask", "Reference mask (optional):", "I/O", "file", "",
          "Soft mask applied to the references each iteration; empty: a spherical mask of the "
          "mask diameter.",
          flag="--solvent_mask", maps="--solvent_mask MASK if not empty", pattern="*.mrc",
          cli=("--solvent_mask",)),
    Param("fn_cont", "Continue from here: ", "I/O", "file", "",
          "An iteration's _optimiser.star to continue a stopped refinement from (continue mode only).",
          flag="--continue", maps="--continue FILE (continue mode)", pattern="*_it*_optimiser.star",
          cli=("--continue",)),
    Param("ref_correct_greyscale", "Ref. map is on absolute greyscale?", "Reference", "bool", False,
          "Yes if the reference was made by RELION (or this package) from these particles; No "
          "for maps from elsewhere: the first iteration then uses cross-correlation to set the scale.",
          flag="--firstiter_cc", maps="No => --firstiter_cc", cli=("--firstiter_cc",), cli_kind="false",
          cli_help="The reference is not on the absolute greyscale (e.g. a map from elsewhere): use "
                   "cross-correlation in the first iteration to set its scale. Without it the reference is "
                   "taken to be on the particles' greyscale (made by RELION or this package from these "
                   "particles)."),
    Param("trust_ref_size", "Resize reference if needed?", "Reference", "bool", True,
          "Rescale and re-box the reference to the particles' pixel and box size if they differ "
          "(No: stop with an error instead).",
          flag="--trust_ref_size", maps="Yes => --trust_ref_size", cli=("--trust_ref_size",), cli_kind="true",
          cli_help="RELION: rescale and re-box a reference of another pixel or box size. Accepted for RELION "
                   "compatibility, but not done here: with or without it, a reference (and mask) must have "
                   "the particles' box and pixel size, else the job stops with an error."),
    Param("ini_high", "Initial low-pass filter (A):", "Reference", "float", 60.0,
          "Low-pass filter the reference to this resolution (Å) before the first iteration, to "
          "keep its high-resolution detail from biasing the search. 0: no filter.",
          flag="--ini_high", maps="--ini_high A if A > 0", min=0, max=200, step=5, strict_range=False,
          cli=("--ini_high",), cli_absent=0.0),
    Param("sym_name", "Symmetry:", "Reference", "str", "C1",
          "Point group of the particle (RELION names: C1, Cn, Dn, T, O, I...).",
          flag="--sym", maps="--sym G", cli=("--sym",)),
    *_ctf(),
    Param("particle_diameter", "Mask diameter (A):", "Optimisation", "float", 200.0,
          "Diameter (Å) of the soft spherical mask around the particles and, without a mask "
          "file, of the reference mask. Must fit in the box.",
          flag="--particle_diameter", maps="--particle_diameter D", min=0, max=1000, step=10,
          strict_range=False, cli=("--particle_diameter",)),
    Param("do_zero_mask", "Mask individual particles with zeros?", "Optimisation", "bool", True,
          "Set the particles to zero outside the mask (No: fill with noise).",
          flag="--zero_mask", maps="Yes => --zero_mask", cli=("--zero_mask",), cli_kind="true",
          cli_help="Set the particles to zero outside the mask; without it the area outside is filled "
                   "with noise."),
    Param("do_solvent_fsc", "Use solvent-flattened FSCs?", "Optimisation", "bool", False,
          "Compute the resolution from masked, phase-randomisation-corrected FSCs (needs a "
          "reference mask; for particles filling little of the box).",
          flag="--solvent_correct_fsc", maps="Yes => --solvent_correct_fsc (only with a mask)",
          cli=("--solvent_correct_fsc",), cli_kind="true"),
    Param("do_blush", "Use Blush regularisation?", "Optimisation", "bool", False,
          "Regularise the references with a denoising neural network (RELION 5's Blush).",
          flag="--blush", maps="Yes => --blush", cli=("--blush",), cli_kind="true"),
    Param("sampling", "Initial angular sampling:", "Auto-sampling", "choice", "7.5 degrees",
          "Angular step of the first iterations' global search; the sampling gets finer "
          "automatically as the refinement converges.",
          flag="--healpix_order", maps="--oversampling 1 --healpix_order <choice index>",
          choices=SAMPLING_CHOICES, cli=("--healpix_order",), cli_kind="healpix"),
    Param("offset_range", "Initial offset range (pix):", "Auto-sampling", "float", 5.0,
          "Largest translation (pixels) searched around the current origin at the start.",
          flag="--offset_range", maps="--offset_range R", min=0, max=30, step=1, strict_range=False,
          cli=("--offset_range",)),
    Param("offset_step", "Initial offset step (pix):", "Auto-sampling", "float", 1.0,
          "Translation step (pixels) at the start.",
          flag="--offset_step", maps="--offset_step 2*S (RELION doubles it for oversampling 1)",
          min=0.1, max=5, step=0.1, cli=("--offset_step",), cli_kind="x2",
          cli_help="Translation step (pixels) at the start, before oversampling: twice the form's "
                   "'Initial offset step' (its 1 pixel is --offset_step 2)."),
    Param("auto_local_sampling", "Local searches from auto-sampling:", "Auto-sampling", "choice", "1.8 degrees",
          "Angular sampling from which on only local searches around the current orientations "
          "are done.",
          flag="--auto_local_healpix_order", maps="--auto_local_healpix_order <choice index>",
          choices=SAMPLING_CHOICES, cli=("--auto_local_healpix_order",), cli_kind="healpix"),
    Param("relax_sym", "Relax symmetry:", "Auto-sampling", "str", "",
          "Point group whose symmetry mates are also searched locally (pseudo-symmetry); empty: none.",
          flag="--relax_sym", maps="--relax_sym G if not empty", cli=("--relax_sym",)),
    Param("auto_faster", "Use finer angular sampling faster?", "Auto-sampling", "bool", False,
          "Go to finer angular sampling more aggressively (faster, riskier for hard cases).",
          flag="--auto_ignore_angles", maps="Yes => --auto_ignore_angles --auto_resol_angles",
          cli=("--auto_ignore_angles",), cli_kind="true"),
    _sigma_tilt("Auto-sampling"),
    Param("do_helix", "Do helical reconstruction?", "Helix", "bool", False,
          "Treat the particles as segments of helices.",
          flag="--helix", maps="Yes => --helix and the helical flags", cli=("--helix",), cli_kind="true"),
    Param("helical_tube_inner_diameter", "Tube diameter - inner (A):", "Helix", "float", -1.0,
          "Inner diameter (Å) of the helical tube; negative: a solid tube.",
          flag="--helical_inner_diameter", maps="--helical_inner_diameter D if D > 0",
          active_if=("do_helix", True), cli=("--helical_inner_diameter",)),
    Param("helical_tube_outer_diameter", "Tube diameter - outer (A):", "Helix", "float", -1.0,
          "Outer diameter (Å) of the helical tube.",
          flag="--helical_outer_diameter", maps="--helical_outer_diameter D",
          active_if=("do_helix", True), cli=("--helical_outer_diameter",)),
    Param("range_rot", "Angular search range - rot (deg):", "Helix", "float", -1.0,
          "Local search range of the rot angle (deg); the prior width is a third of it.",
          flag="--sigma_rot", maps="--sigma_rot max(R,0)/3 (if sampling != local sampling)",
          active_if=("do_helix", True), cli=("--sigma_rot",), cli_kind="third",
          cli_help="Width (deg) of the prior on the rot angle: a third of the form's search range; "
                   "negative: no prior."),
    Param("range_tilt", "Angular search range - tilt (deg):", "Helix", "float", 15.0,
          "Local search range of the tilt angle (deg); the prior width is a third of it.",
          flag="--sigma_tilt", maps="--sigma_tilt clip(R,0,90)/3 (if sampling != local sampling)",
          active_if=("do_helix", True)),
    Param("range_psi", "Angular search range - psi (deg):", "Helix", "float", 10.0,
          "Local search range of the psi angle (deg); the prior width is a third of it.",
          flag="--sigma_psi", maps="--sigma_psi clip(R,0,90)/3 (if sampling != local sampling)",
          active_if=("do_helix", True), cli=("--sigma_psi",), cli_kind="third",
          cli_help="Width (deg) of the prior on the psi angle: a third of the form's search range."),
    Param("do_apply_helical_symmetry", "Apply helical symmetry?", "Helix", "bool", True,
          "Impose the helical twist and rise on the references.",
          flag="--ignore_helical_symmetry", maps="No => --ignore_helical_symmetry",
          active_if=("do_helix", True), cli=("--ignore_helical_symmetry",), cli_kind="false",
          cli_help="Do not impose the helical twist and rise on the references."),
    Param("helical_nr_asu", "Number of unique asymmetrical units:", "Helix", "int", 1,
          "Asymmetric units per helical segment box.",
          flag="--helical_nr_asu", maps="--helical_nr_asu N (with helical symmetry)",
          min=1, max=100, step=1, active_if=("do_helix", True), cli=("--helical_nr_asu",)),
    Param("helical_twist_initial", "Initial helical twist (deg):", "Helix", "float", 0.0,
          "Starting helical twist (deg).",
          flag="--helical_twist_initial", maps="--helical_twist_initial T (with helical symmetry)",
          active_if=("do_helix", True), cli=("--helical_twist_initial",)),
    Param("helical_rise_initial", "Initial helical rise (A):", "Helix", "float", 0.0,
          "Starting helical rise (Å).",
          flag="--helical_rise_initial", maps="--helical_rise_initial R (with helical symmetry)",
          active_if=("do_helix", True), cli=("--helical_rise_initial",)),
    Param("helical_z_percentage", "Central Z length (%):", "Helix", "float", 30.0,
          "Central part of the box (percent of its length) used to impose helical symmetry.",
          flag="--helical_z_percentage", maps="--helical_z_percentage P/100 (with helical symmetry)",
          min=5, max=80, step=1, active_if=("do_helix", True), cli=("--helical_z_percentage",),
          cli_kind="percent",
          cli_help="Central part of the box used to impose helical symmetry, as a fraction of its "
                   "length (the form gives it in percent)."),
    Param("do_local_search_helical_symmetry", "Do local searches of symmetry?", "Helix", "bool", False,
          "Refine twist and rise within the ranges below.",
          flag="--helical_symmetry_search", maps="Yes => --helical_symmetry_search and the ranges",
          active_if=("do_helix", True), cli=("--helical_symmetry_search",), cli_kind="true",
          cli_help="Refine twist and rise within --helical_twist_min/max and --helical_rise_min/max."),
    Param("helical_twist_min", "Helical twist search (deg) - Min:", "Helix", "float", 0.0,
          "Smallest twist searched (deg).", flag="--helical_twist_min", maps="--helical_twist_min T",
          active_if=("do_local_search_helical_symmetry", True), cli=("--helical_twist_min",)),
    Param("helical_twist_max", "Helical twist search (deg) - Max:", "Helix", "float", 0.0,
          "Largest twist searched (deg).", flag="--helical_twist_max", maps="--helical_twist_max T",
          active_if=("do_local_search_helical_symmetry", True), cli=("--helical_twist_max",)),
    Param("helical_twist_inistep", "Helical twist search (deg) - Step:", "Helix", "float", 0.0,
          "Initial twist step (deg); 0: automatic.", flag="--helical_twist_inistep",
          maps="--helical_twist_inistep S if S > 0",
          active_if=("do_local_search_helical_symmetry", True), cli=("--helical_twist_inistep",)),
    Param("helical_rise_min", "Helical rise search (A) - Min:", "Helix", "float", 0.0,
          "Smallest rise searched (Å).", flag="--helical_rise_min", maps="--helical_rise_min R",
          active_if=("do_local_search_helical_symmetry", True), cli=("--helical_rise_min",)),
    Param("helical_rise_max", "Helical rise search (A) - Max:", "Helix", "float", 0.0,
          "Largest rise searched (Å).", flag="--helical_rise_max", maps="--helical_rise_max R",
          active_if=("do_local_search_helical_symmetry", True), cli=("--helical_rise_max",)),
    Param("helical_rise_inistep", "Helical rise search (A) - Step:", "Helix", "float", 0.0,
          "Initial rise step (Å); 0: automatic.", flag="--helical_rise_inistep",
          maps="--helical_rise_inistep S if S > 0",
          active_if=("do_local_search_helical_symmetry", True), cli=("--helical_rise_inistep",)),
    Param("helical_range_distance", "Range factor of local averaging:", "Helix", "float", -1.0,
          "Prior width on the position along the helix (fraction of the rise, times 3); negative: none.",
          flag="--helical_sigma_distance", maps="--helical_sigma_distance F/3 if F > 0",
          min=-1, max=5, step=0.1, strict_range=False, active_if=("do_helix", True),
          cli=("--helical_sigma_distance",), cli_kind="third",
          cli_help="Width of the prior on the position along the helix (a fraction of the rise): a "
                   "third of the form's range factor; negative: no prior."),
    Param("keep_tilt_prior_fixed", "Keep tilt-prior fixed:", "Helix", "bool", True,
          "Keep the tilt prior of helical segments at its initial value.",
          flag="--helical_keep_tilt_prior_fixed", maps="Yes => --helical_keep_tilt_prior_fixed",
          active_if=("do_helix", True), cli=("--helical_keep_tilt_prior_fixed",), cli_kind="true"),
    *_compute(pad1=True),
    *_running(mpi=True, threads=True, scheduler=True,
              threads_cli_help="Number of dask worker processes: more than 1 starts a local dask cluster of "
                       "that many workers for the job; 1 runs it in this process. Not used with "
                       "--scheduler_file or --scheduler_address (the cluster's workers do the work).",),
)

REFINE3D = JobType(
    name="refine3d",
    title="3D auto-refine",
    process="Refine3D",
    type_label="relion.refine3d.tomo",
    is_tomo=True,
    params=_REFINE_PARAMS,
    tabs=("I/O", "Reference", "CTF", "Optimisation", "Auto-sampling", "Helix", "Compute", "Running"),
    run="subtomo_nb.jobs.runners.run_refine",
    cli_name="refine",
    program="relion_refine",
    fixed_flags=(("--auto_refine", 0), ("--split_random_halves", 0), ("--flatten_solvent", 0),
                 ("--oversampling", 1), ("--low_resol_join_halves", 1), ("--norm", 0), ("--scale", 0),
                 ("--auto_resol_angles", 0), ("--pipeline_control", 1)),
    outputs=("run_data.star", "run_optimiser.star", "run_half1_class001_unfil.mrc", "run_class001.mrc",
             "run_optimisation_set.star"),
    description="Gold-standard 3D refinement with automatic angular sampling (relion_refine --auto_refine).",
)


# ----------------------------------------------------------------------------------------------
# 3D initial reference (§10.2)
# ----------------------------------------------------------------------------------------------

_INIMODEL_PARAMS = (
    *_tomo_inputs(particles=True, tomograms=True, trajectories=True, mode="refine"),
    Param("fn_cont", "Continue from here: ", "I/O", "file", "",
          "An iteration's _optimiser.star to continue a stopped run from (continue mode only).",
          flag="--continue", maps="--continue FILE (continue mode)", pattern="*_optimiser.star",
          cli=("--continue",)),
    *_ctf(),
    Param("nr_iter", "Number of VDAM mini-batches:", "Optimisation", "int", 200,
          "Number of gradient (VDAM) iterations, each on a mini-batch of particles.",
          flag="--iter", maps="--iter N", min=50, max=500, step=10, strict_range=False, cli=("--iter",)),
    Param("tau_fudge", "Regularisation parameter T:", "Optimisation", "float", 4.0,
          "Weight of the data against the smoothness prior; above 1 trusts the data more "
          "(2-4 works well for initial models).",
          flag="--tau2_fudge", maps="--tau2_fudge T", min=0.1, max=10, step=0.1, cli=("--tau2_fudge",)),
    Param("nr_classes", "Number of classes:", "Optimisation", "int", 1,
          "Number of references grown in parallel from the same start.",
          flag="--K", maps="--K N", min=1, max=50, step=1, cli=("--K",)),
    Param("particle_diameter", "Mask diameter (A):", "Optimisation", "float", 200.0,
          "Diameter (Å) of the soft spherical mask around particles and references. Must fit in the box.",
          flag="--particle_diameter", maps="--particle_diameter D", min=0, max=1000, step=10,
          strict_range=False, cli=("--particle_diameter",)),
    Param("do_solvent", "Flatten and enforce non-negative solvent?", "Optimisation", "bool", True,
          "Flatten the reference outside the spherical mask.",
          flag="--flatten_solvent", maps="Yes => --flatten_solvent", cli=("--flatten_solvent",), cli_kind="true"),
    Param("sym_name", "Symmetry:", "Optimisation", "str", "C1",
          "Point group of the particle; applied during the run or, with the option below, "
          "afterwards by aligning the map to the symmetry axes.",
          flag="--sym", maps="relion_refine --sym G if not run in C1; relion_align_symmetry --sym G",
          cli=("--sym",),
          cli_help="Symmetry: point group of the particle; imposed afterwards by aligning the map to its "
                   "symmetry axes (--run_C1, the default), or from the start with --no_run_C1."),
    Param("do_run_C1", "Run in C1 and apply symmetry later? ", "Optimisation", "bool", True,
          "Grow the model without symmetry, then find its symmetry axes and impose the point "
          "group (more robust than imposing it from the start).",
          flag="--sym", maps="Yes => relion_refine --sym C1, then relion_align_symmetry --sym G --apply_sym",
          cli=("--run_C1",), cli_kind="true", cli_off=("--no_run_C1",),
          cli_off_help="Impose the point group (--sym) from the start (relion_refine --sym G) instead of "
                       "growing the model in C1 and applying the symmetry afterwards."),
    _sigma_tilt("Optimisation"),
    _fast("Optimisation"),
    *_compute(pad1=False),
    *_running(mpi=True, threads=True, scheduler=True,
              threads_cli_help="Number of dask worker processes: more than 1 starts a local dask cluster of "
                       "that many workers for the job; 1 runs it in this process. Not used with "
                       "--scheduler_file or --scheduler_address (the cluster's workers do the work).",),
)

INITIAL_MODEL = JobType(
    name="initial_model",
    title="3D initial reference",
    process="InitialModel",
    type_label="relion.initialmodel.tomo",
    is_tomo=True,
    params=_INIMODEL_PARAMS,
    tabs=("I/O", "CTF", "Optimisation", "Compute", "Running"),
    run="subtomo_nb.jobs.initial_model.run_initial_model_job",
    cli_name="initial-model",
    program="relion_refine",
    fixed_flags=(("--grad", 0), ("--denovo_3dref", 0), ("--zero_mask", 0), ("--pad", 1), ("--oversampling", 1),
                 ("--healpix_order", 1), ("--offset_range", 1), ("--offset_step", 1), ("--auto_sampling", 0),
                 ("--pipeline_control", 1)),
    outputs=("initial_model.mrc", "run_optimisation_set.star"),
    description="De-novo initial reference by gradient refinement (VDAM), then symmetry alignment.",
)


# ----------------------------------------------------------------------------------------------
# Extract subtomos / Reconstruct particle (§10.3)
# ----------------------------------------------------------------------------------------------

_EXTRACT_PARAMS = (
    *_tomo_inputs(particles=True, tomograms=True, trajectories=True, mode="extract"),
    Param("binning", "Binning factor:", "Reconstruct", "float", 1.0,
          "Downsampling of the tilt series before extraction (pixel size x binning).",
          flag="--bin", maps="--bin B", min=1, max=16, step=1, strict_range=False, cli=("--bin",)),
    Param("box_size", "Box size (pix):", "Reconstruct", "int", 128,
          "Box size in binned pixels used to cut out each particle (larger than the particle, "
          "to keep the delocalised CTF signal).",
          flag="--b", maps="--b N", min=32, max=512, step=16, strict_range=False, cli=("--b",)),
    Param("crop_size", "Cropped box size (pix):", "Reconstruct", "int", -1,
          "Box written to disc after CTF pre-multiplication (binned pixels); -1: same as the box size.",
          flag="--crop", maps="--crop N if N > 0", min=-1, max=512, step=16, strict_range=False, cli=("--crop",)),
    Param("max_dose", "Maximum dose (e/A^2):", "Reconstruct", "float", -1.0,
          "Leave out tilt images with more accumulated dose than this; negative: use all.",
          flag="--max_dose", maps="--max_dose D if D > 0", min=-1, max=100, step=1, strict_range=False,
          cli=("--max_dose",)),
    Param("min_frames", "Minimum nr. frames:", "Reconstruct", "int", 1,
          "Drop particles visible in fewer tilt images than this.",
          flag="--min_frames", maps="--min_frames N", min=1, max=50, step=1, strict_range=False,
          cli=("--min_frames",)),
    Param("do_stack2d", "Write output as 2D stacks?", "Reconstruct", "bool", True,
          "Write each particle as a stack of 2D tilt images (RELION 5's default); No: as a 3D "
          "pseudo-subtomogram (data + weights).",
          flag="--stack2d", maps="Yes => --stack2d", cli=("--stack2d",), cli_kind="true",
          cli_off=("--no_stack2d",),
          cli_help="Write each particle as a stack of 2D tilt images (RELION 5's default).",
          cli_off_help="Write each particle as a 3D pseudo-subtomogram (data + weights) instead of a 2D stack."),
    Param("do_float16", "Write output in float16?", "Reconstruct", "bool", True,
          "Store the images in half precision (half the disc space).",
          flag="--float16", maps="Yes => --float16", cli=("--float16",), cli_kind="true",
          cli_off=("--float32",), cli_off_help="Store the images in single precision (float32)."),
    *_running(mpi=True, threads=True,
              threads_cli_help="Number of threads that extract the particles in parallel, in this process "
                               "(1: one at a time)."),
)

EXTRACT = JobType(
    name="extract",
    title="Extract subtomos",
    process="Extract",
    type_label="relion.pseudosubtomo",
    is_tomo=True,
    params=_EXTRACT_PARAMS,
    tabs=("I/O", "Reconstruct", "Running"),
    run="subtomo_nb.jobs.runners.run_extract",
    cli_name="extract",
    program="relion_tomo_subtomo",
    fixed_flags=(("--theme", 1),),
    outputs=("particles.star", "optimisation_set.star"),
    description="Cut CTF-premultiplied particle images out of the tilt series (2D stacks or 3D pseudo-subtomograms).",
)

_RECONSTRUCT_PARAMS = (
    *_tomo_inputs(particles=True, tomograms=True, trajectories=True, mode="reconstruct"),
    Param("binning", "Binning factor:", "Average", "float", 1.0,
          "Downsampling of the tilt series for the average (RELION's relion_tomo_reconstruct_particle; "
          "here the particles are averaged at their own extraction binning).",
          flag="--bin", maps="--bin B", min=1, max=16, step=1, strict_range=False, cli=("--bin",)),
    Param("box_size", "Box size (pix):", "Average", "int", 128,
          "Box size of the average (binned pixels).",
          flag="--b", maps="--b N", min=32, max=512, step=16, strict_range=False, cli=("--b",)),
    Param("crop_size", "Cropped box size (pix):", "Average", "int", -1,
          "Crop the average to this box; -1: no cropping.",
          flag="--crop", maps="--crop N if N > 0", min=-1, max=512, step=16, strict_range=False, cli=("--crop",)),
    Param("snr", "Wiener SNR constant:", "Average", "float", 0.0,
          "Assumed signal-to-noise ratio of a Wiener filter; 0: plain division by the weights.",
          flag="--SNR", maps="--SNR S if S > 0", min=0, max=0.0001, step=0.00001, strict_range=False,
          cli=("--SNR",)),
    Param("sym_name", "Symmetry:", "Average", "str", "C1",
          "Point group imposed on the average.",
          flag="--sym", maps="--sym G", cli=("--sym",)),
    Param("do_helix", "Apply helical symmetry?", "Helix", "bool", False,
          "Impose helical symmetry on the average.",
          flag="relion_helix_toolbox --impose", maps="Yes => relion_helix_toolbox --impose afterwards"),
    Param("helical_nr_asu", "Number of unique asymmetrical units:", "Helix", "int", 1,
          "Asymmetric units per box.", flag="--nr_asu", maps="relion_helix_toolbox --nr_asu N",
          min=1, max=100, step=1, active_if=("do_helix", True)),
    Param("helical_twist", "Helical twist (deg):", "Helix", "float", -1.0,
          "Helical twist (deg).", flag="--twist", maps="relion_helix_toolbox --twist T",
          active_if=("do_helix", True)),
    Param("helical_rise", "Helical rise (A):", "Helix", "float", 4.75,
          "Helical rise (Å).", flag="--rise", maps="relion_helix_toolbox --rise R",
          active_if=("do_helix", True)),
    Param("helical_tube_outer_diameter", "Tube diameter (A):", "Helix", "float", 200.0,
          "Outer diameter of the helical tube (Å).", flag="--cyl_outer_diameter",
          maps="relion_helix_toolbox --cyl_outer_diameter D", active_if=("do_helix", True)),
    Param("helical_z_percentage", "Central Z length (%):", "Helix", "float", 20.0,
          "Central part of the box used to impose helical symmetry (percent).",
          flag="--z_percentage", maps="relion_helix_toolbox --z_percentage P/100",
          min=5, max=80, step=1, active_if=("do_helix", True)),
    Param("do_ctf", "Do CTF-correction?", "Average", "bool", True,
          "Divide by the sum of squared CTFs (the particles are CTF-premultiplied). Not on "
          "RELION's form (relion_tomo_reconstruct_particle always corrects).",
          flag="--ctf", maps="Yes => --ctf (subtomo only)", relion=False, cli=("--ctf",), cli_kind="true"),
    Param("pad", "Padding factor:", "Average", "int", 2,
          "Oversampling of the Fourier grid. Not on RELION's form.",
          flag="--pad", maps="--pad N (subtomo only)", min=1, max=3, step=1, relion=False, cli=("--pad",)),
    *_gpu("Running", relion=False),
    *_running(mpi=True, threads=True, scheduler=True,
              threads_cli_help="Number of threads that back-project the particles in parallel, in this "
                               "process (dask's threaded scheduler; 1: one at a time). Not used with "
                               "--scheduler_file or --scheduler_address (the cluster's workers do the work)."),
)

RECONSTRUCT = JobType(
    name="reconstruct",
    title="Reconstruct particle",
    process="Reconstruct",
    type_label="relion.reconstructparticletomo",
    is_tomo=True,
    params=_RECONSTRUCT_PARAMS,
    tabs=("I/O", "Average", "Helix", "Running"),
    run="subtomo_nb.jobs.runners.run_reconstruct",
    cli_name="reconstruct",
    program="relion_tomo_reconstruct_particle",
    fixed_flags=(("--j_out", 1), ("--j_in", 1)),
    outputs=("merged.mrc", "merged_half1.mrc", "merged_half2.mrc"),
    description="Average the particles with their current orientations (half-sets, symmetry, FSC).",
)


# ----------------------------------------------------------------------------------------------
# Re-centre (relion_star_handler --center, §3) and align symmetry (relion_align_symmetry, §7.3)
# ----------------------------------------------------------------------------------------------

_RECENTRE_PARAMS = (
    Param("fn_in", "Input particles:", "I/O", "file", "",
          "Particle STAR file to re-centre (never modified; the result is written to the job).",
          flag="--i", maps="--i FILE", pattern="*.star", cli=("--i",)),
    Param("center_x", "Center coordinate (pix) - X:", "Re-centre", "float", 0.0,
          "X of the new particle centre: a point of the reference map, in its pixels from the box centre.",
          flag="--center_X", maps="--center --center_X X", cli=("--center_X",)),
    Param("center_y", "Center coordinate (pix) - Y:", "Re-centre", "float", 0.0,
          "Y of the new particle centre (pixels of the reference map).",
          flag="--center_Y", maps="--center_Y Y", cli=("--center_Y",)),
    Param("center_z", "Center coordinate (pix) - Z:", "Re-centre", "float", 0.0,
          "Z of the new particle centre (pixels of the reference map).",
          flag="--center_Z", maps="--center_Z Z", cli=("--center_Z",)),
    Param("do_ignore_optics", "Ignore optics groups?", "Re-centre", "bool", False,
          "Use the pixel size below instead of the particles' optics table.",
          flag="--ignore_optics", maps="Yes => --ignore_optics --angpix A",
          cli=("--ignore_optics",), cli_kind="true",
          cli_help="Use --angpix as the pixel size instead of the particles' optics table."),
    Param("angpix", "Pixel size (A):", "Re-centre", "float", 1.0,
          "Pixel size (Å) of the reference map, used with 'Ignore optics groups'.",
          flag="--angpix", maps="--angpix A (with --ignore_optics)", min=0.1, max=20, step=0.1,
          strict_range=False, active_if=("do_ignore_optics", True), cli=("--angpix",),
          cli_help="Pixel size (Å) of the reference map."),
    *_running(mpi=False, threads=False),
)

RECENTRE = JobType(
    name="recentre",
    title="Re-centre particles",
    process="Select",
    type_label="relion.select.recentre",
    is_tomo=True,
    params=_RECENTRE_PARAMS,
    tabs=("I/O", "Re-centre", "Running"),
    run="subtomo_nb.jobs.runners.run_recentre",
    cli_name="star-handler",
    program="relion_star_handler",
    fixed_flags=(("--center", 0),),
    outputs=("particles.star",),
    description="Move each particle's origin onto a chosen point of the reference (relion_star_handler --center).",
    subtomo_flags=("--center",),
)

_ALIGN_SYMMETRY_PARAMS = (
    Param("fn_in", "Input map or model.star:", "I/O", "file", "",
          "Map to align, or a _model.star whose class map is taken.",
          flag="--i", maps="--i FILE", pattern="*.{mrc,star}", cli=("--i",)),
    Param("sym_name", "Symmetry:", "Symmetry", "str", "C1",
          "Point group whose axes the map is rotated onto.",
          flag="--sym", maps="--sym G", cli=("--sym",)),
    Param("do_select_largest_class", "Select largest class?", "Symmetry", "bool", True,
          "From a model.star, take the class with the largest population.",
          flag="--select_largest_class", maps="Yes => --select_largest_class",
          cli=("--select_largest_class",), cli_kind="true"),
    Param("do_select_highest_resol", "Select highest-resolution class?", "Symmetry", "bool", False,
          "From a model.star, take the class with the best estimated resolution.",
          flag="--select_highest_resol", maps="Yes => --select_highest_resol",
          cli=("--select_highest_resol",), cli_kind="true"),
    Param("do_apply_sym", "Apply symmetry?", "Symmetry", "bool", True,
          "Impose the point group on the aligned map.",
          flag="--apply_sym", maps="Yes => --apply_sym", cli=("--apply_sym",), cli_kind="true"),
    Param("do_keep_centre", "Keep centre?", "Symmetry", "bool", False,
          "Do not move the centre of mass to the box centre first.",
          flag="--keep_centre", maps="Yes => --keep_centre", cli=("--keep_centre",), cli_kind="true"),
    Param("do_only_rot", "Search rot only?", "Symmetry", "bool", False,
          "Only search the rotation about Z (the symmetry axis is already along Z).",
          flag="--only_rot", maps="Yes => --only_rot", cli=("--only_rot",), cli_kind="true"),
    Param("box_size", "Working box size (pix):", "Search", "int", 64,
          "Box the map is Fourier-cropped to for the search (even).",
          flag="--box_size", maps="--box_size N", min=16, max=256, step=2, strict_range=False,
          cli=("--box_size",)),
    Param("angpix", "Pixel size (A):", "Search", "float", -1.0,
          "Pixel size (Å) of the input map; negative: from its header.",
          flag="--angpix", maps="--angpix A if A > 0", cli=("--angpix",)),
    Param("nr_uniform", "Number of random orientations:", "Search", "int", 400,
          "Orientations tried in the global search.",
          flag="--nr_uniform", maps="--nr_uniform N", min=10, max=10000, step=10, strict_range=False,
          cli=("--nr_uniform",)),
    Param("maxres", "Resolution limit (A):", "Search", "float", -1.0,
          "Highest resolution (Å) used in the search; negative: Nyquist of the working box.",
          flag="--maxres", maps="--maxres A if A > 0", cli=("--maxres",)),
    Param("local_search_range", "Local search range (deg):", "Search", "float", 2.0,
          "Half-range of the local search around the best global orientation.",
          flag="--local_search_range", maps="--local_search_range R", min=0, max=30, step=1,
          strict_range=False, cli=("--local_search_range",)),
    Param("local_search_step", "Local search step (deg):", "Search", "float", 2.0,
          "Step of the local search.",
          flag="--local_search_step", maps="--local_search_step S", min=0.1, max=10, step=0.1,
          strict_range=False, cli=("--local_search_step",)),
    Param("pad", "Padding factor:", "Search", "int", 2,
          "Oversampling of the map's transform when rotating it.",
          flag="--pad", maps="--pad N", min=1, max=3, step=1, cli=("--pad",)),
    Param("do_nn", "Nearest-neighbour interpolation?", "Search", "bool", False,
          "Rotate with nearest-neighbour instead of linear interpolation.",
          flag="--NN", maps="Yes => --NN", cli=("--NN",), cli_kind="true"),
    *_running(mpi=False, threads=False),
)

ALIGN_SYMMETRY = JobType(
    name="align_symmetry",
    title="Align symmetry",
    process="External",
    type_label="relion.external.alignsymmetry",
    is_tomo=True,
    params=_ALIGN_SYMMETRY_PARAMS,
    tabs=("I/O", "Symmetry", "Search", "Running"),
    run="subtomo_nb.jobs.align_symmetry.run_align_symmetry_job",
    cli_name="align-symmetry",
    program="relion_align_symmetry",
    outputs=("aligned.mrc",),
    description="Rotate a map onto the symmetry axes of a point group (relion_align_symmetry).",
)


#: All job types by registry name, in pipeline order.
REGISTRY: dict[str, JobType] = {
    jt.name: jt for jt in (EXTRACT, INITIAL_MODEL, REFINE3D, RECONSTRUCT, RECENTRE, ALIGN_SYMMETRY)
}


def get_job_type(name: str | JobType) -> JobType:
    """A job type by registry name, CLI name, RELION title or process name.

    Parameters
    ----------
    name : str or JobType
        ``"refine3d"``, ``"refine"``, ``"3D auto-refine"`` or ``"Refine3D"`` (case-insensitive),
        or a :class:`JobType` (returned as is).

    Returns
    -------
    JobType

    Raises
    ------
    KeyError
        For an unknown name (the message lists the known ones).
    """
    if isinstance(name, JobType):
        return name
    key = str(name).strip().lower()
    for jt in REGISTRY.values():
        if key in (jt.name.lower(), jt.cli_name.lower(), jt.title.lower(), jt.process.lower()):
            return jt
    raise KeyError(f"unknown job type {name!r}; known: {', '.join(REGISTRY)}")


def job_type_for_process(process: str) -> JobType:
    """The job type that writes into process directory ``process`` (e.g. ``"Refine3D"``)."""
    for jt in REGISTRY.values():
        if jt.process == process:
            return jt
    raise KeyError(f"no job type writes into {process!r}/")


def job_type_for_label(label: str) -> JobType:
    """The job type of an ``rlnJobTypeLabel`` (exact, else its parent labels, as RELION)."""
    candidate = str(label).strip()
    while candidate:
        for jt in REGISTRY.values():
            if jt.type_label == candidate:
                return jt
        if "." not in candidate:
            break
        candidate = candidate.rsplit(".", 1)[0]
    raise KeyError(f"no job type has rlnJobTypeLabel {label!r}")
