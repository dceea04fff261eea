"""A naive reference evaluator for the built-in rules, used only by the tests.

It is written straight from `docs/reference/semantics.md` and shares nothing with the
engine's rule modules except the filter semantics of `pathguard.matching`. Every rule
rescans the whole history on every step: slow on purpose, and short enough to check by
reading against the semantics page. The property tests in `test_engine_equivalence.py`
show that the engine's incremental monitors reach the same decisions on random paths.

Each rule function answers one question, "is the policy violated?", from a `Scene`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import re2

from pathguard import (
    ABSENT,
    Action,
    AgentRegistration,
    Behavior,
    Effect,
    Mode,
    Policy,
    PolicySet,
    Status,
    StepType,
    canonical_hash,
)
from pathguard.matching import FieldConditions, StepFilter, StepMatcher, filter_from

__all__ = [
    "REFERENCE_RULES",
    "STEP_ENTRY_TYPES",
    "naive_decision",
    "naive_targeted",
    "naive_violated",
]

STEP_ENTRY_TYPES = frozenset(t for t in StepType if t.value.startswith("step."))

_ACTION_OF = {Effect.warn: Action.warn, Effect.approve: Action.approve, Effect.block: Action.block}
_STRENGTH = {Action.allow: 0, Action.warn: 1, Action.approve: 2, Action.block: 3}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Scene:
    """Everything a rule may look at when it decides on the current step."""

    history: Sequence[Behavior]
    current: Behavior
    target: StepMatcher
    agent_history: Sequence[Behavior]
    agent: AgentRegistration | None


Check = Callable[[Mapping[str, Any], Scene], bool]


# -- small helpers ------------------------------------------------------------------------


def _satisfying(p: Mapping[str, Any]) -> Callable[[Behavior], bool]:
    attempts = bool(p.get("count_attempts", False))
    return lambda e: attempts or e.status is Status.completed


def _own_filter(p: Mapping[str, Any]) -> StepMatcher:
    """The filter made of a rule's own `step_type`, `verb`, `step_name`, `properties`."""
    spec = StepFilter(
        step_type=p.get("step_type"),
        verb=p.get("verb"),
        step_name=p.get("step_name"),
        properties=p.get("properties"),
    )
    return StepMatcher(spec)


def _filter(value: Any) -> StepMatcher:
    """A filter-valued param: a step type string or a filter object."""
    return StepMatcher(filter_from(value))


def _is_step_entry(b: Behavior) -> bool:
    return b.step_type in STEP_ENTRY_TYPES


