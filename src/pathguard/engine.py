"""PolicyEngine: policies compiled into incremental monitors, evaluated in microseconds.

The engine is pure CPU: no I/O, no clock (a step's own `timestamp` is "now"), no globals.
Each policy's rule is compiled once. Policies are indexed by the step types they target and,
lazily, by agent, so evaluating a step touches only the policies that can apply to it.
Rules that read history keep a small state per task (or per agent) that `record` updates,
so the cost of a step does not grow with the length of the task's history. The full history
is kept only as a bounded window (`history_limit`) for explanations and custom rules.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

from pathguard.decisions import Action, Decision, Effect, Mode, Severity, Violation
from pathguard.errors import PolicyLoadError, PolicyProblem
from pathguard.matching import StepMatcher
from pathguard.policies import Policy, PolicySet, load_policies
from pathguard.rules._base import REGISTRATION, EvalContext, Fail, Rule
from pathguard.vocabulary import (
    AgentRegistration,
    Behavior,
    RiskClass,
    StepType,
    Verb,
    valid_verbs,
)

__all__ = ["PolicyEngine", "TaskSnapshot"]

logger = logging.getLogger("pathguard")

_ALLOW: Final = Decision(action=Action.allow)


class _Compiled:
    """A policy with its rule built and its targeting pre-digested."""

    __slots__ = (
        "agents",
        "effect",
        "id",
        "mode",
        "per_agent",
        "phase",
        "policy",
        "risks",
        "rule",
        "rule_name",
        "severity",
        "slot",
        "target",
    )

    def __init__(self, policy: Policy, rule: Rule, slot: int) -> None:
        self.policy = policy
        self.id = policy.id
        self.rule = rule
        self.rule_name = policy.rule
        self.target: StepMatcher = rule.ctx.target
        self.agents = frozenset(policy.agents) if policy.agents is not None else None
        self.risks = (
            frozenset(policy.risk_classification)
            if policy.risk_classification is not None
            else None
        )
        self.slot = slot
        self.per_agent = rule.state_per == "agent"
        self.phase = rule.phase
        self.effect: Effect = policy.effect
        self.severity: Severity = policy.severity
        self.mode: Mode = policy.mode

    def applies_to(self, agent_key: str | None, risk: RiskClass | None) -> bool:
        if self.agents is not None and agent_key not in self.agents:
            return False
        # An agent that never registered has no known risk class: risk-targeted policies
        # apply to it (failing safe rather than silently skipping a policy).
        return self.risks is None or risk is None or risk in self.risks


_Key = tuple[StepType, Verb | None]


def _monitor_key(policy: Policy, rule: Rule) -> str:
    """What makes two monitors interchangeable: rule, params, how state is kept, and the
    policy's target for rules whose state depends on it (`requires_dedicated_prior`)."""
    params = json.dumps(policy.params, sort_keys=True, default=str)
    key = f"{policy.rule}|{rule.state_per}|{params}"
    if rule.state_uses_target or "requires_dedicated_prior" in params:
        key += "|" + (policy.when.model_dump_json() if policy.when else "")
    return key


