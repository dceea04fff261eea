"""Guard configuration from arguments and `PATHGUARD_*` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from pathguard.capture import CaptureLimits
from pathguard.errors import ConfigurationError

__all__ = [
    "UNSET",
    "default_cache_dir",
    "env",
    "env_int",
    "limits_from_env",
    "policy_source",
]


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


def default_cache_dir(agent_key: str) -> Path:
    """Where an agent's policy cache and trace spool live when no cache_dir is given.

    `~/.cache/pathguard/<agent_key>` (under XDG_CACHE_HOME when set), or
    `./.pathguard/cache/<agent_key>` when there is no usable home directory.
    """
    name = quote(agent_key, safe="") or "_"
    base = os.environ.get("XDG_CACHE_HOME")
    try:
        root = Path(base) if base else Path.home() / ".cache"
        directory = root / "pathguard" / name
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory
    except (OSError, RuntimeError):  # no home directory, or it is not writable
        return Path(".pathguard") / "cache" / name
