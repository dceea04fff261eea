"""The Guard SDK (spec §6) with sync steps: tasks, decisions at the edge, capture, the trace."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pathguard import (
    Action,
    ApprovalDeniedError,
    ApprovalRequest,
    BlockedError,
    CaptureError,
    CaptureLimits,
    ConfigurationError,
    Guard,
    InvalidBehaviorError,
    NoActiveTaskError,
    PathguardError,
    PolicyWarning,
    StepType,
    TraceRecord,
    Verb,
    canonical_hash,
    verify_jsonl,
)
from pathguard.testing import ScriptedApprovals, recording

ROOT = Path(__file__).resolve().parents[1]

APPROVED_GATE = {"step_type": "step.gate", "properties": {"guard.decision": "approved"}}


def unhashed(value):
    """Drop the digests that capture markers carry, to compare markers by their words."""
    if isinstance(value, str):
        return re.sub(r", sha256:[0-9a-f]{16}\]", "]", value)
    if isinstance(value, dict):
        return {k: unhashed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unhashed(v) for v in value]
    return value


def doc(*policies: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "name": "test", "policies": list(policies)}


def exec_needs_gate(pid: str = "exec-needs-gate", **extra: Any) -> dict[str, Any]:
    return {
        "id": pid,
        "when": {"step_type": "step.exec"},
        "rule": "requires_prior",
        "params": APPROVED_GATE,
        **extra,
    }


def exec_needs_approval(**params: Any) -> dict[str, Any]:
    return {
        "id": "exec-approval",
        "when": {"step_type": "step.exec"},
        "rule": "requires_gate",
        "params": params,
        "effect": "approve",
    }


def named(records: list[TraceRecord], name: str) -> list[TraceRecord]:
    return [r for r in records if r.step_name == name]


def kinds(records: list[TraceRecord]) -> list[tuple[str, str]]:
    return [(r.step_type, r.status) for r in records]


@pytest.fixture(autouse=True)
def _no_pathguard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PATHGUARD_"):
            monkeypatch.delenv(key)


@pytest.fixture
def calls() -> list[str]:
    return []


# -- tasks ----------------------------------------------------------------------------------


def test_a_step_outside_a_task_says_how_to_open_one(calls: list[str]) -> None:
    guard = Guard("bot")

    @guard.step(StepType.step_model)
    def chat(prompt: str) -> str:
        calls.append(prompt)
        return "hi"

    with pytest.raises(NoActiveTaskError) as info:
        chat("hello")
    message = str(info.value)
    assert "'chat' ran outside a task" in message
    assert "with guard.task():" in message
    assert "guard.start_task()" in message
    assert isinstance(info.value, RuntimeError)
    assert calls == []


@pytest.mark.parametrize("method", ["end_task", "error_task", "idle_task"])
def test_lifecycle_calls_outside_a_task_say_how_to_open_one(method: str) -> None:
    with pytest.raises(NoActiveTaskError, match=r"with guard\.task\(\)"):
        getattr(Guard("bot"), method)()


def test_a_task_records_start_steps_and_end() -> None:
    guard = Guard("bot")

    @guard.step(StepType.step_model)
    def chat(prompt: str) -> str:
        return prompt.upper()

    with recording(guard) as records:
        with guard.task(context={"user": "u1"}) as task_id:
            assert guard.current_task_id == task_id
            assert chat("hello") == "HELLO"
        assert guard.current_task_id is None
    assert kinds(records) == [
        ("task.start", "completed"),
        ("step.model", "completed"),
        ("task.end", "completed"),
    ]
    assert {r.task_id for r in records} == {task_id}
    assert records[0].input == {"user": "u1"}
    (step,) = named(records, "chat")
    assert (step.input, step.output, step.verb, step.agent_key) == (
        {"prompt": "hello"},
        "HELLO",
        "POST",
        "bot",
    )
    assert [r.seq for r in records] == [0, 1, 2]


def test_start_task_takes_an_id_properties_and_meta() -> None:
    guard = Guard("bot")
    with recording(guard) as records:
        assert (
            guard.start_task("ticket-42", properties={"channel": "web"}, meta={"req": "r1"})
            == "ticket-42"
        )
        assert guard.current_task_id == "ticket-42"
        guard.idle_task()
        guard.end_task(output={"ok": True})
    assert kinds(records) == [
        ("task.start", "completed"),
        ("task.idle", "completed"),
        ("task.end", "completed"),
    ]
    assert records[0].properties == {"channel": "web"}
    assert records[0].meta == {"req": "r1"}
    assert records[2].output == {"ok": True}
    assert guard.current_task_id is None


def test_an_exception_inside_a_task_records_task_error_and_propagates() -> None:
    guard = Guard("bot")
    with recording(guard) as records, pytest.raises(KeyError), guard.task():
        raise KeyError("lost")
    assert kinds(records) == [("task.start", "completed"), ("task.error", "completed")]
    assert records[-1].output == {"type": "KeyError", "message": "'lost'"}
    assert guard.current_task_id is None


def test_error_task_takes_a_message() -> None:
    guard = Guard("bot")
    with recording(guard) as records:
        guard.start_task()
        guard.error_task("gave up")
    assert records[-1].output == {"message": "gave up"}
    assert guard.current_task_id is None


def test_nested_tasks_have_their_own_ids_and_paths() -> None:
    guard = Guard(
        "bot", policies=doc({"id": "two-steps", "rule": "max_steps", "params": {"max": 2}})
    )

    @guard.step(StepType.step_exec)
    def work() -> None: ...

    with recording(guard) as records, guard.task() as outer:
        work()
        with guard.task() as inner:
            assert inner != outer
            assert guard.current_task_id == inner
            work()
            work()
        assert guard.current_task_id == outer
        work()  # the inner task's steps do not count against the outer one
    assert [r.task_id for r in named(records, "work")] == [outer, inner, inner, outer]
    assert all(r.status == "completed" for r in records)
    assert verify_ok(records)


def verify_ok(records: list[TraceRecord]) -> bool:
    from pathguard.trace import verify_records

    return bool(verify_records(records))


def test_a_policy_on_task_end_can_refuse_it_and_the_task_still_closes() -> None:
    guard = Guard(
        "bot",
        policies=doc(
            {
                "id": "must-answer",
                "when": {"step_type": "task.end"},
                "rule": "requires_prior",
                "params": {"step_type": "step.message", "verb": "POST"},
            }
        ),
    )
    with recording(guard) as records:
        with pytest.raises(BlockedError, match="must-answer"), guard.task():
            pass
        assert guard.current_task_id is None
    assert kinds(records) == [
        ("task.start", "completed"),
        ("task.end", "blocked"),
        ("task.error", "completed"),
    ]


def test_a_policy_on_task_start_can_refuse_the_task() -> None:
    guard = Guard(
        "bot",
        policies=doc(
            {
                "id": "no-tasks",
                "when": {"step_type": "task.start"},
                "rule": "step_name_allowlist",
                "params": {"names": ["nothing"]},
            }
        ),
    )
    with recording(guard) as records, pytest.raises(BlockedError, match="no-tasks"):
        guard.start_task()
    assert guard.current_task_id is None
    assert kinds(records) == [("task.start", "blocked")]


# -- block ----------------------------------------------------------------------------------


def test_a_blocked_step_is_not_run_and_its_attempt_is_recorded(calls: list[str]) -> None:
    guard = Guard(
        "bot",
        policies=doc(
            exec_needs_gate(),
            {
                "id": "no-exec-names",
                "when": {"step_type": "step.exec"},
                "rule": "step_name_allowlist",
                "params": {"names": ["safe"]},
            },
            {
                "id": "unrelated",
                "when": {"step_type": "step.model"},
                "rule": "requires_prior",
                "params": APPROVED_GATE,
            },
        ),
    )

    @guard.step(StepType.step_exec)
    def run_code(code: str) -> None:
        calls.append(code)

    with recording(guard) as records, guard.task(), pytest.raises(BlockedError) as info:
        run_code("rm -rf /")
    error = info.value
    assert calls == []
    assert error.decision.action is Action.block
    assert [v.policy_id for v in error.decision.violations] == ["exec-needs-gate", "no-exec-names"]
    message = str(error)
    assert message.startswith("Step 'run_code' (step.exec) was blocked by policy.")
    for v in error.decision.violations:
        assert f"{v.policy_id}: {v.reason}" in message
    assert "unrelated" not in message
    assert error.behavior is not None and error.behavior.step_name == "run_code"
    assert isinstance(error, PathguardError)
    (attempt,) = named(records, "run_code")
    assert attempt.status == "blocked"
    assert attempt.input == {"code": "rm -rf /"}
    assert attempt.decision is not None and attempt.decision["action"] == "block"
    assert records[-1].step_type == "task.end"  # the error was caught inside the task


# -- approve --------------------------------------------------------------------------------


def test_an_approved_step_records_its_gate_first_then_runs(calls: list[str]) -> None:
    approvals = ScriptedApprovals([True])
    guard = Guard("bot", policies=doc(exec_needs_approval()), approval_handler=approvals)

    @guard.step(StepType.step_exec)
    def run_code(code: str) -> str:
        calls.append(code)
        return "ok"

    with recording(guard) as records, guard.task() as task_id:
        assert run_code("print(1)") == "ok"
    assert calls == ["print(1)"]
    (request,) = approvals.requests
    assert isinstance(request, ApprovalRequest)
    assert request.behavior is not None and request.behavior.step_name == "run_code"
    assert request.behavior.input == {"code": "print(1)"}
    assert request.decision.action is Action.approve
    assert request.input_hash == canonical_hash({"code": "print(1)"})
    assert request.task_id == task_id
    assert request.agent_key == "bot"
    assert request.reasons == [f"exec-approval: {request.decision.violations[0].reason}"]
    assert kinds(records)[1:3] == [("step.gate", "completed"), ("step.exec", "completed")]
    gate = records[1]
    assert gate.properties == {
        "guard": {
            "gate_type": "human_approval",
            "decision": "approved",
            "approved_input_hash": request.input_hash,
        }
    }


@pytest.mark.parametrize(
    ("handler", "why"),
    [
        (ScriptedApprovals([False]), "the approval handler refused it"),
        (None, "no approval_handler is configured"),
    ],
)
def test_a_denied_approval_blocks_the_step(
    handler: ScriptedApprovals | None, why: str, calls: list[str]
) -> None:
    guard = Guard("bot", policies=doc(exec_needs_approval()), approval_handler=handler)

    @guard.step(StepType.step_exec)
    def run_code(code: str) -> None:
        calls.append(code)

    with recording(guard) as records, guard.task(), pytest.raises(ApprovalDeniedError) as info:
        run_code("x")
    assert isinstance(info.value, BlockedError)
    assert why in str(info.value)
    assert "exec-approval" in str(info.value)
    assert calls == []
    gate, attempt = records[1:3]
    assert (gate.step_type, gate.properties["guard"]["decision"]) == ("step.gate", "denied")
    assert gate.properties["guard"]["approved_input_hash"] is None
    assert (attempt.step_name, attempt.status) == ("run_code", "blocked")


def test_a_handler_that_raises_counts_as_a_denial(calls: list[str]) -> None:
    def broken(request: ApprovalRequest) -> bool:
        raise RuntimeError("approval service down")

    guard = Guard("bot", policies=doc(exec_needs_approval()), approval_handler=broken)

    @guard.step(StepType.step_exec)
    def run_code() -> None:
        calls.append("ran")

    with guard.task(), pytest.raises(ApprovalDeniedError):
        run_code()
    assert calls == []


def test_an_async_handler_serves_a_sync_step_outside_an_event_loop() -> None:
    seen: list[str] = []

    async def approve(request: ApprovalRequest) -> bool:
        seen.append(request.input_hash)
        return True

    guard = Guard("bot", policies=doc(exec_needs_approval()), approval_handler=approve)

    @guard.step(StepType.step_exec)
    def run_code(code: str) -> str:
        return code

    with guard.task():
        assert run_code("a") == "a"
    assert seen == [canonical_hash({"code": "a"})]


def test_an_approval_bound_to_the_input_does_not_cover_another_input(calls: list[str]) -> None:
    approvals = ScriptedApprovals([True, False])
    guard = Guard(
        "bot", policies=doc(exec_needs_approval(bind_to_input=True)), approval_handler=approvals
    )

    @guard.step(StepType.step_exec)
    def run_code(code: str) -> None:
        calls.append(code)

    with guard.task():
        run_code("a")
        run_code("a")  # the last gate approved exactly this input: no new question
        assert len(approvals.requests) == 1
        with pytest.raises(ApprovalDeniedError):
            run_code("b")
    assert calls == ["a", "a"]
    assert [r.input_hash for r in approvals.requests] == [
        canonical_hash({"code": "a"}),
        canonical_hash({"code": "b"}),
    ]


def test_a_bound_approval_does_not_cover_an_input_that_differs_past_the_capture_cap(
    calls: list[str],
) -> None:
    approvals = ScriptedApprovals([True], default=False)
    guard = Guard(
        "bot",
        policies=doc(exec_needs_approval(bind_to_input=True)),
        approval_handler=approvals,
        capture_limits=CaptureLimits(max_string=10),
    )

    @guard.step(StepType.step_exec)
    def run_code(code: str) -> None:
        calls.append(code)

    with guard.task():
        run_code("#" * 10 + " harmless")
        with pytest.raises(ApprovalDeniedError):
            run_code("#" * 10 + " rm -rf /")
    assert len(approvals.requests) == 2


def test_a_bound_approval_needs_a_gate_that_records_its_input() -> None:
    guard = Guard(
        "bot",
        policies=doc(
            {
                "id": "bound",
                "when": {"step_type": "step.exec"},
                "rule": "requires_gate",
                "params": {"bind_to_input": True},
            }
        ),
    )

    @guard.step()
    def approve_run() -> bool:
        return True

    @guard.step(StepType.step_exec)
    def run_code(code: str) -> None: ...

    with guard.task():
        approve_run()
        with pytest.raises(BlockedError, match="does not record which input it approved"):
            run_code("x")


# -- warn -----------------------------------------------------------------------------------


def test_a_warn_policy_warns_and_the_step_runs(calls: list[str]) -> None:
    guard = Guard("bot", policies=doc(exec_needs_gate(effect="warn")))

    @guard.step(StepType.step_exec)
    def run_code() -> str:
        calls.append("ran")
        return "done"

    with (
        recording(guard) as records,
        guard.task(),
        pytest.warns(PolicyWarning, match="exec-needs-gate: ") as warned,
    ):
        assert run_code() == "done"
    assert calls == ["ran"]
    (warning,) = warned
    assert isinstance(warning.message, PolicyWarning)
    assert warning.message.decision.action is Action.warn
    assert warning.message.behavior is not None
    assert warning.message.behavior.step_name == "run_code"
    assert warning.filename == __file__  # it points at the caller, not at pathguard
    (step,) = named(records, "run_code")
    assert step.status == "completed"
    assert step.decision is not None and step.decision["action"] == "warn"


# -- failures -------------------------------------------------------------------------------


def test_a_failing_step_is_recorded_and_its_own_exception_re_raised() -> None:
    guard = Guard("bot")
    boom = ValueError("bad input")

    @guard.step(StepType.step_exec)
    def run_code() -> None:
        raise boom

    with recording(guard) as records, guard.task(), pytest.raises(ValueError) as info:
        run_code()
    assert info.value is boom
    (step,) = named(records, "run_code")
    assert step.status == "failed"
    assert step.output == {"error": "ValueError", "message": "bad input"}


# -- decorated gates ------------------------------------------------------------------------


def test_a_decorated_gate_records_its_answer() -> None:
    guard = Guard("bot", policies=doc(exec_needs_gate()))
    answers: list[Any] = []

    @guard.step(StepType.step_gate)
    def ask_human() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    @guard.step(StepType.step_exec)
    def run_code() -> None: ...

    with recording(guard) as records, guard.task():
        answers.append(False)
        assert ask_human() is False
        with pytest.raises(BlockedError):
            run_code()
        answers.append(TimeoutError("nobody answered"))
        with pytest.raises(TimeoutError):
            ask_human()
        with pytest.raises(BlockedError):
            run_code()
        answers.append(None)
        ask_human()
        run_code()
    gates = named(records, "ask_human")
    assert [(g.status, g.properties["guard"]["decision"]) for g in gates] == [
        ("completed", "denied"),
        ("failed", "denied"),
        ("completed", "approved"),
    ]
    assert all(g.properties["guard"]["gate_type"] == "human_approval" for g in gates)
    assert named(records, "run_code")[-1].status == "completed"


# -- registration ---------------------------------------------------------------------------


def test_registration_policies_can_block_an_agent() -> None:
    guard = Guard(
        "bot",
        policies=doc(
            {
                "id": "needs-owner",
                "scope": "agent_registration",
                "rule": "field_not_empty",
                "params": {"field": "owner"},
            }
        ),
    )
    with pytest.raises(BlockedError) as info:
        guard.register_agent("Bot", "help users")
    assert "registration was blocked" in str(info.value)
    assert "needs-owner" in str(info.value)
    assert info.value.behavior is None
    assert guard.registration is None
    decision = guard.register_agent("Bot", "help users", owner="ops@example.com")
    assert decision.action is Action.allow
    assert guard.registration is not None and guard.registration.owner == "ops@example.com"


def test_registration_can_ask_for_approval_or_warn() -> None:
    policy = {
        "id": "review",
        "scope": "agent_registration",
        "rule": "field_in_list",
        "params": {"field": "environment", "values": ["dev"]},
    }
    approvals = ScriptedApprovals([False, True])
    guard = Guard("bot", policies=doc({**policy, "effect": "approve"}), approval_handler=approvals)
    with pytest.raises(ApprovalDeniedError, match="registration of agent 'bot'"):
        guard.register_agent("Bot", "help", environment="prod")
    guard.register_agent("Bot", "help", environment="prod")
    assert [r.phase for r in approvals.requests] == ["registration", "registration"]
    assert approvals.requests[0].behavior is None

    warned = Guard("bot", policies=doc({**policy, "effect": "warn"}))
    with pytest.warns(PolicyWarning, match="agent registration"):
        warned.register_agent("Bot", "help", environment="prod")


def test_declared_tools_feed_the_step_name_allowlist() -> None:
    guard = Guard("bot", policies=doc({"id": "tools-only", "rule": "step_name_allowlist"}))

    @guard.step(StepType.step_model)
    def chat() -> None: ...

    @guard.step(StepType.step_exec)
    def shell() -> None: ...

    with guard.task(), pytest.raises(BlockedError, match="not registered"):
        chat()
    guard.register_agent("Bot", "help", tools=["chat"])
    with guard.task():
        chat()
        with pytest.raises(BlockedError, match=r"'shell' is not .*the agent's declared tools"):
            shell()


def test_risk_classification_targets_policies() -> None:
    policies = doc(exec_needs_gate("high-risk-exec", risk_classification=["high"]))

    def attempt(risk: str | None) -> Action:
        guard = Guard("bot", policies=policies)
        if risk is not None:
            guard.register_agent("Bot", "help", risk_classification=risk)

        @guard.step(StepType.step_exec)
        def run_code() -> None: ...

        with guard.task():
            try:
                run_code()
            except BlockedError as blocked:
                return blocked.decision.action
        return Action.allow

    assert attempt("minimal") is Action.allow
    assert attempt("high") is Action.block
    assert attempt(None) is Action.block  # an unregistered agent fails safe


@pytest.mark.parametrize(("agents", "blocked"), [(["other-bot"], False), (["bot"], True)])
def test_agents_target_policies(agents: list[str], blocked: bool) -> None:
    guard = Guard("bot", policies=doc(exec_needs_gate(agents=agents)))

    @guard.step(StepType.step_exec)
    def run_code() -> None: ...

    with guard.task():
        if blocked:
            with pytest.raises(BlockedError):
                run_code()
        else:
            run_code()


def test_an_invalid_risk_class_is_refused() -> None:
    with pytest.raises(InvalidBehaviorError, match="not a risk classification"):
        Guard("bot").register_agent("Bot", "help", risk_classification="extreme")


# -- classification and properties ------------------------------------------------------------


def test_properties_merge_template_then_decorator_then_call_site() -> None:
    template = {
        "version": 1,
        "name": "t",
        "rules": [
            {
                "match": {"step_name": "fetch"},
                "set": {
                    "step_type": "step.resource",
                    "verb": "GET",
                    "properties": {
                        "target": {"domain": "tpl", "trust": "tpl", "system": "tpl"},
                        "data": {"classification": "public"},
                    },
                },
            }
        ],
    }
    guard = Guard("bot", template=template)

    @guard.step(properties={"target": {"domain": "deco", "trust": "deco"}}, meta={"a": 1})
    def fetch() -> None: ...

    with recording(guard) as records, guard.task():
        fetch()
        with guard.overrides(properties={"target": {"domain": "call"}}, meta={"b": 2}):
            with guard.overrides(properties={"data": {"classification": "pii"}}):
                fetch()
            fetch()
        fetch()
    props = [(r.properties, r.meta) for r in named(records, "fetch")]
    deco = {
        "target": {"domain": "deco", "trust": "deco", "system": "tpl"},
        "data": {"classification": "public"},
    }
    call = {**deco, "target": {**deco["target"], "domain": "call"}}
    assert props == [
        (deco, {"a": 1}),
        ({**call, "data": {"classification": "pii"}}, {"a": 1, "b": 2}),
        (call, {"a": 1, "b": 2}),
        (deco, {"a": 1}),
    ]


def test_properties_can_be_a_function_of_the_arguments(calls: list[str]) -> None:
    guard = Guard(
        "bot",
        policies=doc(
            {"id": "no-evil", "rule": "domain_denylist", "params": {"domains": ["evil.example"]}}
        ),
    )

    def host_of(args: Any) -> dict[str, Any]:
        return {"target": {"domain": args["url"].split("/")[2]}}

    @guard.step(StepType.step_resource, Verb.GET, properties=host_of)
    def fetch(url: str, timeout: int = 5) -> None:
        calls.append(url)

    with recording(guard) as records, guard.task():
        fetch("https://docs.example/x")
        with pytest.raises(BlockedError, match=r"evil\.example"):
            fetch("https://api.evil.example/y", timeout=1)
    assert calls == ["https://docs.example/x"]
    steps = named(records, "fetch")
    assert [s.properties["target"]["domain"] for s in steps] == ["docs.example", "api.evil.example"]
    assert steps[0].input == {"url": "https://docs.example/x", "timeout": 5}
    assert steps[1].input == {"url": "https://api.evil.example/y", "timeout": 1}


def test_step_name_overrides_the_function_name() -> None:
    guard = Guard("bot")

    @guard.step(step_name="send_email")
    def notify_user(to: str) -> None: ...

    with recording(guard) as records, guard.task():
        notify_user("a@example.com")
    (step,) = named(records, "send_email")
    assert (step.step_type, step.verb) == ("step.message", "POST")


def test_a_method_does_not_capture_self() -> None:
    guard = Guard("bot")

    class Agent:
        @guard.step(StepType.step_model)
        def chat(self, prompt: str, *extra: str, **options: Any) -> str:
            return prompt

    with recording(guard) as records, guard.task():
        Agent().chat("hi", "more", temperature=0)
    (step,) = named(records, "chat")
    assert step.input == {"prompt": "hi", "extra": ["more"], "options": {"temperature": 0}}


# -- capture --------------------------------------------------------------------------------


class Opaque:
    def __init__(self, value: str) -> None:
        self.value = value


def test_captured_payloads_are_capped() -> None:
    guard = Guard("bot", capture_limits=CaptureLimits(max_string=5, max_items=3, max_depth=2))

    @guard.step(StepType.step_model)
    def chat(prompt: str, history: list[str], deep: dict[str, Any]) -> str:
        return "y" * 8

    with recording(guard) as records, guard.task():
        chat("x" * 12, ["a", "b", "c", "d", "e"], {"a": {"b": {"c": 1}}})
    (step,) = named(records, "chat")
    assert unhashed(step.input) == {
        "prompt": "xxxxx…[truncated 7 chars]",
        "history": ["a", "b", "c", "…[2 more items]"],
        "deep": {"a": "…[elided: deeper than 2 levels]"},
    }
    assert unhashed(step.output) == "yyyyy…[truncated 3 chars]"


def test_an_argument_that_is_not_json_is_a_capture_error(calls: list[str]) -> None:
    guard = Guard("bot")

    @guard.step(StepType.step_exec)
    def run_code(obj: Opaque) -> None:
        calls.append("ran")

    with recording(guard) as records, guard.task(), pytest.raises(CaptureError) as info:
        run_code(Opaque("x"))
    message = str(info.value)
    assert message.startswith("input.obj is a ")
    assert "Opaque" in message
    assert "json_default=" in message
    assert "capture_input=False" in message
    assert calls == []
    assert named(records, "run_code") == []


def test_json_default_converts_the_guards_own_types() -> None:
    guard = Guard("bot", json_default=lambda o: {"opaque": o.value})

    @guard.step(StepType.step_exec)
    def run_code(obj: Opaque) -> Opaque:
        return Opaque("out")

    with recording(guard) as records, guard.task():
        run_code(Opaque("in"))
    (step,) = named(records, "run_code")
    assert (step.input, step.output) == ({"obj": {"opaque": "in"}}, {"opaque": "out"})


def test_capture_can_be_turned_off_per_step() -> None:
    guard = Guard("bot")

    @guard.step(StepType.step_exec, capture_input=False, capture_output=False)
    def run_code(obj: Opaque) -> Opaque:
        return obj

    with recording(guard) as records, guard.task():
        thing = Opaque("x")
        assert run_code(thing) is thing
    (step,) = named(records, "run_code")
    assert (step.input, step.output, step.status) == (None, None, "completed")


def test_a_step_whose_output_cannot_be_captured_is_still_recorded() -> None:
    guard = Guard("bot")

    @guard.step(StepType.step_exec)
    def run_code() -> Opaque:
        return Opaque("side effects already happened")

    with recording(guard) as records, guard.task(), pytest.raises(CaptureError):
        run_code()
    assert len(named(records, "run_code")) == 1


def test_keyword_only_arguments_are_captured_under_their_own_name() -> None:
    guard = Guard("bot")

    @guard.step(StepType.step_exec)
    def run_code(*, code: str, **options: Any) -> None: ...

    with recording(guard) as records, guard.task():
        run_code(code="x", verbose=True)
    (step,) = named(records, "run_code")
    assert step.input == {"code": "x", "options": {"verbose": True}}


# -- configuration and the environment --------------------------------------------------------


def test_every_option_has_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    policies = tmp_path / "p.yaml"
    policies.write_text(json.dumps(doc(exec_needs_gate())), encoding="utf-8")
    template = tmp_path / "t.yaml"
    template.write_text(json.dumps({"version": 1, "name": "mine", "rules": []}), encoding="utf-8")
    trace = tmp_path / "trace.jsonl"
    for key, value in {
        "AGENT_KEY": "env-bot",
        "POLICIES": str(policies),
        "TEMPLATE": str(template),
        "FAIL_MODE": "open",
        "TRACE_PATH": str(trace),
        "HISTORY_LIMIT": "7",
        "MAX_STRING": "3",
        "MAX_ITEMS": "4",
        "MAX_DEPTH": "5",
        "API_KEY": "k",
    }.items():
        monkeypatch.setenv(f"PATHGUARD_{key}", value)
    with Guard() as guard:
        assert guard.agent_key == "env-bot"
        assert [p.id for p in guard.engine.policy_set.policies] == ["exec-needs-gate"]
        assert guard.template.name == "mine"
        assert guard.fail_mode == "open"
        assert guard.engine.history_limit == 7
        assert guard.capture_limits == CaptureLimits(max_string=3, max_items=4, max_depth=5)
        assert guard.api_key == "k"

        @guard.step(StepType.step_model)
        def chat(prompt: str) -> None: ...

        with guard.task():
            chat("hello")
        guard.flush()
    lines = [json.loads(line) for line in trace.read_text("utf-8").splitlines()]
    assert [line["step_type"] for line in lines] == ["task.start", "step.model", "task.end"]
    assert unhashed(lines[1]["input"]) == {"prompt": "hel…[truncated 2 chars]"}


def test_explicit_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATHGUARD_AGENT_KEY", "env-bot")
    monkeypatch.setenv("PATHGUARD_FAIL_MODE", "open")
    monkeypatch.setenv("PATHGUARD_HISTORY_LIMIT", "7")
    guard = Guard("arg-bot", fail_mode="closed", history_limit=9, policies=None)
    assert (guard.agent_key, guard.fail_mode, guard.engine.history_limit) == (
        "arg-bot",
        "closed",
        9,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "needs an agent key"),
        ({"AGENT_KEY": "b", "FAIL_MODE": "sometimes"}, "fail_mode must be 'closed' or 'open'"),
        ({"AGENT_KEY": "b", "HISTORY_LIMIT": "lots"}, "PATHGUARD_HISTORY_LIMIT='lots' is not"),
        ({"AGENT_KEY": "b", "MAX_STRING": "1k"}, "PATHGUARD_MAX_STRING='1k' is not"),
        ({"AGENT_KEY": "b", "API_URL": "http://x"}, "api_url"),
    ],
)
def test_bad_configuration_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(f"PATHGUARD_{key}", value)
    with pytest.raises(ConfigurationError, match=message) as info:
        Guard()
    assert isinstance(info.value, ValueError)


def test_a_negative_history_limit_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATHGUARD_HISTORY_LIMIT", "-1")
    with pytest.raises(ConfigurationError, match="PATHGUARD_HISTORY_LIMIT"):
        Guard("bot")


def test_a_zero_capture_limit_from_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATHGUARD_MAX_STRING", "0")
    with pytest.raises(ConfigurationError, match="PATHGUARD_MAX_STRING"):
        Guard("bot")


# -- fail mode ------------------------------------------------------------------------------


def broken_engine(guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    def evaluate(behavior: Any) -> Any:
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(guard.engine, "evaluate", evaluate)


def test_fail_closed_blocks_when_the_engine_fails(
    monkeypatch: pytest.MonkeyPatch, calls: list[str]
) -> None:
    guard = Guard("bot")

    @guard.step(StepType.step_exec)
    def run_code() -> None:
        calls.append("ran")

    with recording(guard) as records, guard.task(), monkeypatch.context() as patch:
        broken_engine(guard, patch)
        with pytest.raises(BlockedError) as info:
            run_code()
    (violation,) = info.value.decision.violations
    assert violation.policy_id == "pathguard.fail-closed"
    assert "engine exploded" in violation.reason
    assert "fail_mode is 'closed'" in violation.reason
    assert calls == []
    assert named(records, "run_code")[0].status == "blocked"


def test_fail_open_allows_when_the_engine_fails(
    monkeypatch: pytest.MonkeyPatch, calls: list[str]
) -> None:
    guard = Guard("bot", fail_mode="open", policies=doc(exec_needs_gate()))

    @guard.step(StepType.step_exec)
    def run_code() -> None:
        calls.append("ran")

    with recording(guard) as records, guard.task(), monkeypatch.context() as patch:
        broken_engine(guard, patch)
        run_code()
    assert calls == ["ran"]
    assert named(records, "run_code")[0].status == "completed"


# -- the trace ------------------------------------------------------------------------------


def test_trace_path_writes_a_hash_chain_that_verifies(tmp_path: Path) -> None:
    trace = tmp_path / "audit" / "trace.jsonl"
    with Guard("bot", trace_path=trace, policies=doc(exec_needs_gate())) as guard:

        @guard.step(StepType.step_model)
        def chat(prompt: str) -> str:
            return "ok"

        @guard.step(StepType.step_exec)
        def run_code() -> None: ...

        for _ in range(2):
            with guard.task():
                chat("hello")
                with pytest.raises(BlockedError):
                    run_code()
        guard.flush()
        result = verify_jsonl(trace)
        assert result.ok, result.summary()
        assert (result.records, result.tasks) == (8, 2)
    lines = [json.loads(line) for line in trace.read_text("utf-8").splitlines()]
    assert lines[1]["prev_hash"] == lines[0]["hash"]
    assert [line["status"] for line in lines[:4]] == [
        "completed",
        "completed",
        "blocked",
        "completed",
    ]


def test_an_edited_trace_no_longer_verifies(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    with Guard("bot", trace_path=trace) as guard:

        @guard.step(StepType.step_model)
        def chat(prompt: str) -> str:
            return "ok"

        with guard.task():
            chat("hello")
    lines = trace.read_text("utf-8").splitlines()
    lines[1] = lines[1].replace("hello", "HELLO")
    trace.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = verify_jsonl(trace)
    assert not result.ok
    assert result.first_error is not None and result.first_error.line == 2


# -- the decorator --------------------------------------------------------------------------


def test_the_decorated_function_keeps_its_name_doc_and_signature() -> None:
    guard = Guard("bot")

    def chat(prompt: str, *, temperature: float = 0.0) -> str:
        """Ask the model."""
        return prompt

    governed = guard.step(StepType.step_model)(chat)
    assert governed.__name__ == "chat"
    assert governed.__qualname__ == chat.__qualname__
    assert governed.__doc__ == "Ask the model."
    assert inspect.signature(governed) == inspect.signature(chat)
    assert governed.__wrapped__ is chat  # type: ignore[attr-defined]
    assert not inspect.iscoroutinefunction(governed)


def test_the_decorator_keeps_static_types() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "tests/typing_checks.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generators_are_refused_at_decoration() -> None:
    guard = Guard("bot")

    def numbers() -> Iterator[int]:
        yield 1

    async def stream() -> Any:
        yield 1

    for func in (numbers, stream):
        with pytest.raises(TypeError, match=f"cannot govern the generator .*{func.__name__}"):
            guard.step(StepType.step_model)(func)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((StepType.step_exec, Verb.POST), {}, InvalidBehaviorError, "no verb"),
        ((StepType.step_model, Verb.GET), {}, InvalidBehaviorError, "it takes POST"),
        (("step.exe",), {}, InvalidBehaviorError, "Did you mean 'step.exec'"),
        ((StepType.step_exec, "PUT"), {}, InvalidBehaviorError, "not a verb"),
        ((StepType.step_exec,), {"properties": ["x"]}, TypeError, "properties="),
    ],
)
def test_bad_decorator_options_fail_at_decoration(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Guard("bot").step(*args, **kwargs)


def test_a_template_verb_that_does_not_fit_fails_at_decoration() -> None:
    guard = Guard(
        "bot",
        template={
            "version": 1,
            "name": "t",
            "rules": [{"match": {"step_name": "purge"}, "set": {"verb": "DELETE"}}],
        },
    )
    with pytest.raises(InvalidBehaviorError, match=r"step\.model does not take the verb DELETE"):

        @guard.step(StepType.step_model)
        def purge() -> None: ...


def test_a_missing_verb_fails_at_decoration() -> None:
    guard = Guard("bot")
    with pytest.raises(InvalidBehaviorError, match="needs a verb"):

        @guard.step(StepType.step_resource)
        def frobnicate() -> None: ...


# -- context isolation ----------------------------------------------------------------------


def test_threads_never_share_a_task() -> None:
    guard = Guard(
        "bot", policies=doc({"id": "three-steps", "rule": "max_steps", "params": {"max": 3}})
    )
    workers = 6
    barrier = threading.Barrier(workers, timeout=30)

    @guard.step(StepType.step_exec)
    def work(i: int) -> str | None:
        barrier.wait()  # every thread is inside its own task at the same time
        return guard.current_task_id

    def one_request(n: int) -> tuple[str, list[str | None]]:
        with guard.task() as task_id:
            return task_id, [work(i) for i in range(3)]

    with recording(guard) as records, ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one_request, range(workers)))
    task_ids = [task_id for task_id, _ in results]
    assert len(set(task_ids)) == workers
    for task_id, seen in results:
        assert seen == [task_id] * 3
    assert all(r.status == "completed" for r in records)  # no task saw another's steps
    for task_id in task_ids:
        mine = [r for r in records if r.task_id == task_id]
        assert [r.seq for r in mine] == list(range(5))


def test_a_new_thread_does_not_inherit_the_task() -> None:
    guard = Guard("bot")

    @guard.step(StepType.step_exec)
    def work() -> None: ...

    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            work()
        except NoActiveTaskError as exc:
            errors.append(exc)

    with guard.task():
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
        work()
    assert len(errors) == 1


def test_two_guards_keep_separate_tasks() -> None:
    first, second = Guard("a"), Guard("b")
    with first.task() as task_id:
        assert first.current_task_id == task_id
        assert second.current_task_id is None


def test_repr_names_the_agent() -> None:
    guard = Guard("bot", policies=doc(exec_needs_gate()))
    assert repr(guard) == "Guard(agent_key='bot', policies=1, fail_mode='closed')"
