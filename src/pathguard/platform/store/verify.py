"""Re-checking stored trace chains: the first record of each task that no longer verifies."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pathguard.errors import TraceIntegrityError
from pathguard.platform.models import Task, TraceRecordRow
from pathguard.platform.store._common import _when
from pathguard.trace import GENESIS, TraceRecord, record_hash

__all__ = [
    "ChainProblem",
    "StoredVerifyResult",
    "verify_stored",
]

logger = logging.getLogger("pathguard")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ChainProblem:
    """The first record of a stored task that does not verify, and why (a full sentence)."""

    agent_key: str
    task_id: str
    seq: int | None
    reason: str

    def __str__(self) -> str:
        at = f", seq {self.seq}" if self.seq is not None else ""
        return f"task {self.task_id!r} of agent {self.agent_key!r}{at}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class StoredVerifyResult:
    """The outcome of re-checking stored chains: one problem per broken task, in order."""

    tasks: int
    records: int
    problems: tuple[ChainProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_error(self) -> ChainProblem | None:
        return self.problems[0] if self.problems else None

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tasks": self.tasks,
            "records": self.records,
            "first_error": None if self.first_error is None else self.first_error.to_dict(),
            "problems": [p.to_dict() for p in self.problems],
        }


def _row_problem(row: TraceRecordRow, expected_seq: int, head: str) -> tuple[str, str | None]:
    """Why a stored row does not verify (or "" when it does), and its hash for the next row."""
    try:
        body = json.loads(row.record)
    except ValueError:
        return "The stored record is not valid JSON.", None
    if not isinstance(body, dict) or "hash" in body:
        return "The stored record is not a record body.", None
    full = {**body, "hash": row.hash}
    try:
        TraceRecord.from_dict(full)
        recomputed = record_hash(str(body.get("prev_hash")), body)
    except (TraceIntegrityError, TypeError, ValueError) as exc:
        return f"The stored record is not a valid trace record ({exc}).", None
    if recomputed != row.hash:
        return (
            "The record's content does not match its hash: it was changed after it was stored."
        ), None
    decision = body.get("decision")
    action = decision.get("action") if isinstance(decision, dict) else None
    copies = {
        "seq": (body["seq"], row.seq),
        "prev_hash": (body["prev_hash"], row.prev_hash),
        "agent_key": (body["agent_key"], row.agent_key),
        "task_id": (body["task_id"], row.task_id),
        "step_type": (body["step_type"], row.step_type),
        "step_name": (body.get("step_name"), row.step_name),
        "status": (body["status"], row.status),
        "action": (action, row.action),
        "timestamp": (_when(float(body["timestamp"])), row.timestamp),
    }
    for column, (recorded, stored) in copies.items():
        if recorded != stored:
            return (
                f"The {column} column ({stored!r}) differs from the record ({recorded!r}): "
                "the row was edited after it was stored."
            ), None
    if row.seq != expected_seq:
        if row.seq > expected_seq:
            return (
                f"Seq {expected_seq} of this task is missing: a stored record was deleted."
            ), None
        return f"Seq {row.seq} appears twice in this task.", None
    if row.prev_hash != head:
        what = "the genesis hash" if row.seq == 0 else f"the hash of seq {row.seq - 1}"
        return (
            f"The record's prev_hash does not match {what}: the record before it was changed "
            "or replaced."
        ), None
    return "", row.hash


def verify_stored(
    session: Session,
    agent_key: str | None = None,
    task_id: str | None = None,
    *,
    update_status: bool = True,
) -> StoredVerifyResult:
    """Re-read stored records and recompute each task's chain; name the first broken record.

    Also checks that the columns copied out of each record still agree with it, and that the
    chain reaches the head and length the task row remembers (which catches records deleted
    from the end). With `update_status`, each checked task's `chain_ok` is set accordingly.
    """
    task_query = select(Task).order_by(Task.agent_key, Task.task_id)
    row_query = select(TraceRecordRow).order_by(
        TraceRecordRow.agent_key, TraceRecordRow.task_id, TraceRecordRow.seq
    )
    if agent_key is not None:
        task_query = task_query.where(Task.agent_key == agent_key)
        row_query = row_query.where(TraceRecordRow.agent_key == agent_key)
    if task_id is not None:
        task_query = task_query.where(Task.task_id == task_id)
        row_query = row_query.where(TraceRecordRow.task_id == task_id)
    tasks = {(t.agent_key, t.task_id): t for t in session.scalars(task_query)}
    state: dict[tuple[str, str], tuple[int, str, ChainProblem | None]] = {
        key: (0, GENESIS, None) for key in tasks
    }
    count = 0
    for row in session.scalars(row_query.execution_options(yield_per=1000)):
        count += 1
        key = (row.agent_key, row.task_id)
        expected, head, problem = state.get(key, (0, GENESIS, None))
        if problem is not None:
            continue
        reason, new_head = _row_problem(row, expected, head)
        if reason:
            state[key] = (
                expected,
                head,
                ChainProblem(
                    agent_key=row.agent_key, task_id=row.task_id, seq=row.seq, reason=reason
                ),
            )
        else:
            state[key] = (row.seq + 1, new_head or head, None)
    problems = []
    for key, (next_seq, head, problem) in state.items():
        task = tasks.get(key)
        if (
            problem is None
            and task is not None
            and (task.step_count != next_seq or task.head_hash != head)
        ):
            problem = ChainProblem(
                agent_key=key[0],
                task_id=key[1],
                seq=next_seq if next_seq < task.step_count else None,
                reason=(
                    f"The task has {task.step_count} records ending in hash {task.head_hash}, "
                    f"but the stored chain has {next_seq}: records were deleted from the end or "
                    "the task row was edited."
                ),
            )
        if problem is not None:
            problems.append(problem)
        if update_status and task is not None and task.chain_ok != (problem is None):
            task.chain_ok = problem is None
    problems.sort(key=lambda p: (p.agent_key, p.task_id))
    if update_status:
        session.flush()
    for p in problems:
        logger.warning("a stored trace chain does not verify: %s", p)
    return StoredVerifyResult(tasks=len(state), records=count, problems=tuple(problems))
