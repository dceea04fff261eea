"""Guard configuration from arguments and `PATHGUARD_*` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast
from urllib.parse import quote

from pathguard.capture import CaptureLimits
from pathguard.errors import ConfigurationError

if TYPE_CHECKING:
    from pathguard.guard import Guard
    from pathguard.remote.link import PlatformLink
    from pathguard.remote.webhook import IncidentWebhook
    from pathguard.remote.writer import AfterWrite

__all__ = [
    "UNSET",
    "connect",
    "default_cache_dir",
    "env",
    "env_int",
    "fail_mode_option",
    "history_limit_option",
    "incident_webhook_option",
    "limits_from_env",
    "platform_options",
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


def platform_options(
    api_url: str | Unset | None, api_key: str | Unset | None, policies: Any
) -> tuple[str | None, str | None, Any]:
    """`api_url`, `api_key` and the local `policies` source, each from its argument or
    PATHGUARD_API_URL / _API_KEY / _POLICIES; ConfigurationError for a URL without a key and
    for both a URL and local policies."""
    url = (env("API_URL") if isinstance(api_url, Unset) else api_url) or None
    key = env("API_KEY") if isinstance(api_key, Unset) else api_key
    source = env("POLICIES") if isinstance(policies, Unset) else policies
    if url and not key:
        raise ConfigurationError(
            "Guard(api_url=...) needs the agent's API key: pass api_key=... or set "
            "PATHGUARD_API_KEY (create one with `pathguard keys create`)."
        )
    if url and source is not None:
        raise ConfigurationError(
            "Guard got both policies= (or PATHGUARD_POLICIES) and api_url=; with api_url "
            "the policies come from the platform, so remove one of them."
        )
    return url, key, source


def connect(
    guard: Guard,
    *,
    cache_dir: str | Path | Unset | None,
    policy_ttl: float | Unset,
    queue_size: int | Unset,
    after_write: AfterWrite | None,
) -> PlatformLink:
    """Start the guard's `PlatformLink` (imported here, so that the core install, without
    httpx, imports pathguard); ConfigurationError naming the extra when httpx is missing."""
    try:
        from pathguard.remote.link import PlatformLink
    except ImportError as exc:
        raise ConfigurationError(f"Guard(api_url=...) needs the platform client: {exc}") from None
    return PlatformLink(
        guard,
        guard.api_url or "",
        guard.api_key or "",
        cache_dir=cache_dir,
        policy_ttl=policy_ttl,
        queue_size=queue_size,
        after_write=after_write,
    )


def fail_mode_option(value: str | Unset) -> Literal["closed", "open"]:
    """`fail_mode`, else PATHGUARD_FAIL_MODE, else "closed"; ConfigurationError if neither
    "closed" nor "open"."""
    mode = (env("FAIL_MODE") if isinstance(value, Unset) else value) or "closed"
    if mode not in ("closed", "open"):
        raise ConfigurationError(f"fail_mode must be 'closed' or 'open', not {mode!r}.")
    return cast(Literal["closed", "open"], mode)


def history_limit_option(value: int | Unset) -> int:
    """`history_limit`, else PATHGUARD_HISTORY_LIMIT, else 1000 (0 or more)."""
    limit = env_int("HISTORY_LIMIT") if isinstance(value, Unset) else value
    if limit is not None and limit < 0:
        raise ConfigurationError(
            f"history_limit (PATHGUARD_HISTORY_LIMIT) must be 0 or more, not {limit}."
        )
    return 1000 if limit is None else limit


def incident_webhook_option(
    agent_key: str, url: str | Unset | None, secret: str | Unset | None
) -> IncidentWebhook | None:
    """The incident webhook from `incident_webhook` / PATHGUARD_INCIDENT_WEBHOOK (and its
    secret from PATHGUARD_INCIDENT_WEBHOOK_SECRET), or None when no URL is set."""
    url = env("INCIDENT_WEBHOOK") if isinstance(url, Unset) else url
    if not url:
        return None
    secret = env("INCIDENT_WEBHOOK_SECRET") if isinstance(secret, Unset) else secret
    try:
        from pathguard.remote.webhook import IncidentWebhook
    except ImportError as exc:
        raise ConfigurationError(f"incident_webhook needs an HTTP client: {exc}") from None
    try:
        return IncidentWebhook(url, agent_key=agent_key, secret=secret or None)
    except ValueError as exc:
        raise ConfigurationError(
            f"{exc} Fix incident_webhook= or PATHGUARD_INCIDENT_WEBHOOK."
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
