"""Turn a step's arguments and result into bounded, JSON-safe values for policies and traces.

Long strings are cut with a marker, long lists and dicts keep their first items and say how
many were left out, and structures deeper than the limit are elided, so a trace never holds
an unbounded payload. Well-known types (dataclasses, pydantic models, enums, dates, UUIDs,
paths, decimals, bytes, sets) are converted; any other object raises `CaptureError`, because
a silently stringified payload would hide content from the content rules. Pass
`json_default=` to the Guard to convert your own types.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import math
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel

from pathguard.errors import CaptureError

__all__ = ["CaptureLimits", "to_jsonable"]

_MAX_SAFE_INT = 2**53 - 1


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CaptureLimits:
    """Size caps for captured payloads (`PATHGUARD_MAX_STRING`, ... override the defaults)."""

    max_string: int = 4096
    max_items: int = 100
    max_depth: int = 8
    max_bytes_preview: int = 64

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"CaptureLimits.{field.name} must be at least 1.")


DEFAULT_LIMITS = CaptureLimits()
_UNLIMITED = CaptureLimits(max_string=2**62, max_items=2**62, max_depth=128)


def to_jsonable(
    value: Any,
    limits: CaptureLimits = DEFAULT_LIMITS,
    *,
    json_default: Callable[[Any], Any] | None = None,
    where: str = "value",
) -> Any:
    """Convert `value` into a bounded JSON-safe structure; raise CaptureError if impossible."""
    return _convert(value, limits, json_default, where, 0)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _cut(text: str, limits: CaptureLimits) -> str:
    if len(text) <= limits.max_string:
        return text
    # The marker carries a digest of the whole text, so two payloads that differ only past
    # the cap still differ once captured: an approval bound to one never covers the other.
    digest = _digest(text.encode("utf-8", "replace"))
    cut = len(text) - limits.max_string
    return f"{text[: limits.max_string]}…[truncated {cut} chars, sha256:{digest}]"


def _elided_digest(value: Any, json_default: Callable[[Any], Any] | None, where: str) -> str:
    """A digest of the full, uncapped content of something capture leaves out."""
    from pathguard.canonical import canonical_json

    full = _convert(value, _UNLIMITED, json_default, where, 0)
    return _digest(canonical_json(full))


def _convert(
    value: Any,
    limits: CaptureLimits,
    json_default: Callable[[Any], Any] | None,
    where: str,
    depth: int,
) -> Any:
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        if isinstance(value, Enum):
            return value.value
        # Lone surrogates cannot be written as UTF-8; keep the text, replace the damage.
        text = value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")
        return _cut(text, limits)
    if isinstance(value, Enum):
        return _convert(value.value, limits, json_default, where, depth)
    if isinstance(value, int):
        return value if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= limits.max_depth and isinstance(
        value, Mapping | list | tuple | set | frozenset | BaseModel
    ):
        if limits is _UNLIMITED:
            raise CaptureError(
                f"{where} is nested more than {limits.max_depth} levels deep (a cycle?); "
                "pathguard cannot capture it. Pass capture_input=False / capture_output=False."
            )
        digest = _elided_digest(value, json_default, where)
        return f"…[elided: deeper than {limits.max_depth} levels, sha256:{digest}]"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (key, item) in enumerate(value.items()):
            if i >= limits.max_items:
                rest = dict(list(value.items())[limits.max_items :])
                digest = _elided_digest(rest, json_default, where)
                out["…"] = f"[{len(value) - limits.max_items} more keys, sha256:{digest}]"
                break
            name = key if isinstance(key, str) else str(key)
            out[name] = _convert(item, limits, json_default, f"{where}.{name}", depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        converted = [
            _convert(item, limits, json_default, f"{where}[{i}]", depth + 1)
            for i, item in enumerate(items[: limits.max_items])
        ]
        if len(items) > limits.max_items:
            digest = _elided_digest(list(items[limits.max_items :]), json_default, where)
            converted.append(f"…[{len(items) - limits.max_items} more items, sha256:{digest}]")
        return converted
    if isinstance(value, BaseModel):
        return _convert(value.model_dump(mode="json"), limits, json_default, where, depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _convert(fields, limits, json_default, where, depth)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | Decimal | PurePath):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        preview = base64.b64encode(raw[: limits.max_bytes_preview]).decode("ascii")
        return {"$bytes": len(raw), "base64_prefix": preview}
    if json_default is not None:
        try:
            converted = json_default(value)
        except Exception as exc:
            raise CaptureError(
                f"{where}: json_default could not convert a {type(value).__name__} ({exc})."
            ) from exc
        return _convert(converted, limits, None, where, depth)
    raise CaptureError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which pathguard "
        "cannot turn into JSON for policies and the trace. Pass json_default= to the Guard to "
        "convert it, or capture_input=False / capture_output=False on the step to skip capture."
    )
