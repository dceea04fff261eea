"""pathguard.testing: the helpers users get for testing their own policies and agents."""

from __future__ import annotations

import pytest

from pathguard import (
    Action,
    AgentRegistration,
    ApprovalRequest,
    BlockedError,
    Decision,
    Guard,
    Status,
    StepType,
    Verb,
)
from pathguard.testing import FakeClock, ScriptedApprovals, recording, replay, step

GATE_FIRST = {
    "version": 1,
    "name": "t",
    "policies": [
        {
            "id": "gate-first",
            "when": {"step_type": "step.exec"},
            "rule": "requires_prior",
            "params": {"step_type": "step.gate"},
        }
    ],
}


def test_step_builds_a_completed_behavior_with_test_defaults() -> None:
    b = step("step.resource", "get", step_name="read", properties={"target": {"domain": "d"}})
    assert b.step_type is StepType.step_resource
    assert b.verb is Verb.GET
    assert b.status is Status.completed
    assert (b.task_id, b.agent_key, b.timestamp) == ("task-1", "agent", 0.0)
    assert b.get("properties.target.domain") == "d"
    assert step("step.exec", status="blocked").status is Status.blocked


def test_replay_decides_each_step_from_the_path_before_it() -> None:
    decisions = replay(
        GATE_FIRST,
        [
            step("step.exec"),
            step("step.gate", status="blocked"),
            step("step.exec"),
            step("step.gate"),
            step("step.exec"),
        ],
    )
    assert all(isinstance(d, Decision) for d in decisions)
    assert [d.action for d in decisions] == [
        Action.block,
        Action.allow,
        Action.block,
        Action.allow,
        Action.allow,
    ]


def test_replay_takes_an_agent_registration() -> None:
    policies = {
        "version": 1,
        "name": "t",
        "policies": [{"id": "tools", "rule": "step_name_allowlist"}],
    }
    agent = AgentRegistration(agent_key="agent", name="A", purpose="p", tools=("chat",))
    steps = [step("step.model", step_name="chat"), step("step.model", step_name="other")]
    assert [d.action for d in replay(policies, steps, agent=agent)] == [Action.allow, Action.block]


def test_scripted_approvals_answer_in_order_then_the_default() -> None:
    approvals = ScriptedApprovals([True, False], default=True)
    request = ApprovalRequest(
        behavior=None,
        decision=Decision(action=Action.approve),
        input_hash="sha256:x",
        agent_key="a",
        task_id=None,
    )
    assert [approvals(request) for _ in range(4)] == [True, False, True, True]
    assert approvals.requests == [request] * 4
    assert ScriptedApprovals()(request) is False


def test_fake_clock_ticks_and_advances() -> None:
    clock = FakeClock(start=100.0, step=2.0)
    assert [clock(), clock(), clock()] == [100.0, 102.0, 104.0]
    clock.advance(50)
    assert clock() == 156.0
    assert clock.now == 156.0


def test_fake_clock_drives_time_based_policies() -> None:
    clock = FakeClock(start=1000.0, step=1.0)
    guard = Guard(
        "bot",
        clock=clock,
        policies={
            "version": 1,
            "name": "t",
            "policies": [{"id": "short", "rule": "max_task_duration", "params": {"seconds": 60}}],
        },
    )

    @guard.step(StepType.step_model)
    def chat() -> None: ...

    with recording(guard) as records, guard.task():
        chat()
        clock.advance(120)
        with pytest.raises(BlockedError, match="short"):
            chat()
    assert [r.timestamp for r in records] == [1000.0, 1001.0, 1122.0, 1123.0]


def test_recording_collects_only_tasks_started_inside_the_block() -> None:
    guard = Guard("bot")

    @guard.step(StepType.step_model)
    def chat(prompt: str) -> str:
        return "ok"

    with recording(guard) as records, guard.task():
        chat("hi")
    assert [r.step_type for r in records] == ["task.start", "step.model", "task.end"]
    with guard.task():
        chat("again")
    assert len(records) == 3
