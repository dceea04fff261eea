"""Webhooks on the real server, delivered to a real receiver on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from pathguard.decisions import Decision, Effect, Mode, Severity, Violation
from pathguard.platform.app import create_app
from pathguard.platform.app.lifespan import lifespan
from pathguard.platform.webhooks import WebhookDispatcher, deliver_due
from pathguard.trace import HashChain
from pathguard.vocabulary import Behavior, Status, StepType

AGENT = "support-bot"
SECRET = "s3cret-for-the-receiver"


class Receiver:
    """An HTTP server on loopback that keeps what it receives and answers scripted statuses."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.got_one = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.append((dict(self.headers.items()), body))
                code = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.got_one.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http_client:
        yield http_client


def blocked_trace(task_id: str) -> list[dict[str, Any]]:
    """task.start, then one exec step blocked by policy `no-exec`."""
    violation = Violation(
        policy_id="no-exec",
        rule="requires_prior",
        severity=Severity.high,
        effect=Effect.block,
        mode=Mode.enforce,
        reason="exec needs a review first",
    )
    chain = HashChain()
    out = []
    for i, step_type in enumerate([StepType.task_start, StepType.step_exec]):
        behavior = Behavior(
            step_type=step_type,
            step_name=f"step-{i}",
            agent_key=AGENT,
            task_id=task_id,
            status=Status.blocked if i == 1 else Status.completed,
            timestamp=1_700_000_000.5 + i,
        )
        decision = Decision.from_violations([violation], ("no-exec",)) if i == 1 else None
        out.append(chain.append(behavior, decision).to_dict())
    return out


def subscribe(admin: httpx.Client, url: str) -> int:
    response = admin.post(
        "/v1/webhooks", json={"url": url, "secret": SECRET, "events": ["incident.created"]}
    )
    assert response.status_code == 201, response.text
    hook_id: int = response.json()["id"]
    return hook_id


def test_webhooks_are_admin_only_and_never_show_their_secret(
    admin: httpx.Client, agent_client: httpx.Client, anonymous: httpx.Client
) -> None:
    hook_id = subscribe(admin, "http://127.0.0.1:9/hook")
    listed = admin.get("/v1/webhooks")
    assert [h["id"] for h in listed.json()] == [hook_id]
    assert SECRET not in listed.text
    assert listed.json()[0]["events"] == ["incident.created"]
    assert anonymous.get("/v1/webhooks").status_code == 401
    assert agent_client.get("/v1/webhooks").status_code == 403
    refused = agent_client.post("/v1/webhooks", json={"url": "http://x.test/", "secret": SECRET})
    assert refused.status_code == 403
    bad = admin.post("/v1/webhooks", json={"url": "ftp://x.test/", "secret": SECRET})
    assert bad.status_code == 422
    unknown_event = admin.post(
        "/v1/webhooks", json={"url": "http://x.test/", "secret": SECRET, "events": ["nope"]}
    )
    assert unknown_event.status_code == 422
    assert admin.delete(f"/v1/webhooks/{hook_id}").status_code == 204
    assert admin.get("/v1/webhooks").json() == []
    assert admin.delete(f"/v1/webhooks/{hook_id}").status_code == 404
    assert admin.get("/v1/webhooks/999/deliveries").status_code == 404


def test_a_new_incident_is_delivered_signed_and_logged(
    admin: httpx.Client,
    agent_client: httpx.Client,
    receiver: Receiver,
    sessions: sessionmaker[Session],
    client: httpx.Client,
) -> None:
    hook_id = subscribe(admin, receiver.url)
    assert agent_client.post("/v1/traces", json={"records": blocked_trace("t1")}).is_success
    [incident] = admin.get("/v1/incidents").json()

    [outcome] = deliver_due(sessions, client=client)
    assert (outcome.status, outcome.response_status) == ("delivered", 200)

    [(headers, body)] = receiver.received
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Pathguard-Signature"] == f"sha256={expected}"
    assert headers["X-Pathguard-Event"] == "incident.created"
    sent = json.loads(body)
    assert sent["event"] == "incident.created"
    assert (sent["data"]["id"], sent["data"]["policy_id"]) == (incident["id"], "no-exec")
    assert sent["data"]["severity"] == "high"

    [logged] = admin.get(f"/v1/webhooks/{hook_id}/deliveries").json()
    assert (logged["status"], logged["attempts"], logged["response_status"]) == (
        "delivered",
        1,
        200,
    )
    assert logged["delivered_at"] is not None
    # A repeat of the same incident is not a new incident: nothing more is queued.
    assert deliver_due(sessions, client=client) == []


