"""The job registry against RELION's job forms (relion-conventions.md §10.1, §10.2, §10.3).

The expected (key, label, default) triples below are copied from the conventions document's
tables. Labels are compared without surrounding white space: RELION's own strings carry
trailing spaces for some fields ("Input optimisation set: "), which the registry keeps.
"""

from __future__ import annotations

import importlib
import sys

import pytest

from subtomo_nb.jobs import REGISTRY, SAMPLING_CHOICES, get_job_type
from subtomo_nb.jobs.params import from_relion_string, to_relion_string
from subtomo_nb.jobs.registry import job_type_for_label, job_type_for_process

# §10.1 "3D auto-refine" (tomo): (key, label, default) per tab. Defaults as the GUI shows them.
AUTOREFINE = {
    "I/O": [
        ("in_optimisation", "Input optimisation set:", ""),
        ("use_direct_entries", "OR: use direct entries?", "No"),
        ("in_particles", "Input particle set:", ""),
        ("in_tomograms", "Input tomogram set:", ""),
        ("in_trajectories", "Input trajectory set:", ""),
        ("fn_ref", "Reference map:", ""),
        ("fn_mask", "Reference mask (optional):", ""),
        ("fn_cont", "Continue from here:", ""),
    ],
    "Reference": [
        ("ref_correct_greyscale", "Ref. map is on absolute greyscale?", "No"),
        ("trust_ref_size", "Resize reference if needed?", "Yes"),
        ("ini_high", "Initial low-pass filter (A):", "60"),
        ("sym_name", "Symmetry:", "C1"),
    ],
    "CTF": [
        ("do_ctf_correction", "Do CTF-correction?", "Yes"),
        ("ctf_intact_first_peak", "Ignore CTFs until first peak?", "No"),
    ],
    "Optimisation": [
        ("particle_diameter", "Mask diameter (A):", "200"),
        ("do_zero_mask", "Mask individual particles with zeros?", "Yes"),
        ("do_solvent_fsc", "Use solvent-flattened FSCs?", "No"),
        ("do_blush", "Use Blush regularisation?", "No"),
    ],
    "Auto-sampling": [
        ("sampling", "Initial angular sampling:", "7.5 degrees"),
        ("offset_range", "Initial offset range (pix):", "5"),
        ("offset_step", "Initial offset step (pix):", "1"),
        ("auto_local_sampling", "Local searches from auto-sampling:", "1.8 degrees"),
        ("relax_sym", "Relax symmetry:", ""),
        ("auto_faster", "Use finer angular sampling faster?", "No"),
        ("sigma_tilt", "Prior width on tilt angle (deg):", "-1"),
    ],
    "Compute": [
        ("do_parallel_discio", "Use parallel disc I/O?", "Yes"),
        ("nr_pool", "Number of pooled particles:", "3"),
        ("do_pad1", "Skip padding?", "No"),
        ("do_preread_images", "Pre-read all particles into RAM?", "No"),
        ("scratch_dir", "Copy particles to scratch directory:", ""),
        ("do_combine_thru_disc", "Combine iterations through disc?", "No"),
        ("use_gpu", "Use GPU acceleration?", "No"),
        ("gpu_ids", "Which GPUs to use:", ""),
    ],
    "Running": [
        ("nr_mpi", "Number of MPI procs:", "1"),
        ("nr_threads", "Number of threads:", "1"),
        ("do_queue", "Submit to queue?", "No"),
        ("queuename", "Queue name:", "openmpi"),
        ("qsub", "Queue submit command:", "sbatch"),
        ("min_dedicated", "Minimum dedicated cores per node:", "1"),
        ("other_args", "Additional arguments:", ""),
    ],
}

# §10.1 Tab Helix: (key, default) (the table gives no labels).
AUTOREFINE_HELIX = [
    ("do_helix", "No"),
    ("helical_tube_inner_diameter", "-1"),
    ("helical_tube_outer_diameter", "-1"),
    ("range_rot", "-1"),
    ("range_tilt", "15"),
    ("range_psi", "10"),
    ("helical_range_distance", "-1"),
    ("keep_tilt_prior_fixed", "Yes"),
    ("do_apply_helical_symmetry", "Yes"),
    ("helical_nr_asu", "1"),
    ("helical_twist_initial", "0"),
    ("helical_rise_initial", "0"),
    ("helical_z_percentage", "30"),
    ("do_local_search_helical_symmetry", "No"),
    ("helical_twist_min", "0"),
    ("helical_twist_max", "0"),
    ("helical_twist_inistep", "0"),
    ("helical_rise_min", "0"),
    ("helical_rise_max", "0"),
    ("helical_rise_inistep", "0"),
]

