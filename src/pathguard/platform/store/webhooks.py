"""Webhooks: subscriptions, the queue of deliveries, and the log of attempts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pathguard.platform.models import Webhook, WebhookDelivery, utcnow
from pathguard.platform.store._common import NotFoundError

__all__ = [
    "create_webhook",
    "delete_webhook",
    "due_deliveries",
    "enqueue_event",
    "list_webhooks",
    "record_delivery_attempt",
]


def create_webhook(
    session: Session,
    *,
    url: str,
    secret: str,
    events: Sequence[str] = ("incident.created",),
    created_by: str | None = None,
) -> Webhook:
    """Subscribe `url` to events; deliveries are signed with `secret`."""
    hook = Webhook(url=url, secret=secret, events=list(events), created_by=created_by)
    session.add(hook)
    session.flush()
    return hook


def list_webhooks(session: Session) -> list[Webhook]:
    """The webhooks that are not deleted, by id."""
    return list(
        session.scalars(select(Webhook).where(Webhook.deleted_at.is_(None)).order_by(Webhook.id))
    )


def delete_webhook(session: Session, webhook_id: int) -> None:
    """Stop a webhook (soft delete; its delivery log is kept)."""
    hook = session.get(Webhook, webhook_id)
    if hook is None or hook.deleted_at is not None:
        raise NotFoundError(f"There is no webhook {webhook_id}.")
    hook.deleted_at = utcnow()
    session.flush()


def enqueue_event(session: Session, event: str, payload: Mapping[str, Any]) -> list[int]:
    """Queue one delivery of an event to every webhook subscribed to it; their ids."""
    hooks = [h for h in list_webhooks(session) if event in h.events]
    deliveries = [
        WebhookDelivery(webhook_id=h.id, event=event, payload=dict(payload), status="pending")
        for h in hooks
    ]
    session.add_all(deliveries)
    session.flush()
    return [d.id for d in deliveries]


def due_deliveries(
    session: Session, *, now: dt.datetime | None = None, limit: int = 50
) -> list[WebhookDelivery]:
    """Pending deliveries whose next attempt is due, oldest first."""
    query = (
        select(WebhookDelivery)
        .where(
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= (now or utcnow()),
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Several workers may send at once; each takes different rows.
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


def record_delivery_attempt(
    session: Session,
    delivery_id: int,
    *,
    ok: bool,
    response_status: int | None = None,
    error: str | None = None,
    retry_at: dt.datetime | None = None,
) -> WebhookDelivery:
    """Log one attempt: delivered, to be retried at `retry_at`, or failed for good."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise NotFoundError(f"There is no webhook delivery {delivery_id}.")
    now = utcnow()
    delivery.attempts += 1
    delivery.last_attempt_at = now
    delivery.response_status = response_status
    delivery.error = error
    if ok:
        delivery.status, delivery.delivered_at = "delivered", now
    elif retry_at is not None:
        delivery.next_attempt_at = retry_at
    else:
        delivery.status = "failed"
    session.flush()
    return delivery
