"""Decisions (spec §3): the action rule, shadow mode, risk score and explain()."""

from __future__ import annotations

from typing import Any

import pytest

from pathguard import (
    Action,
    Behavior,
    Decision,
    Effect,
    Mode,
    PolicyEngine,
    Severity,
    StepType,
    Violation,
)

ALWAYS = {"rule": "requires_prior", "params": {"step_type": "step.gate"}}


def engine_with(*policies: dict[str, Any]) -> PolicyEngine:
    docs = [{"id": f"p{i}", **ALWAYS, **p} for i, p in enumerate(policies)]
    return PolicyEngine({"version": 1, "name": "t", "policies": docs})


def decide(*policies: dict[str, Any]) -> Decision:
    return engine_with(*policies).evaluate(Behavior(step_type=StepType.step_exec, task_id="t"))


def violation(effect: str, severity: str = "medium", mode: str = "enforce") -> Violation:
    return Violation(
        policy_id=f"{effect}-{severity}-{mode}",
        rule="r",
        severity=Severity(severity),
        effect=Effect(effect),
        mode=Mode(mode),
        reason="because",
    )


@pytest.mark.parametrize(
    ("effects", "action"),
    [
        ([], Action.allow),
        (["warn"], Action.warn),
        (["approve"], Action.approve),
        (["block"], Action.block),
        (["warn", "approve"], Action.approve),
        (["approve", "warn", "block"], Action.block),
        (["block", "warn"], Action.block),
    ],
)
def test_the_strongest_enforced_effect_wins(effects: list[str], action: Action) -> None:
    assert decide(*({"effect": e} for e in effects)).action is action


def test_shadow_violations_are_reported_but_never_act() -> None:
    decision = decide(
        {"effect": "block", "mode": "shadow", "severity": "critical"},
        {"effect": "warn", "severity": "low"},
    )
    assert decision.action is Action.warn
    assert [v.policy_id for v in decision.shadow] == ["p0"]
    assert [v.policy_id for v in decision.violations] == ["p1"]
    assert decision.risk_score == 0.25


@pytest.mark.parametrize(
    ("severities", "risk"),
    [
        (["low"], 0.25),
        (["medium"], 0.5),
        (["high"], 0.75),
        (["critical"], 1.0),
        (["low", "high", "medium"], 0.75),
    ],
)
def test_risk_is_the_highest_enforced_severity_weight(severities: list[str], risk: float) -> None:
    assert decide(*({"severity": s} for s in severities)).risk_score == risk


def test_an_allowed_step_has_no_risk() -> None:
    decision = Decision.from_violations([], ("a",))
    assert decision.action is Action.allow
    assert decision.risk_score == 0.0
    assert decision.allowed


@pytest.mark.parametrize(
    ("action", "allowed"),
    [(Action.allow, True), (Action.warn, True), (Action.approve, False), (Action.block, False)],
)
def test_allowed_means_runs_without_asking(action: Action, allowed: bool) -> None:
    assert Decision(action=action).allowed is allowed


def test_violations_carry_policy_rule_severity_effect_mode_and_reason() -> None:
    (v,) = decide({"effect": "approve", "severity": "high"}).violations
    assert v.policy_id == "p0"
    assert v.rule == "requires_prior"
    assert v.severity is Severity.high
    assert v.effect is Effect.approve
    assert v.mode is Mode.enforce
    assert "step.gate" in v.reason


def test_explain_has_one_line_per_evaluated_policy() -> None:
    engine = PolicyEngine(
        {
            "version": 1,
            "name": "t",
            "policies": [
                {"id": "needs-gate", **ALWAYS, "severity": "high"},
                {"id": "quiet", **ALWAYS, "mode": "shadow"},
                {"id": "ok", "rule": "max_steps", "params": {"max": 10}},
                {"id": "elsewhere", **ALWAYS, "when": {"step_type": "step.model"}},
            ],
        }
    )
    text = engine.explain(Behavior(step_type=StepType.step_exec, task_id="t"))
    lines = text.splitlines()
    assert lines[0] == "decision: block (risk 0.75)"
    assert lines[1].startswith("  ✗ needs-gate [block, high]: ")
    assert lines[2].startswith("  ✗ quiet [shadow, medium]: ")
    assert lines[3] == "  ✓ ok"
    assert len(lines) == 4  # `elsewhere` does not target step.exec


def test_explain_says_when_nothing_targets_the_step() -> None:
    assert "(no policy targets this step)" in Decision(action=Action.allow).explain()


def test_from_violations_folds_a_list() -> None:
    decision = Decision.from_violations(
        [violation("warn", "high"), violation("block", "low", "shadow"), violation("approve")],
        ("a", "b", "c"),
    )
    assert decision.action is Action.approve
    assert decision.risk_score == 0.75
    assert len(decision.shadow) == 1
    assert decision.evaluated == ("a", "b", "c")


def test_to_dict_is_plain_data() -> None:
    data = decide({"effect": "warn"}).to_dict()
    assert data["action"] == "warn"
    assert data["risk_score"] == 0.5
    assert data["evaluated"] == ["p0"]
    assert data["violations"][0]["effect"] == "warn"
    assert data["shadow"] == []


def test_action_strength_orders_allow_warn_approve_block() -> None:
    order = sorted(Action, key=lambda a: a.strength)
    assert order == [Action.allow, Action.warn, Action.approve, Action.block]
