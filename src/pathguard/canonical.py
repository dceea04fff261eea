"""RFC 8785 canonical JSON and the hashes built on it, with a fast path for common data.

The `rfc8785` package is the reference implementation we rely on, but it is pure Python and
costs tens of microseconds per trace record. For the data pathguard hashes most (strings,
integers, booleans, None, and floats whose shortest form is the same in Python and in
ECMAScript) the standard library's C encoder with sorted keys and compact separators writes
exactly the RFC 8785 bytes; anything outside that set goes through `rfc8785`. A property test
checks that both paths agree.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Final

import rfc8785

__all__ = ["canonical_hash", "canonical_json"]

_MAX_SAFE_INT: Final = 2**53 - 1
_encode = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
).encode


def _float_is_safe(value: float) -> bool:
    # Python's repr and ECMAScript's Number.prototype.toString agree on the shortest
    # round-trip digits; they differ only in when and how they switch to exponent form and
    # in writing integral floats ("1.0" against "1").
    if not math.isfinite(value) or value.is_integer():
        return False
    magnitude = abs(value)
    return 1e-4 <= magnitude < 1e16


class _Slow(Exception):
    """Raised inside `_prepare` when a value needs the reference implementation."""


def _prepare(value: Any, depth: int = 0) -> Any:
    """The value with integral floats written as ints (ECMAScript prints `1.0` as `1`), or
    `_Slow` raised if anything in it is outside what the C encoder writes canonically."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is int:
        if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
            return value
        raise _Slow
    if kind is float:
        if value.is_integer() and -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
            return int(value)
        if _float_is_safe(value):
            return value
        raise _Slow
    if depth > 64:
        raise _Slow
    if kind is dict:
        out = {}
        for key, item in value.items():
            # Sorting by code point equals RFC 8785's UTF-16 order only inside the BMP.
            if type(key) is not str or (not key.isascii() and max(key) > "\uffff"):
                raise _Slow
            out[key] = _prepare(item, depth + 1)
        return out
    if kind is list or kind is tuple:
        return [_prepare(item, depth + 1) for item in value]
    raise _Slow  # subclasses and other types: let the reference implementation decide


def canonical_json(value: Any) -> bytes:
    """Serialise a JSON value to its RFC 8785 canonical bytes."""
    try:
        prepared = _prepare(value)
    except _Slow:
        result: bytes = rfc8785.dumps(value)
        return result
    return _encode(prepared).encode("utf-8")


def canonical_hash(value: Any) -> str:
    """`sha256:` followed by the hex SHA-256 of the canonical JSON of `value`."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()
