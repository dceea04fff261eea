"""The `pathguard` command line, driven through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from pathguard.cli import app
from pathguard.engine import PolicyEngine
from pathguard.policies import PolicySet
from pathguard.trace import HashChain, JsonlSink
from pathguard.vocabulary import Behavior, Status, StepType, Verb

GATED = """\
version: 1
name: gated
policies:
  - id: exec-needs-approval
    when: {step_type: step.exec}
    rule: requires_gate
    effect: block
    severity: critical
  - id: tickets-first
    when: {step_type: step.model}
    rule: requires_prior
    params: {step_type: step.resource, verb: GET}
    effect: warn
    severity: low
"""

OPEN = """\
version: 1
name: open
policies:
  - id: tickets-first
    when: {step_type: step.model}
    rule: requires_prior
    params: {step_type: step.resource, verb: GET}
    effect: warn
    severity: low
"""

runner = CliRunner()


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def record_task(policies: str, path: Path, task_id: str = "t1") -> None:
    """Run a short scripted task through an engine, as the Guard would, into a JSONL trace.

    The task calls the model, reads a ticket, tries to run code without approval (blocked
    under the gated policies), gets a human approval, runs the code, and ends.
    """
    engine = PolicyEngine(PolicySet.from_yaml(policies))
    chain = HashChain()
    common: dict[str, Any] = {"agent_key": "bot", "task_id": task_id}
    steps = [
        Behavior(step_type=StepType.task_start, step_name="task.start", **common),
        Behavior(step_type=StepType.step_model, step_name="chat", input={"prompt": "hi"}, **common),
        Behavior(
            step_type=StepType.step_resource, verb=Verb.GET, step_name="read_ticket", **common
        ),
        Behavior(step_type=StepType.step_exec, step_name="run_script", **common),
        Behavior(
            step_type=StepType.step_gate,
            step_name="approval",
            properties={"guard": {"gate_type": "human_approval", "decision": "approved"}},
            **common,
        ),
        Behavior(step_type=StepType.step_exec, step_name="run_script", **common),
        Behavior(step_type=StepType.task_end, step_name="task.end", **common),
    ]
    with JsonlSink(path) as sink:
        for i, step in enumerate(steps):
            intended = step.replace(timestamp=float(i))
            decision = engine.evaluate(intended)
            status = Status.blocked if decision.action.value == "block" else Status.completed
            done = intended.replace(status=status)
            engine.record(done)
            sink.write(chain.append(done, decision))


@pytest.fixture
def gated(tmp_path: Path) -> Path:
    return write(tmp_path / "gated.yaml", GATED)


@pytest.fixture
def open_policies(tmp_path: Path) -> Path:
    return write(tmp_path / "open.yaml", OPEN)


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "trace.jsonl"
    record_task(GATED, path)
    return path


# -- policy check -----------------------------------------------------------------------------


def test_policy_check_passes_a_valid_file(gated: Path) -> None:
    result = invoke("policy", "check", gated)

    assert result.exit_code == 0
    assert result.stdout.strip() == f"{gated}: ok, 2 policies in 'gated'"


def test_policy_check_reports_malformed_yaml_with_its_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "version: 1\nname: x\npolicies:\n  - id: a\n    rule: [\n")

    result = invoke("policy", "check", bad)

    assert result.exit_code == 1
    assert f"{bad}: 1 problem, not loaded" in result.stdout
    assert f"  {bad}:6: not valid YAML" in result.stdout


def test_policy_check_lists_every_problem_with_file_line_policy_and_field(
    tmp_path: Path,
) -> None:
    bad = write(
        tmp_path / "bad.yaml",
        """\
version: 1
name: broken
policies:
  - id: gate-exec
    when: {step_type: step.exec}
    rule: requires_gat
  - id: recent-ticket
    rule: requires_prior
    params: {step_type: step.resource, within: 0}
