"""Path rules: decisions over what happened earlier in the task, through the public engine."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from pathguard.decisions import Action, Decision
from pathguard.engine import PolicyEngine
from pathguard.errors import PolicyLoadError
from pathguard.policies import PolicySet
from pathguard.rules._base import CompileContext, compile_rule
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
    return Behavior(step_type=StepType.parse(step_type), verb=verb, task_id="t1", **fields)


def intended(step_type: str, verb: str | None = None, **fields: Any) -> Behavior:
    return done(step_type, verb, status=Status.intended, **fields)


def decide(engine: PolicyEngine, history: list[Behavior], step: Behavior) -> Decision:
    for entry in history:
        engine.record(entry)
    return engine.evaluate(step)


def reason(decision: Decision) -> str:
    (violation,) = decision.violations
    return violation.reason


def load_problems(rule: str, params: dict[str, Any], **policy: Any) -> str:
    with pytest.raises(PolicyLoadError) as info:
        make_engine(rule, params, **policy)
    return str(info.value)


APPROVED = {"guard": {"gate_type": "human_approval", "decision": "approved"}}
UNTRUSTED = {"target": {"trust": "untrusted"}}


# -- history_contains ---------------------------------------------------------------------


def test_history_contains_passes_once_a_matching_entry_was_recorded() -> None:
    engine = make_engine("history_contains", {"step_type": "step.model"})
    assert engine.evaluate(intended("step.exec")).action is Action.block
    engine.record(done("step.model"))
    assert engine.evaluate(intended("step.exec")).action is Action.allow


def test_history_contains_counts_up_to_min_count() -> None:
    engine = make_engine("history_contains", {"step_type": "step.model", "min_count": 2})
    decision = decide(engine, [done("step.model")], intended("step.exec"))
    assert reason(decision) == "only 1 of the 2 required step.model entries in this task's history"
    engine.record(done("step.model"))
    assert engine.evaluate(intended("step.exec")).action is Action.allow


def test_history_contains_ignores_blocked_attempts_unless_count_attempts() -> None:
    blocked = done("step.model", status=Status.blocked)
    strict = make_engine("history_contains", {"step_type": "step.model"})
    assert reason(decide(strict, [blocked], intended("step.exec"))) == (
        "no step.model in this task's history"
    )
    lenient = make_engine("history_contains", {"step_type": "step.model", "count_attempts": True})
    assert decide(lenient, [blocked], intended("step.exec")).action is Action.allow


# -- current_is ---------------------------------------------------------------------------


def test_current_is_checks_the_step_itself() -> None:
    engine = make_engine("current_is", {"step_type": "step.message", "verb": "GET"})
    assert engine.evaluate(intended("step.message", "GET")).action is Action.allow
    decision = engine.evaluate(intended("step.message", "POST"))
    assert reason(decision) == "this step (step.message POST) is not step.message GET"


# -- requires_prior -----------------------------------------------------------------------


def test_requires_prior_needs_a_completed_match() -> None:
    engine = make_engine(
        "requires_prior",
        {"step_type": "step.gate", "properties": APPROVED},
        when={"step_type": "step.exec"},
    )
    assert reason(engine.evaluate(intended("step.exec"))) == (
        "no earlier step.gate with guard.gate_type=human_approval, guard.decision=approved "
        "in this task"
    )
    engine.record(done("step.gate", properties={"guard": {"decision": "denied"}}))
    engine.record(done("step.gate", properties=APPROVED, status=Status.blocked))
    assert engine.evaluate(intended("step.exec")).action is Action.block
    engine.record(done("step.gate", properties=APPROVED))
    assert engine.evaluate(intended("step.exec")).action is Action.allow


def test_requires_prior_within_counts_entries_back_from_the_current_step() -> None:
    # The gate is at position 0; two entries follow, so the current step is 3 entries later.
    history = [done("step.gate"), done("step.model"), done("task.idle")]
    within_3 = make_engine("requires_prior", {"step_type": "step.gate", "within": 3})
    assert decide(within_3, history, intended("step.exec")).action is Action.allow
    within_2 = make_engine("requires_prior", {"step_type": "step.gate", "within": 2})
    assert reason(decide(within_2, history, intended("step.exec"))) == (
        "the last step.gate was 3 entries ago, more than the allowed 2"
    )


def test_requires_prior_rejects_within_zero_at_load() -> None:
    message = load_problems("requires_prior", {"step_type": "step.gate", "within": 0})
    assert "policy 'p', field 'params.within'" in message
    assert "greater than or equal to 1" in message


def test_a_misspelt_step_type_in_params_gets_a_hint() -> None:
    message = load_problems("requires_prior", {"step_type": "step.gat"})
    assert "field 'params.step_type'" in message
    assert "Did you mean 'step.gate'?" in message


# -- directly_preceded_by -----------------------------------------------------------------


def test_directly_preceded_by_reads_the_last_completed_entry() -> None:
    engine = make_engine("directly_preceded_by", {"step_type": "step.gate"})
    assert reason(engine.evaluate(intended("step.exec"))) == (
        "nothing precedes this step in the task; it must follow step.gate"
    )
    engine.record(done("step.gate"))
    # A refused attempt in between is not "the step before".
    engine.record(done("step.model", status=Status.blocked))
    assert engine.evaluate(intended("step.exec")).action is Action.allow
    engine.record(done("step.model"))
    assert reason(engine.evaluate(intended("step.exec"))) == (
        "the entry just before this step is step.model, not step.gate"
    )


def test_directly_preceded_by_counts_task_markers_as_entries() -> None:
    engine = make_engine("directly_preceded_by", {"step_type": "step.gate"})
    decision = decide(engine, [done("step.gate"), done("task.idle")], intended("step.exec"))
    assert reason(decision) == "the entry just before this step is task.idle, not step.gate"


# -- requires_prior_without_intervening ---------------------------------------------------


def test_without_intervening_needs_required_after_the_last_forbidden() -> None:
    engine = make_engine(
        "requires_prior_without_intervening",
        {
            "required": {"step_type": "step.gate", "properties": APPROVED},
            "forbidden": {"step_type": "step.resource", "properties": UNTRUSTED},
        },
        when={"step_type": "step.exec"},
    )
    assert engine.evaluate(intended("step.exec")).action is Action.block
    engine.record(done("step.gate", properties=APPROVED))
    assert engine.evaluate(intended("step.exec")).action is Action.allow
    engine.record(done("step.resource", "GET", properties=UNTRUSTED))
    assert reason(engine.evaluate(intended("step.exec"))) == (
        "a step.resource with target.trust=untrusted happened after the last step.gate "
        "with guard.gate_type=human_approval, guard.decision=approved"
    )
    engine.record(done("step.gate", properties=APPROVED))
    assert engine.evaluate(intended("step.exec")).action is Action.allow


def test_without_intervening_ignores_a_blocked_forbidden_attempt() -> None:
    engine = make_engine(
        "requires_prior_without_intervening",
        {"required": "step.gate", "forbidden": "step.credential"},
    )
    history = [done("step.gate"), done("step.credential", status=Status.blocked)]
    assert decide(engine, history, intended("step.exec")).action is Action.allow


def test_without_intervening_an_entry_matching_both_counts_as_required() -> None:
    engine = make_engine(
        "requires_prior_without_intervening",
        {"required": {"step_type": "step.gate", "properties": APPROVED}, "forbidden": "step.gate"},
    )
    history = [done("step.gate", properties=APPROVED)]
    assert decide(engine, history, intended("step.exec")).action is Action.allow
    engine.record(done("step.gate", properties={"guard": {"decision": "denied"}}))
    assert engine.evaluate(intended("step.exec")).action is Action.block


# -- requires_dedicated_prior -------------------------------------------------------------


def test_dedicated_prior_serves_one_targeted_step() -> None:
    engine = make_engine(
        "requires_dedicated_prior", {"step_type": "step.gate"}, when={"step_type": "step.exec"}
    )
    engine.record(done("step.gate"))
    assert engine.evaluate(intended("step.exec")).action is Action.allow
    engine.record(done("step.exec"))
    assert reason(engine.evaluate(intended("step.exec"))) == (
        "the last step.gate was already used by an earlier step; each step needs its own"
    )
    engine.record(done("step.gate"))
    assert engine.evaluate(intended("step.exec")).action is Action.allow


def test_dedicated_prior_is_not_used_up_by_other_or_refused_steps() -> None:
    engine = make_engine(
        "requires_dedicated_prior", {"step_type": "step.gate"}, when={"step_type": "step.exec"}
    )
    history = [done("step.gate"), done("step.model"), done("step.exec", status=Status.blocked)]
    assert decide(engine, history, intended("step.exec")).action is Action.allow


def test_dedicated_prior_an_entry_both_prior_and_targeted_is_a_new_prior() -> None:
    engine = make_engine(
        "requires_dedicated_prior",
        {"step_type": "step.exec", "step_name": "preflight"},
        when={"step_type": "step.exec"},
    )
    engine.record(done("step.exec", step_name="preflight"))
    engine.record(done("step.exec", step_name="preflight"))
    assert engine.evaluate(intended("step.exec", step_name="deploy")).action is Action.allow
    engine.record(done("step.exec", step_name="deploy"))
    assert engine.evaluate(intended("step.exec", step_name="deploy")).action is Action.block


# -- requires_gate ------------------------------------------------------------------------


def _hash(value: Any) -> str:
    return "sha256:" + hashlib.sha256(rfc8785.dumps(value)).hexdigest()


def test_requires_gate_needs_an_approved_gate_of_the_type() -> None:
    engine = make_engine("requires_gate", {}, when={"step_type": "step.exec"})
    assert reason(engine.evaluate(intended("step.exec"))) == (
        "no approved human_approval gate earlier in this task"
    )
    engine.record(
        done(
            "step.gate", properties={"guard": {"gate_type": "human_approval", "decision": "denied"}}
        )
    )
    engine.record(
        done("step.gate", properties={"guard": {"gate_type": "guardrail", "decision": "approved"}})
    )
    engine.record(done("step.gate", properties=APPROVED, status=Status.blocked))
    assert engine.evaluate(intended("step.exec")).action is Action.block
    engine.record(done("step.gate", properties=APPROVED))
    assert engine.evaluate(intended("step.exec")).action is Action.allow


def test_requires_gate_within() -> None:
    engine = make_engine("requires_gate", {"gate_type": "guardrail", "within": 1})
    gate = done(
        "step.gate", properties={"guard": {"gate_type": "guardrail", "decision": "approved"}}
    )
    assert decide(engine, [gate], intended("step.exec")).action is Action.allow
    engine.record(done("step.model"))
    assert reason(engine.evaluate(intended("step.exec"))) == (
        "the last approved guardrail gate was 2 entries ago, more than the allowed 1"
    )


def test_requires_gate_bound_to_input_compares_the_canonical_hash() -> None:
    engine = make_engine("requires_gate", {"bind_to_input": True})
    step_input = {"cmd": "rm -rf build", "n": 1}
    gate = {"guard": {**APPROVED["guard"], "approved_input_hash": _hash(step_input)}}
    engine.record(done("step.gate", properties=gate))
    # Key order does not matter: the hash is over canonical JSON.
    same = intended("step.exec", input={"n": 1, "cmd": "rm -rf build"})
    assert engine.evaluate(same).action is Action.allow
    other = intended("step.exec", input={"cmd": "rm -rf /", "n": 1})
    assert reason(engine.evaluate(other)) == (
        "the last approved human_approval gate approved a different input than this step's"
    )


def test_requires_gate_bound_to_input_needs_the_gate_to_record_a_hash() -> None:
    engine = make_engine("requires_gate", {"bind_to_input": True})
    decision = decide(
        engine, [done("step.gate", properties=APPROVED)], intended("step.exec", input={})
    )
    assert reason(decision) == (
        "the last approved human_approval gate does not record which input it approved"
    )


def test_requires_gate_rejects_an_unknown_gate_type() -> None:
    message = load_problems("requires_gate", {"gate_type": "human"})
    assert "field 'params.gate_type'" in message


# -- sequence_forbidden -------------------------------------------------------------------

EXFILTRATION = {
    "sequence": [
        {"step_type": "step.resource", "properties": UNTRUSTED},
        "step.credential",
        {"step_type": "step.message", "verb": "POST"},
    ]
}


def test_sequence_forbidden_blocks_the_step_that_would_complete_it() -> None:
    engine = make_engine("sequence_forbidden", EXFILTRATION)
    engine.record(done("step.resource", "GET", properties=UNTRUSTED))
    engine.record(done("step.model"))  # gaps are allowed
    engine.record(done("step.credential"))
    assert engine.evaluate(intended("step.message", "GET")).action is Action.allow
    assert reason(engine.evaluate(intended("step.message", "POST"))) == (
        "this step would complete the forbidden sequence step.resource with "
        "target.trust=untrusted then step.credential then step.message POST"
    )


def test_sequence_forbidden_needs_the_order() -> None:
    engine = make_engine("sequence_forbidden", EXFILTRATION)
    history = [done("step.credential"), done("step.resource", "GET", properties=UNTRUSTED)]
    assert decide(engine, history, intended("step.message", "POST")).action is Action.allow


def test_sequence_forbidden_blocked_attempts_do_not_advance_it() -> None:
    engine = make_engine("sequence_forbidden", EXFILTRATION)
    history = [
        done("step.resource", "GET", properties=UNTRUSTED),
        done("step.credential", status=Status.failed),
    ]
    assert decide(engine, history, intended("step.message", "POST")).action is Action.allow


def test_sequence_forbidden_once_the_history_holds_it_every_step_violates() -> None:
    engine = make_engine(
        "sequence_forbidden", {"sequence": ["step.resource", "step.exec"]}, mode="shadow"
    )
    history = [done("step.resource", "GET"), done("step.exec")]
    decision = decide(engine, history, intended("step.model"))
    (violation,) = decision.shadow
    assert violation.reason == (
        "the task already contains the forbidden sequence step.resource then step.exec"
    )


def _naive_contains(sequence: list[str], path: list[str]) -> bool:
    found = 0
    for step_type in path:
        if found < len(sequence) and step_type == sequence[found]:
            found += 1
    return found == len(sequence)


def _is_subsequence(sequence: list[str], path: list[str]) -> bool:
    it = iter(path)
    return all(any(x == y for y in it) for x in sequence)


TYPES = ["step.resource", "step.exec", "step.model"]


@given(
    sequence=st.lists(st.sampled_from(TYPES), min_size=1, max_size=3),
    path=st.lists(st.sampled_from(TYPES), max_size=8),
    current=st.sampled_from(TYPES),
)
def test_sequence_forbidden_agrees_with_a_subsequence_search(
    sequence: list[str], path: list[str], current: str
) -> None:
    engine = make_engine("sequence_forbidden", {"sequence": sequence})
    decision = decide(
        engine,
        [done(t, "GET" if t == "step.resource" else None) for t in path],
        intended(current, "GET" if current == "step.resource" else None),
    )
    expected = _is_subsequence(sequence, path) or (
        current == sequence[-1] and _is_subsequence(sequence[:-1], path)
    )
    assert (decision.action is Action.block) is expected
    assert _naive_contains(sequence, path) is _is_subsequence(sequence, path)


# -- not_after ----------------------------------------------------------------------------


def test_not_after_closes_the_door_for_the_rest_of_the_task() -> None:
    engine = make_engine(
        "not_after",
        {"step_type": "step.credential"},
        when={"step_type": "step.message", "verb": "POST"},
    )
    assert engine.evaluate(intended("step.message", "POST")).action is Action.allow
    engine.record(done("step.credential", status=Status.blocked))
    assert engine.evaluate(intended("step.message", "POST")).action is Action.allow
    engine.record(done("step.credential"))
    engine.record(done("step.gate"))
    assert reason(engine.evaluate(intended("step.message", "POST"))) == (
        "not allowed after the earlier step.credential in this task"
    )


# -- taint --------------------------------------------------------------------------------


def test_taint_until_cleared() -> None:
    engine = make_engine(
        "taint",
        {
            "source": {"properties": UNTRUSTED},
            "cleared_by": {"step_type": "step.gate", "properties": APPROVED},
        },
        when={"step_type": "step.message", "verb": "POST"},
    )
    assert engine.evaluate(intended("step.message", "POST")).action is Action.allow
    engine.record(done("step.resource", "GET", properties=UNTRUSTED))
    assert reason(engine.evaluate(intended("step.message", "POST"))) == (
        "the task is tainted by an earlier step with target.trust=untrusted and no step.gate "
        "with guard.gate_type=human_approval, guard.decision=approved has cleared it since"
    )
    engine.record(done("step.gate", properties=APPROVED, status=Status.blocked))
    assert engine.evaluate(intended("step.message", "POST")).action is Action.block
    engine.record(done("step.gate", properties=APPROVED))
    assert engine.evaluate(intended("step.message", "POST")).action is Action.allow
    engine.record(done("step.resource", "GET", properties=UNTRUSTED))
    assert engine.evaluate(intended("step.message", "POST")).action is Action.block


def test_taint_an_entry_both_source_and_clearer_leaves_it_tainted() -> None:
    engine = make_engine("taint", {"source": {"properties": UNTRUSTED}, "cleared_by": "step.gate"})
    history = [
        done("step.resource", "GET", properties=UNTRUSTED),
        done("step.gate", properties=UNTRUSTED),
    ]
    assert decide(engine, history, intended("step.exec")).action is Action.block


def test_taint_without_cleared_by_lasts_the_task() -> None:
    engine = make_engine("taint", {"source": "step.credential"})
    history = [done("step.credential"), done("step.gate", properties=APPROVED)]
    decision = decide(engine, history, intended("step.exec"))
    assert reason(decision) == "the task is tainted by an earlier step.credential"


def test_taint_reports_a_bad_filter_where_it_is() -> None:
    message = load_problems("taint", {"source": "step.exce"})
    assert "field 'params.source.step_type'" in message
    assert "Did you mean 'step.exec'?" in message


# -- conditional_successor ----------------------------------------------------------------


def test_conditional_successor_constrains_the_step_after_a_trigger() -> None:
    engine = make_engine(
        "conditional_successor",
        {"trigger": "step.exec", "condition": {"output.status": "error"}, "required": "step.gate"},
    )
    engine.record(done("step.exec", output={"status": "ok"}))
    assert engine.evaluate(intended("step.exec")).action is Action.allow
    engine.record(done("step.exec", output={"status": "error"}))
    assert engine.evaluate(intended("step.gate")).action is Action.allow
    assert reason(engine.evaluate(intended("step.exec"))) == (
        "after step.exec meeting {output.status: eq 'error'}, the next step must be step.gate"
    )
    # A refused attempt does not end the trigger's turn; a completed step does.
    engine.record(done("step.exec", status=Status.blocked))
    assert engine.evaluate(intended("step.exec")).action is Action.block
    engine.record(done("step.model"))
    assert engine.evaluate(intended("step.exec")).action is Action.allow


def test_conditional_successor_forbidden() -> None:
    engine = make_engine(
        "conditional_successor",
        {
            "trigger": {"step_type": "step.resource", "properties": UNTRUSTED},
            "condition": {},
            "forbidden": "step.exec",
        },
    )
    engine.record(done("step.resource", "GET", properties=UNTRUSTED))
    assert engine.evaluate(intended("step.model")).action is Action.allow
    assert reason(engine.evaluate(intended("step.exec"))) == (
        "after step.resource with target.trust=untrusted, the next step must not be step.exec"
    )


def test_conditional_successor_load_errors() -> None:
    message = load_problems(
        "conditional_successor", {"trigger": "step.exec", "condition": {"output.status": "error"}}
    )
    assert "needs `required`, `forbidden` or both" in message
    message = load_problems(
        "conditional_successor",
        {"trigger": "step.exec", "condition": {"outptu.status": "error"}, "required": "step.gate"},
    )
    assert "field 'params.condition'" in message
    assert "does not start with a field of a step" in message


# -- monitors -----------------------------------------------------------------------------


def _compiled(rule: str, params: dict[str, Any], when: dict[str, Any] | None = None) -> Any:
    policy = PolicySet.from_dict(
        {
            "version": 1,
            "name": "t",
            "policies": [
                {"id": "p", "rule": rule, "params": params, **({"when": when} if when else {})}
            ],
        }
    )
    target = policy.policies[0].target()
    return compile_rule(
        rule, params, CompileContext(policy_id="p", scope="step_execution", target=target)
    )


@pytest.mark.parametrize(
    ("rule", "params", "when", "watched"),
    [
        ("requires_prior", {"step_type": "step.gate"}, None, {"step.gate"}),
        (
            "history_contains",
            {"step_type": ["step.gate", "step.model"]},
            None,
            {"step.gate", "step.model"},
        ),
        ("not_after", {"step_type": "step.credential"}, None, {"step.credential"}),
        ("requires_gate", {}, None, {"step.gate"}),
        (
            "taint",
            {"source": "step.resource", "cleared_by": "step.gate"},
            None,
            {"step.resource", "step.gate"},
        ),
        (
            "sequence_forbidden",
            {"sequence": ["step.resource", "step.exec"]},
            None,
            {"step.resource", "step.exec"},
        ),
        (
            "requires_dedicated_prior",
            {"step_type": "step.gate"},
            {"step_type": "step.exec"},
            {"step.gate", "step.exec"},
        ),
        (
            "requires_prior_without_intervening",
            {"required": "step.gate", "forbidden": "step.resource"},
            None,
            {"step.gate", "step.resource"},
        ),
        ("directly_preceded_by", {"step_type": "step.gate"}, None, None),
        ("taint", {"source": {"properties": UNTRUSTED}}, None, None),
    ],
)
def test_monitors_watch_only_what_can_change_them(
    rule: str, params: dict[str, Any], when: dict[str, Any] | None, watched: set[str] | None
) -> None:
    compiled = _compiled(rule, params, when)
    assert compiled.stateful
    result = compiled.watches()
    assert (None if result is None else {t.value for t in result}) == watched
