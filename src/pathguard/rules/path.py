"""Path rules: decisions that depend on what happened earlier in the task.

Every rule here is a monitor: its state is updated when an entry is recorded and read when
a step is checked, so a check costs the same at step 10 and at step 10,000. Unless a rule's
params say `count_attempts: true`, only `completed` entries count ("satisfying" entries):
a blocked or failed attempt is kept in the trace but never satisfies or poisons a rule.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pathguard.matching import StepFilter, StepMatcher, describe_filter
from pathguard.rules._base import EvalContext, Fail, Rule, is_satisfying, register
from pathguard.vocabulary import Behavior, StepType, Verb


class MatchParams(BaseModel):
    """The shape shared by rules that look for one kind of entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step_type: StepType | list[StepType]
    verb: Verb | list[Verb] | None = None
    step_name: str | list[str] | None = None
    properties: dict[str, Any] | None = None
    count_attempts: bool = Field(
        default=False, description="count blocked, failed and intended entries too"
    )

    def as_filter(self) -> StepFilter:
        return StepFilter(
            step_type=self.step_type,
            verb=self.verb,
            step_name=self.step_name,
            properties=self.properties,
        )


class RequiresPriorParams(MatchParams):
    within: int | None = Field(
        default=None, ge=1, description="the match must be among the last N history entries"
    )


@register
class RequiresPrior(Rule):
    """A satisfying matching entry exists earlier in the task (within the last N if given)."""

    name = "requires_prior"
    Params = RequiresPriorParams
    summary = "a matching entry happened earlier in the task (optionally within the last N)"
    stateful = True

    def __init__(self, params: RequiresPriorParams, ctx: Any) -> None:  # type: ignore[override]
        super().__init__(params, ctx)
        self.p = params
        self.match = StepMatcher(params.as_filter())
        self.what = describe_filter(params.as_filter())

    def watches(self) -> frozenset[StepType] | None:
        return self.match.step_types

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
