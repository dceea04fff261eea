"""Field rules in both scopes: step policies read dot paths, registration policies read the
agent's declared fields."""

from __future__ import annotations

from typing import Any

import pytest

from pathguard import (
    Action,
    AgentRegistration,
    Behavior,
    Decision,
    PolicyEngine,
    PolicyLoadError,
    PolicySet,
    Status,
    StepType,
    Verb,
)


def make_engine(rule: str, params: dict[str, Any], **policy: Any) -> PolicyEngine:
    doc = {
        "version": 1,
        "name": "test",
        "policies": [{"id": "p", "rule": rule, "params": params, **policy}],
    }
    return PolicyEngine(PolicySet.from_dict(doc))


def step(**fields: Any) -> Behavior:
    return Behavior(
        step_type=StepType.step_message, verb=Verb.POST, step_name="send", task_id="t1", **fields
    )


def agent(**fields: Any) -> AgentRegistration:
    fields.setdefault("agent_key", "support-bot")
    fields.setdefault("name", "Support Bot")
    fields.setdefault("purpose", "Answer customer tickets")
    return AgentRegistration(**fields)


def reason(decision: Decision) -> str:
    (violation,) = decision.violations
    return violation.reason


def load_error(rule: str, params: dict[str, Any], **policy: Any) -> str:
    with pytest.raises(PolicyLoadError) as info:
        make_engine(rule, params, **policy)
    return str(info.value)


REGISTRATION = {"scope": "agent_registration"}


# -- field_not_empty ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["hello", 0, False, ["x"], {"a": 1}])
def test_field_not_empty_passes_for_a_value(value: Any) -> None:
    engine = make_engine("field_not_empty", {"field": "input.to"})
    assert engine.evaluate(step(input={"to": value})).action is Action.allow


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({}, "input.to is absent"),
        ({"to": None}, "input.to is not set"),
        ({"to": ""}, "input.to is empty"),
        ({"to": "  \n\t"}, "input.to is empty"),
        ({"to": []}, "input.to is empty"),
        ({"to": {}}, "input.to is empty"),
    ],
)
def test_field_not_empty_violates_when_absent_or_empty(payload: Any, expected: str) -> None:
    engine = make_engine("field_not_empty", {"field": "input.to"})
    decision = engine.evaluate(step(input=payload))
    assert decision.action is Action.block
    assert reason(decision) == expected


def test_field_not_empty_on_registration_requires_an_owner() -> None:
    engine = make_engine("field_not_empty", {"field": "owner"}, **REGISTRATION)
    assert engine.evaluate_registration(agent(owner="ops@example.com")).action is Action.allow
    decision = engine.evaluate_registration(agent())
    assert decision.action is Action.block
    assert reason(decision) == "owner is not set"


def test_field_not_empty_on_registration_reads_metadata_and_tools() -> None:
    engine = make_engine("field_not_empty", {"field": "metadata.team"}, **REGISTRATION)
    assert engine.evaluate_registration(agent(metadata={"team": "ops"})).allowed
    assert reason(engine.evaluate_registration(agent())) == "metadata.team is absent"
    tools = make_engine("field_not_empty", {"field": "tools"}, **REGISTRATION)
    assert tools.evaluate_registration(agent(tools=["read_ticket"])).allowed
    assert reason(tools.evaluate_registration(agent())) == "tools is empty"


# -- field_in_list ------------------------------------------------------------------------


def test_field_in_list_passes_for_an_allowed_value() -> None:
    engine = make_engine("field_in_list", {"field": "input.channel", "values": ["email", "chat"]})
    assert engine.evaluate(step(input={"channel": "chat"})).action is Action.allow


def test_field_in_list_violates_for_other_or_absent_values() -> None:
    engine = make_engine("field_in_list", {"field": "input.channel", "values": ["email", "chat"]})
    decision = engine.evaluate(step(input={"channel": "sms"}))
    assert reason(decision) == "input.channel is 'sms', not one of 'email', 'chat'"
    assert reason(engine.evaluate(step(input={}))) == "input.channel is absent"


