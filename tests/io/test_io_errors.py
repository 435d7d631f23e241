"""InputError: message format and attributes."""

from __future__ import annotations

import pickle

import pytest

from subtomo_nb.io.errors import InputError


def test_message_with_row_and_field():
    err = InputError("/p/particles.star", "value is NaN", row=3, field="rlnAngleTilt")
    assert str(err) == "/p/particles.star: row 3, field rlnAngleTilt: value is NaN"
    assert (err.path, err.row, err.field, err.what) == ("/p/particles.star", 3, "rlnAngleTilt", "value is NaN")


@pytest.mark.parametrize(
    "row, field, expected",
    [
        (None, "rlnImageSize", "f.mrc: field rlnImageSize: bad"),
        (7, None, "f.mrc: row 7: bad"),
        (None, None, "f.mrc: bad"),
    ],
)
def test_message_omits_missing_parts(row, field, expected):
    assert str(InputError("f.mrc", "bad", row=row, field=field)) == expected


def test_is_value_error_and_pickles():
    err = InputError("a.star", "broken", row=2, field="rlnImageName")
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.row, back.field, str(back)) == (err.path, err.row, err.field, str(err))