# §10.2 "3D initial reference" (tomo).
INIMODEL = {
    "I/O": [
        ("in_optimisation", "Input optimisation set:", ""),
        ("use_direct_entries", "OR: use direct entries?", "No"),
        ("in_particles", "Input particle set:", ""),
        ("in_tomograms", "Input tomogram set:", ""),
        ("in_trajectories", "Input trajectory set:", ""),
        ("fn_cont", "Continue from here:", ""),
    ],
    "CTF": [
        ("do_ctf_correction", "Do CTF-correction?", "Yes"),
        ("ctf_intact_first_peak", "Ignore CTFs until first peak?", "No"),
    ],
    "Optimisation": [
        ("nr_iter", "Number of VDAM mini-batches:", "200"),
        ("tau_fudge", "Regularisation parameter T:", "4"),
        ("nr_classes", "Number of classes:", "1"),
        ("particle_diameter", "Mask diameter (A):", "200"),
        ("do_solvent", "Flatten and enforce non-negative solvent?", "Yes"),
        ("sym_name", "Symmetry:", "C1"),
        ("do_run_C1", "Run in C1 and apply symmetry later?", "Yes"),
        ("sigma_tilt", "Prior width on tilt angle (deg):", "-1"),
    ],
    "Compute": [
        ("do_parallel_discio", "Use parallel disc I/O?", "Yes"),
        ("nr_pool", "Number of pooled particles:", "3"),
        ("do_preread_images", "Pre-read all particles into RAM?", "No"),
        ("scratch_dir", "Copy particles to scratch directory:", ""),
        ("do_combine_thru_disc", "Combine iterations through disc?", "No"),
        ("use_gpu", "Use GPU acceleration?", "No"),
        ("gpu_ids", "Which GPUs to use:", ""),
    ],
    "Running": [
        ("nr_mpi", "Number of MPI procs:", "1"),
        ("nr_threads", "Number of threads:", "1"),
        ("do_queue", "Submit to queue?", "No"),
        ("queuename", "Queue name:", "openmpi"),
        ("qsub", "Queue submit command:", "sbatch"),
        ("min_dedicated", "Minimum dedicated cores per node:", "1"),
        ("other_args", "Additional arguments:", ""),
    ],
}

# §10.1/§10.2 slider ranges (key: (default, min, max, step)).
AUTOREFINE_RANGES = {
    "ini_high": (60, 0, 200, 5),
    "particle_diameter": (200, 0, 1000, 10),
    "offset_range": (5, 0, 30, 1),
    "offset_step": (1, 0.1, 5, 0.1),
    "sigma_tilt": (-1, -1, 30, 1),
    "nr_pool": (3, 1, 16, 1),
}
INIMODEL_RANGES = {
    "nr_iter": (200, 50, 500, 10),
    "tau_fudge": (4, 0.1, 10, 0.1),
    "nr_classes": (1, 1, 50, 1),
    "particle_diameter": (200, 0, 1000, 10),
    "sigma_tilt": (-1, -1, 30, 1),
}

# §10.3: (key, default) of the related forms.
EXTRACT = [("binning", "1"), ("box_size", "128"), ("crop_size", "-1"), ("max_dose", "-1"), ("min_frames", "1"),
           ("do_stack2d", "Yes"), ("do_float16", "Yes")]
RECONSTRUCT = [("binning", "1"), ("box_size", "128"), ("crop_size", "-1"), ("snr", "0"), ("sym_name", "C1"),
               ("do_helix", "No"), ("helical_nr_asu", "1"), ("helical_twist", "-1"), ("helical_rise", "4.75"),
               ("helical_tube_outer_diameter", "200"), ("helical_z_percentage", "20")]

ENV = {}  # defaults without RELION's environment overrides


def _check(jt_name: str, tab: str, key: str, label: str | None, default: str) -> None:
    jt = get_job_type(jt_name)
    assert key in jt, f"{jt_name}: {key} missing"
    p = jt.param(key)
    if label is not None:
        assert p.label.strip() == label, f"{jt_name}.{key}: label {p.label!r} != {label!r}"
    assert p.tab == tab, f"{jt_name}.{key}: tab {p.tab!r} != {tab!r}"
    assert to_relion_string(p, p.default_value(ENV)) == default, f"{jt_name}.{key}: default"


@pytest.mark.parametrize("tab,key,label,default", [(t, *row) for t, rows in AUTOREFINE.items() for row in rows])
def test_autorefine_fields(tab, key, label, default):
    _check("refine3d", tab, key, label, default)


@pytest.mark.parametrize("key,default", AUTOREFINE_HELIX)
def test_autorefine_helix_fields(key, default):
    _check("refine3d", "Helix", key, None, default)


@pytest.mark.parametrize("tab,key,label,default", [(t, *row) for t, rows in INIMODEL.items() for row in rows])
def test_initial_model_fields(tab, key, label, default):
    _check("initial_model", tab, key, label, default)


@pytest.mark.parametrize("name,ranges", [("refine3d", AUTOREFINE_RANGES), ("initial_model", INIMODEL_RANGES)])
def test_slider_ranges(name, ranges):
    jt = get_job_type(name)
    for key, (default, lo, hi, step) in ranges.items():
        p = jt.param(key)
        assert (p.default, p.min, p.max, p.step) == (default, lo, hi, step), key


