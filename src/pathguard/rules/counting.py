"""Counting and limit rules: how many, how often, how much, how long.

Counting rules count *step entries* only (task markers never count), and only when the
current step itself matches the rule's `filter` (omitted = every step entry); a step that
does not match the filter never violates them. Their monitor state is a number, or for
`rate_limit` at most `max` timestamps, whatever the length of the task.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pathguard.matching import STEP_TYPES, StepFilter, StepMatcher, describe_filter
from pathguard.rules._base import CompileContext, EvalContext, Fail, Rule, is_satisfying, register
from pathguard.rules.path import FilterSpec
from pathguard.vocabulary import Behavior, Status, StepType, field_getter

__all__ = ["Budget", "MaxConsecutive", "MaxSteps", "MaxTaskDuration", "RateLimit"]


class CountingParams(BaseModel):
    """The params every counting rule shares: which steps count, and which statuses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    filter: FilterSpec | None = Field(
        default=None,
        description="which step entries count (a step type or a filter); omitted = every one",
    )
    count_attempts: bool = Field(
        default=False, description="count blocked, failed and intended entries too"
    )

    @field_validator("filter")
    @classmethod
    def _steps_only(cls, value: StepFilter | None) -> StepFilter | None:
        types = value.step_type if value is not None else None
        listed = types if isinstance(types, list) else [types] if types is not None else []
        markers = [t.value for t in listed if t not in STEP_TYPES]
        if markers:
            raise ValueError(
                f"counting rules count step entries only, so {', '.join(markers)} can never "
                "count; remove it from the filter."
            )
        return value


