"""Webhook delivery: signed POSTs of queued events, retried with backoff, and a worker thread.

Every new incident queues an `incident.created` event to each webhook subscribed to it: a
mapper event on `Incident` (installed when this module is imported, which `create_app` does
through its routes) inserts the deliveries in the same transaction as the incident, so an
incident whose batch is rolled back never reaches a receiver.

`deliver_due` sends what is due, once; `WebhookDispatcher` calls it in a thread:

```python
with httpx.Client(timeout=10) as client:
    deliver_due(sessions, client=client)
```

Each body is JSON; `X-Pathguard-Signature: sha256=<hex>` is the HMAC-SHA256 of the exact body
bytes under the webhook's secret, and `X-Pathguard-Event` names the event. A delivery that
fails (an error or a status outside 2xx) is retried after 10 s, 30 s, 90 s, ... until
`max_attempts` attempts were made; then it is marked failed and a warning is logged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any, Final

import httpx
from sqlalchemy import Connection, event, insert, select
from sqlalchemy.orm import Mapper, Session, sessionmaker

from pathguard.platform.models import Incident, Webhook, WebhookDelivery, utcnow
from pathguard.platform.store import due_deliveries, record_delivery_attempt

__all__ = [
    "BACKOFF",
    "EVENT_HEADER",
    "INCIDENT_CREATED",
    "MAX_ATTEMPTS",
    "SIGNATURE_HEADER",
    "DeliveryOutcome",
    "WebhookDispatcher",
    "deliver_due",
    "delivery_body",
    "delivery_log",
    "incident_payload",
    "sign",
]

logger = logging.getLogger("pathguard")

SIGNATURE_HEADER: Final = "X-Pathguard-Signature"
EVENT_HEADER: Final = "X-Pathguard-Event"
DELIVERY_HEADER: Final = "X-Pathguard-Delivery"
INCIDENT_CREATED: Final = "incident.created"
# Seconds to wait before the 2nd, 3rd, ... attempt; past the end the last wait repeats.
BACKOFF: Final[tuple[float, ...]] = (10.0, 30.0, 90.0, 270.0, 810.0)
MAX_ATTEMPTS: Final = 6


def sign(secret: str, body: bytes) -> str:
    """The signature header value of `body`: `sha256=` and the hex HMAC-SHA256 under `secret`."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def delivery_body(delivery: WebhookDelivery) -> bytes:
    """The exact bytes POSTed for a delivery (and signed)."""
    document = {
        "event": delivery.event,
        "delivery_id": delivery.id,
        "created_at": delivery.created_at.isoformat(),
        "data": delivery.payload,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def incident_payload(incident: Incident) -> dict[str, Any]:
    """What an `incident.created` event says about the incident (JSON-ready)."""

    def when(value: dt.datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "id": incident.id,
        "agent_key": incident.agent_key,
        "task_id": incident.task_id,
        "policy_id": incident.policy_id,
        "severity": incident.severity,
        "action": incident.action,
        "reason": incident.reason,
        "status": incident.status,
        "count": incident.count,
        "first_seen": when(incident.first_seen),
        "last_seen": when(incident.last_seen),
        "seq": incident.seq,
    }


@event.listens_for(Incident, "after_insert")
def _enqueue_incident_created(
    mapper: Mapper[Incident], connection: Connection, incident: Incident
) -> None:
    # Runs inside the flush, on its connection: the deliveries commit or roll back with it.
    hooks = connection.execute(
        select(Webhook.id, Webhook.events).where(Webhook.deleted_at.is_(None))
    ).all()
    subscribed = [hook_id for hook_id, events in hooks if INCIDENT_CREATED in (events or [])]
    if not subscribed:
        return
    payload = incident_payload(incident)
    connection.execute(
        insert(WebhookDelivery),
        [
            {
                "webhook_id": hook_id,
                "event": INCIDENT_CREATED,
                "payload": payload,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": utcnow(),
                "created_at": utcnow(),
            }
            for hook_id in subscribed
        ],
    )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DeliveryOutcome:
    """One attempt `deliver_due` made: the answer's status or the error, and what follows."""

    delivery_id: int
    webhook_id: int
    status: str  # delivered, pending (a retry is scheduled) or failed
    response_status: int | None
    error: str | None
    retry_at: dt.datetime | None


def _retry_at(attempts_made: int, now: dt.datetime, backoff: Sequence[float]) -> dt.datetime:
    wait = backoff[min(attempts_made - 1, len(backoff) - 1)] if backoff else 0.0
    return now + dt.timedelta(seconds=wait)


def _send(
    client: httpx.Client, hook: Webhook, delivery: WebhookDelivery
) -> tuple[int | None, str | None]:
    body = delivery_body(delivery)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(hook.secret, body),
        EVENT_HEADER: delivery.event,
        DELIVERY_HEADER: str(delivery.id),
    }
    try:
        response = client.post(hook.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:2000]
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"The receiver answered HTTP {response.status_code}."


