"""The engine as a service: evaluate, record and end tasks over HTTP, on the real server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from pathguard.engine import PolicyEngine
from pathguard.platform.app.routes.engine import EngineCache, ReplayedTask
from pathguard.vocabulary import Behavior, Status, StepType

AGENT = "support-bot"
T0 = 1_700_000_000.0

POLICIES: dict[str, Any] = {
    "version": 1,
    "name": "engine-service",
    "policies": [
        {
            "id": "exec-needs-approval",
            "when": {"step_type": "step.exec"},
            "rule": "requires_gate",
            "params": {"gate_type": "human_approval"},
            "effect": "block",
            "severity": "high",
        },
        {
            "id": "few-model-calls",
            "when": {"step_type": "step.model"},
            "rule": "max_steps",
            "params": {"max": 2},
            "effect": "warn",
        },
    ],
}


def assign(admin: httpx.Client, document: dict[str, Any] = POLICIES) -> None:
    created = admin.post("/v1/policy-sets", json=document)
    assert created.status_code == 201, created.text
    response = admin.post(
        f"/v1/agents/{AGENT}/assignments",
        json={"policy_set_ids": [created.json()["id"]], "replace": True},
    )
    assert response.status_code == 200, response.text


def step(task_id: str, step_type: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"task_id": task_id, "step_type": step_type, "timestamp": T0 + at, **fields}


GATE: dict[str, Any] = {
    "step_name": "approval:deploy",
    "properties": {"guard": {"gate_type": "human_approval", "decision": "approved"}},
}


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_an_exec_is_blocked_until_an_approved_gate_is_recorded(
    agent_client: httpx.Client, admin: httpx.Client
) -> None:
    assign(admin)
    post(agent_client, "/v1/record", step("t1", "task.start", 0))
    exec_step = step("t1", "step.exec", 1, step_name="deploy", input={"cmd": "make deploy"})

    refused = post(agent_client, "/v1/evaluate", exec_step)
    assert refused["action"] == "block"
    assert [v["policy_id"] for v in refused["violations"]] == ["exec-needs-approval"]
    assert "✗ exec-needs-approval" in refused["explain"]

    blocked = post(agent_client, "/v1/record", exec_step | {"status": "blocked"})
    assert blocked["record"]["status"] == "blocked"
    assert blocked["record"]["decision"]["action"] == "block"
    assert blocked["next_seq"] == 2
    assert blocked["task_status"] == "running"
    [incident] = admin.get("/v1/incidents", params={"agent": AGENT}).json()
    assert (incident["task_id"], incident["policy_id"]) == ("t1", "exec-needs-approval")

    gate = post(agent_client, "/v1/record", step("t1", "step.gate", 2, **GATE))
    assert gate["record"]["prev_hash"] == blocked["head_hash"]
    assert post(agent_client, "/v1/evaluate", exec_step | {"timestamp": T0 + 3})["action"] == (
        "allow"
    )
    ran = post(agent_client, "/v1/record", exec_step | {"timestamp": T0 + 3})
    assert ran["record"]["decision"]["action"] == "allow"

    ended = post(agent_client, "/v1/tasks/t1/end", {"output": {"ok": True}})
    assert ended["record"]["step_type"] == "task.end"
    assert ended["task_status"] == "completed"
    assert ended["next_seq"] == 5

    verified = admin.get("/v1/audit/verify", params={"agent": AGENT, "task": "t1"}).json()
    assert verified["ok"] is True, verified
    task = admin.get("/v1/tasks/t1").json()
    assert [s["status"] for s in task["steps"]] == [
        "completed",
        "blocked",
        "completed",
        "completed",
        "completed",
    ]
    late = agent_client.post("/v1/record", json=step("t1", "step.exec", 9))
    assert late.status_code == 409
    assert "has ended" in late.json()["detail"]


PATH: list[tuple[str, dict[str, Any], str]] = [
    ("task.start", {}, "completed"),
    ("step.model", {"step_name": "plan"}, "completed"),
    ("step.exec", {"step_name": "ls"}, "blocked"),
    ("step.model", {"step_name": "think"}, "completed"),
    ("step.model", {"step_name": "again"}, "completed"),
    ("step.gate", GATE, "completed"),
    ("step.exec", {"step_name": "ls"}, "completed"),
    ("step.resource", {"verb": "GET", "step_name": "read"}, "completed"),
]


def test_the_service_decides_like_a_local_engine_on_the_same_path(
    agent_client: httpx.Client, admin: httpx.Client
) -> None:
    assign(admin)
    local = PolicyEngine(POLICIES)
    actions = []
    for i, (step_type, fields, status) in enumerate(PATH):
        body = step("t2", step_type, i, **fields)
        remote = post(agent_client, "/v1/evaluate", body)
        behavior = Behavior(
            step_type=StepType.parse(step_type),
            agent_key=AGENT,
            task_id="t2",
            timestamp=T0 + i,
            **fields,
        )
        decision = local.evaluate(behavior)
        assert remote == decision.to_dict() | {"explain": decision.explain()}
        actions.append(remote["action"])
        post(agent_client, "/v1/record", body | {"status": status})
        local.record(behavior.replace(status=Status(status)))
    # The path exercises both policies: a block before the gate, a warning on the third call.
    assert actions == ["allow", "allow", "block", "allow", "warn", "allow", "allow", "allow"]


def test_workers_sharing_one_database_see_each_others_records(
    engine: Engine,
    serve: Callable[[Engine], str],
    api_url: str,
    agent_client: httpx.Client,
    admin: httpx.Client,
) -> None:
    assign(admin)
    exec_step = step("t3", "step.exec", 5, step_name="deploy")
    with httpx.Client(
        base_url=serve(engine), headers=dict(agent_client.headers), timeout=30
    ) as other:
        post(agent_client, "/v1/record", step("t3", "task.start", 0))
        assert post(other, "/v1/evaluate", exec_step)["action"] == "block"
        assert post(agent_client, "/v1/evaluate", exec_step)["action"] == "block"
        # The gate goes through the other worker; this one's cached engine must catch up.
        post(other, "/v1/record", step("t3", "step.gate", 1, **GATE))
        assert post(agent_client, "/v1/evaluate", exec_step)["action"] == "allow"
        ran = post(agent_client, "/v1/record", exec_step)
        assert ran["record"]["seq"] == 2
    verified = admin.get("/v1/audit/verify", params={"agent": AGENT, "task": "t3"}).json()
    assert verified["ok"] is True, verified


@pytest.mark.parametrize(
    ("fields", "sentence"),
    [
        ({"step_type": "step.exec", "verb": "GET"}, "step.exec does not take the verb GET"),
        ({"step_type": "step.resource"}, "step.resource needs a verb"),
        ({"step_type": "step.exce"}, "'step.exce' is not a step type."),
    ],
)
@pytest.mark.parametrize("path", ["/v1/evaluate", "/v1/record"])
def test_a_behaviour_outside_the_vocabulary_is_422_with_the_reason(
    agent_client: httpx.Client, path: str, fields: dict[str, Any], sentence: str
) -> None:
    response = agent_client.post(path, json={"task_id": "t4", **fields})
    assert response.status_code == 422
    assert response.json()["detail"].startswith(sentence)


def test_only_the_agent_itself_or_an_admin_naming_it_may_use_the_engine(
    anonymous: httpx.Client,
    other_agent: httpx.Client,
    admin: httpx.Client,
    agent_client: httpx.Client,
) -> None:
    body = step("t5", "task.start", 0, agent_key=AGENT)
    for path in ("/v1/evaluate", "/v1/record", "/v1/tasks/t5/end"):
        assert anonymous.post(path, json=body if "end" not in path else {}).status_code == 401
        mine = {"agent_key": AGENT} if "end" in path else body
        assert other_agent.post(path, json=mine).status_code == 403
    unnamed = admin.post("/v1/evaluate", json=step("t5", "task.start", 0))
    assert unnamed.status_code == 422
    assert "agent_key" in unnamed.json()["detail"]
    # The refused requests stored nothing: the admin's record is the task's first.
    first = post(admin, "/v1/record", body)["record"]
    assert (first["agent_key"], first["seq"]) == (AGENT, 0)
    assert post(admin, "/v1/tasks/t5/end", {"agent_key": AGENT})["task_status"] == "completed"
    missing = agent_client.post("/v1/tasks/never-started/end")
    assert missing.status_code == 404


def test_a_policy_on_task_end_keeps_the_task_open(
    agent_client: httpx.Client, admin: httpx.Client
) -> None:
    assign(
        admin,
        {
            "version": 1,
            "name": "no-early-end",
            "policies": [
                {
                    "id": "review-before-end",
                    "when": {"step_type": "task.end"},
                    "rule": "requires_gate",
                    "params": {"gate_type": "human_approval"},
                    "effect": "block",
                }
            ],
        },
    )
    post(agent_client, "/v1/record", step("t6", "task.start", 0))
    refused = post(agent_client, "/v1/tasks/t6/end", {"timestamp": T0 + 1})
    assert refused["record"]["status"] == "blocked"
    assert refused["task_status"] == "running"
    post(agent_client, "/v1/record", step("t6", "step.gate", 2, **GATE))
    assert post(agent_client, "/v1/tasks/t6/end", {})["task_status"] == "completed"


def test_the_engine_cache_keeps_the_latest_engines_and_never_goes_back_along_a_chain() -> None:
    cache = EngineCache(maxsize=2)
    keys = [(AGENT, f"t{i}", "digest", "") for i in range(3)]
    for key in keys:
        cache.take(key)  # a miss

    def at(seq: int) -> ReplayedTask:
        return ReplayedTask(engine=PolicyEngine(POLICIES), next_seq=seq, head=f"h{seq}")

    for key in keys:
        cache.put(key, at(1))
    assert len(cache) == 2
    assert cache.take(keys[0]) is None  # the least recently used went first
    cache.put(keys[1], at(3))
    cache.put(keys[1], at(2))  # a slower request finishing late does not win
    taken = cache.take(keys[1])
    assert taken is not None and taken.next_seq == 3
    assert cache.take(keys[1]) is None  # taken engines belong to one request until put back
