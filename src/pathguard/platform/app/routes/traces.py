"""`POST /v1/traces`: a batch of one agent's trace records (spec/core.md §6).

The batch is stored whole or not at all, idempotently on (agent, task, seq), after checking
that each task's records continue its stored hash chain; the answer is each task's chain tail.
A batch holds at most 1,000 records and 5 MiB (413 otherwise). A refused batch names its
first bad record: 400 when a record is malformed, 403 when it belongs to another agent, 409
when it does not continue the stored chain or conflicts with a stored record.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import ValidationError

from pathguard.platform.app.auth import Credentials, require_principal
from pathguard.platform.app.routes._common import AUTH_ERRORS, Sessions, read_body
from pathguard.platform.app.schemas import (
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    ErrorOut,
    TraceBatchIn,
    TraceBatchOut,
)
from pathguard.platform.store import ingest_traces

__all__ = ["router"]

router = APIRouter(prefix="/v1/traces", tags=["traces"], responses=AUTH_ERRORS)

_BATCH_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": TraceBatchIn.model_json_schema()}},
    }
}


async def _batch_body(request: Request) -> bytes:
    return await read_body(request, MAX_BATCH_BYTES, "The trace batch")


def _bad(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail=detail)


def _batch(raw: bytes) -> TraceBatchIn:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _bad(
            'The body is not JSON; send {"records": [...]} with Content-Type application/json.'
        ) from None
    records = data.get("records") if isinstance(data, dict) else None
    if isinstance(records, list) and len(records) > MAX_BATCH_RECORDS:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=(
                f"The batch holds {len(records)} records, more than {MAX_BATCH_RECORDS}; "
                f"send at most {MAX_BATCH_RECORDS} records per batch."
            ),
        )
    try:
        return TraceBatchIn.model_validate(data)
    except ValidationError:
        raise _bad(
            'The body must be {"records": [...]}: an object whose only key is "records", '
            "a list of trace record objects."
        ) from None


@router.post(
    "",
    response_model=TraceBatchOut,
    openapi_extra=_BATCH_BODY,
    responses={
        400: {"model": ErrorOut, "description": "A record is malformed."},
        409: {"model": ErrorOut, "description": "The batch does not continue the chain."},
        413: {"model": ErrorOut, "description": "More than 1,000 records or 5 MiB."},
    },
)
def post_traces(
    raw: Annotated[bytes, Depends(_batch_body)], sessions: Sessions, credentials: Credentials
) -> dict[str, Any]:
    """Store a batch of trace records of the key's agent; answer with each task's chain tail."""
    with sessions.begin() as session:
        principal = require_principal(session, credentials)
        batch = _batch(raw)
        agent_key = principal.agent_key
        if agent_key is None:
            # An admin key writes for the agent the records name (one agent per batch).
            owners = {r.get("agent_key") for r in batch.records}
            first = batch.records[0].get("agent_key") if batch.records else None
            if len(owners) > 1 or not isinstance(first, str):
                raise _bad(
                    "An admin key sends the records of one agent per batch, each naming it in "
                    "agent_key; split the batch by agent."
                )
            agent_key = first
        # An agent key's records of another agent are refused by ingest_traces (403).
        return ingest_traces(session, agent_key, batch.records).to_dict()