def test_a_failed_delivery_is_retried_with_backoff_until_it_succeeds(
    admin: httpx.Client,
    agent_client: httpx.Client,
    receiver: Receiver,
    sessions: sessionmaker[Session],
    client: httpx.Client,
) -> None:
    hook_id = subscribe(admin, receiver.url)
    receiver.statuses = [500]
    assert agent_client.post("/v1/traces", json={"records": blocked_trace("t1")}).is_success
    start = dt.datetime.now(dt.UTC)

    [first] = deliver_due(sessions, client=client, now=start)
    assert (first.status, first.response_status) == ("pending", 500)
    assert first.retry_at == start + dt.timedelta(seconds=10)
    [logged] = admin.get(f"/v1/webhooks/{hook_id}/deliveries").json()
    assert (logged["status"], logged["attempts"], logged["response_status"]) == (
        "pending",
        1,
        500,
    )
    assert "500" in logged["error"]

    assert deliver_due(sessions, client=client, now=start + dt.timedelta(seconds=5)) == []
    [second] = deliver_due(sessions, client=client, now=start + dt.timedelta(seconds=11))
    assert (second.status, second.response_status) == ("delivered", 200)
    assert len(receiver.received) == 2
    # Both attempts carried the same signed body.
    assert receiver.received[0][1] == receiver.received[1][1]
    [logged] = admin.get(f"/v1/webhooks/{hook_id}/deliveries").json()
    assert (logged["status"], logged["attempts"], logged["error"]) == ("delivered", 2, None)


def test_a_delivery_is_given_up_after_its_last_attempt_and_the_log_says_so(
    admin: httpx.Client,
    agent_client: httpx.Client,
    receiver: Receiver,
    sessions: sessionmaker[Session],
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook_id = subscribe(admin, receiver.url)
    receiver.statuses = [503, 503, 503]
    assert agent_client.post("/v1/traces", json={"records": blocked_trace("t1")}).is_success
    start = dt.datetime.now(dt.UTC)
    [first] = deliver_due(sessions, client=client, now=start, max_attempts=2)
    assert first.status == "pending"
    with caplog.at_level(logging.WARNING, logger="pathguard"):
        [last] = deliver_due(
            sessions, client=client, now=start + dt.timedelta(seconds=10), max_attempts=2
        )
    assert (last.status, last.retry_at) == ("failed", None)
    assert "given up" in caplog.text
    assert deliver_due(sessions, client=client, now=start + dt.timedelta(days=1)) == []
    [logged] = admin.get(f"/v1/webhooks/{hook_id}/deliveries").json()
    assert (logged["status"], logged["attempts"], logged["response_status"]) == (
        "failed",
        2,
        503,
    )


def test_an_unreachable_receiver_is_logged_as_an_error(
    admin: httpx.Client,
    agent_client: httpx.Client,
    receiver: Receiver,
    sessions: sessionmaker[Session],
    client: httpx.Client,
) -> None:
    url = receiver.url
    receiver.close()  # nothing listens on its port any more
    hook_id = subscribe(admin, url)
    assert agent_client.post("/v1/traces", json={"records": blocked_trace("t1")}).is_success
    [outcome] = deliver_due(sessions, client=client)
    assert (outcome.status, outcome.response_status) == ("pending", None)
    [logged] = admin.get(f"/v1/webhooks/{hook_id}/deliveries").json()
    assert "ConnectError" in logged["error"]


def test_the_dispatcher_delivers_in_the_background(
    admin: httpx.Client,
    agent_client: httpx.Client,
    receiver: Receiver,
    sessions: sessionmaker[Session],
) -> None:
    subscribe(admin, receiver.url)
    assert agent_client.post("/v1/traces", json={"records": blocked_trace("t1")}).is_success
    dispatcher = WebhookDispatcher(sessions, interval=0.05)
    dispatcher.start()
    try:
        assert receiver.got_one.wait(10)
    finally:
        dispatcher.stop()
    assert len(receiver.received) == 1


def test_the_app_lifespan_runs_the_dispatcher_while_the_app_serves(
    engine: Engine,
    admin: httpx.Client,
    agent_client: httpx.Client,
    receiver: Receiver,
) -> None:
    subscribe(admin, receiver.url)
    assert agent_client.post("/v1/traces", json={"records": blocked_trace("t1")}).is_success
    app = create_app(engine=engine)

    async def serve_a_while() -> None:
        async with lifespan(app):
            assert app.state.webhook_dispatcher is not None
            assert await asyncio.to_thread(receiver.got_one.wait, 10)
        assert app.state.webhook_dispatcher is None

    asyncio.run(serve_a_while())
    assert len(receiver.received) == 1
