"""The value typing helpers of ibprobe.config: `typed` (a parsed value as a declared type) and `from_text` (a
command-line text parsed once as a declared type), unions included."""
from __future__ import annotations

from typing import List, Optional, Tuple

import pytest

from ibprobe.config import annotation_text, from_text, typed
from ibprobe.errors import ConfigError


@pytest.mark.parametrize("ann,text,want", [
    ("int", "3", 3), ("int", "1e3", 1000), ("int", "2.0", 2), ("float", "2", 2.0), ("bool", "no", False),
    ("str", "1e3", "1e3"), ("str", "a,b", "a,b"), ("tuple[int, ...]", "3", (3,)), ("tuple[int, ...]", "3,4", (3, 4)),
    ("tuple[int, ...] | int", "3", 3), ("tuple[int, ...] | int", "3,4", (3, 4)), ("int | None", "none", None),
    ("tuple[int, str]", "1,a", (1, "a")), ("Any", "1,x", (1, "x")),
])
def test_from_text_parses_once_as_declared(ann, text, want):
    got = from_text("p", ann, text)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("ann,text,match", [
    ("int", "abc", "p must be an integer, got 'abc'"), ("int", "1.5", "p must be an integer, got 1.5"),
    ("float", "inf", "p must be a finite number"), ("bool", "maybe", "p must be true or false"),
    ("tuple[int, ...]", "1,,x", "p must be a comma list of integers, got '1,,x'"),
    ("tuple[int, str]", "1", "p needs 2 comma-separated values, got 1"),
    ("tuple[int, ...] | int", "a", "p must be a comma list of integers or an integer, got 'a'"),
    ("int", "none", "p cannot be none"),
])
def test_from_text_names_the_parameter_and_what_it_needs(ann, text, match):
    with pytest.raises(ConfigError, match=match):
        from_text("p", ann, text)


def test_typed_takes_unions_and_annotations_of_any_spelling():
    assert typed("p", "tuple[int, ...] | int", 3) == 3 and typed("p", "tuple[int, ...] | int", [3, 4]) == (3, 4)
    assert typed("p", "tuple[int, ...] | None", None) is None
    assert annotation_text(Optional[List[int]]) == "tuple[int,...]|None"
    assert annotation_text(Tuple[int, str]) == "tuple[int,str]" and annotation_text(int | None) == "int|None"
    assert annotation_text(dict) == "Any"


def test_the_default_vector_cond_leaves_pins_and_decoder_ids_as_they_were():
    """vector_cond at its default (linear, the only form before the field) is left out of the pinned settings and
    the decoder id, so folders made before it resume; "mlp" is pinned and changes the id."""
    from ibprobe.config import AnalysisConfig, Settings

    now = AnalysisConfig(device="cpu").settings((1, 8, 8), 17)
    assert now.decoder.vector_cond == "linear" and "vector_cond" not in now.to_dict()["decoder"]
    assert Settings.from_dict(now.to_dict()).to_dict() == now.to_dict()
    mlp = AnalysisConfig(device="cpu", decoder={"vector_cond": "mlp"}).settings((1, 8, 8), 17)
    assert mlp.to_dict()["decoder"]["vector_cond"] == "mlp" and mlp.decoder_id != now.decoder_id
    assert Settings.from_dict(mlp.to_dict()).decoder.vector_cond == "mlp"
