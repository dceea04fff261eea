"""Tasks: their summary rows and their stored records."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, true, tuple_
from sqlalchemy.orm import Session

from pathguard.platform.models import Task, TraceRecordRow

__all__ = [
    "RecordSlice",
    "agent_record_keys",
    "agent_records",
    "get_task",
    "list_tasks",
    "task_records",
]


def get_task(session: Session, agent_key: str, task_id: str) -> Task | None:
    """A task's summary row."""
    return session.get(Task, (agent_key, task_id))


def list_tasks(
    session: Session,
    *,
    agent_key: str | None = None,
    task_id: str | None = None,
    status: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Task]:
    """Tasks, most recently updated first."""
    query = select(Task)
    if agent_key is not None:
        query = query.where(Task.agent_key == agent_key)
    if task_id is not None:
        query = query.where(Task.task_id == task_id)
    if status is not None:
        query = query.where(Task.status == status)
    if since is not None:
        query = query.where(Task.started_at >= since)
    if until is not None:
        query = query.where(Task.started_at < until)
    query = query.order_by(Task.updated_at.desc(), Task.agent_key, Task.task_id)
    return list(session.scalars(query.limit(limit).offset(offset)))


def task_records(
    session: Session, agent_key: str, task_id: str, *, after_seq: int = -1, limit: int = 10_000
) -> list[dict[str, Any]]:
    """A task's stored records as trace-record dicts (with `hash`), in seq order."""
    rows = session.execute(
        select(TraceRecordRow.record, TraceRecordRow.hash)
        .where(
            TraceRecordRow.agent_key == agent_key,
            TraceRecordRow.task_id == task_id,
            TraceRecordRow.seq > after_seq,
        )
        .order_by(TraceRecordRow.seq)
        .limit(limit)
    )
    return [{**json.loads(record), "hash": digest} for record, digest in rows]


@dataclasses.dataclass(frozen=True, slots=True)
class RecordSlice:
    """Which of an agent's stored records to pick: those of `step_types`, stamped later than
    `after`, with one of `statuses` (None: no condition on that column)."""

    step_types: Collection[str] | None = None
    after: dt.datetime | None = None
    statuses: Collection[str] | None = None


def agent_record_keys(
    session: Session,
    agent_key: str,
    slices: Sequence[RecordSlice],
    *,
    exclude_task_id: str | None = None,
) -> list[tuple[str, int]]:
    """The (task id, seq) of an agent's stored records in any of `slices` (none: no record),
    leaving out `exclude_task_id`, oldest timestamp first."""
    if not slices:
        return []
    conditions: list[ColumnElement[bool]] = []
    for part in slices:
        clauses: list[ColumnElement[bool]] = [true()]
        if part.step_types is not None:
            clauses.append(TraceRecordRow.step_type.in_(sorted(part.step_types)))
        if part.after is not None:
            clauses.append(TraceRecordRow.timestamp > part.after)
        if part.statuses is not None:
            clauses.append(TraceRecordRow.status.in_(sorted(part.statuses)))
        conditions.append(and_(*clauses))
    query = select(TraceRecordRow.task_id, TraceRecordRow.seq).where(
        TraceRecordRow.agent_key == agent_key, or_(*conditions)
    )
    afters = [part.after for part in slices]
    if None not in afters:
        # The earliest bound, outside the OR, lets the database read one range of the
        # (agent, timestamp) index instead of all of the agent's records.
        query = query.where(TraceRecordRow.timestamp > min(a for a in afters if a is not None))
    if exclude_task_id is not None:
        query = query.where(TraceRecordRow.task_id != exclude_task_id)
    query = query.order_by(TraceRecordRow.timestamp, TraceRecordRow.task_id, TraceRecordRow.seq)
    return [(task_id, seq) for task_id, seq in session.execute(query)]


def agent_records(
    session: Session, agent_key: str, keys: Sequence[tuple[str, int]]
) -> list[dict[str, Any]]:
    """An agent's stored records picked by (task id, seq), as trace-record dicts (with
    `hash`), in (task id, seq) order. Keys with no stored record are left out."""
    if not keys:
        return []
    rows = session.execute(
        select(TraceRecordRow.record, TraceRecordRow.hash)
        .where(
            TraceRecordRow.agent_key == agent_key,
            tuple_(TraceRecordRow.task_id, TraceRecordRow.seq).in_(list(keys)),
        )
        .order_by(TraceRecordRow.task_id, TraceRecordRow.seq)
    )
    return [{**json.loads(record), "hash": digest} for record, digest in rows]
