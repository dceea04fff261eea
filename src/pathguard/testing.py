"""Helpers for testing your policies and your governed agents.

```python
from pathguard.testing import FakeClock, ScriptedApprovals, recording, replay, step

decisions = replay(policies, [step("step.resource", "GET"), step("step.exec")])
assert decisions[-1].action == "block"
```
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pathguard.decisions import Decision
from pathguard.engine import PolicyEngine
from pathguard.guard import ApprovalRequest, Guard
from pathguard.policies import PolicySet, load_policies
from pathguard.trace import MemorySink, TraceRecord
from pathguard.vocabulary import AgentRegistration, Behavior, Status, StepType, Verb

__all__ = ["FakeClock", "ScriptedApprovals", "isolated_rules", "recording", "replay", "step"]


def step(
    step_type: StepType | str,
    verb: Verb | str | None = None,
    *,
    status: Status | str = Status.completed,
    step_name: str | None = None,
    properties: Mapping[str, Any] | None = None,
    input: Any = None,
    output: Any = None,
    timestamp: float = 0.0,
    task_id: str = "task-1",
    agent_key: str = "agent",
) -> Behavior:
    """A Behavior with test-friendly defaults (completed, task `task-1`, agent `agent`)."""
    return Behavior(
        step_type=StepType.parse(step_type),
        verb=None if verb is None else Verb.parse(verb),
        status=Status(status),
        step_name=step_name,
        properties=dict(properties or {}),
        input=input,
        output=output,
        timestamp=timestamp,
        task_id=task_id,
        agent_key=agent_key,
    )


def replay(
    policies: PolicySet | Mapping[str, Any] | str,
    steps: Iterable[Behavior],
    *,
    agent: AgentRegistration | None = None,
) -> list[Decision]:
    """Evaluate each step in order, then record it with its own status; return the decisions.

    This is how the engine sees a live task: every step is decided from the path before it.
    """
    engine = PolicyEngine(load_policies(policies))
    if agent is not None:
        engine.register(agent)
    decisions = []
    for behavior in steps:
        decisions.append(engine.evaluate(behavior.replace(status=Status.intended)))
        engine.record(behavior)
    return decisions


class ScriptedApprovals:
    """An approval handler that answers from a script and remembers what it was asked.

    `ScriptedApprovals([True, False])` approves the first request and denies the second;
    when the script runs out it answers `default`.
    """

    def __init__(self, answers: Sequence[bool] = (), *, default: bool = False) -> None:
        self._answers = iter(answers)
        self.default = default
        self.requests: list[ApprovalRequest] = []

    def __call__(self, request: ApprovalRequest) -> bool:
        self.requests.append(request)
        return next(self._answers, self.default)


class FakeClock:
    """A clock for `Guard(clock=...)` that starts at `start` and moves `step` per read."""

    def __init__(self, start: float = 1_700_000_000.0, step: float = 1.0) -> None:
        self._ticks = itertools.count()
        self.start = start
        self.step = step
        self.now = start

    def __call__(self) -> float:
        self.now = self.start + next(self._ticks) * self.step
        return self.now

    def advance(self, seconds: float) -> None:
        """Jump forward; the next read is `seconds` later than it would have been."""
        self.start += seconds


@contextmanager
def recording(guard: Guard) -> Iterator[list[TraceRecord]]:
    """Collect the trace records of tasks started inside the block.

    ```python
    with recording(guard) as records:
        with guard.task():
            chat("hi")
    assert [r.step_type for r in records] == ["task.start", "step.model", "task.end"]
    ```
    """
    sink = MemorySink()
    guard.add_sink(sink)
    try:
        yield sink.records
    finally:
        guard.remove_sink(sink)


@contextmanager
def isolated_rules() -> Iterator[None]:
    """Custom rules registered inside the block (with `@pathguard.rule`) are forgotten when
    it ends, so one test's rules never leak into another's."""
    from pathguard.rules import _base

    _base.rule_names()  # make sure the built-ins are in the snapshot
    saved = dict(_base._REGISTRY)
    try:
        yield
    finally:
        _base._REGISTRY.clear()
        _base._REGISTRY.update(saved)
