"""Prometheus metrics at /metrics: requests, trace batches, decisions and incidents."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pathguard.decisions import Decision, Effect, Mode, Severity, Violation
from pathguard.trace import HashChain
from pathguard.vocabulary import Behavior, Status, StepType

AGENT = "support-bot"


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics by (name, labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def decision(action: str) -> Decision:
    if action == "allow":
        return Decision.from_violations([], ("no-exec",))
    v = Violation(
        policy_id="no-exec",
        rule="requires_prior",
        severity=Severity.high,
        effect=Effect(action),
        mode=Mode.enforce,
        reason="exec needs a review first",
    )
    return Decision.from_violations([v], ("no-exec",))


def trace(task_id: str, actions: list[str | None]) -> list[dict[str, Any]]:
    """task.start, then one exec step per entry of `actions` (None: a step without decision)."""
    chain = HashChain()
    out = [
        chain.append(
            Behavior(
                step_type=StepType.task_start,
                step_name="start",
                agent_key=AGENT,
                task_id=task_id,
                status=Status.completed,
                timestamp=1_700_000_000.5,
            ),
            None,
        ).to_dict()
    ]
    for i, action in enumerate(actions, start=1):
        behavior = Behavior(
            step_type=StepType.step_exec,
            step_name=f"step-{i}",
            agent_key=AGENT,
            task_id=task_id,
            status=Status.blocked if action == "block" else Status.completed,
            timestamp=1_700_000_000.5 + i,
        )
        out.append(chain.append(behavior, None if action is None else decision(action)).to_dict())
    return out


def test_a_batch_moves_the_ingest_counters_by_what_it_stored(
    agent_client: httpx.Client, anonymous: httpx.Client
) -> None:
    records = trace("metrics-1", ["allow", "block", "allow", None])
    before = scrape(anonymous)
    assert agent_client.post("/v1/traces", json={"records": records}).status_code == 200
    after = scrape(anonymous)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("pathguard_trace_records_ingested_total") == 5
    assert moved("pathguard_trace_batches_total", outcome="stored") == 1
    assert moved("pathguard_decisions_total", action="allow") == 2
    assert moved("pathguard_decisions_total", action="block") == 1
    assert moved("pathguard_decisions_total", action="warn") == 0
    assert moved("pathguard_incidents_created_total") == 1
    route = {"method": "POST", "route": "/v1/traces"}
    assert moved("pathguard_http_requests_total", status="200", **route) == 1
    assert moved("pathguard_http_request_duration_seconds_count", **route) == 1


def test_resent_records_and_refused_batches_count_nothing_twice(
    agent_client: httpx.Client, anonymous: httpx.Client
) -> None:
    first = trace("metrics-2", ["warn"])
    assert agent_client.post("/v1/traces", json={"records": first}).status_code == 200
    before = scrape(anonymous)
    # The same records again plus one more step: only the new one is stored.
    more = trace("metrics-2", ["warn", "block"])
    assert agent_client.post("/v1/traces", json={"records": more}).status_code == 200
    assert agent_client.post("/v1/traces", json={"records": [{"seq": 1}]}).status_code == 400
    after = scrape(anonymous)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("pathguard_trace_records_ingested_total") == 1
    assert moved("pathguard_decisions_total", action="warn") == 0
    assert moved("pathguard_decisions_total", action="block") == 1
    assert moved("pathguard_trace_batches_total", outcome="stored") == 1
    assert moved("pathguard_trace_batches_total", outcome="refused") == 1
    # The block is a second policy hit in the task's open incident, not a new incident.
    assert moved("pathguard_incidents_created_total") == 0
    route = {"method": "POST", "route": "/v1/traces"}
    assert moved("pathguard_http_requests_total", status="400", **route) == 1


def test_requests_are_counted_by_route_template_not_by_path(
    admin: httpx.Client, anonymous: httpx.Client
) -> None:
    before = scrape(anonymous)
    assert admin.get("/v1/tasks/no-such-task-a").status_code == 404
    assert admin.get("/v1/tasks/no-such-task-b").status_code == 404
    assert anonymous.get("/no/such/endpoint").status_code == 404
    after = scrape(anonymous)
    templates = {dict(labels).get("route") for (_, labels) in after}
    assert not any(t and "no-such-task" in t for t in templates)
    task = {"method": "GET", "status": "404"}
    moved = value(after, "pathguard_http_requests_total", route="/v1/tasks/{task_id}", **task)
    assert (
        moved - value(before, "pathguard_http_requests_total", route="/v1/tasks/{task_id}", **task)
        == 2
    )
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert (
        value(after, "pathguard_http_requests_total", **unmatched)
        - value(before, "pathguard_http_requests_total", **unmatched)
        == 1
    )


def test_each_app_counts_its_own_requests_and_needs_no_key(engine: Any, serve: Any) -> None:
    with httpx.Client(base_url=serve(engine), timeout=30) as fresh:
        samples = scrape(fresh)
    assert value(samples, "pathguard_trace_records_ingested_total") == 0
    assert value(samples, "pathguard_trace_batches_total", outcome="stored") == 0
