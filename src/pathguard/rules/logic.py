"""Logic rules: combine other rules with `all_of`, `any_of` and `not`.

Children are `{rule, params}` objects, compiled with the parent policy's context (so they
see the same `when` target and scope) and may nest. Each child keeps its own monitor state:
a combinator's state is the tuple of its children's states. A violation's
`details["children"]` is the readable sub-result tree `[{rule, passed, reason, children?}]`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pathguard.rules._base import (
    REGISTRATION,
    STEP_EXECUTION,
    CompileContext,
    EvalContext,
    Fail,
    Rule,
    compile_rule,
    get_rule,
    register,
)
from pathguard.vocabulary import Behavior, StepType

__all__ = ["AllOf", "AnyOf", "NotRule", "RuleSpec"]


def _explain(exc: ValidationError) -> str:
    """One sentence out of a child's params errors (`within: Input should be ...`)."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ").rstrip(".")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


class RuleSpec(BaseModel):
    """A nested rule: its registered name and its params, checked when the policy loads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str = Field(description="the name of a registered rule")
    params: dict[str, Any] = Field(default_factory=dict, description="that rule's params")

    @model_validator(mode="after")
    def _known_rule_with_valid_params(self) -> RuleSpec:
        try:
            cls = get_rule(self.rule)
        except KeyError as exc:
            raise ValueError(f"{exc.args[0]} Run `pathguard rules` to list the rules.") from None
        try:
            cls.Params.model_validate(self.params)
        except ValidationError as exc:
            raise ValueError(f"bad params for {self.rule!r}: {_explain(exc)}.") from None
        return self


class RulesParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[RuleSpec] = Field(min_length=1, description="the rules to combine")


class NotParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: RuleSpec = Field(description="the rule to negate")


_Outcome = tuple[Rule, Fail | None]


def _tree(outcomes: list[_Outcome]) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    for child, fail in outcomes:
        node: dict[str, Any] = {
            "rule": child.name,
            "passed": fail is None,
            "reason": None if fail is None else fail.reason,
        }
        if fail is not None and "children" in fail.details:
            node["children"] = fail.details["children"]
        nodes.append(node)
    return nodes


class _Combinator(Rule):
    """Compiles the children and drives their monitors as one."""

    scopes = frozenset({STEP_EXECUTION, REGISTRATION})

    def __init__(self, params: BaseModel, ctx: CompileContext, specs: list[RuleSpec]) -> None:
        super().__init__(params, ctx)
        # compile_rule checks each child works in this policy's scope.
        self.children: tuple[Rule, ...] = tuple(
            compile_rule(spec.rule, spec.params, ctx) for spec in specs
        )
        monitors = [i for i, c in enumerate(self.children) if c.stateful]
        self.stateful = bool(monitors)
        self.phase = "after" if any(c.phase == "after" for c in self.children) else "before"
        per = {self.children[i].state_per for i in monitors}
        if len(per) > 1:
            raise ValueError(
                f"{self.name} cannot combine per-agent rules (rate_limit with per: agent) and "
                "per-task monitors, since it keeps one state for all of them; put them in "
                "separate policies."
            )
        self.state_per: Literal["task", "agent"] = per.pop() if per else "task"
        self._observers = tuple((i, self.children[i], self.children[i].watches()) for i in monitors)
        # The states handed to children when the engine keeps none: nothing is stateful,
        # or the policy is an agent_registration one.
        self._blank = tuple(c.initial_state() for c in self.children)

    def watches(self) -> frozenset[StepType] | None:
        types: set[StepType] = set()
        for _, _, watched in self._observers:
            if watched is None:
                return None
            types |= watched
        return frozenset(types)

    def initial_state(self) -> tuple[Any, ...]:
        return tuple(c.initial_state() for c in self.children)

    def observe(self, state: tuple[Any, ...], entry: Behavior, position: int) -> tuple[Any, ...]:
        states = list(state)
        step_type = entry.step_type
        for i, child, watched in self._observers:
            if watched is None or step_type in watched:
                states[i] = child.observe(states[i], entry, position)
        return tuple(states)

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(repr(c) for c in self.children)})"


@register
class AllOf(_Combinator):
    """Violated when any child rule is violated."""

    name = "all_of"
    Params = RulesParams
    summary = "every listed rule must pass"

    def __init__(self, params: RulesParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx, params.rules)

    def check(self, subject: Any, state: Any, ctx: EvalContext | None) -> Fail | None:
        states = self._blank if state is None else state
        for child, child_state in zip(self.children, states, strict=False):
            if child.check(subject, child_state, ctx) is not None:
                return self._fail(subject, states, ctx)
        return None

    def _fail(self, subject: Any, states: tuple[Any, ...], ctx: EvalContext | None) -> Fail:
        # Off the fast path: check every child again (checks are pure) to show them all.
        outcomes: list[_Outcome] = [
            (child, child.check(subject, child_state, ctx))
            for child, child_state in zip(self.children, states, strict=True)
        ]
        reasons = "; ".join(fail.reason for _, fail in outcomes if fail is not None)
        return Fail(reasons, {"children": _tree(outcomes)})


@register
class AnyOf(_Combinator):
    """Violated when every child rule is violated."""

    name = "any_of"
    Params = RulesParams
    summary = "at least one of the listed rules must pass"

    def __init__(self, params: RulesParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx, params.rules)

    def check(self, subject: Any, state: Any, ctx: EvalContext | None) -> Fail | None:
        states = self._blank if state is None else state
        outcomes: list[_Outcome] = []
        for child, child_state in zip(self.children, states, strict=False):
            fail = child.check(subject, child_state, ctx)
            if fail is None:
                return None
            outcomes.append((child, fail))
        reasons = "; ".join(fail.reason for _, fail in outcomes if fail is not None)
        count = len(outcomes)
        lead = "the only alternative failed" if count == 1 else f"none of {count} alternatives held"
        return Fail(f"{lead} ({reasons})", {"children": _tree(outcomes)})


@register
class NotRule(_Combinator):
    """Violated when its child rule passes."""

    name = "not"
    Params = NotParams
    summary = "the given rule must not pass"

    def __init__(self, params: NotParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx, [params.rule])
        self.child = self.children[0]

    def check(self, subject: Any, state: Any, ctx: EvalContext | None) -> Fail | None:
        fail = self.child.check(subject, self._blank[0] if state is None else state[0], ctx)
        if fail is not None:
            return None
        return Fail(
            f"{self.child!r} holds, and this policy forbids that",
            {"children": _tree([(self.child, None)])},
        )
