"""PolicyEngine: targeting, effects, explanations, broken rules, and per-task state."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from pathguard import (
    Action,
    AgentRegistration,
    Behavior,
    EvalContext,
    Fail,
    PolicyEngine,
    PolicySet,
    RiskClass,
    Rule,
    Status,
    StepType,
    rule,
)
from pathguard.testing import isolated_rules, step

AGENT = "agent"  # the agent key `pathguard.testing.step` gives every behaviour

GATE_FIRST = {  # violated by any step taken before an approved gate
    "rule": "requires_prior",
    "params": {"step_type": "step.gate", "properties": {"guard.decision": "approved"}},
}
NEVER = {"rule": "current_is", "params": {"step_type": "step.gate"}}  # any non-gate violates
APPROVED = {"guard": {"gate_type": "human_approval", "decision": "approved"}}


def engine_for(*policies: dict[str, Any], **options: Any) -> PolicyEngine:
    docs = [{"id": f"p{i}", **p} for i, p in enumerate(policies)]  # a given id wins
    doc = {"version": 1, "name": "engine-test", "policies": docs}
    return PolicyEngine(PolicySet.from_dict(doc), **options)


def intended(step_type: str, verb: str | None = None, **fields: Any) -> Behavior:
    return step(step_type, verb, status=Status.intended, **fields)


def violated(engine: PolicyEngine, b: Behavior) -> list[str]:
    return [v.policy_id for v in engine.evaluate(b).violations]


# -- targeting ----------------------------------------------------------------------------


def test_a_policy_is_evaluated_only_on_the_step_types_it_targets() -> None:
    engine = engine_for({"id": "exec-gate", "when": {"step_type": "step.exec"}, **GATE_FIRST})

    model = engine.evaluate(intended("step.model"))
    assert model.action is Action.allow
    assert model.evaluated == ()

    exec_ = engine.evaluate(intended("step.exec"))
    assert exec_.action is Action.block
    assert exec_.evaluated == ("exec-gate",)


@pytest.mark.parametrize("step_type", list(StepType))
def test_without_when_a_policy_targets_every_step_entry_and_no_task_marker(
    step_type: StepType,
) -> None:
    engine = engine_for({"id": "never", **NEVER})
    verb = {"step.resource": "GET", "step.message": "GET", "step.self": "GET"}.get(step_type.value)

    decision = engine.evaluate(intended(step_type.value, verb))

    if step_type.value.startswith("task."):
        assert decision.evaluated == ()
        assert decision.action is Action.allow
    else:
        assert decision.evaluated == ("never",)


def test_task_markers_are_targeted_only_when_when_names_them() -> None:
    engine = engine_for(
        {"id": "end-after-gate", "when": {"step_type": "task.end"}, **GATE_FIRST},
        {"id": "untrusted", "when": {"properties": {"target.trust": {"ne": "trusted"}}}, **NEVER},
    )

    # A property filter without a step type still targets step entries only, even though
    # a task marker (which has no `target.trust`) would satisfy `ne: trusted`.
    end = engine.evaluate(intended("task.end"))
    assert end.evaluated == ("end-after-gate",)
    assert end.action is Action.block
    assert engine.evaluate(intended("task.idle")).evaluated == ()
    assert engine.evaluate(intended("step.exec")).evaluated == ("untrusted",)


@pytest.mark.parametrize(
    ("when", "behavior", "targeted"),
    [
        (
            {"step_type": "step.resource", "verb": "DELETE"},
            intended("step.resource", "DELETE"),
            True,
        ),
        ({"step_type": "step.resource", "verb": "DELETE"}, intended("step.resource", "GET"), False),
        ({"verb": ["POST", "PATCH"]}, intended("step.self", "PATCH"), True),
        ({"verb": ["POST", "PATCH"]}, intended("step.exec"), False),
        ({"step_name": "db_*"}, intended("step.exec", step_name="db_migrate"), True),
        ({"step_name": "db_*"}, intended("step.exec", step_name="run_db"), False),
        ({"step_name": "db_*"}, intended("step.exec"), False),
        (
            {"step_name": ["send_?", "mail"]},
            intended("step.message", "POST", step_name="send_1"),
            True,
        ),
        (
            {"properties": {"target.trust": "untrusted"}},
            intended("step.resource", "GET", properties={"target": {"trust": "untrusted"}}),
            True,
        ),
        (
            {"properties": {"target": {"trust": "untrusted"}}},
            intended("step.resource", "GET", properties={"target": {"trust": "trusted"}}),
            False,
        ),
        ({"properties": {"target.trust": "untrusted"}}, intended("step.resource", "GET"), False),
        (
            {"properties": {"usage.cost_usd": {"gt": 1}}},
            intended("step.model", properties={"usage": {"cost_usd": 2.5}}),
            True,
        ),
        (
            {"properties": {"usage.cost_usd": {"gt": 1}}},
            intended("step.model", properties={"usage": {"cost_usd": True}}),
            False,
        ),
    ],
)
def test_when_filters_on_verb_step_name_and_properties(
    when: dict[str, Any], behavior: Behavior, targeted: bool
) -> None:
    engine = engine_for({"id": "p", "when": when, **NEVER})

    decision = engine.evaluate(behavior)

    assert decision.evaluated == (("p",) if targeted else ())
    assert decision.action is (Action.block if targeted else Action.allow)


def test_agents_limits_a_policy_to_the_named_agent_keys() -> None:
    engine = engine_for({"id": "bot-only", "agents": ["support-bot"], **NEVER})

    assert violated(engine, intended("step.exec", agent_key="support-bot")) == ["bot-only"]
    assert violated(engine, intended("step.exec", agent_key="other-bot")) == []
    assert engine.evaluate(intended("step.exec", agent_key="other-bot")).evaluated == ()


def _registration(risk: str) -> AgentRegistration:
    return AgentRegistration(
        agent_key=AGENT, name="A", purpose="tests", risk_classification=RiskClass(risk)
    )


def test_risk_classification_targets_registered_agents_by_their_declared_class() -> None:
    engine = engine_for({"id": "high-risk", "risk_classification": ["high"], **NEVER})
    exec_ = intended("step.exec")

    # An agent that never registered has no known class: the policy applies (fails safe).
    assert violated(engine, exec_) == ["high-risk"]

    engine.register(_registration("limited"))
    assert violated(engine, exec_) == []

    engine.register(_registration("high"))  # a new registration changes targeting at once
    assert violated(engine, exec_) == ["high-risk"]


def test_a_policy_that_applies_again_after_a_new_registration_sees_the_whole_path() -> None:
    engine = engine_for({"id": "high-gate", "risk_classification": ["high"], **GATE_FIRST})
    engine.register(_registration("limited"))
    engine.record(step("step.gate", properties=APPROVED))

    engine.register(_registration("high"))

    # The task's path holds an approved gate, whatever the class was when it was recorded.
    assert violated(engine, intended("step.exec")) == []


def test_a_disabled_policy_is_never_evaluated() -> None:
    engine = engine_for({"id": "off", "enabled": False, **NEVER}, {"id": "on", **NEVER})

    assert engine.evaluate(intended("step.exec")).evaluated == ("on",)


# -- effects, modes, severities -----------------------------------------------------------


def test_shadow_violations_are_reported_but_never_change_the_action() -> None:
    engine = engine_for(
        {"id": "trial", "mode": "shadow", "effect": "block", "severity": "critical", **NEVER}
    )

    decision = engine.evaluate(intended("step.exec"))

    assert decision.action is Action.allow
    assert decision.violations == ()
    assert [v.policy_id for v in decision.shadow] == ["trial"]
    assert decision.risk_score == 0.0
    assert "✗ trial [shadow, critical]" in decision.explain()


@pytest.mark.parametrize(
    ("effects", "action"),
    [
        ([], Action.allow),
        (["warn"], Action.warn),
        (["warn", "approve"], Action.approve),
        (["approve", "warn"], Action.approve),
        (["warn", "block", "approve"], Action.block),
        (["block"], Action.block),
    ],
)
def test_the_strongest_enforced_effect_decides(effects: list[str], action: Action) -> None:
    policies = [{"effect": e, **NEVER} for e in effects]
    # A passing block policy and a violated shadow block never raise the action.
    policies.append({"effect": "block", "rule": "current_is", "params": {"step_type": "step.exec"}})
    policies.append({"effect": "block", "mode": "shadow", **NEVER})
    engine = engine_for(*policies)

    decision = engine.evaluate(intended("step.exec"))

    assert decision.action is action
    assert len(decision.violations) == len(effects)


@pytest.mark.parametrize(
    ("severities", "risk"),
    [
        (["low"], 0.25),
        (["medium"], 0.5),
        (["low", "high"], 0.75),
        (["critical", "medium"], 1.0),
    ],
)
def test_risk_score_is_the_heaviest_severity_among_enforced_violations(
    severities: list[str], risk: float
) -> None:
    policies = [{"severity": s, "effect": "warn", **NEVER} for s in severities]
    policies.append({"severity": "critical", "mode": "shadow", **NEVER})
    engine = engine_for(*policies)

    assert engine.evaluate(intended("step.exec")).risk_score == risk


def test_explain_has_one_line_per_evaluated_policy() -> None:
    engine = engine_for(
        {"id": "exec-gate", "severity": "high", **GATE_FIRST},
        {"id": "models-only", "when": {"step_type": "step.model"}, **NEVER},
        {"id": "is-exec", "rule": "current_is", "params": {"step_type": "step.exec"}},
    )
    exec_ = intended("step.exec")
    (violation,) = engine.evaluate(exec_).violations

    assert engine.explain(exec_).splitlines() == [
        "decision: block (risk 0.75)",
        f"  ✗ exec-gate [block, high]: {violation.reason}",
        "  ✓ is-exec",
    ]
    assert engine.explain(intended("task.idle")).splitlines() == [
        "decision: allow (risk 0.00)",
        "  (no policy targets this step)",
    ]


# -- broken rules -------------------------------------------------------------------------


def test_a_rule_that_raises_is_a_violation_whose_reason_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with isolated_rules():

        @rule("engine_test_explodes")
        def explodes(subject: Behavior, params: Any, ctx: EvalContext | None) -> bool:
            raise RuntimeError("boom")

        engine = engine_for(
            {"id": "broken", "rule": "engine_test_explodes", "effect": "warn"},
            {"id": "fine", "rule": "current_is", "params": {"step_type": "step.exec"}},
        )
        with caplog.at_level(logging.WARNING, logger="pathguard"):
            decision = engine.evaluate(intended("step.exec"))

    assert decision.action is Action.warn
    (v,) = decision.violations
    assert v.policy_id == "broken"
    assert "raised RuntimeError: boom" in v.reason
    assert decision.evaluated == ("broken", "fine")
    assert any("broken" in r.getMessage() for r in caplog.records)


def test_a_monitor_that_raises_while_observing_is_a_violation_not_a_crash() -> None:
    with isolated_rules():

        @rule("engine_test_observe_explodes")
        class ObserveExplodes(Rule):
            """Test monitor whose observe always fails."""

            stateful = True

            def watches(self) -> None:
                return None

            def observe(self, state: Any, entry: Behavior, position: int) -> Any:
                raise ValueError("cannot fold")

            def check(self, subject: Any, state: Any, ctx: EvalContext | None) -> Fail | None:
                return None

        engine = engine_for({"id": "fragile", "rule": "engine_test_observe_explodes"})
        engine.record(step("step.exec"))  # the step already ran: recording must not fail
        decision = engine.evaluate(intended("step.exec"))

    (v,) = decision.violations
    assert "cannot fold" in v.reason


# -- per-task state -----------------------------------------------------------------------


def test_history_limit_bounds_the_retained_history_but_not_the_decisions() -> None:
    engine = engine_for(GATE_FIRST, history_limit=3)
    engine.record(step("step.gate", properties=APPROVED, timestamp=0))
    for t in range(1, 10):
        engine.record(step("step.model", timestamp=t))

    snapshot = engine.task("task-1")
    assert snapshot is not None
    assert [b.timestamp for b in snapshot.history] == [7, 8, 9]
    assert snapshot.position == 10
    # The gate fell out of the retained window; the monitor still remembers it.
    assert engine.evaluate(intended("step.exec")).action is Action.allow


def test_history_limit_zero_keeps_no_history_and_a_negative_one_is_refused() -> None:
    engine = engine_for(GATE_FIRST, history_limit=0)
    engine.record(step("step.gate", properties=APPROVED))

    snapshot = engine.task("task-1")
    assert snapshot is not None and snapshot.history == ()
    assert engine.evaluate(intended("step.exec")).action is Action.allow
    with pytest.raises(ValueError, match="history_limit"):
        engine_for(GATE_FIRST, history_limit=-1)


def test_each_task_has_its_own_path() -> None:
    engine = engine_for(GATE_FIRST)
    engine.record(step("step.gate", properties=APPROVED, task_id="a"))

    assert engine.evaluate(intended("step.exec", task_id="a")).action is Action.allow
    assert engine.evaluate(intended("step.exec", task_id="b")).action is Action.block

    engine.end_task("a")  # a task that ends forgets its path
    assert engine.evaluate(intended("step.exec", task_id="a")).action is Action.block


def test_rate_limit_per_task_counts_one_task_and_per_agent_counts_all_of_its_tasks() -> None:
    engine = engine_for(
        {"id": "per-task", "rule": "rate_limit", "params": {"max": 2, "window_seconds": 60}},
        {
            "id": "per-agent",
            "rule": "rate_limit",
            "params": {"max": 3, "window_seconds": 60, "per": "agent"},
        },
    )
    engine.record(step("step.model", task_id="a", agent_key="bot", timestamp=1))
    engine.record(step("step.model", task_id="a", agent_key="bot", timestamp=2))
    engine.record(step("step.model", task_id="b", agent_key="bot", timestamp=3))
    engine.record(step("step.model", task_id="c", agent_key="other", timestamp=4))
    engine.record(step("step.model", task_id="c", agent_key="other", timestamp=5))

    assert violated(engine, intended("step.model", task_id="a", agent_key="bot", timestamp=6)) == [
        "per-task",
        "per-agent",
    ]
    assert violated(engine, intended("step.model", task_id="b", agent_key="bot", timestamp=6)) == [
        "per-agent"
    ]
    # Another agent's steps never count against this one.
    assert (
        violated(engine, intended("step.model", task_id="d", agent_key="other", timestamp=6)) == []
    )


def test_recording_task_start_marks_when_the_task_began() -> None:
    engine = engine_for({"rule": "max_task_duration", "params": {"seconds": 60}})
    engine.record(step("task.start", timestamp=100))

    snapshot = engine.task("task-1")
    assert snapshot is not None and snapshot.started_at == 100
    assert engine.evaluate(intended("step.exec", timestamp=160)).action is Action.allow
    assert engine.evaluate(intended("step.exec", timestamp=161)).action is Action.block


def test_evaluate_does_not_change_the_tasks_path() -> None:
    engine = engine_for({"rule": "max_steps", "params": {"max": 1}}, GATE_FIRST)
    engine.record(step("task.start"))
    model = intended("step.model")

    first = engine.evaluate(model)
    for _ in range(3):
        assert engine.evaluate(model) == first  # evaluated steps are not history
    snapshot = engine.task("task-1")
    assert snapshot is not None
    assert snapshot.position == 1
    assert [b.step_type for b in snapshot.history] == [StepType.task_start]

    engine.record(step("step.model"))
    assert violated(engine, model) == ["p0", "p1"]


def test_evaluate_does_not_open_a_task() -> None:
    engine = engine_for(GATE_FIRST)

    decision = engine.evaluate(intended("step.exec", task_id="never-recorded"))

    assert decision.action is Action.block  # decided from an empty path
    assert engine.task("never-recorded") is None
    assert engine.open_tasks == 0
