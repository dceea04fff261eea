"""Guard configuration from arguments and `PATHGUARD_*` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from pathguard.capture import CaptureLimits
from pathguard.errors import ConfigurationError

__all__ = ["UNSET", "env", "env_int", "limits_from_env", "policy_source"]


class Unset:
    """The type of UNSET."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset()
"""Sentinel for "not given" where None is a meaningful value."""


def env(name: str) -> str | None:
    """The value of `PATHGUARD_<name>`, or None when unset or empty."""
    value = os.environ.get(f"PATHGUARD_{name}")
    return value if value not in (None, "") else None


def env_int(name: str) -> int | None:
    """`PATHGUARD_<name>` as a whole number; ConfigurationError if it is not one."""
    value = env(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(
            f"PATHGUARD_{name}={value!r} is not a whole number; set it to one or unset it."
        ) from None


def limits_from_env() -> CaptureLimits:
    """Capture limits from PATHGUARD_MAX_STRING / _MAX_ITEMS / _MAX_DEPTH (each at least 1)."""
    defaults = CaptureLimits()
    values: dict[str, int] = {}
    for name in ("max_string", "max_items", "max_depth"):
        value = env_int(name.upper())
        if value is None:
            values[name] = getattr(defaults, name)
        elif value < 1:
            raise ConfigurationError(
                f"PATHGUARD_{name.upper()}={value} must be at least 1; unset it for the "
                f"default ({getattr(defaults, name)})."
            )
        else:
            values[name] = value
    return CaptureLimits(**values)


def policy_source(source: Any) -> Any:
    """A one-line string names a file; anything else is passed on as it is."""
    return Path(source) if isinstance(source, str) and "\n" not in source else source
