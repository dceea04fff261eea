"""Field rules: conditions on one value of the step (or of the agent's registration).

These are the only built-in rules that work in both scopes. In a `step_execution` policy the
field is a dot path into the intended behaviour (`input.to`, `properties.data.fields`); in an
`agent_registration` policy it names a declared field of the agent (`owner`, `tools`,
`metadata.team`). A rule whose field reads `output` is checked after the step has run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pathguard.matching import check_field_path, compile_regex
from pathguard.rules._base import (
    REGISTRATION,
    STEP_EXECUTION,
    CompileContext,
    EvalContext,
    Fail,
    Rule,
    register,
)
from pathguard.vocabulary import ABSENT, FIELD_ROOTS, REGISTRATION_FIELDS, field_getter

__all__ = [
    "FieldInList",
    "FieldMatchesRegex",
    "FieldMaxLength",
    "FieldNotEmpty",
    "reads_output",
    "show_value",
]

BOTH_SCOPES: Final = frozenset({STEP_EXECUTION, REGISTRATION})
# Registration fields that hold structure a dot path can walk into (`metadata.team`,
# `tools.0`); the others are plain strings.
_NESTED_REGISTRATION: Final = frozenset({"metadata", "tools"})


def show_value(value: Any, limit: int = 40) -> str:
    """A short repr for reasons: long values are cut so a reason stays one readable line."""
    text = repr(value.value if isinstance(value, Enum) else value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reads_output(path: str) -> bool:
    """Whether a dot path reads the step's output (such rules are checked after the step)."""
    return path.split(".", 1)[0] == "output"


def _check_any_scope(path: str) -> str:
    root = path.split(".", 1)[0]
    if not path or root not in FIELD_ROOTS | REGISTRATION_FIELDS:
        raise ValueError(
            f"{path!r} is not a field; a step policy reads one of "
            f"{', '.join(sorted(FIELD_ROOTS))} (e.g. 'input.to'), a registration policy one "
            f"of {', '.join(sorted(REGISTRATION_FIELDS))} (e.g. 'metadata.team')."
        )
    if any(not part for part in path.split(".")):
        raise ValueError(f"{path!r} has an empty segment; write a dot path like 'input.to'.")
    return path


def _check_for_scope(path: str, ctx: CompileContext) -> None:
    """Validate the field against what the policy's scope can read (raises ValueError)."""
    root, _, rest = path.partition(".")
    if ctx.scope != REGISTRATION:
        check_field_path(path)
        return
    if root not in REGISTRATION_FIELDS:
        raise ValueError(
            f"{path!r} is not a field of an agent registration; use one of: "
            f"{', '.join(sorted(REGISTRATION_FIELDS))} (nested values as 'metadata.<path>')."
        )
    if rest and root not in _NESTED_REGISTRATION:
        raise ValueError(
            f"the registration field {root!r} is a plain value with no sub-fields; "
            f"write {root!r} instead of {path!r}."
        )


class FieldParams(BaseModel):
    """The field every rule of this family reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(
        description="dot path of the value: `input.to` for steps, `metadata.team` for agents"
    )

    @field_validator("field")
    @classmethod
    def _check_field(cls, value: str) -> str:
        return _check_any_scope(value)


class _FieldRule(Rule):
    """Shared set-up: validate the field for the scope, compile its getter, pick the phase."""

    scopes = BOTH_SCOPES

    def __init__(self, params: FieldParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        _check_for_scope(params.field, ctx)
        self.field = params.field
        self.get: Callable[[Any], Any] = field_getter(params.field)
        if ctx.scope != REGISTRATION and reads_output(params.field):
            self.phase = "after"


def _is_empty(value: Any) -> bool:
    if value is ABSENT or value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple | Mapping):
        return len(value) == 0
    return False


@register
class FieldNotEmpty(_FieldRule):
    """The value at `field` is present and not empty (not None, blank, or an empty list/dict)."""

    name = "field_not_empty"
    Params = FieldParams
    summary = "the value at a field is present and not empty"

    def check(self, subject: Any, state: Any, ctx: EvalContext | None) -> Fail | None:
        value = self.get(subject)
        if type(value) is str and value.strip():
            return None  # the common case first
        if value is ABSENT:
            return Fail(f"{self.field} is absent", {"field": self.field})
        if value is None:
            return Fail(f"{self.field} is not set", {"field": self.field})
        if _is_empty(value):
            return Fail(f"{self.field} is empty", {"field": self.field})
        return None


Key = tuple[str, Any]


def _key(value: Any) -> Key | None:
    """A lookup key that keeps True apart from 1 (Python calls them equal); None = no key."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("str", value)
    if value is None:
        return ("null", None)
    return None


