"""`GET /v1/audit/verify?agent=&task=`: re-verify stored hash chains; names the first broken
record of each broken task. Admin keys only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from pathguard.platform.app.auth import Credentials, require_admin
from pathguard.platform.app.routes._common import (
    AUTH_ERRORS,
    Sessions,
    TextQuery,
)
from pathguard.platform.store import verify_stored

__all__ = ["router"]

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=AUTH_ERRORS)


@router.get("/verify")
def verify(
    sessions: Sessions, credentials: Credentials, agent: TextQuery = None, task: TextQuery = None
) -> dict[str, Any]:
    """Recompute the stored chains (of one agent, one task, or all); `ok` says if all verify.

    Each checked task's `chain_ok` is updated to the outcome.
    """
    with sessions.begin() as session:
        require_admin(session, credentials)
        return verify_stored(session, agent, task).to_dict()
