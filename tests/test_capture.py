"""Capture: arguments and results become bounded, JSON-safe values, or a clear CaptureError."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
import uuid
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

import pytest
from pydantic import BaseModel

from pathguard import CaptureError, CaptureLimits, canonical_json
from pathguard.capture import to_jsonable


class Color(enum.Enum):
    red = "r"


class Mood(enum.StrEnum):
    calm = "calm"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Model(BaseModel):
    name: str
    when: dt.date


class Opaque:
    pass


def unhashed(value):
    """Drop the digests that capture markers carry, to compare markers by their words."""
    if isinstance(value, str):
        return re.sub(r", sha256:[0-9a-f]{16}\]", "]", value)
    if isinstance(value, dict):
        return {k: unhashed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unhashed(v) for v in value]
    return value


def test_long_strings_are_cut_with_a_marker() -> None:
    out = to_jsonable("x" * 25, CaptureLimits(max_string=10))
    assert unhashed(out) == "x" * 10 + "…[truncated 15 chars]"
    assert to_jsonable("x" * 10, CaptureLimits(max_string=10)) == "x" * 10


def test_deep_structures_are_elided() -> None:
    deep: Any = "bottom"
    for _ in range(6):
        deep = {"down": deep}
    out = to_jsonable(deep, CaptureLimits(max_depth=3))
    assert unhashed(out) == {"down": {"down": {"down": "…[elided: deeper than 3 levels]"}}}


def test_long_lists_and_dicts_keep_their_first_items() -> None:
    limits = CaptureLimits(max_items=3)
    assert unhashed(to_jsonable(list(range(10)), limits)) == [0, 1, 2, "…[7 more items]"]
    out = to_jsonable({f"k{i}": i for i in range(5)}, limits)
    assert unhashed(out) == {"k0": 0, "k1": 1, "k2": 2, "…": "[2 more keys]"}


def test_captured_values_are_always_canonical_json() -> None:
    value = {"a": [float("nan"), 2**60, b"\x00\x01", {1, 2}], 3: "\ud800"}
    out = to_jsonable(value)
    canonical_json(out)  # would raise if anything were left outside JSON
    assert out["3"] == "?"
    assert out["a"][0] == "nan"
    assert out["a"][1] == str(2**60)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (1.5, 1.5),
        ((1, "a"), [1, "a"]),
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b", "a"}), ["a", "b"]),
        (Color.red, "r"),
        (Mood.calm, "calm"),
        (Point(1, 2), {"x": 1, "y": 2}),
        (Model(name="n", when=dt.date(2024, 1, 2)), {"name": "n", "when": "2024-01-02"}),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (dt.timedelta(minutes=1), 60.0),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (Decimal("1.10"), "1.10"),
        (PurePosixPath("/tmp/x"), "/tmp/x"),
        (b"hi", {"$bytes": 2, "base64_prefix": "aGk="}),
        (float("inf"), "inf"),
        (-(2**53), str(-(2**53))),
    ],
)
def test_well_known_types_are_converted(value: Any, expected: Any) -> None:
    assert to_jsonable(value) == expected


def test_bytes_keep_only_a_preview() -> None:
    out = to_jsonable(b"\xff" * 1000, CaptureLimits(max_bytes_preview=3))
    assert out == {"$bytes": 1000, "base64_prefix": "////"}


def test_an_unknown_object_names_where_it_is_and_how_to_fix_it() -> None:
    with pytest.raises(CaptureError) as info:
        to_jsonable({"payload": [1, Opaque()]}, where="input")
    message = str(info.value)
    assert message.startswith("input.payload[1] is a ")
    assert "Opaque" in message
    assert "json_default=" in message
    assert "capture_input=False" in message
    assert isinstance(info.value, TypeError)


def test_json_default_converts_unknown_objects() -> None:
    out = to_jsonable({"o": Opaque()}, json_default=lambda o: {"kind": type(o).__name__})
    assert out == {"o": {"kind": "Opaque"}}


def test_json_default_output_is_capped_too() -> None:
    out = to_jsonable(Opaque(), CaptureLimits(max_string=3), json_default=lambda o: "abcdef")
    assert unhashed(out) == "abc…[truncated 3 chars]"


def test_a_failing_json_default_is_a_capture_error() -> None:
    def refuse(value: Any) -> Any:
        raise ValueError("no idea")

    with pytest.raises(CaptureError, match=r"output: json_default could not convert a Opaque"):
        to_jsonable(Opaque(), json_default=refuse, where="output")


@pytest.mark.parametrize("field", ["max_string", "max_items", "max_depth", "max_bytes_preview"])
def test_capture_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=f"CaptureLimits.{field} must be at least 1"):
        CaptureLimits(**{field: 0})


def test_payloads_that_differ_past_the_cap_still_capture_differently() -> None:
    limits = CaptureLimits(max_string=4, max_items=2, max_depth=2)
    assert to_jsonable("abcd-one", limits) != to_jsonable("abcd-two", limits)
    assert to_jsonable([1, 2, 3], limits) != to_jsonable([1, 2, 4], limits)
    assert to_jsonable({"a": {"b": {"c": 1}}}, limits) != to_jsonable(
        {"a": {"b": {"c": 2}}}, limits
    )
    assert to_jsonable("abcd-one", limits) == to_jsonable("abcd-one", limits)


def test_a_cycle_is_a_capture_error_not_a_crash() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(CaptureError, match="cycle"):
        to_jsonable(loop, CaptureLimits(max_depth=2))
