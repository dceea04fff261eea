"""Counting and limit rules, through the public engine."""

from __future__ import annotations

from typing import Any

import pytest

from pathguard.decisions import Action, Decision
from pathguard.engine import PolicyEngine
from pathguard.errors import PolicyLoadError
from pathguard.policies import PolicySet
from pathguard.vocabulary import Behavior, Status, StepType


def make_engine(rule: str, params: dict[str, Any], **policy: Any) -> PolicyEngine:
    doc = {
        "version": 1,
        "name": "test",
        "policies": [{"id": "p", "rule": rule, "params": params, **policy}],
    }
    return PolicyEngine(PolicySet.from_dict(doc))


def done(step_type: str, verb: str | None = None, **fields: Any) -> Behavior:
    fields.setdefault("status", Status.completed)
    fields.setdefault("task_id", "t1")
    return Behavior(step_type=StepType.parse(step_type), verb=verb, **fields)


def intended(step_type: str, verb: str | None = None, **fields: Any) -> Behavior:
    return done(step_type, verb, status=Status.intended, **fields)


def reason(decision: Decision) -> str:
    (violation,) = decision.violations
    return violation.reason


def load_problems(rule: str, params: dict[str, Any]) -> str:
    with pytest.raises(PolicyLoadError) as info:
        make_engine(rule, params)
    return str(info.value)


def cost(amount: Any) -> dict[str, Any]:
    return {"usage": {"cost_usd": amount}}


# -- max_steps ----------------------------------------------------------------------------


def test_max_steps_counts_the_current_step() -> None:
    engine = make_engine("max_steps", {"max": 2, "filter": "step.model"})
    engine.record(done("step.model"))
    assert engine.evaluate(intended("step.model")).action is Action.allow
    engine.record(done("step.model"))
    assert reason(engine.evaluate(intended("step.model"))) == (
        "3 step.model steps in this task would exceed the allowed 2"
    )


def test_max_steps_never_counts_task_markers_and_never_stops_other_steps() -> None:
    engine = make_engine("max_steps", {"max": 1})
    engine.record(done("task.start"))
    engine.record(done("task.idle"))
    assert engine.evaluate(intended("step.exec")).action is Action.allow
    engine.record(done("step.exec"))
    assert reason(engine.evaluate(intended("step.exec"))) == (
        "2 steps in this task would exceed the allowed 1"
    )

    filtered = make_engine("max_steps", {"max": 1, "filter": "step.model"})
    filtered.record(done("step.model"))
    assert filtered.evaluate(intended("step.exec")).action is Action.allow


def test_max_steps_counts_refused_attempts_only_with_count_attempts() -> None:
    strict = make_engine("max_steps", {"max": 1})
    strict.record(done("step.exec", status=Status.blocked))
    assert strict.evaluate(intended("step.exec")).action is Action.allow
    lenient = make_engine("max_steps", {"max": 1, "count_attempts": True})
    lenient.record(done("step.exec", status=Status.blocked))
    assert lenient.evaluate(intended("step.exec")).action is Action.block


def test_counting_filters_reject_task_markers_at_load() -> None:
    message = load_problems("max_steps", {"max": 3, "filter": "task.idle"})
    assert "field 'params.filter'" in message
    assert "count step entries only" in message


def test_max_steps_rejects_a_negative_max() -> None:
    assert "field 'params.max'" in load_problems("max_steps", {"max": -1})


# -- max_consecutive ----------------------------------------------------------------------


def test_max_consecutive_is_reset_by_another_step() -> None:
    engine = make_engine("max_consecutive", {"max": 2, "filter": "step.model"})
    engine.record(done("step.model"))
    engine.record(done("step.model"))
    assert reason(engine.evaluate(intended("step.model"))) == (
        "3 step.model steps in a row would exceed the allowed 2"
    )
    engine.record(done("step.exec"))
    assert engine.evaluate(intended("step.model")).action is Action.allow


def test_max_consecutive_markers_and_attempts_neither_extend_nor_break_the_run() -> None:
    engine = make_engine("max_consecutive", {"max": 2, "filter": "step.model"})
    engine.record(done("step.model"))
    engine.record(done("task.idle"))
    engine.record(done("step.exec", status=Status.blocked))
    engine.record(done("step.model", status=Status.failed))
    assert engine.evaluate(intended("step.model")).action is Action.allow
    engine.record(done("step.model"))
    assert engine.evaluate(intended("step.model")).action is Action.block


# -- budget -------------------------------------------------------------------------------


