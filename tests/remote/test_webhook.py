"""The incident webhook: signed POSTs from a background thread, retried, never in the way."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pathguard import (
    ApprovalDeniedError,
    BlockedError,
    ConfigurationError,
    Guard,
    PolicyWarning,
    StepType,
    Verb,
)
from pathguard.decisions import Action, Decision, Effect, Mode, Severity, Violation
from pathguard.platform import webhooks as platform_webhooks
from pathguard.remote import webhook as sdk_webhook
from pathguard.remote.webhook import IncidentWebhook
from pathguard.trace import MemorySink
from pathguard.vocabulary import Behavior, Status

SECRET = "hook-secret"

POLICIES = {
    "version": 1,
    "name": "incidents",
    "policies": [
        {
            "id": "note-models",
            "when": {"step_type": "step.model"},
            "rule": "max_steps",
            "params": {"max": 1},
            "effect": "warn",
            "severity": "low",
        },
        {
            "id": "no-exec",
            "when": {"step_type": "step.exec"},
            "rule": "max_steps",
            "params": {"max": 0},
            "severity": "high",
        },
        {
            "id": "ask-first",
            "when": {"step_type": "step.message"},
            "rule": "requires_gate",
            "params": {},
            "effect": "approve",
        },
    ],
}


class Receiver:
    """A real HTTP server on loopback that keeps every POST; `hold` makes requests wait."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []  # statuses to give first; then 200
        self.arrived = threading.Condition()
        self.release = threading.Event()
        self.release.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.arrived:
                    receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.arrived.notify_all()
                receiver.release.wait()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/pathguard"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def wait_for(self, count: int) -> list[dict[str, Any]]:
        """The first `count` bodies, once they arrived (parsed and signature-checked)."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.posts) >= count, 30)
            posts = list(self.posts[:count])
        documents = []
        for headers, body in posts:
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["x-pathguard-signature"] == expected
            document = json.loads(body)
            assert headers["x-pathguard-event"] == document["event"] == "incident.detected"
            assert headers["x-pathguard-delivery"] == document["delivery_id"]
            documents.append(document)
        return documents

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.stop()


def test_warn_block_and_denied_approval_are_posted_signed_with_what_happened(
    receiver: Receiver,
) -> None:
    sink = MemorySink()
    guard = Guard(
        "support-bot",
        policies=POLICIES,
        sinks=[sink],
        incident_webhook=receiver.url,
        incident_webhook_secret=SECRET,
    )

    @guard.step(StepType.step_model)
    def chat(text: str) -> str:
        return text

    @guard.step(StepType.step_exec)
    def run() -> None: ...

    @guard.step(StepType.step_message, Verb.POST)
    def send() -> None: ...

    with guard.task() as task_id:
        chat("hello")  # allowed: no incident
        with pytest.warns(PolicyWarning):
            chat("again")
        with pytest.raises(BlockedError):
            run()
        with pytest.raises(ApprovalDeniedError):
            send()  # no approval handler: the approval is denied
    assert guard.flush()
    events = [d["data"] for d in receiver.wait_for(3)]
    guard.close()
    assert len(receiver.posts) == 3
    assert [(e["step_name"], e["action"], e["status"]) for e in events] == [
        ("chat", "warn", "completed"),
        ("run", "block", "blocked"),
        ("send", "approval_denied", "blocked"),
    ]
    # Each event names the record it is about by its seq in the trace.
    by_seq = {r.seq: r for r in sink.records}
    for event in events:
        record = by_seq[event["seq"]]
        assert (record.step_name, record.status) == (event["step_name"], event["status"])
        assert record.decision is not None
        assert [v["policy_id"] for v in record.decision["violations"]] == [
            v["policy_id"] for v in event["violations"]
        ]
    warn, block, denied = events
    assert warn["agent_key"] == "support-bot"
    assert warn["task_id"] == task_id
    assert warn["step_type"] == "step.model"
    assert warn["violations"] == [
        {
            "policy_id": "note-models",
            "rule": "max_steps",
            "severity": "low",
            "effect": "warn",
            "reason": "2 steps in this task would exceed the allowed 1",
        }
    ]
    assert [v["policy_id"] for v in block["violations"]] == ["no-exec"]
    assert block["violations"][0]["severity"] == "high"
    assert [v["policy_id"] for v in denied["violations"]] == ["ask-first"]
    assert isinstance(warn["timestamp"], float)
    assert guard.status()["incidents"]["delivered"] == 3


def test_the_environment_configures_the_webhook_and_a_registration_block_is_reported(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATHGUARD_INCIDENT_WEBHOOK", receiver.url)
    monkeypatch.setenv("PATHGUARD_INCIDENT_WEBHOOK_SECRET", SECRET)
    needs_owner = {
        "version": 1,
        "name": "registration",
        "policies": [
            {
                "id": "needs-owner",
                "scope": "agent_registration",
                "rule": "field_not_empty",
                "params": {"field": "owner"},
            }
        ],
    }
    with Guard("support-bot", policies=needs_owner) as guard:
        with pytest.raises(BlockedError):
            guard.register_agent(name="Bot", purpose="support")
        [document] = receiver.wait_for(1)
    data = document["data"]
    assert (data["step_type"], data["action"], data["task_id"], data["seq"]) == (
        "agent.registration",
        "block",
        None,
        None,
    )
    assert [v["policy_id"] for v in data["violations"]] == ["needs-owner"]


def test_a_step_never_waits_for_a_webhook_that_does_not_answer(receiver: Receiver) -> None:
    receiver.release.clear()  # the receiver takes requests but answers none until released
    guard = Guard(
        "support-bot",
        policies=POLICIES,
        incident_webhook=receiver.url,
        incident_webhook_secret=SECRET,
    )

    @guard.step(StepType.step_exec)
    def run() -> None: ...

    with guard.task():
        with pytest.raises(BlockedError):
            run()
        receiver.wait_for(1)  # the first event is being posted, and hangs
        for _ in range(3):
            with pytest.raises(BlockedError):
                run()  # each returns although the webhook's thread is stuck
    # Had a step waited for its POST, it could not have returned before the release, and
    # its delivery would have failed on the client's timeout instead of succeeding below.
    assert guard.status()["incidents"]["queued"] == 3
    receiver.release.set()
    assert guard.flush(timeout=30)
    receiver.wait_for(4)
    status = guard.status()["incidents"]
    assert (status["delivered"], status["failed"], status["dropped"]) == (4, 0, 0)
    guard.close()


def test_a_failed_delivery_is_retried_and_a_dead_url_is_logged_not_raised(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = Behavior(
        step_type=StepType.step_exec,
        step_name="run",
        agent_key="bot",
        task_id="t1",
        status=Status.blocked,
        timestamp=1.0,
    )
    decision = Decision.from_violations(
        [
            Violation(
                policy_id="no-exec",
                rule="max_steps",
                severity=Severity.high,
                effect=Effect.block,
                mode=Mode.enforce,
                reason="no",
            )
        ],
        ("no-exec",),
    )
    receiver.answers = [503, 500]
    hook = IncidentWebhook(receiver.url, agent_key="bot", secret=SECRET, backoff=(0.01, 0.01))
    hook.report(blocked, decision, 7)
    assert hook.flush(30)
    posts = receiver.wait_for(3)
    assert len({p["delivery_id"] for p in posts}) == 1  # one event, three attempts
    assert posts[0]["data"]["seq"] == 7
    assert hook.status()["delivered"] == 1
    hook.close()

    dead = IncidentWebhook(
        "http://127.0.0.1:9/hooks/secret-token", agent_key="bot", backoff=(0.01,)
    )
    with caplog.at_level(logging.WARNING, logger="pathguard"):
        dead.report(blocked, decision)
        assert dead.flush(30)
    assert dead.status()["failed"] == 1
    assert "incident webhook http://127.0.0.1: an incident of task t1 (block) was not" in (
        caplog.text
    )
    assert "secret-token" not in caplog.text  # the URL's path may hold a token
    dead.close()


def test_a_full_queue_drops_new_incidents_with_a_warning(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.release.clear()
    hook = IncidentWebhook(receiver.url, agent_key="bot", secret=SECRET, max_queue=1)
    warned = Decision.from_violations(
        [
            Violation(
                policy_id="p",
                rule="max_steps",
                severity=Severity.low,
                effect=Effect.warn,
                mode=Mode.enforce,
                reason="r",
            )
        ],
        ("p",),
    )
    hook.report(None, warned)
    receiver.wait_for(1)  # in flight, held by the receiver
    with caplog.at_level(logging.WARNING, logger="pathguard"):
        hook.report(None, warned)  # queued
        hook.report(None, warned)  # no room: dropped
        hook.report(None, warned)
    assert hook.status()["dropped"] == 2
    assert caplog.text.count("dropping new incidents") == 1
    receiver.release.set()
    assert hook.flush(30)
    assert hook.status()["delivered"] == 2
    hook.close()


def test_decisions_that_are_no_incident_are_not_posted(receiver: Receiver) -> None:
    hook = IncidentWebhook(receiver.url, agent_key="bot")
    granted = Decision(action=Action.approve)  # an approval that was given
    completed = Behavior(
        step_type=StepType.step_message,
        verb=Verb.POST,
        agent_key="bot",
        task_id="t",
        status=Status.completed,
    )
    hook.report(completed, granted)
    hook.report(completed, Decision(action=Action.allow))
    assert hook.flush(30)
    hook.close()
    assert receiver.posts == []


def test_the_sdk_signs_as_the_platform_does() -> None:
    body = b'{"event":"incident.detected"}'
    assert sdk_webhook.SIGNATURE_HEADER == platform_webhooks.SIGNATURE_HEADER
    assert sdk_webhook.EVENT_HEADER == platform_webhooks.EVENT_HEADER
    assert sdk_webhook.DELIVERY_HEADER == platform_webhooks.DELIVERY_HEADER
    assert sdk_webhook.sign(SECRET, body) == platform_webhooks.sign(SECRET, body)


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "hooks.example.com", "http://"])
def test_a_webhook_that_is_not_an_http_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="http:// or https:// URL"):
        Guard("bot", incident_webhook=url)