def deliver_due(
    sessions: sessionmaker[Session],
    *,
    client: httpx.Client,
    now: dt.datetime | None = None,
    limit: int = 50,
    backoff: Sequence[float] = BACKOFF,
    max_attempts: int = MAX_ATTEMPTS,
) -> list[DeliveryOutcome]:
    """Send every delivery due at `now` (default: the current time) once; what each attempt did.

    Retries are scheduled relative to `now`, so tests can move time forward without sleeping.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts is {max_attempts}; pass 1 or more.")
    now = now or utcnow()
    outcomes = []
    with sessions.begin() as session:
        for delivery in due_deliveries(session, now=now, limit=limit):
            hook = session.get(Webhook, delivery.webhook_id)
            code: int | None
            error: str | None
            if hook is None or hook.deleted_at is not None:
                code, error = None, "The webhook was deleted before this event could be delivered."
                attempts_left = False
            else:
                code, error = _send(client, hook, delivery)
                attempts_left = delivery.attempts + 1 < max_attempts
            ok = error is None
            retry_at = (
                None if ok or not attempts_left else _retry_at(delivery.attempts + 1, now, backoff)
            )
            row = record_delivery_attempt(
                session, delivery.id, ok=ok, response_status=code, error=error, retry_at=retry_at
            )
            if row.status == "failed":
                logger.warning(
                    "webhook delivery %d of %s to webhook %d failed after %d attempts and is "
                    "given up: %s",
                    row.id,
                    row.event,
                    row.webhook_id,
                    row.attempts,
                    error,
                )
            elif not ok:
                logger.info(
                    "webhook delivery %d to webhook %d failed (attempt %d), retrying at %s: %s",
                    row.id,
                    row.webhook_id,
                    row.attempts,
                    retry_at.isoformat() if retry_at else "-",
                    error,
                )
            outcomes.append(
                DeliveryOutcome(
                    delivery_id=row.id,
                    webhook_id=row.webhook_id,
                    status=row.status,
                    response_status=code,
                    error=error,
                    retry_at=retry_at,
                )
            )
    return outcomes


def delivery_log(session: Session, webhook_id: int, *, limit: int = 100) -> list[WebhookDelivery]:
    """A webhook's deliveries, newest first (including those of a deleted webhook)."""
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == webhook_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        )
    )


class WebhookDispatcher:
    """A daemon thread that calls `deliver_due` every `interval` seconds until `stop()`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        interval: float = 2.0,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval is {interval}; pass a number of seconds above 0.")
        self.sessions = sessions
        self.interval = interval
        self._own_client = client is None
        self.client = client if client is not None else httpx.Client(timeout=timeout)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        running = self._thread is not None and self._thread.is_alive()
        return f"WebhookDispatcher(interval={self.interval!r}, running={running})"

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is not None:
            raise RuntimeError("This dispatcher was already started; create a new one.")
        self._thread = threading.Thread(target=self._run, name="pathguard-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop, wait for it, and close the client this dispatcher made."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._own_client:
            self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                deliver_due(self.sessions, client=self.client)
            except Exception:  # a database outage must not kill the worker; it tries again
                logger.exception("webhook delivery round failed; trying again later")
            self._stop.wait(self.interval)