Scalar = str | int | float | bool | None


class FieldInListParams(FieldParams):
    values: list[Scalar] = Field(
        min_length=1, description="the allowed values (strings, numbers, booleans or null)"
    )


@register
class FieldInList(_FieldRule):
    """The value at `field` is one of `values`; for a list value, every element is."""

    name = "field_in_list"
    Params = FieldInListParams
    summary = "the value at a field (or every element of a list) is one of the allowed values"

    def __init__(self, params: FieldInListParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.allowed = frozenset(k for k in map(_key, params.values) if k is not None)
        self.allowed_text = frozenset(v for v in params.values if type(v) is str)
        shown = ", ".join(show_value(v, 24) for v in params.values[:5])
        more = len(params.values) - 5
        self.shown = shown + (f" and {more} more" if more > 0 else "")

    def check(self, subject: Any, state: Any, ctx: EvalContext | None) -> Fail | None:
        value = self.get(subject)
        if type(value) is str and value in self.allowed_text:
            return None  # the common case, without building a comparison key
        if value is ABSENT:
            return Fail(f"{self.field} is absent", {"field": self.field})
        if isinstance(value, list | tuple):
            bad = [v for v in value if _key(v) not in self.allowed]
            if not bad:
                return None
            listed = ", ".join(show_value(v, 24) for v in bad[:3])
            return Fail(
                f"{self.field} contains {listed}, not among {self.shown}",
                {"field": self.field, "not_allowed": [show_value(v) for v in bad[:10]]},
            )
        if _key(value) in self.allowed:
            return None
        return Fail(
            f"{self.field} is {show_value(value)}, not one of {self.shown}",
            {"field": self.field},
        )


class FieldMatchesRegexParams(FieldParams):
    pattern: str = Field(
        description="an RE2 regular expression, searched anywhere in the value "
        "(anchor it with ^ and $ to match the whole value)"
    )

    @field_validator("pattern")
    @classmethod
    def _compile(cls, value: str) -> str:
        compile_regex(value)
        return value


@register
class FieldMatchesRegex(_FieldRule):
    """The value at `field` is a string in which the RE2 `pattern` finds a match."""

    name = "field_matches_regex"
    Params = FieldMatchesRegexParams
    summary = "the value at a field is a string matching a regular expression (RE2)"

    def __init__(self, params: FieldMatchesRegexParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.pattern = params.pattern
        self.regex = compile_regex(params.pattern)

    def check(self, subject: Any, state: Any, ctx: EvalContext | None) -> Fail | None:
        value = self.get(subject)
        if type(value) is str and self.regex.search(value) is not None:
            return None  # the common case first
        if value is ABSENT:
            return Fail(f"{self.field} is absent", {"field": self.field})
        if isinstance(value, Enum):
            value = value.value
        if not isinstance(value, str):
            return Fail(
                f"{self.field} is not a string (it is {type(value).__name__})",
                {"field": self.field},
            )
        if self.regex.search(value) is None:
            return Fail(
                f"{self.field} does not match {show_value(self.pattern, 60)}",
                {"field": self.field, "pattern": self.pattern},
            )
        return None


class FieldMaxLengthParams(FieldParams):
    max: int = Field(ge=0, description="the greatest allowed length (characters or items)")


@register
class FieldMaxLength(_FieldRule):
    """The length of the value at `field` (string, list or dict) is at most `max`."""

    name = "field_max_length"
    Params = FieldMaxLengthParams
    summary = "the value at a field (string, list or dict) is no longer than a maximum"

    def __init__(self, params: FieldMaxLengthParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.max = params.max

    def check(self, subject: Any, state: Any, ctx: EvalContext | None) -> Fail | None:
        value = self.get(subject)
        if isinstance(value, str | list | tuple | Mapping) and len(value) > self.max:
            return Fail(
                f"{self.field} has length {len(value)}, more than the allowed {self.max}",
                {"field": self.field, "length": len(value), "max": self.max},
            )
        return None