def test_field_in_list_checks_every_element_of_a_list() -> None:
    engine = make_engine(
        "field_in_list", {"field": "properties.data.fields", "values": ["name", "city"]}
    )
    ok = step(properties={"data": {"fields": ["name", "city"]}})
    assert engine.evaluate(ok).allowed
    bad = step(properties={"data": {"fields": ["name", "ssn", "dob"]}})
    decision = engine.evaluate(bad)
    assert decision.action is Action.block
    assert reason(decision) == (
        "properties.data.fields contains 'ssn', 'dob', not among 'name', 'city'"
    )
    assert decision.violations[0].details["not_allowed"] == ["'ssn'", "'dob'"]


def test_field_in_list_keeps_booleans_apart_from_numbers() -> None:
    engine = make_engine("field_in_list", {"field": "input.level", "values": [1, 2]})
    assert engine.evaluate(step(input={"level": 1})).allowed
    assert not engine.evaluate(step(input={"level": True})).allowed
    assert not engine.evaluate(step(input={"level": "1"})).allowed


def test_field_in_list_on_registration_limits_environment_and_tools() -> None:
    engine = make_engine(
        "field_in_list",
        {"field": "environment", "values": ["staging", "production"]},
        **REGISTRATION,
    )
    assert engine.evaluate_registration(agent(environment="production")).allowed
    decision = engine.evaluate_registration(agent(environment="laptop"))
    assert reason(decision) == "environment is 'laptop', not one of 'staging', 'production'"

    tools = make_engine(
        "field_in_list", {"field": "tools", "values": ["read_ticket", "chat"]}, **REGISTRATION
    )
    assert tools.evaluate_registration(agent(tools=["chat"])).allowed
    assert reason(tools.evaluate_registration(agent(tools=["chat", "shell"]))) == (
        "tools contains 'shell', not among 'read_ticket', 'chat'"
    )


def test_field_in_list_reads_the_risk_class_by_its_name() -> None:
    engine = make_engine(
        "field_in_list",
        {"field": "risk_classification", "values": ["minimal", "limited"]},
        **REGISTRATION,
    )
    assert engine.evaluate_registration(agent(risk_classification="limited")).allowed
    decision = engine.evaluate_registration(agent(risk_classification="high"))
    assert reason(decision) == "risk_classification is 'high', not one of 'minimal', 'limited'"


def test_field_in_list_needs_at_least_one_value() -> None:
    assert "params.values" in load_error("field_in_list", {"field": "input.x", "values": []})


# -- field_matches_regex ------------------------------------------------------------------


def test_field_matches_regex_searches_the_string() -> None:
    engine = make_engine("field_matches_regex", {"field": "input.to", "pattern": r"@example\.com$"})
    assert engine.evaluate(step(input={"to": "ann@example.com"})).allowed
    decision = engine.evaluate(step(input={"to": "ann@example.com.evil.net"}))
    assert decision.action is Action.block
    assert reason(decision) == r"input.to does not match '@example\\.com$'"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [({}, "input.to is absent"), ({"to": 42}, "input.to is not a string (it is int)")],
)
def test_field_matches_regex_violates_for_absent_and_non_strings(
    payload: Any, expected: str
) -> None:
    engine = make_engine("field_matches_regex", {"field": "input.to", "pattern": "."})
    assert reason(engine.evaluate(step(input=payload))) == expected


def test_field_matches_regex_on_registration_checks_the_owner_address() -> None:
    engine = make_engine(
        "field_matches_regex",
        {"field": "owner", "pattern": r"^[^@\s]+@example\.com$"},
        **REGISTRATION,
    )
    assert engine.evaluate_registration(agent(owner="ops@example.com")).allowed
    assert not engine.evaluate_registration(agent(owner="someone@gmail.com")).allowed
    assert reason(engine.evaluate_registration(agent())) == "owner is not a string (it is NoneType)"


def test_field_matches_regex_rejects_a_bad_pattern_at_load() -> None:
    message = load_error("field_matches_regex", {"field": "input.to", "pattern": "(unclosed"})
    assert "field 'params.pattern'" in message
    assert "'(unclosed' is not a valid RE2 regular expression" in message


