"""The vocabulary of spec §1: the (step_type, scope, verb) table, Behavior, dot-path reads."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from pathguard import (
    ABSENT,
    AgentRegistration,
    Behavior,
    InvalidBehaviorError,
    RiskClass,
    Scope,
    Status,
    StepType,
    Verb,
)
from pathguard.vocabulary import valid_verbs

# The table of spec §1, written out independently of the implementation.
TABLE: dict[str, tuple[str, tuple[str, ...]]] = {
    "task.start": ("task", ()),
    "task.end": ("task", ()),
    "task.error": ("task", ()),
    "task.idle": ("task", ()),
    "step.resource": ("step", ("GET", "POST", "PATCH", "DELETE")),
    "step.message": ("step", ("GET", "POST")),
    "step.self": ("step", ("GET", "POST", "PATCH", "DELETE")),
    "step.model": ("step", ("POST",)),
    "step.credential": ("step", ("GET",)),
    "step.exec": ("step", ()),
    "step.gate": ("step", ()),
    "step.unknown": ("step", ()),
}
VERBS = ("GET", "POST", "PATCH", "DELETE")

VALID_PAIRS = [(t, v) for t, (_, verbs) in TABLE.items() for v in verbs] + [
    (t, None) for t, (_, verbs) in TABLE.items() if len(verbs) <= 1
]
INVALID_PAIRS = [(t, v) for t, v in itertools.product(TABLE, VERBS) if v not in TABLE[t][1]]


def test_step_types_are_exactly_the_table() -> None:
    assert {m.value for m in StepType} == set(TABLE)
    for member in StepType:
        assert member.name == member.value.replace(".", "_")
        assert str(member) == member.value
        assert isinstance(member, str)


def test_scopes_verbs_and_statuses_are_the_spec_values() -> None:
    assert [s.value for s in Scope] == ["task", "step"]
    assert [v.value for v in Verb] == list(VERBS)
    assert {s.value for s in Status} == {"intended", "completed", "failed", "blocked"}


@pytest.mark.parametrize("step_type", list(TABLE))
def test_valid_verbs_follow_the_table(step_type: str) -> None:
    assert [v.value for v in valid_verbs(step_type)] == list(TABLE[step_type][1])
    assert StepType(step_type).scope.value == TABLE[step_type][0]


@pytest.mark.parametrize(("step_type", "verb"), VALID_PAIRS)
def test_every_valid_pair_builds_a_behavior_with_the_derived_scope(
    step_type: str, verb: str | None
) -> None:
    b = Behavior(step_type=StepType(step_type), verb=verb)
    assert b.scope is Scope(TABLE[step_type][0])
    if verb is not None:
        assert b.verb is Verb(verb)


@pytest.mark.parametrize(("step_type", "verb"), INVALID_PAIRS)
def test_every_invalid_pair_raises_naming_the_valid_verbs(step_type: str, verb: str) -> None:
    with pytest.raises(InvalidBehaviorError) as info:
        Behavior(step_type=StepType(step_type), verb=Verb(verb))
    message = str(info.value)
    assert step_type in message
    assert verb in message
    valid = TABLE[step_type][1]
    if valid:
        for name in valid:
            assert name in message
    else:
        assert "no verb" in message


@pytest.mark.parametrize("step_type", [t for t, (_, v) in TABLE.items() if len(v) > 1])
def test_a_step_type_with_several_verbs_needs_one(step_type: str) -> None:
    with pytest.raises(InvalidBehaviorError, match="needs a verb") as info:
        Behavior(step_type=StepType(step_type))
    for name in TABLE[step_type][1]:
        assert name in str(info.value)


def test_invalid_behavior_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Behavior(step_type=StepType.step_exec, verb=Verb.POST)


@pytest.mark.parametrize(
    ("step_type", "default"),
    [(StepType.step_model, Verb.POST), (StepType.step_credential, Verb.GET)],
)
def test_an_omitted_verb_defaults_to_the_only_valid_one(step_type: StepType, default: Verb) -> None:
    assert Behavior(step_type=step_type).verb is default


def test_verbless_step_types_keep_no_verb() -> None:
    assert Behavior(step_type=StepType.step_exec).verb is None
    assert Behavior(step_type=StepType.task_start).verb is None


def test_step_type_and_verb_accept_text() -> None:
    b = Behavior(step_type="step.message", verb="post")  # type: ignore[arg-type]
    assert b.step_type is StepType.step_message
    assert b.verb is Verb.POST
    assert StepType.parse("step_exec") is StepType.step_exec
    assert Verb.parse("delete") is Verb.DELETE


def test_an_unknown_step_type_suggests_the_closest() -> None:
    with pytest.raises(InvalidBehaviorError, match=r"Did you mean 'step\.exec'\?"):
        StepType.parse("step.exe")
    with pytest.raises(InvalidBehaviorError, match="not a verb"):
        Verb.parse("PUT")


@pytest.mark.parametrize(
    ("step_type", "wrong"),
    [(StepType.step_exec, Scope.task), (StepType.task_end, Scope.step)],
)
def test_a_wrong_scope_is_refused(step_type: StepType, wrong: Scope) -> None:
    with pytest.raises(InvalidBehaviorError, match="belongs to scope"):
        Behavior(step_type=step_type, scope=wrong)


def test_the_right_scope_may_be_given_explicitly() -> None:
    assert Behavior(step_type=StepType.step_exec, scope=Scope.step).scope is Scope.step


def test_behavior_is_immutable_and_replace_validates_again() -> None:
    b = Behavior(step_type=StepType.step_resource, verb=Verb.GET, step_name="read")
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.step_name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.status = Status.completed  # type: ignore[misc]
    done = b.replace(status=Status.completed)
    assert done.status is Status.completed
    assert b.status is Status.intended
    with pytest.raises(InvalidBehaviorError):
        b.replace(step_type=StepType.step_exec)


def test_behavior_has_the_spec_fields() -> None:
    names = {f.name for f in dataclasses.fields(Behavior)}
    assert names == {
        "step_type",
        "scope",
        "verb",
        "step_name",
        "properties",
        "input",
        "output",
        "meta",
        "agent_key",
        "task_id",
        "seq",
        "status",
        "timestamp",
    }


def test_a_bad_status_is_refused() -> None:
    with pytest.raises(ValueError):
        Behavior(step_type=StepType.step_exec, status="done")  # type: ignore[arg-type]


# -- dot-path reads -------------------------------------------------------------------------

SAMPLE = Behavior(
    step_type=StepType.step_message,
    verb=Verb.POST,
    step_name="send_email",
    properties={"target": {"domain": "example.com", "trust": "untrusted"}, "custom": {"x": 1}},
    input={"to": ["a@example.com", "b@example.com"], "body": {"lines": [{"text": "hi"}]}},
    output="sent",
    meta={"request": {"id": "r1"}},
    task_id="t1",
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("step_name", "send_email"),
        ("step_type", "step.message"),
        ("verb", "POST"),
        ("scope", "step"),
        ("status", "intended"),
        ("task_id", "t1"),
        ("properties.target.domain", "example.com"),
        ("properties.custom.x", 1),
        ("input.to.0", "a@example.com"),
        ("input.to.1", "b@example.com"),
        ("input.body.lines.0.text", "hi"),
        ("meta.request.id", "r1"),
        ("output", "sent"),
        ("properties.target", {"domain": "example.com", "trust": "untrusted"}),
    ],
)
def test_dot_paths_read_nested_values(path: str, expected: object) -> None:
    assert SAMPLE.get(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "properties.target.host",
        "properties.nothing.deeper",
        "input.to.2",
        "input.to.first",
        "input.body.lines.0.text.more",
        "output.status",
        "meta.missing",
        "nonexistent",
        "agent_key.deeper",
    ],
)
def test_a_missing_path_is_absent_never_an_exception(path: str) -> None:
    assert SAMPLE.get(path) is ABSENT


def test_absent_is_a_falsy_singleton_equal_only_to_itself() -> None:
    assert not ABSENT
    assert repr(ABSENT) == "ABSENT"
    assert ABSENT == ABSENT
    assert ABSENT != None  # noqa: E711 - absent and null are different things
    assert type(ABSENT)() is ABSENT


def test_standard_and_custom_property_groups_pass_through_unchanged() -> None:
    props = {
        "target": {"domain": "d", "host": "h", "table": "t", "system": "s", "path": "/p"},
        "auth": {"scope": "read", "principal": "u1"},
        "data": {"classification": "pii", "fields": ["email"]},
        "model": {"provider": "p", "name": "m", "parameters": {"temperature": 0}},
        "exec": {"runtime": "python", "isolation": "none", "side_effect_class": "unknown"},
        "guard": {"gate_type": "human_approval", "decision": "approved"},
        "message": {"channel": "email", "sender": "a", "recipient": "b"},
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "cost_usd": 0.01},
        "my_team": {"anything": [1, 2]},
    }
    b = Behavior(step_type=StepType.step_exec, properties=props)
    assert b.properties == props
    assert b.get("properties.my_team.anything.1") == 2


# -- agent registrations --------------------------------------------------------------------


def test_agent_registration_reads_fields_and_checks_its_risk_class() -> None:
    reg = AgentRegistration(
        agent_key="bot",
        name="Bot",
        purpose="help",
        tools=["a", "b"],  # type: ignore[arg-type]
        risk_classification="high",  # type: ignore[arg-type]
        metadata={"team": {"name": "ops"}},
    )
    assert reg.tools == ("a", "b")
    assert reg.risk_classification is RiskClass.high
    assert reg.get("metadata.team.name") == "ops"
    assert reg.get("metadata.missing") is ABSENT
    assert reg.to_dict()["risk_classification"] == "high"
    with pytest.raises(InvalidBehaviorError, match="Did you mean 'limited'"):
        AgentRegistration(agent_key="bot", name="Bot", purpose="help", risk_classification="limted")  # type: ignore[arg-type]