def test_budget_sums_history_and_the_current_step() -> None:
    engine = make_engine("budget", {"property": "usage.cost_usd", "max": 1.0})
    engine.record(done("step.model", properties=cost(0.25)))
    engine.record(done("step.model", properties=cost(0.5)))
    assert engine.evaluate(intended("step.model", properties=cost(0.25))).action is Action.allow
    assert reason(engine.evaluate(intended("step.model", properties=cost(0.5)))) == (
        "usage.cost_usd would reach 1.25 in this task, more than the allowed 1"
    )


def test_budget_skips_absent_non_numeric_boolean_and_refused_values() -> None:
    engine = make_engine("budget", {"property": "usage.cost_usd", "max": 1})
    engine.record(done("step.model", properties=cost(True)))
    engine.record(done("step.model", properties=cost("5")))
    engine.record(done("step.model"))
    engine.record(done("step.model", properties=cost(5), status=Status.blocked))
    assert engine.evaluate(intended("step.model", properties=cost(1))).action is Action.allow


def test_budget_only_judges_steps_matching_its_filter() -> None:
    engine = make_engine("budget", {"property": "usage.cost_usd", "max": 1, "filter": "step.model"})
    engine.record(done("step.exec", properties=cost(10)))
    assert engine.evaluate(intended("step.model", properties=cost(1))).action is Action.allow
    assert engine.evaluate(intended("step.exec", properties=cost(10))).action is Action.allow


def test_budget_property_is_a_path_under_properties() -> None:
    message = load_problems("budget", {"property": "properties.usage.cost_usd", "max": 1})
    assert "write 'usage.cost_usd' instead of 'properties.usage.cost_usd'" in message


# -- rate_limit ---------------------------------------------------------------------------


def test_rate_limit_counts_within_the_sliding_window() -> None:
    engine = make_engine("rate_limit", {"max": 2, "window_seconds": 10, "filter": "step.model"})
    engine.record(done("step.model", timestamp=100))
    engine.record(done("step.model", timestamp=105))
    assert reason(engine.evaluate(intended("step.model", timestamp=109))) == (
        "3 step.model steps within 10 seconds in this task would exceed the allowed 2"
    )
    # Only entries with timestamp > now - window count: the one at 100 drops out at 110.
    assert engine.evaluate(intended("step.model", timestamp=110)).action is Action.allow
    assert engine.evaluate(intended("step.exec", timestamp=109)).action is Action.allow


def test_rate_limit_per_task_keeps_tasks_apart() -> None:
    engine = make_engine("rate_limit", {"max": 1, "window_seconds": 60})
    engine.record(done("step.model", agent_key="bot", task_id="a", timestamp=1))
    assert (
        engine.evaluate(intended("step.model", agent_key="bot", task_id="b", timestamp=2)).action
        is Action.allow
    )


def test_rate_limit_per_agent_counts_across_the_agents_tasks() -> None:
    engine = make_engine("rate_limit", {"max": 2, "window_seconds": 60, "per": "agent"})
    engine.record(done("step.model", agent_key="bot", task_id="a", timestamp=1))
    engine.record(done("step.model", agent_key="bot", task_id="b", timestamp=2))
    decision = engine.evaluate(intended("step.model", agent_key="bot", task_id="c", timestamp=3))
    assert reason(decision) == (
        "3 steps within 60 seconds for this agent would exceed the allowed 2"
    )
    other = intended("step.model", agent_key="other-bot", task_id="d", timestamp=3)
    assert engine.evaluate(other).action is Action.allow


def test_rate_limit_per_agent_is_exact_when_tasks_record_out_of_order() -> None:
    # Two tasks of one agent record their steps late and out of timestamp order.
    engine = make_engine("rate_limit", {"max": 2, "window_seconds": 10, "per": "agent"})
    engine.record(done("step.model", agent_key="bot", task_id="a", timestamp=105))
    engine.record(done("step.model", agent_key="bot", task_id="b", timestamp=106))
    engine.record(done("step.model", agent_key="bot", task_id="a", timestamp=50))
    decision = engine.evaluate(intended("step.model", agent_key="bot", task_id="a", timestamp=107))
    assert decision.action is Action.block


def test_rate_limit_rejects_a_zero_window() -> None:
    message = load_problems("rate_limit", {"max": 5, "window_seconds": 0})
    assert "field 'params.window_seconds'" in message


# -- max_task_duration --------------------------------------------------------------------


def test_max_task_duration_measures_from_task_start() -> None:
    engine = make_engine("max_task_duration", {"seconds": 60})
    assert engine.evaluate(intended("step.exec", timestamp=10_000)).action is Action.allow
    engine.record(done("task.start", timestamp=100))
    assert engine.evaluate(intended("step.exec", timestamp=160)).action is Action.allow
    assert reason(engine.evaluate(intended("step.exec", timestamp=161.5))) == (
        "the task has run 61.5 seconds, more than the allowed 60"
    )