class _Counting(Rule):
    """Shared set-up: the compiled filter, limited to step entries."""

    def __init__(self, params: CountingParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.count_attempts = params.count_attempts
        self.match = StepMatcher(params.filter, default_types=STEP_TYPES)
        self.things = f"{describe_filter(params.filter)} steps" if params.filter else "steps"

    def watches(self) -> frozenset[StepType] | None:
        return self.match.step_types

    def counts(self, entry: Behavior) -> bool:
        # is_satisfying, inlined: this runs for every recorded entry the monitor watches.
        return (self.count_attempts or entry.status is _COMPLETED) and self.match(entry)


_COMPLETED = Status.completed


# -- max_steps --------------------------------------------------------------------------


class MaxStepsParams(CountingParams):
    max: int = Field(ge=0, description="how many matching steps the task may take")


@register
class MaxSteps(_Counting):
    """At most `max` matching steps per task, the current one included."""

    name = "max_steps"
    Params = MaxStepsParams
    summary = "a task takes at most max matching steps"
    stateful = True

    def __init__(self, params: MaxStepsParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.max = params.max

    def initial_state(self) -> int:
        return 0

    def observe(self, state: int, entry: Behavior, position: int) -> int:
        # Capped: once past the limit the exact count no longer changes a decision.
        return state + 1 if state <= self.max and self.counts(entry) else state

    def check(self, subject: Behavior, state: int, ctx: EvalContext | None) -> Fail | None:
        if state + 1 <= self.max or not self.match(subject):
            return None
        return Fail(
            f"{state + 1} {self.things} in this task would exceed the allowed {self.max}",
            {"max": self.max},
        )


# -- max_consecutive --------------------------------------------------------------------


class MaxConsecutiveParams(CountingParams):
    max: int = Field(ge=1, description="how many matching steps may follow each other")


@register
class MaxConsecutive(_Counting):
    """At most `max` matching steps in a row; any other satisfying step entry ends the run."""

    name = "max_consecutive"
    Params = MaxConsecutiveParams
    summary = "at most max matching steps in a row"
    stateful = True

    def __init__(self, params: MaxConsecutiveParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.max = params.max

    def watches(self) -> frozenset[StepType] | None:
        return STEP_TYPES  # a non-matching step entry breaks the run; task markers do not

    def initial_state(self) -> int:
        return 0

    def observe(self, state: int, entry: Behavior, position: int) -> int:
        if entry.step_type not in STEP_TYPES or not is_satisfying(entry, self.count_attempts):
            return state
        if self.match(entry):
            return state + 1 if state <= self.max else state
        return 0

    def check(self, subject: Behavior, state: int, ctx: EvalContext | None) -> Fail | None:
        if state + 1 <= self.max or not self.match(subject):
            return None
        return Fail(
            f"{state + 1} {self.things} in a row would exceed the allowed {self.max}",
            {"max": self.max},
        )


# -- budget -----------------------------------------------------------------------------


class BudgetParams(CountingParams):
    property: str = Field(
        min_length=1,
        description="a numeric path under `properties`, e.g. `usage.cost_usd`",
    )
    max: float = Field(ge=0, description="the largest allowed sum over the task")

    @field_validator("property")
    @classmethod
    def _under_properties(cls, value: str) -> str:
        if value.startswith("properties."):
            raise ValueError(
                f"`property` is already a path under `properties`; write "
                f"{value.removeprefix('properties.')!r} instead of {value!r}."
            )
        if any(not part for part in value.split(".")):
            raise ValueError(f"{value!r} is not a dot path (it has an empty segment).")
        return value


def _amount(value: Any) -> float:
    """A value's contribution to a budget: numbers count, anything else (and NaN) is 0."""
    kind = type(value)
    if kind is float:
        return value if value == value else 0.0  # NaN is the one float not equal to itself
    if kind is int:
        return float(value)
    if kind is bool or not isinstance(value, int | float):
        return 0.0
    return 0.0 if math.isnan(value) else float(value)


@register
class Budget(_Counting):
    """The sum of a numeric property over matching steps, this one included, stays <= max."""

    name = "budget"
    Params = BudgetParams
    summary = "the sum of a numeric property over the task stays within max"
    stateful = True

    def __init__(self, params: BudgetParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.max = params.max
        self.property = params.property
        self.get = field_getter(f"properties.{params.property}")

    def initial_state(self) -> float:
        return 0.0

    def observe(self, state: float, entry: Behavior, position: int) -> float:
        return state + _amount(self.get(entry)) if self.counts(entry) else state

    def check(self, subject: Behavior, state: float, ctx: EvalContext | None) -> Fail | None:
        if not self.match(subject):
            return None
        total = state + _amount(self.get(subject))
        if total <= self.max:
            return None
        return Fail(
            f"{self.property} would reach {total:g} in this task, more than the allowed "
            f"{self.max:g}",
            {"total": total, "max": self.max},
        )


# -- rate_limit -------------------------------------------------------------------------


class RateLimitParams(CountingParams):
    max: int = Field(ge=1, description="how many matching steps the window may hold")
    window_seconds: float = Field(gt=0, description="the length of the sliding window")
    per: Literal["task", "agent"] = Field(
        default="task", description="count within one task, or over every task of the agent"
    )


@register
class RateLimit(_Counting):
    """At most `max` matching steps within the last `window_seconds`, this one included."""

    name = "rate_limit"
    Params = RateLimitParams
    summary = "at most max matching steps per sliding window, per task or per agent"
    stateful = True

    def __init__(self, params: RateLimitParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.max = params.max
        self.window = params.window_seconds
        self.state_per = params.per
        self.scope_word = "for this agent" if params.per == "agent" else "in this task"

    def initial_state(self) -> list[float]:
        # A min-heap of the `max` latest timestamps seen. The window holds `max` entries
        # exactly when its smallest one is inside it; keeping the largest timestamps (not
        # the last recorded) stays exact when tasks of one agent record out of order.
        return []

    def observe(self, state: list[float], entry: Behavior, position: int) -> list[float]:
        if self.counts(entry):
            if len(state) < self.max:
                heapq.heappush(state, entry.timestamp)
            elif entry.timestamp > state[0]:
                heapq.heapreplace(state, entry.timestamp)
        return state

    def check(self, subject: Behavior, state: list[float], ctx: EvalContext | None) -> Fail | None:
        if len(state) < self.max or not self.match(subject):
            return None
        now = subject.timestamp
        if state[0] <= now - self.window:
            return None
        return Fail(
            f"{self.max + 1} {self.things} within {self.window:g} seconds {self.scope_word} "
            f"would exceed the allowed {self.max}",
            {"max": self.max, "window_seconds": self.window, "per": self.state_per},
        )


# -- max_task_duration ------------------------------------------------------------------


class MaxTaskDurationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: float = Field(gt=0, description="how long after `task.start` steps may run")


@register
class MaxTaskDuration(Rule):
    """Steps are refused once the task has run longer than `seconds` since its start."""

    name = "max_task_duration"
    Params = MaxTaskDurationParams
    summary = "a task runs at most the given number of seconds"

    def __init__(self, params: MaxTaskDurationParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.seconds = params.seconds

    def check(self, subject: Behavior, state: Any, ctx: EvalContext | None) -> Fail | None:
        started = ctx.task_started_at if ctx is not None else None
        if started is None:
            return None
        elapsed = subject.timestamp - started
        if elapsed <= self.seconds:
            return None
        return Fail(
            f"the task has run {elapsed:g} seconds, more than the allowed {self.seconds:g}",
            {"elapsed_seconds": elapsed, "max_seconds": self.seconds},
        )
