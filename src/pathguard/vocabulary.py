"""The vocabulary of agent steps: step types, scopes, verbs, statuses and the Behavior record."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from enum import Enum, StrEnum
from typing import Any, Final

from pathguard.errors import InvalidBehaviorError

__all__ = [
    "ABSENT",
    "AgentRegistration",
    "Behavior",
    "RiskClass",
    "Scope",
    "Status",
    "StepType",
    "Verb",
    "field_getter",
    "valid_verbs",
]


class StepType(StrEnum):
    """What kind of step an agent takes; the value is the dotted name used in policies."""

    task_start = "task.start"
    task_end = "task.end"
    task_error = "task.error"
    task_idle = "task.idle"
    step_resource = "step.resource"
    step_message = "step.message"
    step_self = "step.self"
    step_model = "step.model"
    step_credential = "step.credential"
    step_exec = "step.exec"
    step_gate = "step.gate"
    step_unknown = "step.unknown"

    @property
    def scope(self) -> Scope:
        """The scope a step type belongs to (`task` markers or `step` actions)."""
        return Scope.task if self.value.startswith("task.") else Scope.step

    @classmethod
    def parse(cls, value: StepType | str) -> StepType:
        """Accept a member, its dotted value (`step.exec`) or its name (`step_exec`)."""
        if isinstance(value, StepType):
            return value
        try:
            return _STEP_TYPES_BY_TEXT[value]
        except (KeyError, TypeError):
            hint = _did_you_mean(str(value), [m.value for m in cls])
            raise InvalidBehaviorError(
                f"{value!r} is not a step type.{hint} Valid step types are: "
                f"{', '.join(m.value for m in cls)}."
            ) from None


class Scope(StrEnum):
    """Whether a behaviour marks the task itself or is a step inside it."""

    task = "task"
    step = "step"


class Verb(StrEnum):
    """The HTTP-like verb of a step: read (GET), create/send (POST), change, delete."""

    GET = "GET"
    POST = "POST"
    PATCH = "PATCH"
    DELETE = "DELETE"

    @classmethod
    def parse(cls, value: Verb | str) -> Verb:
        """Accept a member or its name, in any case."""
        if isinstance(value, Verb):
            return value
        try:
            return cls(str(value).upper())
        except ValueError:
            raise InvalidBehaviorError(
                f"{value!r} is not a verb. Valid verbs are: GET, POST, PATCH, DELETE."
            ) from None


class Status(StrEnum):
    """Where a behaviour is in its life: about to run, done, failed, or refused by policy."""

    intended = "intended"
    completed = "completed"
    failed = "failed"
    blocked = "blocked"


_STEP_TYPES_BY_TEXT: Final[dict[str, StepType]] = {
    **{m.value: m for m in StepType},
    **{m.name: m for m in StepType},
}

_ALL: Final = frozenset(Verb)
_VALID_VERBS: Final[dict[StepType, frozenset[Verb]]] = {
    StepType.task_start: frozenset(),
    StepType.task_end: frozenset(),
    StepType.task_error: frozenset(),
    StepType.task_idle: frozenset(),
    StepType.step_resource: _ALL,
    StepType.step_message: frozenset({Verb.GET, Verb.POST}),
    StepType.step_self: _ALL,
    StepType.step_model: frozenset({Verb.POST}),
    StepType.step_credential: frozenset({Verb.GET}),
    StepType.step_exec: frozenset(),
    StepType.step_gate: frozenset(),
    StepType.step_unknown: frozenset(),
}
_VERB_ORDER: Final = (Verb.GET, Verb.POST, Verb.PATCH, Verb.DELETE)


def valid_verbs(step_type: StepType | str) -> tuple[Verb, ...]:
    """The verbs allowed with a step type, in GET, POST, PATCH, DELETE order (may be empty)."""
    allowed = _VALID_VERBS[StepType.parse(step_type)]
    return tuple(v for v in _VERB_ORDER if v in allowed)


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


class _Absent:
    """The value of a dot path that leads nowhere; falsy and equal only to itself."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Final = _Absent()
