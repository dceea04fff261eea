"""Policy documents (spec §2): loading from every source, all-or-nothing validation, filters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pathguard import (
    Action,
    Behavior,
    Effect,
    Guard,
    Mode,
    PolicyEngine,
    PolicyLoadError,
    PolicySet,
    Severity,
    Status,
    StepType,
    Verb,
    load_policies,
)
from pathguard.policies import Policy

NEEDS_GATE = {"rule": "requires_prior", "params": {"step_type": "step.gate"}}

DOC: dict[str, Any] = {
    "version": 1,
    "name": "baseline",
    "description": "test policies",
    "policies": [
        {
            "id": "exec-needs-approval",
            "description": "exec after an approved gate",
            "when": {"step_type": "step.exec"},
            "rule": "requires_prior",
            "params": {
                "step_type": "step.gate",
                "properties": {"guard.decision": "approved"},
                "within": 5,
            },
            "effect": "approve",
            "severity": "critical",
        },
        {"id": "shadowed", "mode": "shadow", **NEEDS_GATE},
    ],
}

YAML_DOC = """\
version: 1
name: baseline
description: test policies
policies:
  - id: exec-needs-approval
    description: exec after an approved gate
    when:
      step_type: step.exec
    rule: requires_prior
    params: {step_type: step.gate, properties: {guard.decision: approved}, within: 5}
    effect: approve
    severity: critical
  - id: shadowed
    mode: shadow
    rule: requires_prior
    params: {step_type: step.gate}
"""


def problems_of(data: Any, **kwargs: Any) -> PolicyLoadError:
    with pytest.raises(PolicyLoadError) as info:
        PolicySet.from_dict(data, **kwargs)
    return info.value


def one_policy(**policy: Any) -> dict[str, Any]:
    return {"version": 1, "name": "t", "policies": [{"id": "p", **NEEDS_GATE, **policy}]}


def step(step_type: StepType, verb: Verb | None = None, **fields: Any) -> Behavior:
    return Behavior(step_type=step_type, verb=verb, task_id="t1", **fields)


# -- loading from every source --------------------------------------------------------------


def check_loaded(ps: PolicySet) -> None:
    assert ps.name == "baseline"
    assert [p.id for p in ps.policies] == ["exec-needs-approval", "shadowed"]
    first = ps.get("exec-needs-approval")
    assert first.effect is Effect.approve
    assert first.severity is Severity.critical
    assert first.params["within"] == 5


def test_loads_from_a_dict_yaml_and_json_text() -> None:
    check_loaded(PolicySet.from_dict(DOC))
    check_loaded(PolicySet.from_yaml(YAML_DOC))
    check_loaded(PolicySet.from_json(json.dumps(DOC)))
    assert PolicySet.from_dict(DOC) == PolicySet.from_yaml(YAML_DOC)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_loads_from_a_file_path(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"policies{suffix}"
    path.write_text(json.dumps(DOC) if suffix == ".json" else YAML_DOC, encoding="utf-8")
    check_loaded(PolicySet.load(path))
    check_loaded(load_policies(path))
    check_loaded(load_policies(str(path)))
    assert Guard("bot", policies=str(path)).engine.policy_set == PolicySet.load(path)


def test_load_policies_accepts_every_source() -> None:
    ps = PolicySet.from_dict(DOC)
    assert load_policies(ps) is ps
    assert load_policies(DOC) == ps
    assert load_policies(YAML_DOC) == ps
    empty = load_policies(None)
    assert empty.policies == ()


def test_policy_defaults_are_the_spec_defaults() -> None:
    (policy,) = PolicySet.from_dict(one_policy()).policies
    assert policy.scope == "step_execution"
    assert policy.effect is Effect.block
    assert policy.severity is Severity.medium
    assert policy.mode is Mode.enforce
    assert policy.when is None
    assert policy.agents is None
    assert policy.risk_classification is None


def test_a_document_survives_a_round_trip_through_yaml() -> None:
    ps = PolicySet.from_dict(DOC)
    assert PolicySet.from_yaml(ps.to_yaml()) == ps
    changed = PolicySet.from_dict({**DOC, "policies": DOC["policies"][:1]})
    assert changed.digest != ps.digest
    assert PolicySet.from_yaml(YAML_DOC).digest == ps.digest


def test_a_missing_file_is_a_load_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyLoadError, match="cannot read the file") as info:
        PolicySet.load(missing)
    (problem,) = info.value.problems
    assert problem.source == str(missing)
    with pytest.raises(PolicyLoadError, match="cannot read the file"):
        Guard("bot", policies=str(missing))


def test_a_directory_is_an_unreadable_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="cannot read the file"):
        PolicySet.load(tmp_path)


# -- all or nothing, with every problem located -----------------------------------------------

BROKEN = """\
version: 1
name: demo
policies:
  - id: good
    rule: requires_prior
    params: {step_type: step.gate}
  - id: typo-key
    rulee: requires_prior
    params: {step_type: step.gate}
  - id: typo-rule
    rule: requires_prio
    params: {step_type: step.gate}
  - id: typo-type
    when: {step_type: step.exe}
    rule: requires_prior
    params: {step_type: step.gate}
    effect: blok
  - id: good
    rule: requires_prior
    params: {step_type: step.gate, within: 0}
