"""Webhooks: `POST /v1/webhooks`, `GET /v1/webhooks`, `DELETE /v1/webhooks/{id}` and the
delivery log `GET /v1/webhooks/{id}/deliveries`. Admin keys. A secret is never answered back.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from pathguard.platform.app.auth import Credentials, require_admin
from pathguard.platform.app.routes._common import AUTH_ERRORS, Sessions
from pathguard.platform.app.schemas import ErrorOut
from pathguard.platform.models import Webhook, WebhookDelivery
from pathguard.platform.store import NotFoundError, create_webhook, delete_webhook
from pathguard.platform.store import list_webhooks as stored_webhooks
from pathguard.platform.webhooks import delivery_log

__all__ = ["router"]

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=AUTH_ERRORS)

Url = Annotated[
    str, StringConstraints(min_length=8, max_length=2048, pattern=r"^https?://[^\s\x00]+$")
]
Secret = Annotated[str, StringConstraints(min_length=16, max_length=1024, pattern=r"^[^\x00]*$")]
Event = Literal["incident.created"]


def _default_events() -> list[Event]:
    return ["incident.created"]


WebhookId = Annotated[int, Path(ge=1, le=2**31 - 1)]


class WebhookIn(BaseModel):
    """A subscription: where to POST, the secret that signs each body, and which events."""

    model_config = ConfigDict(extra="forbid")

    url: Url
    secret: Secret = Field(description="Signs each delivery (HMAC-SHA256); never shown again.")
    events: list[Event] = Field(default_factory=_default_events, min_length=1)


class WebhookOut(BaseModel):
    id: int
    url: str
    events: list[str]
    created_at: dt.datetime
    created_by: str | None

    @classmethod
    def of(cls, hook: Webhook) -> WebhookOut:
        return cls(
            id=hook.id,
            url=hook.url,
            events=[str(e) for e in hook.events],
            created_at=hook.created_at,
            created_by=hook.created_by,
        )


class DeliveryOut(BaseModel):
    id: int
    webhook_id: int
    event: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: dt.datetime
    last_attempt_at: dt.datetime | None
    response_status: int | None
    error: str | None
    created_at: dt.datetime
    delivered_at: dt.datetime | None

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> DeliveryOut:
        return cls.model_validate(delivery, from_attributes=True)


@router.post("", response_model=WebhookOut, status_code=status.HTTP_201_CREATED)
def post_webhook(body: WebhookIn, sessions: Sessions, credentials: Credentials) -> WebhookOut:
    """Subscribe a URL to events; each delivery is signed with the secret."""
    with sessions.begin() as session:
        principal = require_admin(session, credentials)
        hook = create_webhook(
            session,
            url=body.url,
            secret=body.secret,
            events=list(dict.fromkeys(body.events)),
            created_by=principal.key_id,
        )
        return WebhookOut.of(hook)


@router.get("", response_model=list[WebhookOut])
def get_webhooks(sessions: Sessions, credentials: Credentials) -> list[WebhookOut]:
    """The webhooks that are not deleted, by id."""
    with sessions.begin() as session:
        require_admin(session, credentials)
        return [WebhookOut.of(h) for h in stored_webhooks(session)]


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": ErrorOut}},
)
def remove_webhook(webhook_id: WebhookId, sessions: Sessions, credentials: Credentials) -> Response:
    """Stop a webhook; its pending deliveries are not sent, its delivery log is kept."""
    with sessions.begin() as session:
        require_admin(session, credentials)
        delete_webhook(session, webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=list[DeliveryOut],
    responses={404: {"model": ErrorOut}},
)
def deliveries(
    webhook_id: WebhookId,
    sessions: Sessions,
    credentials: Credentials,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeliveryOut]:
    """The webhook's deliveries, newest first: status, attempts, last answer or error."""
    with sessions.begin() as session:
        require_admin(session, credentials)
        if session.get(Webhook, webhook_id) is None:
            raise NotFoundError(f"There is no webhook {webhook_id}.")
        return [DeliveryOut.of(d) for d in delivery_log(session, webhook_id, limit=limit)]
