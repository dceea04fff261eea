"""Tasks: `GET /v1/tasks` (filtered, most recently updated first) and `GET /v1/tasks/{id}`
(the task with its stored steps in seq order, each with its decision). Admin keys only."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status

from pathguard.platform.app.auth import Credentials, require_admin
from pathguard.platform.app.routes._common import (
    AUTH_ERRORS,
    Limit,
    Offset,
    Sessions,
    TextQuery,
    as_utc,
)
from pathguard.platform.app.schemas import ErrorOut, TaskDetailOut, TaskOut
from pathguard.platform.store import NotFoundError, list_tasks, task_records

__all__ = ["router"]

router = APIRouter(prefix="/v1/tasks", tags=["tasks"], responses=AUTH_ERRORS)


@router.get("", response_model=list[TaskOut])
def tasks(
    sessions: Sessions,
    credentials: Credentials,
    agent: TextQuery = None,
    status_: Annotated[
        Literal["running", "completed", "error"] | None, Query(alias="status")
    ] = None,
    since: Annotated[dt.datetime | None, Query(description="Started at or after.")] = None,
    until: Annotated[dt.datetime | None, Query(description="Started before.")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[TaskOut]:
    """Tasks, most recently updated first, filtered by agent, status and start time."""
    with sessions.begin() as session:
        require_admin(session, credentials)
        rows = list_tasks(
            session,
            agent_key=agent,
            status=status_,
            since=as_utc(since),
            until=as_utc(until),
            limit=limit,
            offset=offset,
        )
        return [TaskOut.of(t) for t in rows]


@router.get(
    "/{task_id}",
    response_model=TaskDetailOut,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
)
def task(
    task_id: Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^\x00]*$")],
    sessions: Sessions,
    credentials: Credentials,
    agent: Annotated[
        str | None, Query(max_length=256, pattern=r"^[^\x00]*$", description="The agent's key.")
    ] = None,
) -> TaskDetailOut:
    """A task with its steps in seq order; `?agent=` picks one when two agents share the id."""
    with sessions.begin() as session:
        require_admin(session, credentials)
        found = list_tasks(session, agent_key=agent, task_id=task_id, limit=2)
        if not found:
            raise NotFoundError(f"There is no task {task_id!r}; list them with GET /v1/tasks.")
        if len(found) > 1:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail=f"Several agents have a task {task_id!r}; name one with ?agent=KEY.",
            )
        row = found[0]
        steps = task_records(session, row.agent_key, row.task_id)
        return TaskDetailOut(**TaskOut.of(row).model_dump(), steps=steps)
