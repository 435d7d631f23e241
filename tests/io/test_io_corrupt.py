"""Property tests: corrupt STAR and MRC files end in an InputError naming the file, never another exception.

A tiny valid project (three 8³ pseudo-subtomograms) is corrupted in one way per example:
truncated text or bytes, a value replaced by text of another type / NaN / infinity, a block
removed, a label repeated, header sizes or the mode changed, NaN in a map. The files go through
the one validation step of the jobs (:func:`subtomo_nb.jobs.validate.check_job`) and the readers.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from io_testutils import make_pseudo_project
from subtomo_nb.io.errors import InputError
from subtomo_nb.io.mrc import read_header, read_map, write_map
from subtomo_nb.jobs.validate import check_job, check_map

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BAD_VALUES = ["nan", "NaN", "abc", "1e999", "-inf", "inf", "\"two words\"", "1,5", "--", "0x10", "8.5"]
INTEGER = ("rlnOpticsGroup", "rlnImageSize", "rlnImageDimensionality")
NUMERIC = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst",
           "rlnOpticsGroup", "rlnImageSize", "rlnImagePixelSize", "rlnImageDimensionality")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corrupt_src")
    return root, make_pseudo_project(root)


class Fresh:
    """A fresh copy of the valid project for every example (``fresh()`` -> (root, particles.star))."""

    def __init__(self, good: tuple[Path, Path], tmp: Path) -> None:
        self.src, self.star, self.tmp, self.n = good[0], good[1], tmp, 0

    def __call__(self) -> tuple[Path, Path]:
        self.n += 1
        root = self.tmp / f"p{self.n}"
        shutil.copytree(self.src, root)
        return root, root / self.star.relative_to(self.src)


@pytest.fixture()
def fresh(good, tmp_path) -> Fresh:
    return Fresh(good, tmp_path)


def _validate(root: Path, star: Path) -> None:
    """The reconstruct job's validation of a particle file (reads it as the job will)."""
    check_job("reconstruct", {"use_direct_entries": True, "in_particles": str(star)}, project_dir=root,
              outputs=[root / "Reconstruct" / "job002" / "merged.mrc"])


def _assert_names(exc: InputError, path: Path) -> None:
    assert exc.path is not None and Path(exc.path).resolve() == path.resolve(), (exc.path, str(exc))
    assert str(exc).startswith(exc.path)


def _run(root: Path, star: Path, *, must_fail: bool) -> None:
    try:
        _validate(root, star)
    except InputError as exc:
        _assert_names(exc, star)
    else:
        assert not must_fail, "a corrupt file passed validation"


def _rows(text: str) -> list[tuple[int, list[str], list[str]]]:
    """(line index, labels, tokens) of every loop data row."""
    out, labels, in_loop = [], [], False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("data_"):
            labels, in_loop = [], False
        elif s == "loop_":
            in_loop = True
        elif s.startswith("_") and in_loop:
            labels.append(s.split()[0][1:])
        elif s and not s.startswith("#") and labels:
            out.append((i, list(labels), s.split()))
    return out


# ------------------------------------------------------------------------------ STAR files


@SETTINGS
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_star(fresh, cut):
    root, star = fresh()
    text = star.read_text()
    n = int(cut * len(text))
    star.write_text(text[:n])
    # cut before the last value of the first particle starts: no whole particle is left (a cut
    # inside that value leaves a shorter number, which no reader can tell from a real one)
    row_start = text.rindex("\n", 0, text.index("Subtomograms/p1_data.mrc")) + 1
    row = text[row_start:text.index("\n", row_start)]
    _run(root, star, must_fail=n <= row_start + row.rindex(" ") + 1)


@SETTINGS
@given(data=st.data())
def test_value_replaced_by_another_type(fresh, data):
    root, star = fresh()
    text = star.read_text()
    rows = _rows(text)
    line, labels, tokens = data.draw(st.sampled_from(rows))
    col = data.draw(st.integers(0, len(tokens) - 1))
    bad = data.draw(st.sampled_from(BAD_VALUES))
    tokens = list(tokens)
    tokens[col] = bad
    lines = text.splitlines()
    lines[line] = " ".join(tokens)
    star.write_text("\n".join(lines) + "\n")
    label = labels[col] if col < len(labels) else ""
    # a number where a number goes is only wrong where an integer is needed
    _run(root, star, must_fail=label in NUMERIC and (bad != "8.5" or label in INTEGER))


