"""`GET /v1/reports/compliance?agent=&from=&to=`: one agent's compliance report. Admin keys.

JSON by default; `?format=html` (or a request that accepts text/html and not JSON first)
gets a printable page rendered from `templates/report.html`, with inline CSS only. Steps,
decisions and tasks count the records whose timestamp is in [from, to); incidents count
those seen in that window; the chain status re-verifies all of the agent's stored chains.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from pathguard.platform.app.auth import Credentials, require_admin
from pathguard.platform.app.routes._common import (
    AUTH_ERRORS,
    Sessions,
    as_utc,
)
from pathguard.platform.app.schemas import AgentOut, ErrorOut
from pathguard.platform.models import Incident, TraceRecordRow, utcnow
from pathguard.platform.store import NotFoundError, get_agent, policy_sets_for_agent, verify_stored

__all__ = ["compliance_report", "router"]

router = APIRouter(prefix="/v1/reports", tags=["reports"], responses=AUTH_ERRORS)

AgentQuery = Annotated[str, Query(min_length=1, max_length=256, pattern=r"^[^\x00]*$")]
NO_DECISION = "none"


def _counts(session: Session, column: Any, *where: Any) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).where(*where).group_by(column)).all()
    return {
        NO_DECISION if key is None else str(key): int(n)
        for key, n in sorted(rows, key=lambda r: "" if r[0] is None else str(r[0]))
    }


def compliance_report(
    session: Session,
    agent_key: str,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> dict[str, Any]:
    """The report of one agent as a JSON-ready dict; NotFoundError for an unknown agent."""
    agent = get_agent(session, agent_key)
    if agent is None:
        raise NotFoundError(
            f"There is no registered agent {agent_key!r}; check the agent query parameter."
        )
    records: list[Any] = [TraceRecordRow.agent_key == agent_key]
    incidents: list[Any] = [Incident.agent_key == agent_key]
    if start is not None:
        records.append(TraceRecordRow.timestamp >= start)
        incidents.append(Incident.last_seen >= start)
    if end is not None:
        records.append(TraceRecordRow.timestamp < end)
        incidents.append(Incident.first_seen < end)
    tasks = session.scalar(select(func.count(distinct(TraceRecordRow.task_id))).where(*records))
    steps = session.scalar(select(func.count()).select_from(TraceRecordRow).where(*records))
    chain = verify_stored(session, agent_key, update_status=False)
    return {
        "generated_at": utcnow().isoformat(),
        "period": {
            "from": None if start is None else start.isoformat(),
            "to": None if end is None else end.isoformat(),
        },
        "agent": AgentOut.of(agent).model_dump(mode="json"),
        "policy_sets": [
            {"id": p.id, "name": p.name, "version": p.version, "digest": p.digest}
            for p in policy_sets_for_agent(session, agent_key)
        ],
        "tasks": int(tasks or 0),
        "steps": int(steps or 0),
        "decisions": _counts(session, TraceRecordRow.action, *records),
        "incidents": {
            "total": sum(_counts(session, Incident.status, *incidents).values()),
            "by_status": _counts(session, Incident.status, *incidents),
            "by_severity": _counts(session, Incident.severity, *incidents),
        },
        "chain": chain.to_dict(),
    }


@cache
def _templates() -> Environment:
    return Environment(
        loader=PackageLoader("pathguard.platform", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _wants_html(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "html"
    accept = request.headers.get("accept", "").lower()
    first = accept.split(",", 1)[0].strip()
    return "text/html" in first


@router.get(
    "/compliance",
    response_model=None,
    responses={
        200: {"content": {"text/html": {}}, "description": "The report (JSON or HTML)."},
        404: {"model": ErrorOut},
    },
)
def compliance(
    request: Request,
    sessions: Sessions,
    credentials: Credentials,
    agent: AgentQuery,
    start: Annotated[dt.datetime | None, Query(alias="from")] = None,
    end: Annotated[dt.datetime | None, Query(alias="to")] = None,
    fmt: Annotated[Literal["json", "html"] | None, Query(alias="format")] = None,
) -> Response:
    """An agent's registration, policy sets in force, activity, incidents and chain status."""
    with sessions.begin() as session:
        require_admin(session, credentials)
        report = compliance_report(session, agent, start=as_utc(start), end=as_utc(end))
    if _wants_html(request, fmt):
        html = _templates().get_template("report.html").render(report=report)
        return HTMLResponse(html)
    return JSONResponse(report)