"""


def test_every_problem_is_listed_with_file_line_policy_and_field(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    with pytest.raises(PolicyLoadError) as info:
        PolicySet.load(path)
    error = info.value
    located = {(p.policy_id, p.field): p for p in error.problems}
    assert all(p.source == str(path) for p in error.problems)

    key = located["typo-key", "rulee"]
    assert key.line == 8
    assert "Did you mean 'rule'?" in key.message
    assert ("typo-key", "rule") in located  # and the real key is missing

    rule = located["typo-rule", "rule"]
    assert rule.line == 11
    assert "Did you mean 'requires_prior'?" in rule.message

    step_type = located["typo-type", "when.step_type"]
    assert step_type.line == 14
    assert "Did you mean 'step.exec'?" in step_type.message

    effect = located["typo-type", "effect"]
    assert effect.line == 17
    assert "Did you mean 'block'?" in effect.message

    duplicate = located["good", "id"]
    assert duplicate.line == 18
    assert "duplicate policy id 'good'" in duplicate.message

    within = located["good", "params.within"]
    assert within.line == 20

    text = str(error)
    assert text.startswith(f"The policy document has {len(error.problems)} problems and was not")
    assert f"{path}:11, policy 'typo-rule', field 'rule': unknown rule 'requires_prio'" in text


def test_a_load_error_is_a_value_error_and_one_problem_reads_singular() -> None:
    error = problems_of({"version": 1, "name": "t", "polices": []})
    assert isinstance(error, ValueError)
    assert str(error).startswith("The policy document has 1 problem and was not loaded:")
    assert "Did you mean 'policies'?" in str(error)


def test_duplicate_ids_are_reported_even_when_both_are_otherwise_valid() -> None:
    doc = {"version": 1, "name": "t", "policies": [{"id": "p", **NEEDS_GATE}] * 2}
    (problem,) = problems_of(doc).problems
    assert problem.policy_id == "p"
    assert problem.field == "id"
    assert "first used by policy #1" in problem.message


def test_duplicate_ids_are_reported_even_when_the_first_has_other_problems() -> None:
    doc = {
        "version": 1,
        "name": "t",
        "policies": [{"id": "p", "rule": "requires_prior"}, {"id": "p", **NEEDS_GATE}],
    }
    fields = [(p.policy_id, p.field) for p in problems_of(doc).problems]
    assert ("p", "params.step_type") in fields
    assert ("p", "id") in fields


@pytest.mark.parametrize(
    ("policy", "field", "hint"),
    [
        ({"sevrity": "high"}, "sevrity", "Did you mean 'severity'?"),
        ({"when": {"stepname": "db_*"}}, "when.stepname", "Did you mean 'step_name'?"),
        ({"params": {"step_typ": "step.gate"}}, "params.step_typ", "Did you mean 'step_type'?"),
        ({"params": {"step_type": "step.gat"}}, "params.step_type", "Did you mean 'step.gate'?"),
        ({"severity": "hgh"}, "severity", "Did you mean 'high'?"),
        ({"mode": "shadw"}, "mode", "Did you mean 'shadow'?"),
        ({"effect": "aprove"}, "effect", "Did you mean 'approve'?"),
        ({"when": {"step_type": "step.mdel"}}, "when.step_type", "Did you mean 'step.model'?"),
    ],
)
def test_did_you_mean_hints(policy: dict[str, Any], field: str, hint: str) -> None:
    doc = one_policy()
    doc["policies"][0] = {**doc["policies"][0], **policy}
    problems = problems_of(doc).problems
    matching = [p for p in problems if p.field == field]
    assert matching, [str(p) for p in problems]
    assert hint in matching[0].message
    assert matching[0].policy_id == "p"


def test_a_bad_rule_param_is_a_sentence_naming_policy_and_field() -> None:
    (problem,) = problems_of(one_policy(params={"step_type": "step.gate", "within": 0})).problems
    assert problem.policy_id == "p"
    assert problem.field == "params.within"
    assert problem.message.endswith(".")


def test_malformed_yaml_reports_its_line() -> None:
    text = "version: 1\nname: x\npolicies:\n  - id: a\n   rule: b\n"
    with pytest.raises(PolicyLoadError, match="not valid YAML") as info:
        PolicySet.from_yaml(text, source="bad.yaml")
    (problem,) = info.value.problems
    assert problem.line == 5
    assert str(problem).startswith("bad.yaml:5:")


def test_malformed_json_reports_its_line() -> None:
    text = '{"version": 1,\n "name": "x",\n "policies": [}'
    with pytest.raises(PolicyLoadError, match="not valid JSON") as info:
        PolicySet.from_json(text, source="bad.json")
    assert info.value.problems[0].line == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "must be a mapping"),
        ({"version": 2, "name": "x"}, "unsupported version 2"),
        ({"version": 1}, "needs a non-empty `name`"),
        ({"version": 1, "name": "x", "policies": {"id": "p"}}, "`policies` must be a list"),
        ({"version": 1, "name": "x", "policies": ["p"]}, "policy #1 must be a mapping"),
        ({"version": 1, "name": "x", "policies": [NEEDS_GATE]}, "this field is required"),
        ({"version": 1, "name": "x", "policies": [{"id": "a b", **NEEDS_GATE}]}, "pattern"),
    ],
)
def test_document_shape_problems(data: Any, message: str) -> None:
    assert message in str(problems_of(data))


def test_when_on_a_registration_policy_is_refused() -> None:
    doc = one_policy(
        scope="agent_registration",
        rule="field_not_empty",
        params={"field": "owner"},
        when={"step_type": "step.exec"},
    )
    (problem,) = problems_of(doc).problems
    assert problem.field == "when"
    assert "agent_registration" in problem.message


def test_a_step_rule_in_a_registration_policy_is_refused() -> None:
    (problem,) = problems_of(one_policy(scope="agent_registration")).problems
    assert problem.field == "params"
    assert "cannot be used in" in problem.message
    assert "step_execution" in problem.message


# -- targeting: `when` filters and their operators --------------------------------------------

MISSING = object()


def decide_with_filter(condition: Any, value: Any) -> Action:
    engine = PolicyEngine(one_policy(when={"properties": {"target.level": condition}}))
    props = {} if value is MISSING else {"target": {"level": value}}
    return engine.evaluate(step(StepType.step_exec, properties=props)).action


@pytest.mark.parametrize(
    ("condition", "value", "targeted"),
    [
        ("a", "a", True),
        ("a", "b", False),
        ("a", MISSING, False),
        ({"eq": "a"}, "a", True),
        ({"eq": "a"}, MISSING, False),
        ({"ne": "a"}, "a", False),
        ({"ne": "a"}, "b", True),
        ({"ne": "a"}, MISSING, True),
        ({"in": ["a", "b"]}, "b", True),
        ({"in": ["a", "b"]}, "c", False),
        ({"in": ["a", "b"]}, MISSING, False),
        ({"not_in": ["a", "b"]}, "a", False),
        ({"not_in": ["a", "b"]}, "c", True),
        ({"not_in": ["a", "b"]}, MISSING, True),
        ({"gt": 5}, 6, True),
        ({"gt": 5}, 5, False),
        ({"gt": 5}, "6", False),
        ({"gt": 0}, True, False),
        ({"gt": 5}, MISSING, False),
        ({"gte": 5}, 5, True),
        ({"gte": 5}, 4.9, False),
        ({"lt": 5}, 4, True),
        ({"lt": 5}, 5, False),
        ({"lt": 5}, MISSING, False),
        ({"lte": 5}, 5, True),
        ({"lte": 5}, 6, False),
        ({"gt": "m"}, "n", True),
        ({"contains": "x"}, "axb", True),
        ({"contains": "x"}, ["x", "y"], True),
        ({"contains": "x"}, {"x": 1}, True),
        ({"contains": "x"}, "ab", False),
        ({"contains": "x"}, MISSING, False),
        ({"matches": "^db_"}, "db_users", True),
        ({"matches": "^db_"}, "users", False),
        ({"matches": "^db_"}, 3, False),
        ({"matches": "^db_"}, MISSING, False),
        ({"exists": True}, None, True),
        ({"exists": True}, MISSING, False),
        ({"exists": False}, MISSING, True),
        ({"exists": False}, "a", False),
    ],
)
def test_property_filter_operators(condition: Any, value: Any, targeted: bool) -> None:
    assert decide_with_filter(condition, value) is (Action.block if targeted else Action.allow)


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"in": "a"}, "takes a list"),
        ({"not_in": 3}, "takes a list"),
        ({"gt": [1]}, "takes a number or a string"),
        ({"matches": "(?=a)"}, "not a valid RE2 regular expression"),
        ({"matches": 3}, "regular expression string"),
        ({"exists": "yes"}, "takes true or false"),
    ],
)
def test_a_malformed_operator_is_a_load_error(condition: Any, message: str) -> None:
    error = problems_of(one_policy(when={"properties": {"target.level": condition}}))
    (problem,) = error.problems
    assert problem.field == "when.properties"
    assert message in problem.message


def test_nested_and_dotted_property_filters_mean_the_same() -> None:
    nested = PolicyEngine(one_policy(when={"properties": {"target": {"trust": "untrusted"}}}))
    dotted = PolicyEngine(one_policy(when={"properties": {"target.trust": "untrusted"}}))
    for trust, action in [("untrusted", Action.block), ("trusted", Action.allow)]:
        b = step(StepType.step_exec, properties={"target": {"trust": trust}})
        assert nested.evaluate(b).action is action
        assert dotted.evaluate(b).action is action


def test_when_filters_on_type_verb_and_name_glob() -> None:
    engine = PolicyEngine(
        one_policy(
            when={"step_type": ["step.resource"], "verb": ["POST", "DELETE"], "step_name": "db_*"}
        )
    )

    def action(verb: Verb, name: str) -> Action:
        return engine.evaluate(step(StepType.step_resource, verb, step_name=name)).action

    assert action(Verb.DELETE, "db_users") is Action.block
    assert action(Verb.GET, "db_users") is Action.allow
    assert action(Verb.POST, "api_users") is Action.allow
    assert engine.evaluate(step(StepType.step_exec, step_name="db_x")).action is Action.allow


def test_operators_work_in_rule_params_too() -> None:
    engine = PolicyEngine(
        one_policy(
            when={"step_type": "step.exec"},
            params={
                "step_type": "step.gate",
                "properties": {"guard.decision": {"in": ["approved", "waived"]}},
            },
        )
    )
    engine.record(
        step(
            StepType.step_gate,
            properties={"guard": {"decision": "denied"}},
            status=Status.completed,
        )
    )
    assert engine.evaluate(step(StepType.step_exec)).action is Action.block
    engine.record(
        step(
            StepType.step_gate,
            properties={"guard": {"decision": "waived"}},
            status=Status.completed,
        )
    )
    assert engine.evaluate(step(StepType.step_exec)).action is Action.allow


def test_task_markers_are_targeted_only_when_named() -> None:
    untargeted = PolicyEngine(one_policy())
    assert untargeted.evaluate(step(StepType.task_end)).action is Action.allow
    assert untargeted.evaluate(step(StepType.step_exec)).action is Action.block
    targeted = PolicyEngine(one_policy(when={"step_type": "task.end"}))
    assert targeted.evaluate(step(StepType.task_end)).action is Action.block
    assert targeted.evaluate(step(StepType.step_exec)).action is Action.allow


def test_disabled_policies_are_not_evaluated() -> None:
    engine = PolicyEngine(one_policy(enabled=False))
    decision = engine.evaluate(step(StepType.step_exec))
    assert decision.action is Action.allow
    assert decision.evaluated == ()


def test_policy_model_is_frozen() -> None:
    (policy,) = PolicySet.from_dict(one_policy()).policies
    assert isinstance(policy, Policy)
    with pytest.raises(ValueError):
        policy.effect = Effect.warn  # type: ignore[misc]