def test_tabs_in_relion_order():
    assert get_job_type("refine3d").tabs == ("I/O", "Reference", "CTF", "Optimisation", "Auto-sampling", "Helix",
                                            "Compute", "Running")
    assert get_job_type("initial_model").tabs == ("I/O", "CTF", "Optimisation", "Compute", "Running")
    assert "do_pad1" not in get_job_type("initial_model")  # always --pad 1


def test_sampling_choices_are_relions():
    assert SAMPLING_CHOICES == ("30 degrees", "15 degrees", "7.5 degrees", "3.7 degrees", "1.8 degrees",
                                "0.9 degrees", "0.5 degrees", "0.2 degrees", "0.1 degrees")
    for key in ("sampling", "auto_local_sampling"):
        assert get_job_type("refine3d").param(key).choices == SAMPLING_CHOICES


@pytest.mark.parametrize("name,rows", [("extract", EXTRACT), ("reconstruct", RECONSTRUCT)])
def test_related_forms_defaults(name, rows):
    jt = get_job_type(name)
    for key, default in rows:
        assert to_relion_string(jt.param(key), jt.param(key).default) == default, key


def test_process_names_and_labels():
    expected = {
        "extract": ("Extract", "relion.pseudosubtomo", "Extract subtomos"),
        "initial_model": ("InitialModel", "relion.initialmodel.tomo", "3D initial reference"),
        "refine3d": ("Refine3D", "relion.refine3d.tomo", "3D auto-refine"),
        "reconstruct": ("Reconstruct", "relion.reconstructparticletomo", "Reconstruct particle"),
        "recentre": ("Select", "relion.select.recentre", "Re-centre particles"),
        "align_symmetry": ("External", "relion.external.alignsymmetry", "Align symmetry"),
    }
    assert set(REGISTRY) == set(expected)
    for name, (process, label, title) in expected.items():
        jt = REGISTRY[name]
        assert (jt.process, jt.type_label, jt.title) == (process, label, title)
        assert job_type_for_process(process) is jt
        assert job_type_for_label(label) is jt
    assert get_job_type("3D auto-refine") is REGISTRY["refine3d"]
    assert get_job_type("star-handler") is REGISTRY["recentre"]
    with pytest.raises(KeyError, match="unknown job type"):
        get_job_type("class3d")


def test_every_field_is_documented_and_typed():
    for jt in REGISTRY.values():
        assert jt.run.count(".") >= 2, jt.run
        for p in jt.params:
            assert p.help and p.label.strip(), (jt.name, p.key)
            assert from_relion_string(p, to_relion_string(p, p.default)) == p.default, (jt.name, p.key)
            if p.active_if is not None:
                assert p.active_if[0] in jt, (jt.name, p.key)


def test_env_defaults_follow_relion(monkeypatch):
    jt = get_job_type("refine3d")
    assert jt.param("nr_threads").default_value({"RELION_QSUB_NRTHREADS": "8"}) == 8
    assert jt.param("scratch_dir").default_value({"RELION_SCRATCH_DIR": "/ssd"}) == "/ssd"
    assert jt.param("do_queue").default_value({"RELION_QUEUE_USE": "yes"}) is True


def test_registry_imports_nothing_heavy():
    code = ("import sys, subtomo_nb.jobs; "
            "heavy = [m for m in ('numpy', 'pandas', 'scipy', 'dask', 'starfile') if m in sys.modules]; "
            "print(','.join(heavy))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_run_functions_of_existing_tasks_resolve():
    from subtomo_nb.jobs.jobdir import resolve_run_function

    for name in ("recentre", "reconstruct"):
        assert callable(resolve_run_function(REGISTRY[name].run))
    module = importlib.import_module("subtomo_nb.jobs.runners")
    assert module.run_extract.__name__ == "run_extract"


def test_fast_search_field_is_ours_and_states_its_rules():
    """"Fast search" (``--fast``): not on RELION's form; a Yes/No field, No by default, whose help gives fast.py's
    rules."""
    from subtomo_nb.initial_model.fast import (
        FAST_INCR_SIZE,
        FAST_MAX_HEALPIX_ORDER,
        FAST_MAX_RESOLUTION_A,
    )

    jt = get_job_type("initial_model")
    p = jt.param("do_fast")
    assert (p.type, p.default, p.tab, p.relion, p.cli, p.cli_kind) == ("bool", False, "Optimisation", False,
                                                                        ("--fast",), "true")
    assert "not RELION" in p.label
    for text in (p.help, p.cli_help):
        assert "not a RELION option" in text or "Not RELION's" in text
        assert "frequency marching" in text and f"+ {FAST_INCR_SIZE})" in text
        assert f"{FAST_MAX_RESOLUTION_A:g} Å" in text
        assert f"HEALPix order at most {FAST_MAX_HEALPIX_ORDER}" in text
        assert "initial size" in text and "--grad_fin_subset" in text
    assert "do_fast" not in get_job_type("refine3d")
