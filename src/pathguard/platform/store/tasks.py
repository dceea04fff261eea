"""Tasks: their summary rows and their stored records."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pathguard.platform.models import Task, TraceRecordRow

__all__ = [
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