def _number(value: Any) -> float:
    """A budget contribution: booleans, NaN and non-numbers count as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return 0.0
    return float(value)


# -- fields -------------------------------------------------------------------------------


def _field_not_empty(p: Mapping[str, Any], s: Scene) -> bool:
    v = s.current.get(p["field"])
    if v is ABSENT or v is None:
        return True
    if isinstance(v, str):
        return not v.strip()
    if isinstance(v, list | tuple | Mapping):
        return len(v) == 0
    return False


def _field_in_list(p: Mapping[str, Any], s: Scene) -> bool:
    v = s.current.get(p["field"])
    values = list(p["values"])
    if v is ABSENT:
        return True
    if isinstance(v, list | tuple):
        return any(x not in values for x in v)
    return v not in values


def _field_matches_regex(p: Mapping[str, Any], s: Scene) -> bool:
    v = s.current.get(p["field"])
    if not isinstance(v, str):
        return True
    return re2.search(p["pattern"], v) is None


def _field_max_length(p: Mapping[str, Any], s: Scene) -> bool:
    v = s.current.get(p["field"])
    if isinstance(v, str | list | tuple | Mapping):
        return len(v) > int(p["max"])
    return False


def _forbidden_for_classification(p: Mapping[str, Any], s: Scene) -> bool:
    v = s.current.get(p.get("field", "properties.data.classification"))
    classes = set(p["classes"])
    if isinstance(v, str):
        return v in classes
    if isinstance(v, list | tuple):
        return any(isinstance(x, str) and x in classes for x in v)
    return False


# -- path ---------------------------------------------------------------------------------


def _history_contains(p: Mapping[str, Any], s: Scene) -> bool:
    sat, match = _satisfying(p), _own_filter(p)
    found = sum(1 for e in s.history if sat(e) and match(e))
    return found < int(p.get("min_count", 1))


def _current_is(p: Mapping[str, Any], s: Scene) -> bool:
    return not _own_filter(p)(s.current)


def _requires_prior(p: Mapping[str, Any], s: Scene) -> bool:
    sat, match = _satisfying(p), _own_filter(p)
    positions = [i for i, e in enumerate(s.history) if sat(e) and match(e)]
    if not positions:
        return True
    within = p.get("within")
    return within is not None and len(s.history) - positions[-1] > within


def _directly_preceded_by(p: Mapping[str, Any], s: Scene) -> bool:
    sat, match = _satisfying(p), _own_filter(p)
    entries = [e for e in s.history if sat(e)]
    return not entries or not match(entries[-1])


def _requires_prior_without_intervening(p: Mapping[str, Any], s: Scene) -> bool:
    sat = _satisfying(p)
    required, forbidden = _filter(p["required"]), _filter(p["forbidden"])
    for e in reversed(s.history):
        if not sat(e):
            continue
        if required(e):
            return False
        if forbidden(e):
            return True
    return True


def _requires_dedicated_prior(p: Mapping[str, Any], s: Scene) -> bool:
    sat, match = _satisfying(p), _own_filter(p)
    positions = [i for i, e in enumerate(s.history) if sat(e) and match(e)]
    if not positions:
        return True
    later = s.history[positions[-1] + 1 :]
    return any(sat(e) and _is_step_entry(e) and s.target(e) for e in later)


def _requires_gate(p: Mapping[str, Any], s: Scene) -> bool:
    sat = _satisfying(p)
    gate_type = p.get("gate_type", "human_approval")
    within = p.get("within")
    n = len(s.history)
    gates = [
        i
        for i, e in enumerate(s.history)
        if sat(e)
        and e.step_type is StepType.step_gate
        and e.get("properties.guard.gate_type") == gate_type
        and e.get("properties.guard.decision") == "approved"
        and (within is None or n - i <= within)
    ]
    if not gates:
        return True
    if p.get("bind_to_input", False):
        # Not in semantics.md yet, documented in docs/reference/guard.md: an input of None
        # means the step was not captured (capture_input=False), so nothing can be bound.
        if s.current.input is None:
            return True
        latest = s.history[gates[-1]]
        approved = latest.get("properties.guard.approved_input_hash")
        return bool(approved != canonical_hash(s.current.input))
    return False


def _sequence_forbidden(p: Mapping[str, Any], s: Scene) -> bool:
    sat = _satisfying(p)
    steps = [_filter(x) for x in p["sequence"]]
    matched = 0  # greedy: the longest prefix of the sequence found in order
    for e in s.history:
        if matched == len(steps):
            break
        if sat(e) and steps[matched](e):
            matched += 1
    if matched == len(steps):
        return True
    return matched == len(steps) - 1 and steps[-1](s.current)


def _not_after(p: Mapping[str, Any], s: Scene) -> bool:
    sat, match = _satisfying(p), _own_filter(p)
    return any(sat(e) and match(e) for e in s.history)


def _taint(p: Mapping[str, Any], s: Scene) -> bool:
    sat = _satisfying(p)
    source = _filter(p["source"])
    cleared_by = _filter(p["cleared_by"]) if p.get("cleared_by") is not None else None
    tainted = False
    for e in s.history:
        if not sat(e):
            continue
        if source(e):
            tainted = True
        elif cleared_by is not None and cleared_by(e):
            tainted = False
    return tainted


def _conditional_successor(p: Mapping[str, Any], s: Scene) -> bool:
    sat = _satisfying(p)
    entries = [e for e in s.history if sat(e)]
    if not entries:
        return False
    last = entries[-1]
    condition = FieldConditions(p.get("condition") or {})
    if not (_filter(p["trigger"])(last) and condition(last)):
        return False
    if p.get("required") is not None and not _filter(p["required"])(s.current):
        return True
    return p.get("forbidden") is not None and _filter(p["forbidden"])(s.current)


# -- counting and limits ------------------------------------------------------------------


def _counted(p: Mapping[str, Any]) -> Callable[[Behavior], bool]:
    """Which entries a counting rule counts: step entries matching its `filter`."""
    spec = p.get("filter")
    match = _filter(spec) if spec is not None else None
    return lambda b: _is_step_entry(b) and (match is None or match(b))


def _max_steps(p: Mapping[str, Any], s: Scene) -> bool:
    sat, counted = _satisfying(p), _counted(p)
    if not counted(s.current):
        return False
    return sum(1 for e in s.history if sat(e) and counted(e)) + 1 > int(p["max"])


def _max_consecutive(p: Mapping[str, Any], s: Scene) -> bool:
    sat, counted = _satisfying(p), _counted(p)
    if not counted(s.current):
        return False
    run = 0
    for e in reversed(s.history):
        if not sat(e) or not _is_step_entry(e):
            continue  # markers and attempts neither extend nor break the run
        if not counted(e):
            break
        run += 1
    return run + 1 > int(p["max"])


def _budget(p: Mapping[str, Any], s: Scene) -> bool:
    sat, counted = _satisfying(p), _counted(p)
    if not counted(s.current):
        return False
    path = "properties." + p["property"]
    spent = sum(_number(e.get(path)) for e in s.history if sat(e) and counted(e))
    return spent + _number(s.current.get(path)) > float(p["max"])


def _rate_limit(p: Mapping[str, Any], s: Scene) -> bool:
    sat, counted = _satisfying(p), _counted(p)
    if not counted(s.current):
        return False
    entries = s.agent_history if p.get("per", "task") == "agent" else s.history
    since = s.current.timestamp - p["window_seconds"]
    recent = sum(1 for e in entries if sat(e) and counted(e) and e.timestamp > since)
    return recent + 1 > int(p["max"])


def _max_task_duration(p: Mapping[str, Any], s: Scene) -> bool:
    starts = [e.timestamp for e in s.history if e.step_type is StepType.task_start]
    return bool(starts) and s.current.timestamp - starts[0] > p["seconds"]


# -- logic --------------------------------------------------------------------------------


def _child(spec: Mapping[str, Any], s: Scene) -> bool:
    return naive_violated(spec["rule"], spec.get("params") or {}, s)


def _all_of(p: Mapping[str, Any], s: Scene) -> bool:
    return any(_child(c, s) for c in p["rules"])


def _any_of(p: Mapping[str, Any], s: Scene) -> bool:
    return all(_child(c, s) for c in p["rules"])


def _not(p: Mapping[str, Any], s: Scene) -> bool:
    return not _child(p["rule"], s)


REFERENCE_RULES: dict[str, Check] = {
    "field_not_empty": _field_not_empty,
    "field_in_list": _field_in_list,
    "field_matches_regex": _field_matches_regex,
    "field_max_length": _field_max_length,
    "forbidden_for_classification": _forbidden_for_classification,
    "history_contains": _history_contains,
    "current_is": _current_is,
    "requires_prior": _requires_prior,
    "directly_preceded_by": _directly_preceded_by,
    "requires_prior_without_intervening": _requires_prior_without_intervening,
    "requires_dedicated_prior": _requires_dedicated_prior,
    "requires_gate": _requires_gate,
    "sequence_forbidden": _sequence_forbidden,
    "not_after": _not_after,
    "taint": _taint,
    "conditional_successor": _conditional_successor,
    "max_steps": _max_steps,
    "max_consecutive": _max_consecutive,
    "budget": _budget,
    "rate_limit": _rate_limit,
    "max_task_duration": _max_task_duration,
    "all_of": _all_of,
    "any_of": _any_of,
    "not": _not,
}


def naive_violated(rule: str, params: Mapping[str, Any], scene: Scene) -> bool:
    """Whether one rule, with raw params from a policy document, is violated in a scene."""
    return REFERENCE_RULES[rule](params, scene)


# -- policies -----------------------------------------------------------------------------


def _reads_output(rule: str, params: Mapping[str, Any]) -> bool:
    """Field rules over `output` run after the step; `evaluate` never sees them."""
    return rule.startswith("field_") and str(params.get("field", "")).startswith("output")


def _applies(policy: Policy, intended: Behavior, agent: AgentRegistration | None) -> bool:
    if not policy.enabled or policy.scope != "step_execution":
        return False
    if policy.agents is not None and intended.agent_key not in policy.agents:
        return False
    # An unregistered agent has no risk class: risk-targeted policies still apply to it.
    risk = agent.risk_classification if agent is not None else None
    risks = policy.risk_classification
    if risks is not None and risk is not None and risk not in risks:
        return False
    if _reads_output(policy.rule, policy.params):
        return False
    # Without a `when.step_type`, a policy targets step entries only, never task markers.
    return StepMatcher(policy.when, default_types=STEP_ENTRY_TYPES)(intended)


def naive_targeted(
    policy_set: PolicySet, intended: Behavior, *, agent: AgentRegistration | None = None
) -> list[str]:
    """The ids of the policies that target a step, in document order."""
    return [p.id for p in policy_set.policies if _applies(p, intended, agent)]


def naive_decision(
    policy_set: PolicySet,
    history: Sequence[Behavior],
    intended: Behavior,
    *,
    agent: AgentRegistration | None = None,
    agent_histories: Sequence[Sequence[Behavior]] | None = None,
) -> tuple[Action, list[str], list[str]]:
    """Decide on `intended` by rescanning the task's full `history` for every policy.

    `agent_histories` holds the histories of every task of the same agent (this one
    included), for `rate_limit(per: agent)`; by default the agent has only this task.
    Returns the action, the sorted ids of violated enforced policies and the sorted ids of
    violated shadow policies.
    """
    every = [e for h in (agent_histories or [history]) for e in h]
    enforced: list[Policy] = []
    shadow: list[str] = []
    for policy in policy_set.policies:
        if not _applies(policy, intended, agent):
            continue
        scene = Scene(
            history=history,
            current=intended,
            target=StepMatcher(policy.when, default_types=STEP_ENTRY_TYPES),
            agent_history=every,
            agent=agent,
        )
        if naive_violated(policy.rule, policy.params, scene):
            if policy.mode is Mode.shadow:
                shadow.append(policy.id)
            else:
                enforced.append(policy)
    action = Action.allow
    for policy in enforced:
        candidate = _ACTION_OF[policy.effect]
        if _STRENGTH[candidate] > _STRENGTH[action]:
            action = candidate
    return action, sorted(p.id for p in enforced), sorted(shadow)
