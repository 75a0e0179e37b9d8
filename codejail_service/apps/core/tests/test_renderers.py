"""The JSON renderer of every answer: strict, non-finite floats as null."""

import json
import math

import pytest

from codejail_service.apps.core.renderers import StrictJSONRenderer, finite_floats


def test_finite_floats_replaces_only_non_finite_floats_at_any_depth():
    value = {"a": [math.nan, 1.5, {"b": (math.inf, -math.inf, "NaN")}], "c": 0.0, "d": None, "e": True, "f": 3}
    assert finite_floats(value) == {"a": [None, 1.5, {"b": [None, None, "NaN"]}], "c": 0.0, "d": None,
                                    "e": True, "f": 3}


def test_finite_floats_of_scalars():
    assert finite_floats(math.nan) is None
    assert finite_floats(2.5) == 2.5
    assert finite_floats("x") == "x"


def test_finite_floats_does_not_change_its_argument():
    value = {"a": [math.inf]}
    finite_floats(value)
    assert value == {"a": [math.inf]}


def test_finite_floats_goes_deeper_than_pythons_stack():
    deep = math.nan
    for _ in range(5000):
        deep = [deep]
    out = finite_floats(deep)
    for _ in range(5000):
        out = out[0]
    assert out is None


def test_renderer_answers_non_finite_floats_as_null():
    rendered = StrictJSONRenderer().render({"x": [math.nan, math.inf, 1.0]})
    assert json.loads(rendered) == {"x": [None, None, 1.0]}
    assert b"NaN" not in rendered and b"Infinity" not in rendered


def test_renderer_leaves_finite_answers_as_drf_renders_them():
    assert StrictJSONRenderer().render({"x": [1.0, "\u00e9"]}) == b'{"x":[1.0,"\\u00e9"]}'


def test_renderer_raises_other_value_errors():
    circular = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular"):
        StrictJSONRenderer().render({"x": circular})
