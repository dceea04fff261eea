"""Prometheus metrics of one app: a registry of its own, filled by an ASGI middleware and by
session events, scraped at `GET /metrics`.

| metric | labels | counts |
|---|---|---|
| `pathguard_http_requests_total` | method, route, status | HTTP requests answered |
| `pathguard_http_request_duration_seconds` | method, route | request latency (histogram) |
| `pathguard_trace_batches_total` | outcome (`stored`, `refused`) | `POST /v1/traces` batches |
| `pathguard_trace_records_ingested_total` | | trace records stored (not duplicates) |
| `pathguard_decisions_total` | action | decisions of the stored records, by action |
| `pathguard_incidents_created_total` | | incidents opened (ingest and registration) |

`route` is the route template (`/v1/tasks/{task_id}`), or `unmatched`, so the label stays
bounded whatever paths clients send. The registry is per app, so several apps in one process
(tests, embedding) do not share counts. With several workers, each one has its own counts.

Incidents are counted when the transaction that created them commits. Stored records and
their decisions are read from an accepted batch and its answer: the answer says, per task,
which seqs were new, so duplicates resent by an SDK are not counted twice.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pathguard.decisions import Action
from pathguard.platform.models import Incident

__all__ = ["Metrics", "MetricsMiddleware"]

logger = logging.getLogger("pathguard")

_TRACES_PATH: Final = "/v1/traces"
_PENDING: Final = "pathguard_metrics_new_incidents"
_ACTIONS: Final = frozenset(a.value for a in Action)


class Metrics:
    """The metrics of one app, in a registry of their own (`registry`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "pathguard_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "pathguard_http_request_duration_seconds",
            "Time from receiving a request to sending the end of its answer.",
            ("method", "route"),
            registry=self.registry,
        )
        self.batches = Counter(
            "pathguard_trace_batches",
            "Trace batches posted to /v1/traces, by outcome (stored or refused).",
            ("outcome",),
            registry=self.registry,
        )
        self.records = Counter(
            "pathguard_trace_records_ingested",
            "Trace records stored (duplicates of stored records are not counted).",
            registry=self.registry,
        )
        self.decisions = Counter(
            "pathguard_decisions",
            "Decisions carried by stored trace records, by action.",
            ("action",),
            registry=self.registry,
        )
        self.incidents = Counter(
            "pathguard_incidents_created",
            "Incidents opened, from ingested decisions and from registrations.",
            registry=self.registry,
        )

    # -- incidents, through the app's sessions ----------------------------------------------

    def watch(self, sessions: sessionmaker[Session]) -> None:
        """Count the incidents the sessions of `sessions` create, once their commit is done."""
        event.listen(sessions, "after_flush", _count_new_incidents)
        event.listen(sessions, "after_commit", self._publish_incidents)
        event.listen(sessions, "after_rollback", _forget_incidents)

    def _publish_incidents(self, session: Session) -> None:
        created = session.info.pop(_PENDING, 0)
        if created:
            self.incidents.inc(created)

    # -- trace batches ----------------------------------------------------------------------

    def observe_batch(self, status: int, request_body: bytes, response_body: bytes) -> None:
        """Count a batch from what was posted and the answer (see the module docstring)."""
        if status != 200:
            self.batches.labels(outcome="refused").inc()
            return
        self.batches.labels(outcome="stored").inc()
        try:
            answer = json.loads(response_body)
            records = json.loads(request_body)["records"]
        except (ValueError, KeyError, TypeError):
            logger.warning("A stored trace batch could not be read back for the metrics.")
            return
        new: dict[tuple[str, int], Any] = {}
        ranges = {
            t["task_id"]: range(t["next_seq"] - t["stored"], t["next_seq"])
            for t in answer.get("tasks", ())
        }
        for record in records:
            if not isinstance(record, dict):
                continue
            task_id = record.get("task_id") or ""
            seq = record.get("seq")
            if isinstance(seq, int) and seq in ranges.get(task_id, ()):
                new[(task_id, seq)] = record.get("decision")
        self.records.inc(int(answer.get("stored", 0)))
        for decision in new.values():
            action = decision.get("action") if isinstance(decision, dict) else None
            if action is None:
                continue
            self.decisions.labels(action=action if action in _ACTIONS else "other").inc()


def _count_new_incidents(session: Session, flush_context: Any) -> None:
    # After a flush, `session.new` still lists what the flush inserted.
    created = sum(1 for obj in session.new if isinstance(obj, Incident))
    if created:
        session.info[_PENDING] = session.info.get(_PENDING, 0) + created


def _forget_incidents(session: Session) -> None:
    session.info.pop(_PENDING, None)


class MetricsMiddleware:
    """Times and counts every HTTP request, and reads trace batches for `Metrics`."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        is_batch = method == "POST" and scope["path"] == _TRACES_PATH
        received: list[bytes] = []
        sent: list[bytes] = []
        status = 500
        counted = False

        def count() -> None:
            nonlocal counted
            counted = True
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(method=method, route=template, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=template).observe(
                time.perf_counter() - started
            )
            if is_batch:
                self.metrics.observe_batch(status, b"".join(received), b"".join(sent))

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received.append(message.get("body", b""))
            return message

        async def send_and_count(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                if is_batch:
                    sent.append(message.get("body", b""))
                # Counted before the last byte goes out, so a client that scrapes right after
                # its answer arrived already sees its request.
                if not message.get("more_body", False):
                    count()
            await send(message)

        try:
            await self.app(scope, receive_and_keep if is_batch else receive, send_and_count)
        finally:
            if not counted:
                count()