""",
    )

    result = invoke("policy", "check", bad)

    assert result.exit_code == 1
    assert f"{bad}: 2 problems, not loaded" in result.stdout
    assert (
        f"{bad}:6, policy 'gate-exec', field 'rule': unknown rule 'requires_gat'. "
        "Did you mean 'requires_gate'?"
    ) in result.stdout
    assert f"{bad}:9, policy 'recent-ticket', field 'params.within': " in result.stdout


def test_policy_check_checks_every_file_and_fails_if_any_fails(gated: Path, tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "version: 1\nname: x\npolicies:\n  - rule: not_after\n")

    result = invoke("policy", "check", gated, bad)

    assert result.exit_code == 1
    assert f"{gated}: ok" in result.stdout
    assert f"{bad}: 2 problems, not loaded" in result.stdout
    assert "field 'id': this field is required." in result.stdout


def test_policy_check_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = invoke("policy", "check", tmp_path / "nope.yaml")

    assert result.exit_code == 2
    assert f"Error: the policy file '{tmp_path / 'nope.yaml'}' does not exist." in result.stderr


# -- policy test ------------------------------------------------------------------------------


def test_policy_test_prints_every_decision_and_the_policies_behind_it(
    gated: Path, trace: Path
) -> None:
    result = invoke("policy", "test", gated, "--trace", trace)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "task t1 (agent bot)" in lines
    assert "  seq   1  step.model POST chat  [completed]  → warn" in lines
    assert "  seq   3  step.exec run_script  [blocked]  → block" in lines
    assert (
        "        ✗ exec-needs-approval [block, critical]: no approved human_approval gate "
        "earlier in this task"
    ) in lines
    assert "  seq   5  step.exec run_script  [completed]  → allow" in lines
    assert lines[-1] == "7 steps in 1 task: 5 allow, 1 warn, 0 approve, 1 block."


def test_policy_test_shows_where_the_replay_differs_from_the_recorded_decision(
    open_policies: Path, trace: Path
) -> None:
    result = invoke("policy", "test", open_policies, "--trace", trace)

    assert result.exit_code == 0
    assert "  seq   3  step.exec run_script  [blocked]  → allow  (recorded: block)" in (
        result.stdout.splitlines()
    )


@pytest.mark.parametrize(("fail_on", "exit_code"), [("block", 1), ("approve", 1), ("warn", 1)])
def test_fail_on_exits_1_when_a_step_reaches_that_action_or_stronger(
    gated: Path, trace: Path, fail_on: str, exit_code: int
) -> None:
    result = invoke("policy", "test", gated, "--trace", trace, "--fail-on", fail_on)

    assert result.exit_code == exit_code
    assert f"(--fail-on {fail_on})" in result.stdout


def test_fail_on_passes_when_no_step_reaches_the_action(open_policies: Path, trace: Path) -> None:
    result = invoke("policy", "test", open_policies, "--trace", trace, "--fail-on", "approve")

    assert result.exit_code == 0
    assert "1 warn, 0 approve, 0 block." in result.stdout


def test_policy_test_refuses_a_tampered_trace_unless_told_not_to_verify(
    gated: Path, trace: Path
) -> None:
    lines = trace.read_text(encoding="utf-8").splitlines()
    del lines[4]  # the approval
    trace.write_text("\n".join(lines) + "\n", encoding="utf-8")

    refused = invoke("policy", "test", gated, "--trace", trace)
    replayed = invoke("policy", "test", gated, "--trace", trace, "--no-verify")

    assert refused.exit_code == 2
    assert "Seq 4 of this task is missing" in refused.stderr
    assert "--no-verify" in refused.stderr
    assert replayed.exit_code == 0
    # Without the approval the second run is blocked too, so the replay says so.
    assert "  seq   5  step.exec run_script  [completed]  → block  (recorded: allow)" in (
        replayed.stdout.splitlines()
    )


def test_policy_test_with_a_policy_file_that_does_not_load_exits_2(
    tmp_path: Path, trace: Path
) -> None:
    bad = write(
        tmp_path / "bad.yaml", "version: 1\nname: x\npolicies:\n  - id: a\n    rule: nope\n"
    )

    result = invoke("policy", "test", bad, "--trace", trace)

    assert result.exit_code == 2
    assert f"the policy file '{bad}' does not load:" in result.stderr
    assert "policy 'a', field 'rule': unknown rule 'nope'." in result.stderr


def test_policy_test_with_a_missing_trace_exits_2(gated: Path, tmp_path: Path) -> None:
    result = invoke("policy", "test", gated, "--trace", tmp_path / "missing.jsonl")

    assert result.exit_code == 2
    assert "The trace file" in result.stderr and "does not exist." in result.stderr


# -- policy diff ------------------------------------------------------------------------------


def test_policy_diff_shows_the_steps_whose_decision_changes(
    open_policies: Path, gated: Path, tmp_path: Path
) -> None:
    trace = tmp_path / "open-trace.jsonl"
    record_task(OPEN, trace)  # recorded without the gate policy: the first exec ran

    result = invoke("policy", "diff", open_policies, gated, "--trace", trace)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "  seq   3  step.exec run_script: allow → block" in lines
    assert (
        "        + ✗ exec-needs-approval [block, critical]: no approved human_approval "
        "gate earlier in this task"
    ) in lines
    assert not any("seq   5" in line for line in lines)  # approved by then: unchanged
    assert lines[-1] == (
        "7 steps: 1 changed (1 stricter, 0 looser, 0 same action with other policies), 6 unchanged."
    )


def test_policy_diff_in_the_other_direction_is_looser(
    open_policies: Path, gated: Path, trace: Path
) -> None:
    result = invoke("policy", "diff", gated, open_policies, "--trace", trace)

    assert result.exit_code == 0
    assert "  seq   3  step.exec run_script: block → allow" in result.stdout.splitlines()
    assert "        - ✗ exec-needs-approval [block, critical]: " in result.stdout
    assert "1 changed (0 stricter, 1 looser, " in result.stdout


# -- rules ------------------------------------------------------------------------------------


def test_rules_lists_each_rule_with_its_summary_and_params() -> None:
    result = invoke("rules")

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert any(line.startswith("requires_gate  an approved step.gate") for line in lines)
    assert (
        '  gate_type: "human_approval" | "policy_check" | "guardrail" '
        '(default "human_approval") - the `guard.gate_type` the gate must have'
    ) in lines
    assert "  step_type: StepType | list[StepType] (required) - the step type(s) to match" in (
        lines
    )


def test_rules_json_is_the_catalogue_as_data() -> None:
    result = invoke("rules", "--json")

    catalogue = json.loads(result.stdout)
    by_name = {entry["name"]: entry for entry in catalogue}
    within = {p["name"]: p for p in by_name["requires_prior"]["params"]}["within"]
    assert within == {
        "name": "within",
        "type": "int | null",
        "required": False,
        "default": None,
        "description": "the match must be among the last N history entries",
    }
    assert by_name["field_not_empty"]["scopes"] == ["agent_registration", "step_execution"]


def test_rules_can_show_one_rule_and_suggests_a_near_name() -> None:
    one = invoke("rules", "not_after", "--json")
    unknown = invoke("rules", "not_aftr")

    assert json.loads(one.stdout)["name"] == "not_after"
    assert unknown.exit_code == 2
    assert "'not_aftr' is not a known rule. Did you mean 'not_after'?" in unknown.stderr


# -- audit verify -----------------------------------------------------------------------------


def test_audit_verify_reports_an_intact_chain(trace: Path, tmp_path: Path) -> None:
    record_task(GATED, trace, task_id="t2")  # a second task appended to the same file

    result = invoke("audit", "verify", trace)

    assert result.exit_code == 0
    assert result.stdout.strip() == f"{trace}: 14 records in 2 tasks, chain intact"


def test_audit_verify_names_the_first_tampered_record(trace: Path) -> None:
    lines = trace.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[3])
    record["status"] = "completed"  # pretend the blocked exec ran
    lines[3] = json.dumps(record)
    trace.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = invoke("audit", "verify", trace)

    assert result.exit_code == 1
    assert result.stdout.strip() == (
        f"{trace}: chain broken at line 4, task 't1' of agent 'bot', seq 3: The record's "
        "content does not match its hash: it was changed after it was written."
    )


def test_audit_verify_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = invoke("audit", "verify", tmp_path / "none.jsonl")

    assert result.exit_code == 2
    assert "does not exist." in result.stderr


# -- try --------------------------------------------------------------------------------------


def test_try_runs_an_offline_demo_and_explains_each_decision() -> None:
    result = invoke("try")

    assert result.exit_code == 0
    out = result.stdout
    assert "It wants to run a script, with no approval yet.  step.exec run_script → block" in out
    assert (
        "✗ exec-needs-approval [block, critical]: no approved human_approval gate earlier "
        "in this task"
    ) in out
    assert "It runs the script again, now approved.  step.exec run_script → allow" in out
    assert "✓ exec-needs-approval" in out
    assert "It tries to email the customer's details.  step.message POST send_email → block" in (
        out
    )


def test_try_prints_a_policy_file_that_policy_check_accepts(tmp_path: Path) -> None:
    shown = invoke("try").stdout
    text = shown.split("The demo policies:\n", 1)[1].split("\n\n", 1)[0]
    path = write(tmp_path / "demo.yaml", text + "\n")

    assert invoke("policy", "check", path).exit_code == 0
    assert "The demo policies:" not in invoke("try", "--no-policies").stdout
