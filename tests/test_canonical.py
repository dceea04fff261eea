"""Canonical JSON: the fast path must write exactly the RFC 8785 bytes of the reference library."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest
import rfc8785
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pathguard import canonical_hash, canonical_json

SAFE = 2**53 - 1

# Floats spread over every decimal magnitude, not just the ones Hypothesis favours.
spread_floats = (
    st.tuples(
        st.floats(min_value=1.0, max_value=10.0, exclude_max=True),
        st.integers(min_value=-324, max_value=308),
        st.booleans(),
    )
    .map(lambda t: (-1 if t[2] else 1) * t[0] * 10.0 ** t[1])
    .filter(math.isfinite)
)

floats = st.floats(allow_nan=False, allow_infinity=False) | spread_floats
astral = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF, codec="utf-8")
text = st.text(alphabet=st.characters(codec="utf-8")) | st.text(
    alphabet=st.one_of(astral, st.characters(codec="utf-8")), min_size=1
)

scalars = st.none() | st.booleans() | st.integers(-SAFE, SAFE) | floats | text
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
@example(1e16)
@example(1e15 + 0.5)
@example(1e-4)
@example(9.999999999999999e-5)
@example(1e21)
@example(1e-7)
@example(5e-324)
@example(1.7976931348623157e308)
@example(-0.0)
@example(0.1 + 0.2)
@example(100.0)
@example(SAFE)
@example(-SAFE)
@example({"\U0001f600": 1, "\ufb01": 2, "a": 3})
@example({"é": 1, "e": 2, "\u00ff": [1.5, {"z": None, "y": True}]})
def test_canonical_json_matches_rfc8785(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@settings(max_examples=50, deadline=None)
@given(json_values)
def test_canonical_hash_is_sha256_of_the_canonical_bytes(value: Any) -> None:
    digest = hashlib.sha256(rfc8785.dumps(value)).hexdigest()
    assert canonical_hash(value) == f"sha256:{digest}"


def test_key_order_and_spacing_are_canonical() -> None:
    assert canonical_json({"b": 1, "a": [1, 2.5, "x"], "c": {"e": None, "d": True}}) == (
        b'{"a":[1,2.5,"x"],"b":1,"c":{"d":true,"e":null}}'
    )


def test_astral_keys_sort_by_utf16_code_units() -> None:
    # U+1F600 is a surrogate pair (D83D DE00) and so sorts before U+FB01 in UTF-16.
    out = canonical_json({"\ufb01": 1, "\U0001f600": 2}).decode("utf-8")
    assert out.index("\U0001f600") < out.index("\ufb01")


@pytest.mark.parametrize("value", [2**53, -(2**53), float("nan"), float("inf"), {1: 2}])
def test_values_outside_json_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        canonical_json(value)
