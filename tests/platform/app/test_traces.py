"""Trace batches, tasks, incidents and the stored-chain audit, on the real server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from pathguard.decisions import Decision, Effect, Mode, Severity, Violation
from pathguard.platform.models import TraceRecordRow
from pathguard.trace import HashChain, record_hash
from pathguard.vocabulary import Behavior, Status, StepType

AGENT = "support-bot"
SQL = "x'); DROP TABLE trace_records; --"


def blocked() -> Decision:
    v = Violation(
        policy_id="no-exec",
        rule="requires_prior",
        severity=Severity.high,
        effect=Effect.block,
        mode=Mode.enforce,
        reason="exec needs a review first",
    )
    return Decision.from_violations([v], ("no-exec",))


def trace(
    task_id: str, n: int = 3, *, agent: str = AGENT, block_at: int | None = None
) -> list[dict[str, Any]]:
    """A task's records: task.start then `n` exec steps (one blocked at `block_at`)."""
    chain = HashChain()
    out = []
    for i in range(n + 1):
        step_type = StepType.task_start if i == 0 else StepType.step_exec
        status = Status.blocked if i == block_at else Status.completed
        behavior = Behavior(
            step_type=step_type,
            step_name=f"step-{i}",
            agent_key=agent,
            task_id=task_id,
            status=status,
            timestamp=1_700_000_000.5 + i,
            input={"i": i, "text": SQL},
        )
        decision = blocked() if i == block_at else None
        out.append(chain.append(behavior, decision).to_dict())
    return out


def edited(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = {k: v for k, v in record.items() if k != "hash"} | changes
    return body | {"hash": record_hash(body["prev_hash"], body)}


def test_a_batch_is_stored_once_and_answers_with_the_chain_tail(
    agent_client: httpx.Client, admin: httpx.Client
) -> None:
    records = trace("t1", 3)
    response = agent_client.post("/v1/traces", json={"records": records})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "stored": 4,
        "duplicates": 0,
        "tasks": [
            {
                "task_id": "t1",
                "next_seq": 4,
                "head_hash": records[-1]["hash"],
                "stored": 4,
                "duplicates": 0,
            }
        ],
    }
    again = agent_client.post("/v1/traces", json={"records": records})
    assert (again.json()["stored"], again.json()["duplicates"]) == (0, 4)
    task = admin.get("/v1/tasks/t1").json()
    assert [s["seq"] for s in task["steps"]] == [0, 1, 2, 3]
    assert task["steps"] == records
    assert task["step_count"] == 4
    listed = admin.get("/v1/tasks", params={"agent": AGENT}).json()
    assert [t["task_id"] for t in listed] == ["t1"]
    assert admin.get("/v1/tasks", params={"agent": "nobody"}).json() == []


def test_a_blocked_step_opens_an_incident_an_admin_can_resolve(
    agent_client: httpx.Client, admin: httpx.Client
) -> None:
    records = trace("t1", 3, block_at=2)
    assert agent_client.post("/v1/traces", json={"records": records}).status_code == 200
    steps = admin.get("/v1/tasks/t1").json()["steps"]
    assert steps[2]["decision"]["action"] == "block"
    [incident] = admin.get("/v1/incidents", params={"status": "open"}).json()
    assert (incident["policy_id"], incident["action"], incident["seq"]) == ("no-exec", "block", 2)
    acked = admin.patch(f"/v1/incidents/{incident['id']}", json={"status": "acknowledged"})
    assert acked.status_code == 200
    assert acked.json()["acted_by"] and acked.json()["acted_at"]
    resolved = admin.patch(f"/v1/incidents/{incident['id']}", json={"status": "resolved"})
    assert resolved.json()["status"] == "resolved"
    refused = admin.patch(f"/v1/incidents/{incident['id']}", json={"status": "acknowledged"})
    assert refused.status_code == 409
    assert "cannot become acknowledged" in refused.json()["detail"]
    assert admin.patch("/v1/incidents/999", json={"status": "open"}).status_code == 404
    assert admin.patch("/v1/incidents/1", json={"status": "gone"}).status_code == 422


def test_records_of_another_agent_are_403_and_nothing_is_stored(
    agent_client: httpx.Client, other_agent: httpx.Client, admin: httpx.Client
) -> None:
    response = other_agent.post("/v1/traces", json={"records": trace("t1", 2)})
    assert response.status_code == 403
    assert response.json()["index"] == 0
    assert admin.get("/v1/tasks").json() == []


