"""`GET /healthz`: liveness, with a database check; needs no key."""

from __future__ import annotations

import logging

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from pathguard.platform.app.routes._common import Sessions
from pathguard.platform.app.schemas import ErrorOut, HealthOut
from pathguard.platform.store import ping

__all__ = ["router"]

logger = logging.getLogger("pathguard")

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=HealthOut,
    responses={503: {"model": ErrorOut, "description": "The database does not answer."}},
)
def healthz(sessions: Sessions) -> HealthOut | JSONResponse:
    """200 when the server can query its database, 503 when it cannot."""
    try:
        with sessions.begin() as session:
            ping(session)
    except SQLAlchemyError as exc:
        logger.warning("health check: the database does not answer (%s)", type(exc).__name__)
        return JSONResponse(
            {
                "status": "unavailable",
                "detail": "The database does not answer; check that it is running and reachable.",
            },
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    return HealthOut(status="ok")