class _Broken:
    """The state of a monitor whose `observe` raised: every later check of it violates."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Bucket:
    """The policies that can target one step type, flattened for the hot loop."""

    __slots__ = ("allow", "entries", "ids")

    def __init__(self, compiled: list[_Compiled]) -> None:
        # (extra matcher or None, bound check, slot, per_agent, compiled policy)
        self.entries = tuple(
            (
                cp.target.matches_rest if cp.target.needs_rest else None,
                cp.rule.check,
                cp.slot,
                cp.per_agent,
                cp,
            )
            for cp in compiled
        )
        self.ids = tuple(cp.id for cp in compiled)
        # Most steps pass every policy: share one immutable decision for that case.
        self.allow = Decision(action=Action.allow, evaluated=self.ids)


class _Plan:
    """The policies and monitors that apply to one agent, indexed by step type."""

    __slots__ = ("after", "agent_observers", "before", "observers", "registration")

    def __init__(
        self, compiled: list[_Compiled], registration: list[_Compiled], monitors: list[_Compiled]
    ) -> None:
        before: dict[_Key, list[_Compiled]] = {}
        after: dict[_Key, list[_Compiled]] = {}
        observers: dict[StepType, list[tuple[int, Any]]] = {}
        agent_observers: dict[StepType, list[tuple[int, Any]]] = {}
        # Every monitor observes, even one whose policy does not apply to this agent now: a
        # later registration may make it apply, and it must then know the whole path.
        seen: set[int] = set()
        for cp in monitors:
            if cp.slot >= 0 and cp.slot not in seen:
                seen.add(cp.slot)
                watched = cp.rule.watches()
                target = agent_observers if cp.per_agent else observers
                for step_type in StepType if watched is None else watched:
                    target.setdefault(step_type, []).append((cp.slot, cp.rule.observe))
        for cp in compiled:
            index = after if cp.phase == "after" else before
            for step_type in cp.target.step_types or StepType:
                # Index by (step type, verb) so a policy limited to other verbs costs nothing.
                verbs: tuple[Verb | None, ...] = valid_verbs(step_type) or (None,)
                if cp.target.verbs is not None:
                    verbs = tuple(v for v in verbs if v in cp.target.verbs)
                for verb in verbs:
                    index.setdefault((step_type, verb), []).append(cp)
        self.before = {k: _Bucket(v) for k, v in before.items()}
        self.after = {k: _Bucket(v) for k, v in after.items()}
        self.observers = {k: tuple(v) for k, v in observers.items()}
        self.agent_observers = {k: tuple(v) for k, v in agent_observers.items()}
        self.registration = tuple(registration)


class _Task:
    __slots__ = ("agent_key", "broken", "history", "position", "started_at", "states")

    def __init__(self, agent_key: str | None, states: list[Any], history_limit: int) -> None:
        self.agent_key = agent_key
        self.states = states
        self.broken = False  # some monitor of this task raised while observing
        self.position = 0
        self.started_at: float | None = None
        self.history: deque[Behavior] = deque(maxlen=history_limit)

    def history_tuple(self) -> tuple[Behavior, ...]:
        return tuple(self.history)


class TaskSnapshot:
    """A read-only view of one open task's engine state (for explain and tests)."""

    __slots__ = ("agent_key", "history", "position", "started_at", "task_id")

    def __init__(self, task_id: str | None, task: _Task) -> None:
        self.task_id = task_id
        self.agent_key = task.agent_key
        self.position = task.position
        self.started_at = task.started_at
        self.history = tuple(task.history)


