"""Incidents: `GET /v1/incidents` and `PATCH /v1/incidents/{id}` (open → acknowledged →
resolved or ignored; reopening is allowed), noting which key acted and when. Admin keys."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from pathguard.platform.app.auth import Credentials, require_admin
from pathguard.platform.app.routes._common import (
    AUTH_ERRORS,
    Limit,
    Offset,
    Sessions,
    TextQuery,
    as_utc,
)
from pathguard.platform.app.schemas import ErrorOut, IncidentOut, IncidentPatch
from pathguard.platform.store import list_incidents, update_incident

__all__ = ["router"]

router = APIRouter(prefix="/v1/incidents", tags=["incidents"], responses=AUTH_ERRORS)


@router.get("", response_model=list[IncidentOut])
def incidents(
    sessions: Sessions,
    credentials: Credentials,
    agent: TextQuery = None,
    task: TextQuery = None,
    status: Annotated[
        Literal["open", "acknowledged", "resolved", "ignored"] | None, Query()
    ] = None,
    since: Annotated[dt.datetime | None, Query(description="Last seen at or after.")] = None,
    until: Annotated[dt.datetime | None, Query(description="First seen before.")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[IncidentOut]:
    """Incidents, most recently seen first."""
    with sessions.begin() as session:
        require_admin(session, credentials)
        rows = list_incidents(
            session,
            agent_key=agent,
            task_id=task,
            status=status,
            since=as_utc(since),
            until=as_utc(until),
            limit=limit,
            offset=offset,
        )
        return [IncidentOut.of(i) for i in rows]


@router.patch(
    "/{incident_id}",
    response_model=IncidentOut,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
)
def patch_incident(
    incident_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    body: IncidentPatch,
    sessions: Sessions,
    credentials: Credentials,
) -> IncidentOut:
    """Move an incident to a new status; `acted_by` is the id of the key that did it."""
    with sessions.begin() as session:
        principal = require_admin(session, credentials)
        incident = update_incident(
            session, incident_id, status=body.status, acted_by=principal.key_id
        )
        return IncidentOut.of(incident)