def test_field_matches_regex_rejects_look_around_at_load() -> None:
    message = load_error("field_matches_regex", {"field": "input.to", "pattern": "(?!admin)"})
    assert "not a valid RE2 regular expression" in message


# -- field_max_length ---------------------------------------------------------------------


def test_field_max_length_limits_strings_lists_and_dicts() -> None:
    engine = make_engine("field_max_length", {"field": "input.body", "max": 5})
    assert engine.evaluate(step(input={"body": "12345"})).allowed
    assert engine.evaluate(step(input={"body": [1, 2, 3]})).allowed
    decision = engine.evaluate(step(input={"body": "123456"}))
    assert reason(decision) == "input.body has length 6, more than the allowed 5"
    assert decision.violations[0].details == {"field": "input.body", "length": 6, "max": 5}
    assert not engine.evaluate(step(input={"body": dict.fromkeys("abcdef", 1)})).allowed


def test_field_max_length_passes_absent_and_unsized_values() -> None:
    engine = make_engine("field_max_length", {"field": "input.body", "max": 1})
    assert engine.evaluate(step(input={})).allowed
    assert engine.evaluate(step(input={"body": 123456})).allowed


def test_field_max_length_on_registration_limits_the_number_of_tools() -> None:
    engine = make_engine("field_max_length", {"field": "tools", "max": 2}, **REGISTRATION)
    assert engine.evaluate_registration(agent(tools=["a", "b"])).allowed
    assert reason(engine.evaluate_registration(agent(tools=["a", "b", "c"]))) == (
        "tools has length 3, more than the allowed 2"
    )


def test_field_max_length_rejects_a_negative_max() -> None:
    assert "params.max" in load_error("field_max_length", {"field": "input.x", "max": -1})


# -- fields and phases --------------------------------------------------------------------


def test_a_field_on_output_is_checked_after_the_step() -> None:
    engine = make_engine("field_max_length", {"field": "output.text", "max": 3})
    finished = step(output={"text": "far too long"}, status=Status.completed)
    assert engine.has_output_policies(finished)
    assert engine.evaluate(finished).allowed  # before the step: not checked
    decision = engine.evaluate_output(finished)
    assert decision.action is Action.block
    assert reason(decision) == "output.text has length 12, more than the allowed 3"


def test_a_field_on_input_is_checked_before_the_step() -> None:
    engine = make_engine("field_not_empty", {"field": "input.to"})
    assert not engine.has_output_policies(step())
    assert not engine.evaluate(step()).allowed


def test_a_step_field_must_start_at_a_behavior_field() -> None:
    message = load_error("field_not_empty", {"field": "inputs.to"})
    assert "'inputs.to' is not a field" in message
    assert "field 'params.field'" in message


def test_a_registration_policy_rejects_step_fields() -> None:
    message = load_error("field_not_empty", {"field": "input.to"}, **REGISTRATION)
    assert "'input.to' is not a field of an agent registration" in message
    assert "metadata.<path>" in message


def test_a_step_policy_rejects_registration_fields() -> None:
    message = load_error("field_not_empty", {"field": "owner"})
    assert "'owner' does not start with a field of a step" in message


def test_a_plain_registration_field_has_no_sub_fields() -> None:
    message = load_error("field_not_empty", {"field": "owner.email"}, **REGISTRATION)
    assert "write 'owner' instead of 'owner.email'" in message


def test_field_rules_load_from_yaml_in_both_scopes() -> None:
    policies = PolicySet.from_yaml(
        """
version: 1
name: fields
policies:
  - id: owner-set
    scope: agent_registration
    rule: field_not_empty
    params: {field: owner}
  - id: short-subject
    when: {step_type: step.message, verb: POST}
    rule: field_max_length
    params: {field: input.subject, max: 10}
"""
    )
    engine = PolicyEngine(policies)
    assert not engine.evaluate_registration(agent()).allowed
    assert not engine.evaluate(step(input={"subject": "a very long subject"})).allowed
