"""The SDK's incident webhook: a signed POST for every warn, block and denied approval.

`Guard(incident_webhook="https://...")` reports each incident to `IncidentWebhook.report`,
which only puts it on a bounded queue; a daemon thread builds the JSON event and POSTs it
with httpx, retrying a few times with backoff. Nothing here raises into the agent: failures
are logged, and when the queue is full new incidents are dropped with a warning (they still
reach the platform with the trace, when `api_url` is set).

The body has the shape of the platform's own webhook deliveries, so one receiver handles
both:

```
{"event": "incident.detected", "delivery_id": "<uuid>", "created_at": "<ISO 8601>",
 "data": {"agent_key", "task_id", "seq", "step_type", "step_name", "verb", "status",
          "action", "violations": [{"policy_id", "rule", "severity", "effect", "reason"}],
          "risk_score", "timestamp"}}
```

serialised with sorted keys and no spaces. With a secret, `X-Pathguard-Signature:
sha256=<hex>` is the HMAC-SHA256 of those exact bytes, as the platform signs (the header
name and format are the platform's); `X-Pathguard-Event` and `X-Pathguard-Delivery` name the
event and the delivery.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import queue
import threading
import uuid
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

try:
    import httpx
except ImportError as exc:  # pragma: no cover - the dev environment has httpx
    raise ImportError(
        "The incident webhook needs the httpx package; install it with "
        "pip install 'pathguard[server]'."
    ) from exc

from pathguard.decisions import Action, Decision
from pathguard.vocabulary import Behavior, Status

__all__ = [
    "INCIDENT_DETECTED",
    "SIGNATURE_HEADER",
    "IncidentWebhook",
    "incident_action",
    "incident_data",
    "sign",
]

logger = logging.getLogger("pathguard")

# The platform's header names (pathguard.platform.webhooks), repeated here because the core
# never imports the platform; a test checks that both sides agree.
SIGNATURE_HEADER: Final = "X-Pathguard-Signature"
EVENT_HEADER: Final = "X-Pathguard-Event"
DELIVERY_HEADER: Final = "X-Pathguard-Delivery"
INCIDENT_DETECTED: Final = "incident.detected"
BACKOFF: Final[tuple[float, ...]] = (0.5, 2.0, 8.0)
"""Seconds before the 2nd, 3rd and 4th (last) attempt."""

_STOP: Final = object()


def sign(secret: str, body: bytes) -> str:
    """`sha256=` and the hex HMAC-SHA256 of `body` under `secret` (the platform's format)."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def incident_action(decision: Decision, *, blocked: bool) -> str | None:
    """What a decision makes of a step: "block", "warn", "approval_denied", or None when it
    is no incident (allowed, or an approval that was granted)."""
    action = decision.action
    if action is Action.block:
        return "block"
    if action is Action.warn:
        return "warn"
    if action is Action.approve and blocked:
        return "approval_denied"
    return None


def incident_data(
    agent_key: str,
    behavior: Behavior | None,
    decision: Decision,
    seq: int | None,
    action: str,
) -> dict[str, Any]:
    """The `data` of an incident event; `behavior` is None for an agent registration."""
    return {
        "agent_key": agent_key,
        "task_id": None if behavior is None else behavior.task_id,
        "seq": seq,
        "step_type": "agent.registration" if behavior is None else behavior.step_type.value,
        "step_name": None if behavior is None else behavior.step_name,
        "verb": None if behavior is None or behavior.verb is None else behavior.verb.value,
        "status": None if behavior is None else behavior.status.value,
        "action": action,
        "violations": [
            {
                "policy_id": v.policy_id,
                "rule": v.rule,
                "severity": v.severity.value,
                "effect": v.effect.value,
                "reason": v.reason,
            }
            for v in decision.violations
        ],
        "risk_score": decision.risk_score,
        "timestamp": None if behavior is None else behavior.timestamp,
    }


class IncidentWebhook:
    """POSTs incident events to `url` from a daemon thread; `report` never blocks.

    Each event is tried up to `len(backoff) + 1` times (a network error or a status outside
    2xx is a failure). `flush` waits until the queue is empty; `close` delivers what it can
    within its timeout and stops the thread. `status()` counts what happened.
    """

    def __init__(
        self,
        url: str,
        *,
        agent_key: str,
        secret: str | None = None,
        max_queue: int = 1000,
        timeout: float = 5.0,
        backoff: Sequence[float] = BACKOFF,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"The incident webhook must be an http:// or https:// URL, not {url!r}."
            )
        if max_queue < 1 or timeout <= 0:
            raise ValueError("max_queue must be at least 1 and timeout more than 0 seconds.")
        self.url = url
        # Logs and status name only where events go: a webhook URL often carries a token.
        self.host = f"{parts.scheme}://{parts.hostname}"
        self.agent_key = agent_key
        self.timeout = float(timeout)
        self.backoff = tuple(backoff)
        self._secret = secret
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._done = threading.Condition()
        self._unfinished = 0
        self._abort = threading.Event()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._full = False
        self._thread = threading.Thread(
            target=self._run, name="pathguard-incident-webhook", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"IncidentWebhook({self.host!r})"

    def report(
        self,
        behavior: Behavior | None,
        decision: Decision,
        seq: int | None = None,
        *,
        denied: bool = False,
    ) -> None:
        """Queue an event if the decision makes an incident; drop it (logged) when full.

        `denied` says that an approval was refused where there is no behaviour to say so
        (a registration)."""
        blocked = denied or (behavior is not None and behavior.status is Status.blocked)
        action = incident_action(decision, blocked=blocked)
        if action is None:
            return
        with self._done:
            self._unfinished += 1
        try:
            self._queue.put_nowait((behavior, decision, seq, action))
        except queue.Full:
            with self._done:
                self._unfinished -= 1
                self.dropped += 1
                self._done.notify_all()
            if not self._full:
                self._full = True
                logger.warning(
                    "incident webhook %s: %d events wait already; dropping new incidents "
                    "until the receiver catches up",
                    self.host,
                    self._queue.maxsize,
                )
            return

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait at most `timeout` seconds until every reported event was sent or given up;
        True when none is left."""
        with self._done:
            return self._done.wait_for(lambda: self._unfinished == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (at most `timeout` seconds), then stop the thread."""
        if not self._thread.is_alive():
            return
        if not self.flush(timeout):
            self._abort.set()  # give up the retries still scheduled
        with self._done:
            self._unfinished += 1
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        """Where events go (scheme and host only) and how many were sent, failed, dropped."""
        return {
            "url": self.host,
            "queued": self._queue.qsize(),
            "delivered": self.delivered,
            "failed": self.failed,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while True:
                item = self._queue.get()
                try:
                    if item is _STOP:
                        return
                    self._deliver(client, *item)
                except Exception:  # the thread must outlive any one event
                    logger.exception("incident webhook %s: an event could not be sent", self.host)
                finally:
                    with self._done:
                        self._unfinished -= 1
                        self._done.notify_all()

    def _deliver(
        self,
        client: httpx.Client,
        behavior: Behavior | None,
        decision: Decision,
        seq: int | None,
        action: str,
    ) -> None:
        delivery = uuid.uuid4().hex
        document = {
            "event": INCIDENT_DETECTED,
            "delivery_id": delivery,
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "data": incident_data(self.agent_key, behavior, decision, seq, action),
        }
        body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: INCIDENT_DETECTED,
            DELIVERY_HEADER: delivery,
        }
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        error = ""
        for attempt in range(len(self.backoff) + 1):
            if attempt and self._abort.wait(self.backoff[attempt - 1]):
                break  # closing: the retries left are given up
            try:
                response = client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= response.status_code < 300:
                    self.delivered += 1
                    self._full = False
                    return
                error = f"the receiver answered HTTP {response.status_code}"
            logger.debug(
                "incident webhook %s: attempt %d failed: %s", self.host, attempt + 1, error
            )
        self.failed += 1
        self.last_error = error
        logger.warning(
            "incident webhook %s: an incident of task %s (%s) was not delivered: %s",
            self.host,
            None if behavior is None else behavior.task_id,
            action,
            error,
        )
