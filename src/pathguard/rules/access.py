"""Access rules: which tools, hosts, paths and data classes a step may touch, and when.

Everything here reads only the current step (and, for `step_name_allowlist`, the agent's
registration), so each rule is stateless. Values that cannot be read with certainty, such
as a host that does not parse or a path with a backslash, count against the step: an
allowlist that guesses would be an allowlist an attacker could steer.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import zoneinfo
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pathguard.matching import check_field_path
from pathguard.rules._base import CompileContext, EvalContext, Fail, Rule, register
from pathguard.rules.fields import show_value
from pathguard.vocabulary import ABSENT, Behavior, field_getter

__all__ = [
    "DomainAllowlist",
    "DomainDenylist",
    "ForbiddenForClassification",
    "PathWithinRoot",
    "StepNameAllowlist",
    "WorkingHours",
    "normalise_host",
    "parse_host",
]

# -- step names ---------------------------------------------------------------------------


class StepNameAllowlistParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    names: list[str] | None = Field(
        default=None,
        description="the allowed step names (exact); omitted = the tools the agent declared",
    )


@register
class StepNameAllowlist(Rule):
    """The step's name is one of `names`, or of the agent's declared tools when omitted."""

    name = "step_name_allowlist"
    Params = StepNameAllowlistParams
    summary = "the step name is allowed (by default: one of the tools the agent declared)"

    def __init__(self, params: StepNameAllowlistParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.names = None if params.names is None else frozenset(params.names)

    def check(self, subject: Behavior, state: Any, ctx: EvalContext | None) -> Fail | None:
        if self.names is not None:
            allowed: frozenset[str] | tuple[str, ...] = self.names
            source, empty = "the allowlist", "the allowlist is empty"
        else:
            agent = ctx.agent if ctx is not None else None
            if agent is None:
                return Fail(
                    "no allowed step names: the agent is not registered, so it declared no tools"
                )
            allowed = agent.tools
            source, empty = "the agent's declared tools", "the agent declared no tools"
        if not allowed:
            return Fail(f"no allowed step names: {empty}")
        step_name = subject.step_name
        if step_name is None:
            return Fail(f"the step has no name, so it is not in {source}")
        if step_name not in allowed:
            return Fail(f"{show_value(step_name)} is not in {source}", {"step_name": step_name})
        return None


# -- hosts --------------------------------------------------------------------------------

_LABEL_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX: Final = frozenset("0123456789abcdef")
_UNSAFE_CHARS: Final = frozenset("\\ \t\r\n\x00")


def _valid_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and "-" not in (label[0], label[-1])
        and all(c in _LABEL_CHARS for c in label)
    )


def _numeric_label(label: str) -> bool:
    # URL parsers read a last label of digits or hex as part of an IPv4 number (`0x7f.1` is
    # 127.0.0.1), so such a host is only accepted as a canonical dotted quad.
    if label.startswith("0x"):
        return all(c in _HEX for c in label[2:])
    return label.isdigit()


def normalise_host(host: str) -> str | None:
    """Lower-case, IDNA-encode and validate a bare host name or IP address; None if invalid."""
    if host.endswith("."):
        host = host[:-1]
    if not host:
        return None
    if ":" in host or host[-1].isdigit():
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            pass
        else:  # `::ffff:127.0.0.1` reaches the same machine as `127.0.0.1`
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            return (mapped or ip).compressed
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    host = host.lower()
    if len(host) > 253:
        return None
    labels = host.split(".")
    if not all(_valid_label(label) for label in labels):
        return None
    if _numeric_label(labels[-1]):
        return None  # numeric but not a valid IP address (checked above)
    return host


def parse_host(value: Any) -> str | None:
    """The normalised host of a bare host, `host:port` or URL; None when it cannot be read."""
    if not isinstance(value, str):
        return None
    return _parse_text(value)


_PLAIN_HOST: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")


@functools.lru_cache(maxsize=4096)
def _parse_text(value: str) -> str | None:
    # Cached: agents reach the same few hosts again and again.
    text = value.strip()
    if text and all(c in _PLAIN_HOST for c in text):
        return normalise_host(text)  # the common case: already a bare, lower-case host
    if not text or any(c in _UNSAFE_CHARS for c in text) or not text.isprintable():
        return None
    if "://" not in text:
        if text.count(":") > 1 and not text.startswith("["):
            # A bare IPv6 address: its colons would otherwise read as a port.
            return normalise_host(text)
        text = "//" + text
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return None
    if not host:
        return None
    return normalise_host(host)


class _Hosts:
    """A set of domains where a name matches itself and its subdomains, an IP only itself."""

    __slots__ = ("ips", "names")

    def __init__(self, domains: list[str]) -> None:
        hosts = [normalise_host(d.strip()) for d in domains]
        self.ips = frozenset(h for h in hosts if h is not None and _is_ip(h))
        self.names = frozenset(h for h in hosts if h is not None and not _is_ip(h))

    def match(self, host: str) -> str | None:
        """The listed entry that covers `host`, or None."""
        if _is_ip(host):
            return host if host in self.ips else None
        suffix = host
        while True:
            if suffix in self.names:
                return suffix
            dot = suffix.find(".")
            if dot < 0:
                return None
            suffix = suffix[dot + 1 :]


def _is_ip(host: str) -> bool:
    return ":" in host or host.replace(".", "").isdigit()


class _DomainParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: list[str] = Field(
        min_length=1,
        description="host names (each also covers its subdomains) or IP addresses",
    )
    field: str = Field(
        default="properties.target.domain",
        description="where the host is read: a bare host, `host:port` or a URL",
    )

    @field_validator("domains")
    @classmethod
    def _check_domains(cls, value: list[str]) -> list[str]:
        for entry in value:
            if normalise_host(entry.strip()) is None:
                hint = (
                    f" Write {entry[2:]!r}: a domain always covers its subdomains."
                    if entry.startswith("*.")
                    else " Write a bare host such as 'example.com' (no scheme, port or path)."
                )
                raise ValueError(f"{entry!r} is not a domain name or IP address.{hint}")
        return value

    @field_validator("field")
    @classmethod
    def _check_field(cls, value: str) -> str:
        return check_field_path(value)


class _DomainRule(Rule):
    def __init__(self, params: _DomainParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.hosts = _Hosts(params.domains)
        self.field = params.field
        self.get: Callable[[Any], Any] = field_getter(params.field)
        self._seen: dict[str, tuple[str | None, str | None]] = {}

    def lookup(self, value: str) -> tuple[str | None, str | None]:
        """(parsed host or None, the listed entry covering it or None), memoised: agents
        reach the same few hosts again and again."""
        found = self._seen.get(value)
        if found is None:
            host = parse_host(value)
            found = (host, None if host is None else self.hosts.match(host))
            if len(self._seen) >= 4096:
                self._seen.clear()
            self._seen[value] = found
        return found


@register
class DomainAllowlist(_DomainRule):
    """The host at `field` is one of `domains` or a subdomain of one."""

    name = "domain_allowlist"
    Params = _DomainParams
    summary = "the step's host is one of the allowed domains or their subdomains"

    def check(self, subject: Behavior, state: Any, ctx: EvalContext | None) -> Fail | None:
        value = self.get(subject)
        if value is ABSENT or value is None:
            return Fail(
                f"{self.field} is absent, so the host cannot be checked", {"field": self.field}
            )
        host, listed = self.lookup(value) if isinstance(value, str) else (None, None)
        if host is None:
            return Fail(
                f"{self.field} is not a host that can be read: {show_value(value)}",
                {"field": self.field},
            )
        if listed is None:
            return Fail(
                f"the host {host!r} is not in the allowed domains",
                {"field": self.field, "host": host},
            )
        return None


@register
class DomainDenylist(_DomainRule):
    """The host at `field` is neither one of `domains` nor a subdomain of one."""

    name = "domain_denylist"
    Params = _DomainParams
    summary = "the step's host is not one of the denied domains or their subdomains"

    def check(self, subject: Behavior, state: Any, ctx: EvalContext | None) -> Fail | None:
        value = self.get(subject)
        if value is ABSENT or value is None:
            return None
        host, denied = self.lookup(value) if isinstance(value, str) else (None, None)
        if host is None:
            return Fail(
                f"{self.field} is not a host that can be read: {show_value(value)}",
                {"field": self.field},
            )
        if denied is not None:
            return Fail(
                f"the host {host!r} is in the denied domain {denied!r}",
                {"field": self.field, "host": host, "denied": denied},
            )
        return None


# -- paths --------------------------------------------------------------------------------


def _normalise_path(path: str) -> str:
    """Resolve `.` and `..` lexically in an absolute POSIX path (`/..` stays `/`)."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)


class PathWithinRootParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str = Field(description="an absolute POSIX directory, e.g. `/srv/data`")
    field: str = Field(
        default="properties.target.path",
        description="where the path is read; relative paths are taken from `root`",
    )

    @field_validator("root")
    @classmethod
    def _check_root(cls, value: str) -> str:
        if not value.startswith("/") or "\\" in value or "\x00" in value:
            raise ValueError(
                f"root must be an absolute POSIX path starting with '/', such as '/srv/data'; "
                f"got {value!r}."
            )
        return value

    @field_validator("field")
    @classmethod
    def _check_field(cls, value: str) -> str:
        return check_field_path(value)


@register
class PathWithinRoot(Rule):
    """The path at `field`, with `..` resolved lexically, is `root` or inside it."""

    name = "path_within_root"
    Params = PathWithinRootParams
    summary = "the step's file path stays inside a root directory (after resolving '..')"

    def __init__(self, params: PathWithinRootParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.root = _normalise_path(params.root)
        self.prefix = self.root if self.root == "/" else self.root + "/"
        self.field = params.field
        self.get: Callable[[Any], Any] = field_getter(params.field)

    def resolve(self, value: str) -> str | None:
        """The normalised absolute path, or None when the value cannot be read as one."""
        if "\\" in value or "\x00" in value or not value.strip():
            return None
        if "://" in value:
            parts = urlsplit(value)
            if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
                return None
            value = unquote(parts.path)
        if value.startswith("~"):
            return None  # a shell or tool would expand it to a home directory
        if not value.startswith("/"):
            value = self.root + "/" + value
        return _normalise_path(value)

    def check(self, subject: Behavior, state: Any, ctx: EvalContext | None) -> Fail | None:
        value = self.get(subject)
        if value is ABSENT or value is None:
            return Fail(
                f"{self.field} is absent, so the path cannot be checked", {"field": self.field}
            )
        resolved = self.resolve(value) if isinstance(value, str) else None
        if resolved is None:
            return Fail(
                f"{self.field} is not a path that can be read: {show_value(value)}",
                {"field": self.field},
            )
        if resolved != self.root and not resolved.startswith(self.prefix):
            return Fail(
                f"the path {show_value(resolved, 60)} is outside {self.root!r}",
                {"field": self.field, "resolved": resolved, "root": self.root},
            )
        return None


# -- data classification ------------------------------------------------------------------


class ForbiddenForClassificationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    classes: list[str] = Field(
        min_length=1, description="classifications the targeted steps may not touch"
    )
    field: str = Field(
        default="properties.data.classification",
        description="where the classification (a string or a list of strings) is read",
    )

    @field_validator("field")
    @classmethod
    def _check_field(cls, value: str) -> str:
        return check_field_path(value)


@register
class ForbiddenForClassification(Rule):
    """The data classification at `field` is not (and does not contain) one of `classes`."""

    name = "forbidden_for_classification"
    Params = ForbiddenForClassificationParams
    summary = "the step does not touch data of a forbidden classification"

    def __init__(self, params: ForbiddenForClassificationParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.classes = frozenset(params.classes)
        self.field = params.field
        self.get: Callable[[Any], Any] = field_getter(params.field)

    def check(self, subject: Behavior, state: Any, ctx: EvalContext | None) -> Fail | None:
        value = self.get(subject)
        if isinstance(value, str):
            found = [value] if value in self.classes else []
        elif isinstance(value, list | tuple):
            found = sorted({v for v in value if isinstance(v, str) and v in self.classes})
        else:
            return None
        if found:
            return Fail(
                f"the step touches data classified {', '.join(map(repr, found))}",
                {"field": self.field, "classes": found},
            )
        return None


# -- time ---------------------------------------------------------------------------------


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        pass
    known = zoneinfo.available_timezones()
    by_case = {z.casefold(): z for z in known}
    if name.casefold() in by_case:  # `europe/amsterdam` on a case-sensitive file system
        close = [by_case[name.casefold()]]
    else:
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    missing = "" if known else " (no time zone data was found: install the tzdata package)"
    raise ValueError(
        f"{name!r} is not a known time zone{missing}.{hint} Use an IANA name such as "
        "'Europe/Amsterdam', 'America/New_York' or 'UTC'."
    )


class WorkingHoursParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start_hour: int = Field(ge=0, le=23, description="first allowed local hour (0-23)")
    end_hour: int = Field(
        ge=0, le=24, description="the hour at which the window closes (1-24; exclusive)"
    )
    timezone: str = Field(description="an IANA time zone name, e.g. `Europe/Amsterdam`")

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        _zone(value)
        return value

    @model_validator(mode="after")
    def _check_window(self) -> WorkingHoursParams:
        if self.start_hour == self.end_hour:
            raise ValueError(
                f"start_hour and end_hour are both {self.start_hour}, which leaves no hour "
                "inside the window; for a window across midnight give a start_hour greater "
                "than end_hour (e.g. 22 and 6)."
            )
        return self


@register
class WorkingHours(Rule):
    """The step's local hour in `timezone` is within `[start_hour, end_hour)`."""

    name = "working_hours"
    Params = WorkingHoursParams
    summary = "the step happens inside a daily window of local hours"

    def __init__(self, params: WorkingHoursParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.zone = _zone(params.timezone)
        start, end = params.start_hour, params.end_hour
        hours = range(start, end) if start < end else [*range(start, 24), *range(0, end)]
        self.allowed = frozenset(hours)
        self.window = f"{start:02d}:00-{end:02d}:00 {params.timezone}"
        self._memo: tuple[int, datetime] | None = None

    def check(self, subject: Behavior, state: Any, ctx: EvalContext | None) -> Fail | None:
        now = ctx.now if ctx is not None else subject.timestamp
        # Steps come in bursts: remember the last minute's local time (offsets change on
        # minute boundaries at the finest).
        minute = int(now // 60)
        memo = self._memo
        if memo is not None and memo[0] == minute:
            local = memo[1]
        else:
            local = datetime.fromtimestamp(minute * 60, self.zone)
            self._memo = (minute, local)
        if local.hour not in self.allowed:
            return Fail(
                f"{local:%H:%M} is outside working hours ({self.window})",
                {"local_time": local.isoformat(timespec="minutes"), "window": self.window},
            )
        return None