@pytest.mark.parametrize(
    ("change", "status", "kind", "index"),
    [
        (lambda r: [*r[:2], {**r[2], "step_name": "changed"}, *r[3:]], 400, "invalid", 2),
        (lambda r: r[:1] + r[2:], 409, "chain", 1),
        (lambda r: [*r[:2], edited(r[2], prev_hash=r[0]["hash"]), *r[3:]], 409, "chain", 2),
    ],
    ids=["edited-record", "missing-record", "forked-chain"],
)
def test_a_bad_batch_names_its_first_bad_record(
    agent_client: httpx.Client, admin: httpx.Client, change: Any, status: int, kind: str, index: int
) -> None:
    response = agent_client.post("/v1/traces", json={"records": change(trace("t1", 3))})
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["kind"], body["index"], body["task_id"]) == (kind, index, "t1")
    assert body["detail"].startswith("The batch was not stored.")
    assert admin.get("/v1/tasks").json() == []


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[]", b'{"records": 5}', b'{"records": [], "extra": 1}', b"\xff\xfe"],
)
def test_a_malformed_batch_is_400_with_a_sentence(
    agent_client: httpx.Client, content: bytes
) -> None:
    response = agent_client.post(
        "/v1/traces", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "records" in response.json()["detail"]


def test_a_record_that_is_not_a_trace_record_is_400(agent_client: httpx.Client) -> None:
    response = agent_client.post("/v1/traces", json={"records": [{"seq": SQL}]})
    assert response.status_code == 400
    assert response.json()["index"] == 0


def test_oversized_batches_are_413(agent_client: httpx.Client, admin: httpx.Client) -> None:
    too_many = agent_client.post("/v1/traces", json={"records": [{}] * 1001})
    assert too_many.status_code == 413
    assert "at most 1000 records" in too_many.json()["detail"]
    padding = "x" * (5 * 1024 * 1024)
    too_big = agent_client.post(
        "/v1/traces",
        content=json.dumps({"records": [], "padding": padding}),
        headers={"Content-Type": "application/json"},
    )
    assert too_big.status_code == 413
    assert "split it" in too_big.json()["detail"]
    assert admin.get("/v1/tasks").json() == []


def test_an_admin_key_writes_the_records_of_the_agent_they_name(admin: httpx.Client) -> None:
    response = admin.post("/v1/traces", json={"records": trace("t9", 1, agent="b")})
    assert response.status_code == 200
    mixed = trace("t1", 1, agent="a") + trace("t2", 1, agent="b")
    assert admin.post("/v1/traces", json={"records": mixed}).status_code == 400


def test_the_audit_names_the_first_edited_record(
    agent_client: httpx.Client, admin: httpx.Client, sessions: sessionmaker[Session]
) -> None:
    agent_client.post("/v1/traces", json={"records": trace("t1", 3)})
    agent_client.post("/v1/traces", json={"records": trace("t2", 2)})
    ok = admin.get("/v1/audit/verify").json()
    assert (ok["ok"], ok["tasks"], ok["records"]) == (True, 2, 7)
    with sessions.begin() as session:
        session.execute(
            update(TraceRecordRow)
            .where(TraceRecordRow.task_id == "t1", TraceRecordRow.seq == 2)
            .values(step_name="edited")
        )
    broken = admin.get("/v1/audit/verify", params={"agent": AGENT}).json()
    assert broken["ok"] is False
    assert (broken["first_error"]["task_id"], broken["first_error"]["seq"]) == ("t1", 2)
    only_t2 = admin.get("/v1/audit/verify", params={"task": "t2"}).json()
    assert only_t2["ok"] is True
    assert admin.get("/v1/tasks/t1").json()["chain_ok"] is False


def test_task_lookups_with_sql_looking_or_shared_ids(
    make_key: Any, api_url: str, admin: httpx.Client
) -> None:
    for agent in ("a", "b"):
        with httpx.Client(
            base_url=api_url, headers={"Authorization": f"Bearer {make_key(agent)}"}
        ) as client:
            response = client.post("/v1/traces", json={"records": trace(SQL, 1, agent=agent)})
            assert response.status_code == 200
    shared = admin.get(f"/v1/tasks/{SQL}")
    assert shared.status_code == 409
    assert "?agent=" in shared.json()["detail"]
    one = admin.get(f"/v1/tasks/{SQL}", params={"agent": "b"})
    assert (one.status_code, one.json()["agent_key"]) == (200, "b")
    assert admin.get("/v1/tasks/nothing").status_code == 404
    assert admin.get("/v1/tasks", params={"agent": SQL}).json() == []
