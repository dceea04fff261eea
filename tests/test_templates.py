"""Templates: classify steps by name, type and arguments; the shipped default; bad documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pathguard import (
    Guard,
    InvalidBehaviorError,
    StepType,
    Template,
    TemplateError,
    Verb,
)
from pathguard.templates import check_classification, deep_merge, load_template
from pathguard.testing import recording


@pytest.fixture(scope="module")
def default() -> Template:
    return Template.default()


@pytest.mark.parametrize(
    ("name", "step_type", "verb"),
    [
        ("approve_refund", StepType.step_gate, None),
        ("content_guardrail", StepType.step_gate, None),
        ("get_secret", StepType.step_credential, Verb.GET),
        ("run_code", StepType.step_exec, None),
        ("bash", StepType.step_exec, None),
        ("send_email", StepType.step_message, Verb.POST),
        ("read_inbox", StepType.step_message, Verb.GET),
        ("chat", StepType.step_model, Verb.POST),
        ("summarize_ticket", StepType.step_model, Verb.POST),
        ("remember_fact", StepType.step_self, Verb.POST),
        ("recall_facts", StepType.step_self, Verb.GET),
        ("delete_user", StepType.step_resource, Verb.DELETE),
        ("update_ticket", StepType.step_resource, Verb.PATCH),
        ("create_issue", StepType.step_resource, Verb.POST),
        ("read_ticket", StepType.step_resource, Verb.GET),
        ("web_search", StepType.step_resource, Verb.GET),
    ],
)
def test_the_default_template_classifies_common_tool_names(
    default: Template, name: str, step_type: StepType, verb: Verb | None
) -> None:
    c = default.classify(name)
    assert c.step_type is step_type
    assert c.verb is verb


def test_the_default_template_gives_gate_and_exec_properties(default: Template) -> None:
    assert default.classify("approve_refund").properties == {
        "guard": {"gate_type": "human_approval"}
    }
    assert default.classify("moderate_text").properties["guard"]["gate_type"] == "guardrail"
    assert default.classify("run_python").properties["exec"]["side_effect_class"] == "unknown"


def test_an_unmatched_name_is_left_unclassified(default: Template) -> None:
    c = default.classify("frobnicate")
    assert c.step_type is None
    assert c.verb is None
    assert c.properties == {}


def custom(*rules: dict[str, Any]) -> Template:
    return Template.from_dict({"version": 1, "name": "custom", "rules": list(rules)})


def test_the_first_matching_rule_wins() -> None:
    tpl = custom(
        {"match": {"step_name": "send_*"}, "set": {"step_type": "step.message", "verb": "POST"}},
        {"match": {"step_name": "*"}, "set": {"step_type": "step.exec"}},
    )
    assert tpl.classify("send_sms").step_type is StepType.step_message
    assert tpl.classify("other").step_type is StepType.step_exec


def test_names_match_by_regex_and_rules_may_require_a_step_type() -> None:
    tpl = custom(
        {
            "match": {"step_name_regex": "^db_(read|query)"},
            "set": {
                "step_type": "step.resource",
                "verb": "GET",
                "properties": {"target": {"system": "db"}},
            },
        },
        {
            "match": {"step_type": "step.resource", "step_name": "*"},
            "set": {"properties": {"target": {"trust": "internal"}}},
        },
    )
    assert tpl.classify("db_query_users").properties == {"target": {"system": "db"}}
    assert tpl.classify("x_db_read").step_type is None
    assert tpl.classify("anything").properties == {}
    typed = tpl.classify("anything", StepType.step_resource)
    assert typed.properties == {"target": {"trust": "internal"}}


def test_rules_can_match_on_argument_conditions() -> None:
    tpl = custom(
        {
            "match": {"step_name": "http", "arguments": {"method": "DELETE"}},
            "set": {"step_type": "step.resource", "verb": "DELETE"},
        },
        {
            "match": {"step_name": "http", "arguments": {"options.dry_run": True}},
            "set": {"step_type": "step.resource", "verb": "GET"},
        },
        {"match": {"step_name": "http"}, "set": {"step_type": "step.resource", "verb": "POST"}},
    )
    assert tpl.classify("http", arguments={"method": "DELETE"}).verb is Verb.DELETE
    assert tpl.classify("http", arguments={"options": {"dry_run": True}}).verb is Verb.GET
    assert tpl.classify("http", arguments={"method": "PUT"}).verb is Verb.POST
    assert tpl.classify("http", arguments={}).verb is Verb.POST


def test_deep_merge_merges_nested_mappings_and_replaces_the_rest() -> None:
    base = {"target": {"domain": "a", "trust": "x"}, "tags": [1], "keep": 1}
    over = {"target": {"domain": "b", "path": "/p"}, "tags": [2]}
    assert deep_merge(base, over) == {
        "target": {"domain": "b", "trust": "x", "path": "/p"},
        "tags": [2],
        "keep": 1,
    }
    assert base["target"] == {"domain": "a", "trust": "x"}  # inputs are not changed


def test_load_template_accepts_every_source(tmp_path: Path) -> None:
    data = {
        "version": 1,
        "name": "mine",
        "rules": [{"match": {"step_name": "x"}, "set": {"step_type": "step.exec"}}],
    }
    path = tmp_path / "t.yaml"
    path.write_text(
        "version: 1\nname: mine\nrules:\n  - match: {step_name: x}\n"
        "    set: {step_type: step.exec}\n",
        encoding="utf-8",
    )
    assert load_template(None).name == "default"
    assert load_template(data).classify("x").step_type is StepType.step_exec
    assert load_template(path).classify("x").step_type is StepType.step_exec
    assert load_template(str(path)).name == "mine"
    tpl = Template.from_dict(data)
    assert load_template(tpl) is tpl


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"version": 1, "rules": []}, "name"),
        (
            {"version": 1, "name": "t", "rules": [{"match": {"stepname": "x"}, "set": {}}]},
            "stepname",
        ),
        (
            {
                "version": 1,
                "name": "t",
                "rules": [{"match": {"step_name": "x"}, "set": {"step_type": "step.exe"}}],
            },
            "Did you mean 'step.exec'",
        ),
        (
            {
                "version": 1,
                "name": "t",
                "rules": [{"match": {"step_name_regex": "(?=x)"}, "set": {}}],
            },
            "not a valid RE2 regular expression",
        ),
        (
            {
                "version": 1,
                "name": "t",
                "rules": [
                    {"match": {"step_name": "x"}, "set": {"step_type": "step.model", "verb": "GET"}}
                ],
            },
            "rule #1, sets step.model with verb GET",
        ),
    ],
)
def test_a_bad_template_is_a_template_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError, match="template") as info:
        Template.from_dict(data)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_template_files_that_cannot_be_read_or_parsed(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="Cannot read the template"):
        Template.load(tmp_path / "missing.yaml")
    with pytest.raises(TemplateError, match="not valid YAML"):
        Template.from_yaml("rules: [unclosed")
    with pytest.raises(TemplateError, match="must be a mapping"):
        Template.from_yaml("- a\n- b\n")


def test_check_classification_names_the_valid_verbs() -> None:
    check_classification(StepType.step_message, Verb.GET)
    with pytest.raises(InvalidBehaviorError, match="it takes GET, POST"):
        check_classification(StepType.step_message, Verb.DELETE)
    with pytest.raises(InvalidBehaviorError, match="no verb"):
        check_classification(StepType.step_exec, Verb.POST)


# -- through the Guard ----------------------------------------------------------------------


def test_a_guard_classifies_undeclared_steps_with_its_template() -> None:
    guard = Guard("bot")

    @guard.step()
    def send_email(to: str) -> None: ...

    @guard.step()
    def frobnicate() -> None: ...

    with recording(guard) as records, guard.task():
        send_email("a@example.com")
        frobnicate()
    by_name = {r.step_name: r for r in records}
    assert (by_name["send_email"].step_type, by_name["send_email"].verb) == ("step.message", "POST")
    assert by_name["frobnicate"].step_type == "step.unknown"
    assert by_name["frobnicate"].verb is None


def test_a_guard_uses_a_custom_template_with_argument_conditions() -> None:
    guard = Guard(
        "bot",
        template={
            "version": 1,
            "name": "http",
            "rules": [
                {
                    "match": {
                        "step_name": "http",
                        "arguments": {"method": {"in": ["GET", "HEAD"]}},
                    },
                    "set": {
                        "step_type": "step.resource",
                        "verb": "GET",
                        "properties": {"target": {"system": "web"}},
                    },
                },
                {
                    "match": {"step_name": "http"},
                    "set": {"step_type": "step.resource", "verb": "POST"},
                },
            ],
        },
    )

    @guard.step()
    def http(method: str, url: str) -> None: ...

    with recording(guard) as records, guard.task():
        http("GET", "https://example.com")
        http(method="POST", url="https://example.com")
    steps = [r for r in records if r.step_name == "http"]
    assert [(r.verb, r.properties) for r in steps] == [
        ("GET", {"target": {"system": "web"}}),
        ("POST", {}),
    ]


def test_the_decorator_type_wins_over_the_template() -> None:
    guard = Guard("bot")

    @guard.step(StepType.step_exec)
    def send_email() -> None: ...

    with recording(guard) as records, guard.task():
        send_email()
    (step,) = [r for r in records if r.step_name == "send_email"]
    assert step.step_type == "step.exec"
    assert step.verb is None