@SETTINGS
@given(block=st.sampled_from(["optics", "particles"]))
def test_missing_block(fresh, block):
    root, star = fresh()
    text = star.read_text()
    start = text.index(f"data_{block}")
    end = text.find("# version", start)
    star.write_text(text[:start] + (text[end:] if end >= 0 else ""))
    _run(root, star, must_fail=True)


@SETTINGS
@given(data=st.data())
def test_duplicate_column(fresh, data):
    root, star = fresh()
    text = star.read_text()
    labels = [m.start() for m in re.finditer(r"^_rln\w+", text, flags=re.M)]
    at = data.draw(st.sampled_from(labels))
    line = text[at:text.index("\n", at)]
    star.write_text(text[:at] + line.split()[0] + "\n" + text[at:])
    _run(root, star, must_fail=True)


@SETTINGS
@given(junk=st.binary(min_size=1, max_size=64), where=st.floats(0, 1))
def test_binary_junk_in_a_star_file(fresh, junk, where):
    root, star = fresh()
    raw = star.read_bytes()
    at = int(where * len(raw))
    star.write_bytes(raw[:at] + junk + raw[at:])
    _run(root, star, must_fail=False)


def test_optimisation_set_without_particles(fresh):
    root, star = fresh()
    oset = root / "optimisation_set.star"
    oset.write_text("data_optimisation_set\n\n_rlnTomoTomogramsFile tomograms.star\n")
    with pytest.raises(InputError) as info:
        check_job("reconstruct", {"in_optimisation": str(oset)}, project_dir=root)
    _assert_names(info.value, oset)


# ------------------------------------------------------------------------------ MRC files


def _map(root: Path) -> Path:
    path = root / "ref.mrc"
    if not path.exists():
        write_map(path, np.random.default_rng(0).random((8, 8, 8), dtype=np.float32), 2.0)
    return path


def _read_all(path: Path, *, must_fail: bool) -> None:
    for reader in (read_header, read_map, lambda p: check_map(p, box=8, pixel_A=2.0, mask=True)):
        try:
            reader(path)
        except InputError as exc:
            _assert_names(exc, path)
        else:
            if reader is not read_header:
                assert not must_fail, "a corrupt map passed"


@SETTINGS
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_mrc(fresh, cut):
    root, _ = fresh()
    path = _map(root)
    raw = path.read_bytes()
    bad = root / "cut.mrc"
    bad.write_bytes(raw[:int(cut * len(raw))])
    _read_all(bad, must_fail=True)


@SETTINGS
@given(word=st.sampled_from([0, 1, 2, 3, 23]), value=st.integers(-2**31, 2**31 - 1))
def test_wrong_header_sizes_or_mode(fresh, word, value):
    """nx, ny, nz, mode or the extended-header size (nsymbt) set to any 32-bit integer."""
    root, _ = fresh()
    path = _map(root)
    raw = bytearray(path.read_bytes())
    raw[4 * word:4 * word + 4] = struct.pack("<i", value)
    bad = root / "header.mrc"
    bad.write_bytes(bytes(raw))
    original = {0: 8, 1: 8, 2: 8, 3: 2, 23: 0}[word]
    _read_all(bad, must_fail=value != original and not (word == 3 and value in (2,)))


@SETTINGS
@given(index=st.integers(0, 511), value=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nan_in_a_map(fresh, index, value):
    root, _ = fresh()
    path = _map(root)
    raw = bytearray(path.read_bytes())
    raw[1024 + 4 * index:1024 + 4 * index + 4] = np.array([value], np.float32).tobytes()
    bad = root / "nan.mrc"
    bad.write_bytes(bytes(raw))
    _read_all(bad, must_fail=True)


@SETTINGS
@given(name=st.sampled_from(["p1_data.mrc", "p2_weights.mrc"]), cut=st.integers(0, 1500))
def test_corrupt_particle_image(fresh, name, cut):
    """A truncated image of the particle set: the error names the STAR file's row or the image itself."""
    root, star = fresh()
    image = root / "Subtomograms" / name
    raw = image.read_bytes()
    image.write_bytes(raw[:cut])
    try:
        _validate(root, star)
    except InputError as exc:
        assert Path(exc.path).resolve() in (star.resolve(), image.resolve()), str(exc)
    else:
        # only the first particle's header is read before the job: the job itself then names the file
        from subtomo_nb.tasks.reconstruct import reconstruct_particles

        with pytest.raises(InputError) as info:
            reconstruct_particles(star, root / "Reconstruct" / "job002" / "merged.mrc", sym="C1")
        assert Path(info.value.path).resolve() in (star.resolve(), image.resolve()), str(info.value)
