"""What every route module shares: the session factory and the error answers."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final

from fastapi import Depends, HTTPException, Path, Query, Request, status
from sqlalchemy.orm import Session, sessionmaker

from pathguard.platform.app.schemas import ErrorOut

__all__ = [
    "AUTH_ERRORS",
    "AgentKeyPath",
    "Limit",
    "Offset",
    "Sessions",
    "TextQuery",
    "as_utc",
    "get_sessions",
    "read_body",
]


def get_sessions(request: Request) -> sessionmaker[Session]:
    """The session factory `create_app` put on the application."""
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


Sessions = Annotated[sessionmaker[Session], Depends(get_sessions)]

# The answers every authenticated endpoint may give, for /openapi.json.
AUTH_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"model": ErrorOut, "description": "No API key, or one that is not valid."},
    403: {"model": ErrorOut, "description": "The key may not do this."},
}

# Agent keys and task ids are bounded like the store bounds them (PostgreSQL text holds no NUL).
AgentKeyPath = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^\x00]*$")]
TextQuery = Annotated[str | None, Query(max_length=256, pattern=r"^[^\x00]*$")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]


def as_utc(when: dt.datetime | None) -> dt.datetime | None:
    """A query's date-time, read as UTC when it names no zone."""
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=dt.UTC)


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=_too_large(what, limit))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=_too_large(what, limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(what: str, limit: int) -> str:
    return f"{what} is larger than {limit // 1024} KiB; split it and send the parts one by one."
