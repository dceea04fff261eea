"""Path rules: decisions that depend on what happened earlier in the task.

Every rule here that reads history is a monitor: its state is updated when an entry is
recorded and read when a step is checked, so a check costs the same at step 10 and at step
10,000. Unless a rule's params say `count_attempts: true`, only `completed` entries count
("satisfying" entries): a blocked or failed attempt is kept in the trace but never satisfies
or poisons a rule. The normative meaning of each rule is `docs/reference/semantics.md`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from pathguard.matching import (
    STEP_TYPES,
    FieldConditions,
    StepFilter,
    StepMatcher,
    check_field_path,
    describe_filter,
)
from pathguard.rules._base import (
    CompileContext,
    EvalContext,
    Fail,
    Rule,
    is_satisfying,
    register,
)
from pathguard.vocabulary import ABSENT, Behavior, Status, StepType, Verb

__all__ = [
    "ConditionalSuccessor",
    "CurrentIs",
    "DirectlyPrecededBy",
    "FilterSpec",
    "HistoryContains",
    "MatchParams",
    "NotAfter",
    "RequiresDedicatedPrior",
    "RequiresGate",
    "RequiresPrior",
    "RequiresPriorWithoutIntervening",
    "SequenceForbidden",
    "Taint",
    "watch_union",
]


def _filter_shorthand(value: Any) -> Any:
    # A bare step type string is shorthand for `{step_type: ...}`; pydantic then validates
    # the object as a StepFilter, so a bad field is reported at its own location.
    if isinstance(value, str):
        return {"step_type": value}
    return value


FilterSpec = Annotated[StepFilter, BeforeValidator(_filter_shorthand)]
"""A rule parameter that is a filter: a step type string (`step.exec`) or a filter object."""


def watch_union(*matchers: StepMatcher | None) -> frozenset[StepType] | None:
    """The step types any of the matchers can match; None when one of them matches all."""
    types: set[StepType] = set()
    for matcher in matchers:
        if matcher is None:
            continue
        if matcher.step_types is None:
            return None
        types |= matcher.step_types
    return frozenset(types)


def _describe_step(b: Behavior) -> str:
    return b.step_type.value if b.verb is None else f"{b.step_type.value} {b.verb.value}"


# -- params shapes ----------------------------------------------------------------------


class FilterParams(StepFilter):
    """The filter fields of rules that look for one kind of entry (`step_type` required)."""

    step_type: StepType | list[StepType] = Field(description="the step type(s) to match")
    verb: Verb | list[Verb] | None = Field(
        default=None, description="the verb(s) to match; omitted matches any"
    )

    def as_filter(self) -> StepFilter:
        return StepFilter(
            step_type=self.step_type,
            verb=self.verb,
            step_name=self.step_name,
            properties=self.properties,
        )


class MatchParams(FilterParams):
    """The shape shared by rules that look for one kind of entry in the history."""

    count_attempts: bool = Field(
        default=False, description="count blocked, failed and intended entries too"
    )


class CountAttempts(BaseModel):
    """Params of rules whose filters are named fields (`required`, `source`, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count_attempts: bool = Field(
        default=False, description="count blocked, failed and intended entries too"
    )


# -- history_contains -------------------------------------------------------------------


class HistoryContainsParams(MatchParams):
    min_count: int = Field(
        default=1, ge=1, description="how many satisfying matching entries are needed"
    )


class _MatchRule(Rule):
    """A monitor that looks for one kind of entry (`step_type`, `verb`, `properties`)."""

    p: Any

    def __init__(self, params: MatchParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.p = params
        self.match = StepMatcher(params.as_filter())
        self.what = describe_filter(params.as_filter())

    def watches(self) -> frozenset[StepType] | None:
        return self.match.step_types


@register
class HistoryContains(_MatchRule):
    """The task's history holds at least `min_count` satisfying matching entries."""

    name = "history_contains"
    Params = HistoryContainsParams
    summary = "the task's history has at least min_count matching entries"
    stateful = True

    def initial_state(self) -> int:
        return 0  # matches seen, capped at min_count

    def observe(self, state: int, entry: Behavior, position: int) -> int:
        if (
            state < self.p.min_count
            and is_satisfying(entry, self.p.count_attempts)
            and self.match(entry)
        ):
            return state + 1
        return state

    def check(self, subject: Behavior, state: int, ctx: EvalContext | None) -> Fail | None:
        if state >= self.p.min_count:
            return None
        if self.p.min_count == 1:
            return Fail(lambda: f"no {self.what} in this task's history")
        return Fail(
            f"only {state} of the {self.p.min_count} required {self.what} entries "
            "in this task's history"
        )


# -- current_is -------------------------------------------------------------------------


@register
class CurrentIs(Rule):
    """The current step matches the filter (a building block for `all_of` / `any_of`)."""

    name = "current_is"
    Params = FilterParams
    summary = "the current step matches the filter"

    def __init__(self, params: FilterParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.match = StepMatcher(params.as_filter())
        self.what = describe_filter(params.as_filter())

    def check(self, subject: Behavior, state: Any, ctx: EvalContext | None) -> Fail | None:
        if self.match(subject):
            return None
        return Fail(lambda: f"this step ({_describe_step(subject)}) is not {self.what}")


# -- requires_prior ---------------------------------------------------------------------


class RequiresPriorParams(MatchParams):
    within: int | None = Field(
        default=None, ge=1, description="the match must be among the last N history entries"
    )


@register
class RequiresPrior(_MatchRule):
    """A satisfying matching entry exists earlier in the task (within the last N if given)."""

    name = "requires_prior"
    Params = RequiresPriorParams
    summary = "a matching entry happened earlier in the task (optionally within the last N)"
    stateful = True

    def initial_state(self) -> int | None:
        return None  # position of the latest satisfying match

    def observe(self, state: int | None, entry: Behavior, position: int) -> int | None:
        if is_satisfying(entry, self.p.count_attempts) and self.match(entry):
            return position
        return state

    def check(self, subject: Behavior, state: int | None, ctx: EvalContext | None) -> Fail | None:
        if state is None:
            return Fail(f"no earlier {self.what} in this task")
        within = self.p.within
        if within is not None and ctx is not None and ctx.position - state > within:
            return Fail(
                f"the last {self.what} was {ctx.position - state} entries ago, "
                f"more than the allowed {within}"
            )
        return None


# -- directly_preceded_by ---------------------------------------------------------------


@register
class DirectlyPrecededBy(Rule):
    """The last satisfying entry of the history, whatever its kind, matches the filter."""

    name = "directly_preceded_by"
    Params = MatchParams
    summary = "the entry just before this step matches the filter"
    stateful = True

    def __init__(self, params: MatchParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.p = params
        self.match = StepMatcher(params.as_filter())
        self.what = describe_filter(params.as_filter())

    def watches(self) -> frozenset[StepType] | None:
        return None  # any satisfying entry can become "the last one"

    def initial_state(self) -> tuple[bool, StepType] | None:
        return None  # (whether the last satisfying entry matched, its step type)

    def observe(
        self, state: tuple[bool, StepType] | None, entry: Behavior, position: int
    ) -> tuple[bool, StepType] | None:
        if is_satisfying(entry, self.p.count_attempts):
            return (self.match(entry), entry.step_type)
        return state

    def check(
        self, subject: Behavior, state: tuple[bool, StepType] | None, ctx: EvalContext | None
    ) -> Fail | None:
        if state is None:
            return Fail(f"nothing precedes this step in the task; it must follow {self.what}")
        matched, step_type = state
        if matched:
            return None
        return Fail(f"the entry just before this step is {step_type.value}, not {self.what}")


# -- requires_prior_without_intervening -------------------------------------------------


class WithoutInterveningParams(CountAttempts):
    required: FilterSpec = Field(description="the entry that must have happened")
    forbidden: FilterSpec = Field(
        description="the entry that must not have happened since the latest `required` match"
    )


@register
class RequiresPriorWithoutIntervening(Rule):
    """A `required` match happened, and no `forbidden` match since the latest one."""

    name = "requires_prior_without_intervening"
    Params = WithoutInterveningParams
    summary = "a required entry happened with no forbidden entry since"
    stateful = True

    def __init__(self, params: WithoutInterveningParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.p = params
        self.required = StepMatcher(params.required)
        self.forbidden = StepMatcher(params.forbidden)
        self.required_what = describe_filter(params.required)
        self.forbidden_what = describe_filter(params.forbidden)

    def watches(self) -> frozenset[StepType] | None:
        return watch_union(self.required, self.forbidden)

    def initial_state(self) -> bool | None:
        # None: no required match yet; True: armed; False: a forbidden match came after it.
        return None

    def observe(self, state: bool | None, entry: Behavior, position: int) -> bool | None:
        if not is_satisfying(entry, self.p.count_attempts):
            return state
        if self.required(entry):
            return True
        if state is not None and self.forbidden(entry):
            return False
        return state

    def check(self, subject: Behavior, state: bool | None, ctx: EvalContext | None) -> Fail | None:
        if state is True:
            return None
        if state is None:
            return Fail(f"no earlier {self.required_what} in this task")
        return Fail(f"a {self.forbidden_what} happened after the last {self.required_what}")


# -- requires_dedicated_prior -----------------------------------------------------------

_NONE: Final = 0
_AVAILABLE: Final = 1
_USED: Final = 2


@register
class RequiresDedicatedPrior(Rule):
    """Each targeted step needs its own prior match: one prior serves one targeted step."""

    name = "requires_dedicated_prior"
    Params = MatchParams
    summary = "a matching entry happened since the last targeted step (one per step)"
    stateful = True

    def __init__(self, params: MatchParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.p = params
        self.match = StepMatcher(params.as_filter())
        self.what = describe_filter(params.as_filter())
        self.target = ctx.target
        self.state_uses_target = True
        # Only step entries consume a prior, so task markers never need watching for that.
        target_types = ctx.target.step_types
        self.target_types = STEP_TYPES if target_types is None else target_types & STEP_TYPES

    def watches(self) -> frozenset[StepType] | None:
        prior = self.match.step_types
        return None if prior is None else prior | self.target_types

    def initial_state(self) -> int:
        return _NONE

    def observe(self, state: int, entry: Behavior, position: int) -> int:
        if not is_satisfying(entry, self.p.count_attempts):
            return state
        # An entry matching both the prior filter and the target is a new prior.
        if self.match(entry):
            return _AVAILABLE
        if state == _AVAILABLE and entry.step_type in self.target_types and self.target(entry):
            return _USED
        return state

    def check(self, subject: Behavior, state: int, ctx: EvalContext | None) -> Fail | None:
        if state == _AVAILABLE:
            return None
        if state == _NONE:
            return Fail(f"no earlier {self.what} in this task")
        return Fail(
            f"the last {self.what} was already used by an earlier step; each step needs its own"
        )


# -- requires_gate ----------------------------------------------------------------------

GateType = Literal["human_approval", "policy_check", "guardrail"]


class RequiresGateParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gate_type: GateType = Field(
        default="human_approval", description="the `guard.gate_type` the gate must have"
    )
    within: int | None = Field(
        default=None, ge=1, description="the gate must be among the last N history entries"
    )
    bind_to_input: bool = Field(
        default=False,
        description="the gate's `guard.approved_input_hash` must equal this step's input hash",
    )


_GateState = tuple[int, Any]  # (position, approved_input_hash or ABSENT) of the latest gate


@register
class RequiresGate(Rule):
    """An approved gate of the given type happened earlier (optionally bound to this input)."""

    name = "requires_gate"
    Params = RequiresGateParams
    summary = "an approved step.gate of the given type happened earlier in the task"
    stateful = True
    _WATCHES: Final = frozenset({StepType.step_gate})

    def __init__(self, params: RequiresGateParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.p = params
        self.approved = FieldConditions(
            {"guard.gate_type": params.gate_type, "guard.decision": "approved"},
            prefix="properties.",
        )
        self.gate_type = params.gate_type
        self.what = f"approved {params.gate_type} gate"

    def watches(self) -> frozenset[StepType] | None:
        return self._WATCHES

    def initial_state(self) -> _GateState | None:
        return None

    def observe(
        self, state: _GateState | None, entry: Behavior, position: int
    ) -> _GateState | None:
        # Read the guard group directly: gates are recorded on every approval, and many
        # policies may watch them.
        if entry.status is not Status.completed:
            return state
        guard = entry.properties.get("guard")
        if (
            isinstance(guard, Mapping)
            and guard.get("decision") == "approved"
            and guard.get("gate_type") == self.gate_type
        ):
            return (position, guard.get("approved_input_hash", ABSENT))
        return state

    def check(
        self, subject: Behavior, state: _GateState | None, ctx: EvalContext | None
    ) -> Fail | None:
        if state is None:
            return Fail(f"no {self.what} earlier in this task")
        position, approved_hash = state
        within = self.p.within
        if within is not None and ctx is not None and ctx.position - position > within:
            return Fail(
                f"the last {self.what} was {ctx.position - position} entries ago, "
                f"more than the allowed {within}"
            )
        if self.p.bind_to_input and ctx is not None and subject.input is None:
            return Fail(
                "bind_to_input needs the step's input, and this step does not capture it "
                "(capture_input=False)"
            )
        if self.p.bind_to_input and ctx is not None and approved_hash != ctx.input_hash:
            if not isinstance(approved_hash, str):
                return Fail(f"the last {self.what} does not record which input it approved")
            return Fail(f"the last {self.what} approved a different input than this step's")
        return None


# -- sequence_forbidden -----------------------------------------------------------------


class SequenceForbiddenParams(CountAttempts):
    sequence: list[FilterSpec] = Field(
        min_length=1,
        description="filters that must not occur in this order (gaps allowed) in the task",
    )


@register
class SequenceForbidden(Rule):
    """The task's satisfying entries, then this step, must not contain the sequence in order."""

    name = "sequence_forbidden"
    Params = SequenceForbiddenParams
    summary = "the path must not contain the listed steps in this order"
    stateful = True

    def __init__(self, params: SequenceForbiddenParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.p = params
        self.steps = tuple(StepMatcher(f) for f in params.sequence)
        self.last = self.steps[-1]
        self.what = describe_filter(params.sequence)

    def watches(self) -> frozenset[StepType] | None:
        return watch_union(*self.steps)

    def initial_state(self) -> int:
        # How many leading elements of the sequence the history contains in order. Matching
        # each element at its earliest chance gives the longest such prefix.
        return 0

    def observe(self, state: int, entry: Behavior, position: int) -> int:
        if (
            state < len(self.steps)
            and is_satisfying(entry, self.p.count_attempts)
            and self.steps[state](entry)
        ):
            return state + 1
        return state

    def check(self, subject: Behavior, state: int, ctx: EvalContext | None) -> Fail | None:
        n = len(self.steps)
        if state >= n:
            return Fail(f"the task already contains the forbidden sequence {self.what}")
        if state == n - 1 and self.last(subject):
            return Fail(f"this step would complete the forbidden sequence {self.what}")
        return None


# -- not_after --------------------------------------------------------------------------


@register
class NotAfter(_MatchRule):
    """Once a satisfying matching entry exists, every targeted step violates."""

    name = "not_after"
    Params = MatchParams
    summary = "targeted steps are refused for the rest of the task once a matching entry happened"
    stateful = True

    def initial_state(self) -> bool:
        return False

    def observe(self, state: bool, entry: Behavior, position: int) -> bool:
        return state or (is_satisfying(entry, self.p.count_attempts) and self.match(entry))

    def check(self, subject: Behavior, state: bool, ctx: EvalContext | None) -> Fail | None:
        if state:
            return Fail(f"not allowed after the earlier {self.what} in this task")
        return None


# -- taint ------------------------------------------------------------------------------


class TaintParams(CountAttempts):
    source: FilterSpec = Field(description="the entry that taints the task")
    cleared_by: FilterSpec | None = Field(
        default=None, description="an entry that clears the taint; omitted = never cleared"
    )


@register
class Taint(Rule):
    """After a `source` match the task is tainted until a later `cleared_by` match."""

    name = "taint"
    Params = TaintParams
    summary = "targeted steps are refused while the task is tainted by a source entry"
    stateful = True

    def __init__(self, params: TaintParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.p = params
        self.source = StepMatcher(params.source)
        self.cleared_by = StepMatcher(params.cleared_by) if params.cleared_by else None
        self.what = describe_filter(params.source)
        self.clear_what = describe_filter(params.cleared_by) if params.cleared_by else None

    def watches(self) -> frozenset[StepType] | None:
        return watch_union(self.source, self.cleared_by)

    def initial_state(self) -> bool:
        return False

    def observe(self, state: bool, entry: Behavior, position: int) -> bool:
        if not is_satisfying(entry, self.p.count_attempts):
            return state
        if self.source(entry):
            return True  # matching both source and cleared_by leaves the task tainted
        if state and self.cleared_by is not None and self.cleared_by(entry):
            return False
        return state

    def check(self, subject: Behavior, state: bool, ctx: EvalContext | None) -> Fail | None:
        if not state:
            return None
        if self.clear_what is None:
            return Fail(f"the task is tainted by an earlier {self.what}")
        return Fail(
            f"the task is tainted by an earlier {self.what} and no {self.clear_what} "
            "has cleared it since"
        )


# -- conditional_successor --------------------------------------------------------------


class ConditionalSuccessorParams(CountAttempts):
    trigger: FilterSpec = Field(description="the entry after which the constraint applies")
    condition: dict[str, Any] = Field(
        description="dot-path conditions over the trigger entry, e.g. `output.status: error`"
    )
    required: FilterSpec | None = Field(
        default=None, description="the step after the trigger must match this"
    )
    forbidden: FilterSpec | None = Field(
        default=None, description="the step after the trigger must not match this"
    )

    @field_validator("condition")
    @classmethod
    def _check_condition(cls, value: dict[str, Any]) -> dict[str, Any]:
        for path in FieldConditions(value).spec:
            check_field_path(path)
        return value

    @model_validator(mode="after")
    def _needs_a_constraint(self) -> ConditionalSuccessorParams:
        if self.required is None and self.forbidden is None:
            raise ValueError(
                "conditional_successor needs `required`, `forbidden` or both; without them "
                "it can never be violated."
            )
        return self


@register
class ConditionalSuccessor(Rule):
    """After a trigger entry meeting the condition, the next step must (not) match a filter."""

    name = "conditional_successor"
    Params = ConditionalSuccessorParams
    summary = "the step after a matching trigger must be `required` / must not be `forbidden`"
    stateful = True

    def __init__(self, params: ConditionalSuccessorParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx)
        self.p = params
        self.trigger = StepMatcher(params.trigger)
        self.condition = FieldConditions(params.condition)
        self.required = StepMatcher(params.required) if params.required else None
        self.forbidden = StepMatcher(params.forbidden) if params.forbidden else None
        trigger_what = describe_filter(params.trigger)
        if self.condition:
            trigger_what += f" meeting {self.condition!r}"
        self.trigger_what = trigger_what
        self.required_what = describe_filter(params.required) if params.required else ""
        self.forbidden_what = describe_filter(params.forbidden) if params.forbidden else ""

    def watches(self) -> frozenset[StepType] | None:
        return None  # any satisfying entry can end the trigger's turn

    def initial_state(self) -> bool:
        return False  # whether the last satisfying entry was a trigger meeting the condition

    def observe(self, state: bool, entry: Behavior, position: int) -> bool:
        if not is_satisfying(entry, self.p.count_attempts):
            return state
        return self.trigger(entry) and self.condition(entry)

    def check(self, subject: Behavior, state: bool, ctx: EvalContext | None) -> Fail | None:
        if not state:
            return None
        if self.required is not None and not self.required(subject):
            return Fail(f"after {self.trigger_what}, the next step must be {self.required_what}")
        if self.forbidden is not None and self.forbidden(subject):
            return Fail(
                f"after {self.trigger_what}, the next step must not be {self.forbidden_what}"
            )
        return None
