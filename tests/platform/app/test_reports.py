"""The compliance report on the real server: JSON counts, chain status, and the HTML page."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from pathguard.decisions import Decision, Effect, Mode, Severity, Violation
from pathguard.platform.models import TraceRecordRow
from pathguard.trace import HashChain
from pathguard.vocabulary import Behavior, Status, StepType

AGENT = "support-bot"
POLICIES: dict[str, Any] = {
    "version": 1,
    "name": "base",
    "policies": [
        {
            "id": "needs-owner",
            "scope": "agent_registration",
            "rule": "field_not_empty",
            "params": {"field": "owner"},
        }
    ],
}


def trace(task_id: str, n: int, *, block_at: int | None = None) -> list[dict[str, Any]]:
    """task.start then `n` exec steps; the one at `block_at` is blocked by `no-exec`."""
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
    for i in range(n + 1):
        behavior = Behavior(
            step_type=StepType.task_start if i == 0 else StepType.step_exec,
            step_name=f"step-{i}",
            agent_key=AGENT,
            task_id=task_id,
            status=Status.blocked if i == block_at else Status.completed,
            timestamp=1_700_000_000.5 + i,
        )
        decision = Decision.from_violations([violation], ("no-exec",)) if i == block_at else None
        out.append(chain.append(behavior, decision).to_dict())
    return out


def setup_agent(admin: httpx.Client, agent_client: httpx.Client) -> int:
    """Register the agent with a policy set, and send two tasks (one step blocked)."""
    created = admin.post("/v1/policy-sets", json=POLICIES)
    assert created.status_code == 201, created.text
    set_id: int = created.json()["id"]
    assigned = admin.post(f"/v1/agents/{AGENT}/assignments", json={"policy_set_ids": [set_id]})
    assert assigned.status_code == 200, assigned.text
    registered = agent_client.post(
        "/v1/agents/register",
        json={"name": "Support Bot", "purpose": "answers tickets", "owner": "team-a"},
    )
    assert registered.status_code in (200, 201), registered.text
    for task_id, n, block_at in [("t1", 3, 2), ("t2", 2, None)]:
        sent = agent_client.post(
            "/v1/traces", json={"records": trace(task_id, n, block_at=block_at)}
        )
        assert sent.status_code == 200, sent.text
    return set_id


def report(admin: httpx.Client, **params: str) -> dict[str, Any]:
    response = admin.get("/v1/reports/compliance", params={"agent": AGENT, **params})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def test_the_report_counts_what_was_ingested(
    admin: httpx.Client, agent_client: httpx.Client
) -> None:
    set_id = setup_agent(admin, agent_client)
    body = report(admin)
    assert body["agent"]["key"] == AGENT
    assert (body["agent"]["name"], body["agent"]["owner"]) == ("Support Bot", "team-a")
    assert body["policy_sets"] == [
        {"id": set_id, "name": "base", "version": 1, "digest": body["policy_sets"][0]["digest"]}
    ]
    assert (body["tasks"], body["steps"]) == (2, 7)
    assert body["decisions"]["block"] == 1
    assert sum(body["decisions"].values()) == 7
    assert body["incidents"] == {
        "total": 1,
        "by_status": {"open": 1},
        "by_severity": {"high": 1},
    }
    assert body["chain"]["ok"] is True
    assert body["chain"]["records"] == 7


def test_the_period_limits_the_counts(admin: httpx.Client, agent_client: httpx.Client) -> None:
    setup_agent(admin, agent_client)
    # The records are stamped 2023-11-14T22:13:20.5Z and the following seconds.
    later = report(admin, **{"from": "2023-11-14T22:13:22Z"})
    assert (later["tasks"], later["steps"]) == (2, 3)
    assert later["period"]["from"] == "2023-11-14T22:13:22+00:00"
    before = report(admin, to="2020-01-01T00:00:00Z")
    assert (before["tasks"], before["steps"], before["decisions"]) == (0, 0, {})


def test_an_edited_row_shows_a_broken_chain(
    admin: httpx.Client, agent_client: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    setup_agent(admin, agent_client)
    with sessions.begin() as session:
        session.execute(
            update(TraceRecordRow)
            .where(TraceRecordRow.task_id == "t2", TraceRecordRow.seq == 1)
            .values(step_name="tampered")
        )
    chain = report(admin)["chain"]
    assert chain["ok"] is False
    assert (chain["first_error"]["task_id"], chain["first_error"]["seq"]) == ("t2", 1)
    page = admin.get("/v1/reports/compliance", params={"agent": AGENT, "format": "html"})
    assert "Broken" in page.text
    assert "t2" in page.text


def test_the_html_page_names_the_agent_and_shows_the_counts(
    admin: httpx.Client, agent_client: httpx.Client
) -> None:
    setup_agent(admin, agent_client)
    page = admin.get("/v1/reports/compliance", params={"agent": AGENT, "format": "html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>Compliance report: Support Bot</h1>" in page.text
    assert '<td class="n" id="tasks">2</td>' in page.text
    assert '<td class="n" id="steps">7</td>' in page.text
    assert "Intact: 7 records in 2 tasks verify." in page.text
    # A printable page fetches nothing: no links, scripts or remote stylesheets.
    for fetch in ("<link", "<script", "src=", "http://", "https://", "@import"):
        assert fetch not in page.text
    negotiated = admin.get(
        "/v1/reports/compliance", params={"agent": AGENT}, headers={"Accept": "text/html"}
    )
    assert negotiated.text.startswith("<!DOCTYPE html>")


def test_the_report_is_admin_only_and_names_unknown_agents(
    admin: httpx.Client, agent_client: httpx.Client, anonymous: httpx.Client
) -> None:
    params = {"agent": AGENT}
    assert anonymous.get("/v1/reports/compliance", params=params).status_code == 401
    assert agent_client.get("/v1/reports/compliance", params=params).status_code == 403
    missing = admin.get("/v1/reports/compliance", params={"agent": "nobody"})
    assert missing.status_code == 404
    assert "nobody" in missing.json()["detail"]
    assert admin.get("/v1/reports/compliance").status_code == 422
    bad_format = admin.get("/v1/reports/compliance", params={"agent": AGENT, "format": "pdf"})
    assert bad_format.status_code == 422
