"""Logic rules: all_of, any_of and not, with nested monitors and a readable result tree."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from pathguard.decisions import Action, Decision
from pathguard.engine import PolicyEngine
from pathguard.errors import PolicyLoadError
from pathguard.policies import PolicySet
from pathguard.rules import EvalContext, Fail, Rule, rule
from pathguard.rules import _base as rules_base
from pathguard.vocabulary import AgentRegistration, Behavior, Status, StepType


def make_engine(rule_name: str, params: dict[str, Any], **policy: Any) -> PolicyEngine:
    doc = {
        "version": 1,
        "name": "test",
        "policies": [{"id": "p", "rule": rule_name, "params": params, **policy}],
    }
    return PolicyEngine(PolicySet.from_dict(doc))


def done(step_type: str, verb: str | None = None, **fields: Any) -> Behavior:
    fields.setdefault("status", Status.completed)
    fields.setdefault("task_id", "t1")
    return Behavior(step_type=StepType.parse(step_type), verb=verb, **fields)


def intended(step_type: str, verb: str | None = None, **fields: Any) -> Behavior:
    return done(step_type, verb, status=Status.intended, **fields)


def violation_of(decision: Decision) -> Any:
    (violation,) = decision.violations
    return violation


def load_problems(rule_name: str, params: dict[str, Any], **policy: Any) -> str:
    with pytest.raises(PolicyLoadError) as info:
        make_engine(rule_name, params, **policy)
    return str(info.value)


GATE = {"rule": "requires_prior", "params": {"step_type": "step.gate"}}
NO_CREDENTIAL = {
    "rule": "not",
    "params": {"rule": {"rule": "history_contains", "params": {"step_type": "step.credential"}}},
}


# -- all_of -------------------------------------------------------------------------------


def test_all_of_passes_when_every_child_passes() -> None:
    engine = make_engine("all_of", {"rules": [GATE, NO_CREDENTIAL]})
    engine.record(done("step.gate"))
    assert engine.evaluate(intended("step.exec")).action is Action.allow


def test_all_of_reports_the_failing_children_in_a_tree() -> None:
    engine = make_engine("all_of", {"rules": [GATE, NO_CREDENTIAL]})
    engine.record(done("step.credential"))
    violation = violation_of(engine.evaluate(intended("step.exec")))
    negated = "history_contains(step_type='step.credential') holds, and this policy forbids that"
    assert violation.reason == f"no earlier step.gate in this task; {negated}"
    assert violation.details["children"] == [
        {"rule": "requires_prior", "passed": False, "reason": "no earlier step.gate in this task"},
        {
            "rule": "not",
            "passed": False,
            "reason": negated,
            "children": [{"rule": "history_contains", "passed": True, "reason": None}],
        },
    ]


def test_each_child_keeps_its_own_monitor_state() -> None:
    engine = make_engine(
        "all_of",
        {
            "rules": [
                {"rule": "max_steps", "params": {"max": 2, "filter": "step.model"}},
                {"rule": "max_steps", "params": {"max": 1, "filter": "step.exec"}},
            ]
        },
    )
    engine.record(done("step.model"))
    assert engine.evaluate(intended("step.model")).action is Action.allow
    assert engine.evaluate(intended("step.exec")).action is Action.allow
    engine.record(done("step.exec"))
    assert engine.evaluate(intended("step.model")).action is Action.allow
    assert violation_of(engine.evaluate(intended("step.exec"))).reason == (
        "2 step.exec steps in this task would exceed the allowed 1"
    )


# -- any_of -------------------------------------------------------------------------------


def test_any_of_passes_when_one_child_passes() -> None:
    engine = make_engine(
        "any_of", {"rules": [GATE, {"rule": "current_is", "params": {"step_type": "step.model"}}]}
    )
    assert engine.evaluate(intended("step.model")).action is Action.allow
    violation = violation_of(engine.evaluate(intended("step.exec")))
    assert violation.reason == (
        "none of 2 alternatives held (no earlier step.gate in this task; "
        "this step (step.exec) is not step.model)"
    )
    assert [child["passed"] for child in violation.details["children"]] == [False, False]
    engine.record(done("step.gate"))
    assert engine.evaluate(intended("step.exec")).action is Action.allow


def test_any_of_with_a_per_agent_rate_limit_counts_across_tasks() -> None:
    engine = make_engine(
        "any_of",
        {
            "rules": [
                {"rule": "rate_limit", "params": {"max": 1, "window_seconds": 60, "per": "agent"}},
                {"rule": "current_is", "params": {"step_type": "step.gate"}},
            ]
        },
    )
    engine.record(done("step.model", agent_key="bot", task_id="a", timestamp=1))
    second = intended("step.model", agent_key="bot", task_id="b", timestamp=2)
    assert engine.evaluate(second).action is Action.block


# -- not ----------------------------------------------------------------------------------


def test_not_violates_when_its_child_passes() -> None:
    engine = make_engine(
        "not", {"rule": {"rule": "current_is", "params": {"step_type": "step.exec"}}}
    )
    assert engine.evaluate(intended("step.model")).action is Action.allow
    violation = violation_of(engine.evaluate(intended("step.exec")))
    assert violation.reason == (
        "current_is(step_type='step.exec') holds, and this policy forbids that"
    )
    assert violation.details["children"] == [{"rule": "current_is", "passed": True, "reason": None}]


def test_not_of_a_monitor_follows_the_history() -> None:
    engine = make_engine(
        "not", {"rule": {"rule": "history_contains", "params": {"step_type": "step.credential"}}}
    )
    engine.record(done("step.credential", status=Status.blocked))
    assert engine.evaluate(intended("step.message", "POST")).action is Action.allow
    engine.record(done("step.credential"))
    assert engine.evaluate(intended("step.message", "POST")).action is Action.block


def test_nesting_three_levels() -> None:
    engine = make_engine(
        "any_of",
        {
            "rules": [
                {"rule": "all_of", "params": {"rules": [GATE, NO_CREDENTIAL]}},
                {"rule": "current_is", "params": {"step_type": "step.model"}},
            ]
        },
    )
    engine.record(done("step.gate"))
    assert engine.evaluate(intended("step.exec")).action is Action.allow
    engine.record(done("step.credential"))
    tree = violation_of(engine.evaluate(intended("step.exec"))).details["children"]
    assert tree[0]["rule"] == "all_of"
    assert [c["rule"] for c in tree[0]["children"]] == ["requires_prior", "not"]
    assert tree[0]["children"][1]["children"][0]["rule"] == "history_contains"


# -- load-time errors ---------------------------------------------------------------------


def test_an_unknown_child_rule_is_a_load_error_with_a_hint() -> None:
    message = load_problems(
        "all_of", {"rules": [{"rule": "requires_prio", "params": {"step_type": "step.gate"}}]}
    )
    assert "policy 'p', field 'params.rules.0'" in message
    assert "'requires_prio' is not a known rule. Did you mean 'requires_prior'?" in message


def test_bad_child_params_are_a_load_error_naming_the_child() -> None:
    message = load_problems(
        "not",
        {"rule": {"rule": "requires_prior", "params": {"step_type": "step.gate", "within": 0}}},
    )
    assert "field 'params.rule'" in message
    assert (
        "bad params for 'requires_prior': within: Input should be greater than or equal to 1"
        in message
    )


def test_an_empty_rule_list_is_a_load_error() -> None:
    assert "field 'params.rules'" in load_problems("any_of", {"rules": []})


def test_per_agent_and_per_task_monitors_cannot_share_a_combinator() -> None:
    message = load_problems(
        "all_of",
        {
            "rules": [
                GATE,
                {"rule": "rate_limit", "params": {"max": 1, "window_seconds": 1, "per": "agent"}},
            ]
        },
    )
    assert "cannot combine per-agent rules" in message


def test_children_must_work_in_the_policys_scope() -> None:
    message = load_problems("all_of", {"rules": [GATE]}, scope="agent_registration")
    assert "the rule 'requires_prior' cannot be used in an agent_registration policy" in message


# -- scopes and phases --------------------------------------------------------------------
# The custom rules below live in a copy of the registry for one test only, so that the rest
# of the suite (e.g. the check that every registered rule is documented) never sees them.


@pytest.fixture
def private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    rules_base.rule_names()  # load the built-in rules into the real registry first
    monkeypatch.setattr(rules_base, "_REGISTRY", dict(rules_base._REGISTRY))


class Purpose(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    word: str


@pytest.mark.usefixtures("private_registry")
def test_logic_rules_work_for_agent_registration() -> None:
    @rule("purpose_mentions", params=Purpose, scopes=("step_execution", "agent_registration"))
    def purpose_mentions(subject: Any, params: Purpose, ctx: EvalContext | None) -> bool | str:
        return params.word in subject.purpose or f"the purpose does not mention {params.word!r}"

    engine = make_engine(
        "any_of",
        {
            "rules": [
                {"rule": "purpose_mentions", "params": {"word": "support"}},
                {"rule": "purpose_mentions", "params": {"word": "triage"}},
            ]
        },
        scope="agent_registration",
    )
    ok = AgentRegistration(agent_key="a", name="A", purpose="ticket triage")
    assert engine.evaluate_registration(ok).action is Action.allow
    bad = AgentRegistration(agent_key="b", name="B", purpose="writes poems")
    assert violation_of(engine.evaluate_registration(bad)).reason == (
        "none of 2 alternatives held (the purpose does not mention 'support'; "
        "the purpose does not mention 'triage')"
    )


@pytest.mark.usefixtures("private_registry")
def test_a_combinator_with_an_output_reading_child_runs_after_the_step() -> None:
    @rule("output_present")
    class OutputPresent(Rule):
        """Reads the step's output, so it runs after the step."""

        phase = "after"

        def check(self, subject: Any, state: Any, ctx: EvalContext | None) -> Fail | None:
            return None if subject.output else Fail("the step returned nothing")

    engine = make_engine(
        "all_of",
        {
            "rules": [
                {"rule": "current_is", "params": {"step_type": "step.model"}},
                {"rule": "output_present"},
            ]
        },
    )
    step = done("step.model")
    assert engine.has_output_policies(step)
    assert engine.evaluate(step.replace(status=Status.intended)).action is Action.allow
    assert violation_of(engine.evaluate_output(step)).reason == "the step returned nothing"
    assert engine.evaluate_output(step.replace(output="hi")).action is Action.allow
