"""Bearer API keys: who a request acts as, and what it may do (spec/platform.md §2).

Every endpoint but /healthz needs `Authorization: Bearer <key>`. A missing, malformed,
unknown or revoked key gets the same 401, which says nothing about which part failed. Admin
keys may do everything; an agent key may act only for its own agent, and gets 403 elsewhere.

Handlers authenticate inside their own transaction, so one request is one transaction:

```python
with sessions.begin() as session:
    principal = require_admin(session, credentials)
```
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from pathguard.platform.keys import Principal, authenticate

__all__ = [
    "Credentials",
    "bearer",
    "require_admin",
    "require_agent",
    "require_principal",
]

bearer: Final = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `pathguard keys create`, sent as `Authorization: Bearer <key>`.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]

_UNAUTHORIZED: Final = (
    "A valid API key is required; send it as 'Authorization: Bearer <key>' "
    "(create one with `pathguard keys create`)."
)
_ADMIN_ONLY: Final = "This endpoint needs an admin key; agent keys may not use it."


def require_principal(
    session: Session, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    """The principal of the presented key; 401 (saying nothing more) when there is none."""
    principal = None if credentials is None else authenticate(session, credentials.credentials)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=_UNAUTHORIZED,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def require_admin(session: Session, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """An admin principal; 401 without a valid key, 403 for an agent key."""
    principal = require_principal(session, credentials)
    if not principal.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=_ADMIN_ONLY)
    return principal


def require_agent(
    session: Session, credentials: HTTPAuthorizationCredentials | None, agent_key: str
) -> Principal:
    """A principal that may act for `agent_key` (its own agent key, or an admin key)."""
    principal = require_principal(session, credentials)
    if not principal.may_act_for(agent_key):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=(
                f"This key belongs to agent {principal.agent_key!r} and may not act for agent "
                f"{agent_key!r}; use that agent's own key."
            ),
        )
    return principal