"""Returned by dot-path lookups when the path does not exist (never an exception)."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Behavior:
    """One atomic action of an agent, classified as `(step_type, scope, verb)`.

    Everything beyond the tuple lives in `properties` (a nested dict). `input` and `output`
    are the captured, JSON-safe payloads; `meta` carries free-form context. The record is
    immutable: use `replace()` to derive a changed copy.
    """

    step_type: StepType
    verb: Verb | None = None
    scope: Scope | None = None
    step_name: str | None = None
    properties: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    input: Any = None
    output: Any = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    agent_key: str | None = None
    task_id: str | None = None
    seq: int | None = None
    status: Status = Status.intended
    timestamp: float = 0.0

    def __post_init__(self) -> None:
        step_type = StepType.parse(self.step_type)
        allowed = _VALID_VERBS[step_type]
        verb = None if self.verb is None else Verb.parse(self.verb)
        if verb is None and len(allowed) == 1:
            verb = next(iter(allowed))
        if verb is not None and verb not in allowed:
            names = ", ".join(v.value for v in valid_verbs(step_type))
            expected = f"one of: {names}" if names else "no verb (leave verb unset)"
            raise InvalidBehaviorError(
                f"{step_type.value} does not take the verb {verb.value}; it takes {expected}."
            )
        if verb is None and len(allowed) > 1:
            names = ", ".join(v.value for v in valid_verbs(step_type))
            raise InvalidBehaviorError(f"{step_type.value} needs a verb; give one of: {names}.")
        scope = step_type.scope
        if self.scope is not None and Scope(self.scope) is not scope:
            raise InvalidBehaviorError(
                f"{step_type.value} belongs to scope {scope.value!r}, not {self.scope!s}; "
                "leave scope unset and it is derived from the step type."
            )
        status = Status(self.status)
        setter = object.__setattr__
        setter(self, "step_type", step_type)
        setter(self, "verb", verb)
        setter(self, "scope", scope)
        setter(self, "status", status)

    def get(self, path: str) -> Any:
        """Read a field by dot path (`input.to`, `properties.target.domain`); ABSENT if missing."""
        return field_getter(path)(self)

    def replace(self, **changes: Any) -> Behavior:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # Internal fast paths for the SDK's hot path, where the tuple is known to be valid.
    def _evolve(self, **changes: Any) -> Behavior:
        """A copy with some fields changed, not validated again (status, output, properties,
        timestamps: fields that cannot make the tuple invalid)."""
        new = object.__new__(Behavior)
        setter = object.__setattr__
        for name in _BEHAVIOR_FIELDS:
            setter(new, name, changes[name] if name in changes else getattr(self, name))
        return new

    @classmethod
    def _trusted(
        cls,
        step_type: StepType,
        verb: Verb | None,
        step_name: str | None,
        properties: Mapping[str, Any],
        input: Any,
        meta: Mapping[str, Any],
        agent_key: str | None,
        task_id: str | None,
        timestamp: float,
    ) -> Behavior:
        """Build without validation a behaviour whose (step_type, verb) was checked earlier."""
        new = object.__new__(cls)
        setter = object.__setattr__
        setter(new, "step_type", step_type)
        setter(new, "verb", verb)
        setter(new, "scope", step_type.scope)
        setter(new, "step_name", step_name)
        setter(new, "properties", properties)
        setter(new, "input", input)
        setter(new, "output", None)
        setter(new, "meta", meta)
        setter(new, "agent_key", agent_key)
        setter(new, "task_id", task_id)
        setter(new, "seq", None)
        setter(new, "status", Status.intended)
        setter(new, "timestamp", timestamp)
        return new


_BEHAVIOR_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Behavior))

_TOP_LEVEL: Final = frozenset(
    {
        "step_type",
        "scope",
        "verb",
        "step_name",
        "agent_key",
        "task_id",
        "seq",
        "status",
        "timestamp",
    }
)
_NESTED: Final = frozenset({"input", "output", "properties", "meta"})
FIELD_ROOTS: Final = _TOP_LEVEL | _NESTED


def _dig(value: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        # `type(...) is dict` first: the common case, and much cheaper than an ABC check.
        if type(value) is dict or isinstance(value, Mapping):
            if key not in value:
                return ABSENT
            value = value[key]
        elif isinstance(value, list | tuple) and key.isdigit():
            index = int(key)
            if index >= len(value):
                return ABSENT
            value = value[index]
        else:
            return ABSENT
    return value


_GETTERS: dict[str, Callable[[Any], Any]] = {}
_ENUM_ATTRS: Final = frozenset({"step_type", "verb", "scope", "status", "risk_classification"})


def field_getter(path: str) -> Callable[[Any], Any]:
    """Compile a dot path into a fast getter over a Behavior (or any object with attributes).

    The first segment names an attribute (`step_name`, `input`, `properties`, ...); the
    rest walks nested mappings and list indices. Missing anything yields ABSENT.
    """
    getter = _GETTERS.get(path)
    if getter is not None:
        return getter
    root, *rest = path.split(".")
    keys = tuple(rest)
    attr = root

    def read_attr(obj: Any) -> Any:
        value = getattr(obj, attr, ABSENT)
        return value.value if isinstance(value, Enum) else value

    def read_plain_attr(obj: Any) -> Any:
        return getattr(obj, attr, ABSENT)

    if not keys:
        # Only these attributes hold enums; the others can be read as they are.
        getter = read_attr if attr in _ENUM_ATTRS else read_plain_attr
    elif len(keys) == 1:
        key = keys[0]

        def getter(obj: Any) -> Any:
            value = getattr(obj, attr, None)
            if type(value) is dict or isinstance(value, Mapping):
                return value.get(key, ABSENT)
            return _dig(value, (key,))

    elif len(keys) == 2:
        first, second = keys

        def getter(obj: Any) -> Any:
            value = getattr(obj, attr, None)
            if type(value) is dict:
                inner = value.get(first, ABSENT)
                if type(inner) is dict:
                    return inner.get(second, ABSENT)
            return _dig(value, keys)

    else:

        def getter(obj: Any) -> Any:
            return _dig(getattr(obj, attr, None), keys)

    _GETTERS[path] = getter
    return getter


class RiskClass(StrEnum):
    """The risk class an agent declares at registration (EU AI Act tiers)."""

    minimal = "minimal"
    limited = "limited"
    high = "high"
    unacceptable = "unacceptable"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class AgentRegistration:
    """What an agent declares about itself; `agent_registration` policies read these fields."""

    agent_key: str
    name: str
    purpose: str
    owner: str | None = None
    tools: tuple[str, ...] = ()
    risk_classification: RiskClass = RiskClass.minimal
    environment: str | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            risk = RiskClass(self.risk_classification)
        except ValueError:
            hint = _did_you_mean(str(self.risk_classification), [r.value for r in RiskClass])
            raise InvalidBehaviorError(
                f"{self.risk_classification!r} is not a risk classification.{hint} Use one of: "
                "minimal, limited, high, unacceptable."
            ) from None
        object.__setattr__(self, "risk_classification", risk)
        object.__setattr__(self, "tools", tuple(self.tools))

    def get(self, path: str) -> Any:
        """Read a field by dot path (`metadata.team`); ABSENT if missing."""
        return field_getter(path)(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent_key": self.agent_key,
            "name": self.name,
            "purpose": self.purpose,
            "owner": self.owner,
            "tools": list(self.tools),
            "risk_classification": self.risk_classification.value,
            "environment": self.environment,
            "metadata": dict(self.metadata),
        }


REGISTRATION_FIELDS: Final = frozenset(
    {
        "agent_key",
        "name",
        "purpose",
        "owner",
        "tools",
        "risk_classification",
        "environment",
        "metadata",
    }
)
