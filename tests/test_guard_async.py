"""The Guard SDK (spec §6) with async steps, async approval handlers and asyncio tasks."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from pathguard import (
    Action,
    ApprovalDeniedError,
    ApprovalRequest,
    BlockedError,
    ConfigurationError,
    Guard,
    NoActiveTaskError,
    PolicyWarning,
    StepType,
    TraceRecord,
    Verb,
    canonical_hash,
)
from pathguard.testing import ScriptedApprovals, recording

T = TypeVar("T")

APPROVAL = {
    "id": "exec-approval",
    "when": {"step_type": "step.exec"},
    "rule": "requires_gate",
    "effect": "approve",
}
NEEDS_GATE = {
    "id": "exec-needs-gate",
    "when": {"step_type": "step.exec"},
    "rule": "requires_prior",
    "params": {"step_type": "step.gate", "properties": {"guard.decision": "approved"}},
}


def doc(*policies: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "name": "test", "policies": list(policies)}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def named(records: list[TraceRecord], name: str) -> list[TraceRecord]:
    return [r for r in records if r.step_name == name]


@pytest.fixture(autouse=True)
def _no_pathguard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PATHGUARD_"):
            monkeypatch.delenv(key)


def test_an_async_step_stays_a_coroutine_function_and_is_recorded() -> None:
    guard = Guard("bot")

    async def read_ticket(ticket_id: str) -> dict[str, str]:
        """Read one ticket."""
        await asyncio.sleep(0)
        return {"id": ticket_id}

    governed = guard.step(
        StepType.step_resource, Verb.GET, properties={"target": {"domain": "tickets"}}
    )(read_ticket)
    assert inspect.iscoroutinefunction(governed)
    assert governed.__name__ == "read_ticket"
    assert governed.__doc__ == "Read one ticket."
    assert inspect.signature(governed) == inspect.signature(read_ticket)

    async def main() -> dict[str, str]:
        async with guard.task(context={"user": "u1"}):
            return await governed("T-1")

    with recording(guard) as records:
        assert run(main()) == {"id": "T-1"}
    assert [(r.step_type, r.status) for r in records] == [
        ("task.start", "completed"),
        ("step.resource", "completed"),
        ("task.end", "completed"),
    ]
    (step,) = named(records, "read_ticket")
    assert (step.input, step.output, step.properties) == (
        {"ticket_id": "T-1"},
        {"id": "T-1"},
        {"target": {"domain": "tickets"}},
    )


def test_an_async_step_outside_a_task_says_how_to_open_one() -> None:
    guard = Guard("bot")

    @guard.step(StepType.step_model)
    async def chat() -> None: ...

    with pytest.raises(NoActiveTaskError, match=r"async with guard\.task\(\)"):
        run(chat())


def test_an_exception_in_an_async_task_records_task_error() -> None:
    guard = Guard("bot")

    async def main() -> None:
        async with guard.task():
            raise LookupError("gone")

    with recording(guard) as records, pytest.raises(LookupError):
        run(main())
    assert [r.step_type for r in records] == ["task.start", "task.error"]
    assert records[-1].output == {"type": "LookupError", "message": "gone"}
    assert guard.current_task_id is None


def test_a_blocked_async_step_is_never_started() -> None:
    guard = Guard("bot", policies=doc(NEEDS_GATE))
    started: list[str] = []

    @guard.step(StepType.step_exec)
    async def run_code() -> None:
        started.append("ran")

    async def main() -> BlockedError:
        async with guard.task():
            with pytest.raises(BlockedError) as info:
                await run_code()
            return info.value

    with recording(guard) as records:
        error = run(main())
    assert started == []
    assert "exec-needs-gate" in str(error)
    assert named(records, "run_code")[0].status == "blocked"


def test_an_async_handler_approves_an_async_step() -> None:
    requests: list[ApprovalRequest] = []

    async def approve(request: ApprovalRequest) -> bool:
        await asyncio.sleep(0)
        requests.append(request)
        return True

    guard = Guard("bot", policies=doc(APPROVAL), approval_handler=approve)

    @guard.step(StepType.step_exec)
    async def run_code(code: str) -> str:
        return code

    async def main() -> str:
        async with guard.task():
            return await run_code("print(1)")

    with recording(guard) as records:
        assert run(main()) == "print(1)"
    (request,) = requests
    assert request.decision.action is Action.approve
    assert request.input_hash == canonical_hash({"code": "print(1)"})
    gate, step = records[1:3]
    assert gate.step_type == "step.gate"
    assert gate.properties["guard"] == {
        "gate_type": "human_approval",
        "decision": "approved",
        "approved_input_hash": request.input_hash,
    }
    assert (step.step_name, step.status) == ("run_code", "completed")


@pytest.mark.parametrize("answer", [False, None])
def test_an_async_step_is_refused_without_an_approval(answer: bool | None) -> None:
    handler = None if answer is None else ScriptedApprovals([answer])
    guard = Guard("bot", policies=doc(APPROVAL), approval_handler=handler)
    started: list[str] = []

    @guard.step(StepType.step_exec)
    async def run_code() -> None:
        started.append("ran")

    async def main() -> None:
        async with guard.task():
            await run_code()

    with recording(guard) as records, pytest.raises(ApprovalDeniedError):
        run(main())
    assert started == []
    assert [(r.step_type, r.status) for r in records[1:3]] == [
        ("step.gate", "completed"),
        ("step.exec", "blocked"),
    ]
    assert records[1].properties["guard"]["decision"] == "denied"


def test_an_async_handler_cannot_serve_a_sync_step_inside_a_running_loop() -> None:
    async def approve(request: ApprovalRequest) -> bool:
        return True

    guard = Guard("bot", policies=doc(APPROVAL), approval_handler=approve)

    @guard.step(StepType.step_exec)
    def run_code() -> None: ...

    async def main() -> None:
        async with guard.task():
            run_code()

    with pytest.raises(ConfigurationError, match="make the step async or give a sync handler"):
        run(main())


def test_a_warn_policy_warns_for_an_async_step() -> None:
    guard = Guard("bot", policies=doc({**NEEDS_GATE, "effect": "warn"}))

    @guard.step(StepType.step_exec)
    async def run_code() -> str:
        return "done"

    async def main() -> str:
        async with guard.task():
            return await run_code()

    with pytest.warns(PolicyWarning, match="exec-needs-gate"):
        assert run(main()) == "done"


def test_a_failing_async_step_is_recorded_and_re_raised() -> None:
    guard = Guard("bot")
    boom = OSError("disk full")

    @guard.step(StepType.step_resource, Verb.POST)
    async def write_file() -> None:
        await asyncio.sleep(0)
        raise boom

    async def main() -> None:
        async with guard.task():
            await write_file()

    with recording(guard) as records, pytest.raises(OSError) as info:
        run(main())
    assert info.value is boom
    (step,) = named(records, "write_file")
    assert step.status == "failed"
    assert step.output == {"error": "OSError", "message": "disk full"}


def test_an_async_gate_returning_false_is_denied() -> None:
    guard = Guard("bot", policies=doc(NEEDS_GATE))

    @guard.step(StepType.step_gate)
    async def ask_human(ok: bool) -> bool:
        return ok

    @guard.step(StepType.step_exec)
    async def run_code() -> None: ...

    async def main() -> None:
        async with guard.task():
            await ask_human(False)
            with pytest.raises(BlockedError):
                await run_code()
            await ask_human(True)
            await run_code()

    with recording(guard) as records:
        run(main())
    gates = named(records, "ask_human")
    assert [g.properties["guard"]["decision"] for g in gates] == ["denied", "approved"]
    assert named(records, "run_code")[-1].status == "completed"


def test_concurrent_asyncio_tasks_never_share_a_task_or_a_path() -> None:
    guard = Guard(
        "bot", policies=doc({"id": "three-steps", "rule": "max_steps", "params": {"max": 3}})
    )

    @guard.step(StepType.step_model)
    async def chat(n: int) -> str | None:
        await asyncio.sleep(0)  # hand over to the other requests mid-task
        return guard.current_task_id

    async def one_request(n: int) -> tuple[str, list[str | None]]:
        async with guard.task() as task_id:
            return task_id, [await chat(i) for i in range(3)]

    async def main() -> list[tuple[str, list[str | None]]]:
        return await asyncio.gather(*(one_request(n) for n in range(8)))

    with recording(guard) as records:
        results = run(main())
    task_ids = [task_id for task_id, _ in results]
    assert len(set(task_ids)) == 8
    for task_id, seen in results:
        assert seen == [task_id] * 3
    assert all(r.status == "completed" for r in records)
    for task_id in task_ids:
        assert [r.seq for r in records if r.task_id == task_id] == list(range(5))
    assert guard.current_task_id is None


def test_a_child_asyncio_task_opening_a_task_leaves_the_parents_alone() -> None:
    guard = Guard("bot")

    async def child() -> str:
        async with guard.task() as inner:
            return inner

    async def main() -> tuple[str, str, str | None]:
        async with guard.task() as outer:
            inner = await asyncio.create_task(child())
            return outer, inner, guard.current_task_id

    outer, inner, current = run(main())
    assert inner != outer
    assert current == outer