class PolicyEngine:
    """Evaluate intended steps against a policy set, remembering each task's path."""

    def __init__(
        self,
        policies: PolicySet | Mapping[str, Any] | str | None = None,
        *,
        history_limit: int = 1000,
    ) -> None:
        if history_limit < 0:
            raise ValueError("history_limit must be 0 or more.")
        self.policy_set = load_policies(policies)
        self.history_limit = history_limit
        self._step: list[_Compiled] = []
        self._registration: list[_Compiled] = []
        self._n_slots = 0
        problems: list[PolicyProblem] = []
        shared: dict[str, int] = {}
        for policy in self.policy_set.policies:
            if not policy.enabled:
                continue
            try:
                rule = policy.build_rule()
            except (ValueError, TypeError, KeyError) as exc:
                problems.append(
                    PolicyProblem(message=str(exc), policy_id=policy.id, field="params")
                )
                continue
            slot = -1
            if rule.stateful and policy.scope != REGISTRATION:
                # Policies whose monitors are identical (same rule, same params) share one
                # state and one observer: a common subexpression, computed once per record.
                key = _monitor_key(policy, rule)
                slot = shared.get(key, -1)
                if slot < 0:
                    slot = shared[key] = self._n_slots
                    self._n_slots += 1
            compiled = _Compiled(policy, rule, slot)
            (self._registration if policy.scope == REGISTRATION else self._step).append(compiled)
        if problems:
            raise PolicyLoadError(problems)
        self._agents: dict[str, AgentRegistration] = {}
        self._plans: dict[str | None, _Plan] = {}
        self._tasks: dict[str | None, _Task] = {}
        self._agent_states: dict[str | None, list[Any]] = {}
        self._broken_agents: set[str | None] = set()

    # -- agents ---------------------------------------------------------------------------
    def evaluate_registration(self, agent: AgentRegistration) -> Decision:
        """Check `agent_registration` policies against what an agent declares (pure)."""
        violations: list[Violation] = []
        evaluated: list[str] = []
        for cp in self._registration:
            if not cp.applies_to(agent.agent_key, agent.risk_classification):
                continue
            evaluated.append(cp.id)
            fail = self._run(cp, agent, None, None)
            if fail is not None:
                violations.append(self._violation(cp, fail))
        return Decision.from_violations(violations, tuple(evaluated))

    def register(self, agent: AgentRegistration) -> None:
        """Remember an agent's registration: its tools and risk class feed targeting."""
        self._agents[agent.agent_key] = agent
        self._plans.pop(agent.agent_key, None)

    def agent(self, agent_key: str) -> AgentRegistration | None:
        return self._agents.get(agent_key)

    # -- tasks ----------------------------------------------------------------------------
    def start_task(self, task_id: str | None, *, agent_key: str | None = None) -> None:
        """Open per-task state. Recording a `task.start` entry marks when the task began."""
        self._tasks[task_id] = _Task(agent_key, self._new_states(False), self.history_limit)

    def end_task(self, task_id: str | None) -> TaskSnapshot | None:
        """Drop a task's state; returns what it held, or None if the task was unknown."""
        task = self._tasks.pop(task_id, None)
        return None if task is None else TaskSnapshot(task_id, task)

    def task(self, task_id: str | None) -> TaskSnapshot | None:
        task = self._tasks.get(task_id)
        return None if task is None else TaskSnapshot(task_id, task)

    @property
    def open_tasks(self) -> int:
        return len(self._tasks)

    def _task_for(self, b: Behavior) -> _Task:
        task = self._tasks.get(b.task_id)
        if task is None:
            task = self._tasks[b.task_id] = _Task(
                b.agent_key, self._new_states(False), self.history_limit
            )
        return task

    def _plan(self, agent_key: str | None) -> _Plan:
        plan = self._plans.get(agent_key)
        if plan is None:
            reg = self._agents.get(agent_key) if agent_key is not None else None
            risk = reg.risk_classification if reg is not None else None
            plan = _Plan(
                [cp for cp in self._step if cp.applies_to(agent_key, risk)],
                [cp for cp in self._registration if cp.applies_to(agent_key, risk)],
                self._step,
            )
            self._plans[agent_key] = plan
        return plan

    # -- steps ----------------------------------------------------------------------------
    def evaluate(self, intended: Behavior) -> Decision:
        """Decide on an intended step from the task's path so far. Does not change state."""
        return self._evaluate(intended, self._plan(intended.agent_key).before)

    def evaluate_output(self, completed: Behavior) -> Decision:
        """Decide on a step's output, after it ran, with the policies whose rules read output."""
        return self._evaluate(completed, self._plan(completed.agent_key).after)

    def has_output_policies(self, b: Behavior) -> bool:
        """Whether any output-reading policy can target this step (skip the check if not)."""
        return (b.step_type, b.verb) in self._plan(b.agent_key).after

    def _evaluate(self, b: Behavior, index: dict[_Key, _Bucket]) -> Decision:
        bucket = index.get((b.step_type, b.verb))
        if bucket is None:
            return _ALLOW
        task = self._tasks.get(b.task_id)
        if task is None:  # an unseen task: decide from an empty path, remember nothing
            task = _Task(b.agent_key, self._new_states(False), 0)
        states = task.states
        agent_states = None
        careful = task.broken or b.agent_key in self._broken_agents
        ctx = EvalContext(
            behavior=b,
            position=task.position,
            task_started_at=task.started_at,
            agent=self._agents.get(b.agent_key) if b.agent_key is not None else None,
            history=task.history_tuple,
        )
        violations: list[Violation] | None = None
        skipped: set[int] | None = None
        # The hot loop: locals only, one bound call per policy, try is free when nothing raises.
        for i, (match, check, slot, per_agent, cp) in enumerate(bucket.entries):
            if match is not None and not match(b):
                if skipped is None:
                    skipped = set()
                skipped.add(i)
                continue
            if slot < 0:
                state = None
            elif per_agent:
                if agent_states is None:
                    agent_states = self._states_of_agent(b.agent_key)
                state = agent_states[slot]
            else:
                state = states[slot]
            try:
                if careful and state.__class__ is _Broken:
                    raise state.error
                fail = check(b, state, ctx)
            except Exception as exc:  # a broken rule must not let a step through silently
                fail = self._rule_error(cp, exc)
            if fail is not None:
                if violations is None:
                    violations = []
                violations.append(self._violation(cp, fail))
        if skipped is None:
            if violations is None:
                return bucket.allow
            return Decision.from_violations(violations, bucket.ids)
        ids = tuple(pid for i, pid in enumerate(bucket.ids) if i not in skipped)
        if violations is None:
            return Decision(action=Action.allow, evaluated=ids)
        return Decision.from_violations(violations, ids)

    def record(self, behavior: Behavior) -> None:
        """Append a behaviour (any status) to its task's path and update the monitors."""
        task = self._task_for(behavior)
        plan = self._plan(behavior.agent_key)
        position = task.position
        observers = plan.observers.get(behavior.step_type)
        if observers:
            states = task.states
            if task.broken:
                task.broken = self._observe_carefully(states, observers, behavior, position)
            else:
                for slot, observe in observers:
                    try:
                        states[slot] = observe(states[slot], behavior, position)
                    except Exception as exc:
                        states[slot] = self._broken(exc)
                        task.broken = True
        observers = plan.agent_observers.get(behavior.step_type)
        if observers:
            states = self._states_of_agent(behavior.agent_key)
            if self._observe_carefully(states, observers, behavior, position):
                self._broken_agents.add(behavior.agent_key)
        if behavior.step_type is StepType.task_start and task.started_at is None:
            task.started_at = behavior.timestamp
        task.position = position + 1
        if self.history_limit:
            task.history.append(behavior)

    def _observe_carefully(
        self,
        states: list[Any],
        observers: tuple[tuple[int, Any], ...],
        behavior: Behavior,
        position: int,
    ) -> bool:
        """Observe, leaving broken monitors broken; True if any monitor is broken after."""
        broken = False
        for slot, observe in observers:
            state = states[slot]
            if state.__class__ is _Broken:
                broken = True
                continue
            try:
                states[slot] = observe(state, behavior, position)
            except Exception as exc:
                states[slot] = self._broken(exc)
                broken = True
        return broken

    @staticmethod
    def _broken(exc: Exception) -> _Broken:
        # The monitor can no longer be trusted: its policy violates from now on.
        logger.warning("a monitor raised while observing: %r", exc)
        return _Broken(exc)

    def explain(self, intended: Behavior) -> str:
        """Evaluate and return one line per policy that targeted the step."""
        return self.evaluate(intended).explain()

    # -- internals ------------------------------------------------------------------------
    def _states_of_agent(self, agent_key: str | None) -> list[Any]:
        states = self._agent_states.get(agent_key)
        if states is None:
            states = self._agent_states[agent_key] = self._new_states(True)
        return states

    def _new_states(self, per_agent: bool) -> list[Any]:
        """Fresh monitor states: task-level slots for a task, agent-level ones for an agent."""
        states: list[Any] = [None] * self._n_slots
        for cp in self._step:
            if cp.slot >= 0 and cp.per_agent is per_agent:
                states[cp.slot] = cp.rule.initial_state()
        return states

    @classmethod
    def _run(cls, cp: _Compiled, subject: Any, state: Any, ctx: EvalContext | None) -> Fail | None:
        try:
            return cp.rule.check(subject, state, ctx)
        except Exception as exc:  # a broken rule must not let a step through silently
            return cls._rule_error(cp, exc)

    @staticmethod
    def _rule_error(cp: _Compiled, exc: Exception) -> Fail:
        logger.warning("rule %s of policy %s raised %r", cp.rule_name, cp.id, exc)
        return Fail(
            f"the rule {cp.rule_name!r} raised {type(exc).__name__}: {exc}",
            {"error": type(exc).__name__},
        )

    @staticmethod
    def _violation(cp: _Compiled, fail: Fail) -> Violation:
        return Violation(
            policy_id=cp.id,
            rule=cp.rule_name,
            severity=cp.severity,
            effect=cp.effect,
            mode=cp.mode,
            reason=fail.reason,
            details=fail.details,
        )
