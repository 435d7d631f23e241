"""Optimisation sets: first block whatever its name, list layout, resolution of entries."""

from __future__ import annotations

import pytest

from subtomo_nb.io.errors import InputError
from subtomo_nb.io.optimisation_set import (
    OptimisationSet,
    read_optimisation_set,
    resolve,
    write_optimisation_set,
)
from subtomo_nb.io.star import read_star


def test_reference_sets(pseudo_dir, reference_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    oset = read_optimisation_set(pseudo_dir / "optimisation_set.star")  # block "data_"
    assert oset.to_dict() == {"rlnTomoParticlesFile": "particles.star", "rlnTomoTomogramsFile": "tomograms.star"}
    assert oset.resolve("rlnTomoParticlesFile") == pseudo_dir.resolve() / "particles.star"
    assert resolve(oset, "rlnTomoTomogramsFile").is_file()
    assert oset.resolve("rlnTomoReferenceMap1File") is None

    refine = read_optimisation_set(reference_dir / "refine_outputs_c4" / "run_it001_optimisation_set.star")
    assert list(refine) == ["rlnTomoParticlesFile", "rlnTomoTomogramsFile", "rlnTomoTrajectoriesFile"]
    assert refine["rlnTomoTomogramsFile"] == "" and refine.tomograms_file is None
    assert refine.particles_file == "Refine3D/run_it001_data.star"
    assert refine.resolve("rlnTomoTrajectoriesFile") is None
    # RELION's project dir for that run: the file is found nowhere above, so the cwd is used
    assert refine.resolve("rlnTomoParticlesFile") == tmp_path.resolve() / "Refine3D/run_it001_data.star"
    assert refine.resolve("rlnTomoParticlesFile", project_dir=pseudo_dir) == pseudo_dir / "Refine3D/run_it001_data.star"


def test_write_read_keeps_all_labels_and_order(tmp_path):
    entries = {
        "rlnTomoParticlesFile": "Extract/job010/particles.star",
        "rlnTomoTomogramsFile": "Tomograms/job005/tomograms.star",
        "rlnTomoTrajectoriesFile": "",
        "rlnTomoReferenceMap1File": "Refine3D/job020/run_half1_class001_unfil.mrc",
        "rlnTomoReferenceMap2File": "Refine3D/job020/run_half2_class001_unfil.mrc",
        "rlnTomoReferenceMaskFile": "MaskCreate/job021/mask.mrc",
        "rlnTomoReferenceFscFile": "PostProcess/job022/postprocess.star",
        "rlnTomoManifoldsFile": "with space/manifolds.star",
        "rlnTomoImportParticleFile": "input/coords.star",  # any other label is kept
    }
    path = tmp_path / "optimisation_set.star"
    write_optimisation_set(path, OptimisationSet(entries))
    blocks = read_star(path)
    assert list(blocks) == ["optimisation_set"] and isinstance(blocks["optimisation_set"], dict)
    back = read_optimisation_set(path)
    assert back.to_dict() == entries and list(back) == list(entries)
    text = path.read_text()
    assert '_rlnTomoTrajectoriesFile' in text and '""' in text


def test_first_block_whatever_its_name(tmp_path):
    path = tmp_path / "o.star"
    path.write_text("data_something\n_rlnTomoParticlesFile a.star\n\ndata_other\n_rlnTomoParticlesFile b.star\n")
    assert read_optimisation_set(path)["rlnTomoParticlesFile"] == "a.star"


def test_unknown_label(tmp_path):
    path = tmp_path / "o.star"
    path.write_text("data_\n_rlnTomoParticlezFile a.star\n")
    with pytest.raises(InputError) as exc:
        read_optimisation_set(path)
    assert "o.star" in str(exc.value) and exc.value.field == "rlnTomoParticlezFile"


def test_table_with_several_rows_rejected(tmp_path):
    path = tmp_path / "o.star"
    path.write_text("data_\nloop_\n_rlnTomoParticlesFile #1\na.star\nb.star\n")
    with pytest.raises(InputError) as exc:
        read_optimisation_set(path)
    assert "o.star" in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as exc:
        read_optimisation_set(tmp_path / "absent_set.star")
    assert "absent_set.star" in str(exc.value)
