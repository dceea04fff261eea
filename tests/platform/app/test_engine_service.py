"""The engine as a service: evaluate, record and end tasks over HTTP, on the real server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from pathguard.decisions import Action
from pathguard.engine import PolicyEngine
from pathguard.platform.engine_service import EngineCache, Reach, ReplayedTask, agent_window
from pathguard.policies import load_policies
from pathguard.trace import HashChain
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


# -- per-agent policies count every task of the agent ---------------------------------------

AGENT_POLICIES: dict[str, Any] = {
    "version": 1,
    "name": "agent-limits",
    "policies": [
        {
            "id": "two-model-calls-a-minute",
            "when": {"step_type": "step.model"},
            "rule": "rate_limit",
            "params": {"max": 2, "window_seconds": 60, "per": "agent", "filter": "step.model"},
            "effect": "block",
        },
        {
            "id": "one-deploy-a-day",
            "when": {"step_type": "step.exec"},
            "rule": "all_of",
            "params": {
                "rules": [
                    {
                        "rule": "rate_limit",
                        "params": {
                            "max": 1,
                            "window_seconds": 86_400,
                            "per": "agent",
                            "filter": {"step_type": "step.exec", "step_name": "deploy"},
                        },
                    }
                ]
            },
            "effect": "warn",
        },
        {
            "id": "one-model-call-per-task",
            "rule": "max_steps",
            "params": {"max": 1, "filter": "step.model"},
            "effect": "warn",
        },
    ],
}


class Twin:
    """Sends each step to the service and to one in-process engine that sees every task of
    the agent, and checks that both decide the same."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.local = PolicyEngine(AGENT_POLICIES)

    def _behavior(self, body: dict[str, Any]) -> Behavior:
        fields = {k: v for k, v in body.items() if k not in ("task_id", "step_type")}
        return Behavior(
            step_type=StepType.parse(body["step_type"]),
            agent_key=AGENT,
            task_id=body["task_id"],
            **fields,
        )

    def evaluate(self, body: dict[str, Any], client: httpx.Client | None = None) -> str:
        remote = post(client or self.client, "/v1/evaluate", body)
        decision = self.local.evaluate(self._behavior(body))
        assert remote == decision.to_dict() | {"explain": decision.explain()}
        return decision.action.value

    def record(self, body: dict[str, Any]) -> str:
        """Evaluate, then record the step as an SDK would: blocked when refused."""
        action = self.evaluate(body)
        status = "blocked" if action == "block" else "completed"
        stored = post(self.client, "/v1/record", body | {"status": status})
        assert stored["record"]["decision"]["action"] == action
        self.local.record(self._behavior(body).replace(status=Status(status)))
        return action

    def ship(self, task_id: str, steps: list[dict[str, Any]]) -> None:
        """Record allowed steps in-process as the SDK does and send them as a trace batch."""
        chain = HashChain()
        records = []
        for body in steps:
            behavior = self._behavior(body | {"task_id": task_id})
            decision = self.local.evaluate(behavior)
            assert decision.action is Action.allow
            done = behavior.replace(status=Status.completed)
            records.append(chain.append(done, decision).to_dict())
            self.local.record(done)
        response = self.client.post("/v1/traces", json={"records": records})
        assert response.status_code == 200, response.text


def model_call(task_id: str, at: float) -> dict[str, Any]:
    return step(task_id, "step.model", at, step_name="chat")


def deploy(task_id: str, at: float) -> dict[str, Any]:
    return step(task_id, "step.exec", at, step_name="deploy")


def test_per_agent_limits_count_the_agents_other_tasks_like_one_local_engine(
    engine: Engine,
    serve: Callable[[Engine], str],
    agent_client: httpx.Client,
    admin: httpx.Client,
) -> None:
    assign(admin, AGENT_POLICIES)
    twin = Twin(agent_client)
    twin.record(step("a1", "task.start", 0))
    assert twin.record(model_call("a1", 1)) == "allow"
    assert twin.record(model_call("a1", 2)) == "warn"  # the task's second
    assert twin.record(deploy("a1", 3)) == "allow"
    post(agent_client, "/v1/tasks/a1/end", {"timestamp": T0 + 4})

    # A second task of the same agent, which has made no call yet: the agent made two in
    # the last minute (in a1), so this one is refused; a1's deploy makes this one warn.
    twin.record(step("a2", "task.start", 10))
    assert twin.record(model_call("a2", 11)) == "block"
    assert twin.record(deploy("a2", 13)) == "warn"
    assert twin.record(model_call("a2", 62)) == "allow"  # a1's calls are a minute old

    # The SDK of another process ships a task of the same agent as a trace batch; its call
    # counts: with a2's at 62 it fills the minute before 66.
    twin.ship("sdk", [step("", "task.start", 63), model_call("", 64)])
    twin.record(step("a3", "task.start", 65))
    assert twin.evaluate(model_call("a3", 66)) == "block"
    assert twin.record(model_call("a3", 123)) == "allow"

    # A server process of its own starts with an empty cache and decides the same, for a
    # task it has never seen and for one with stored steps.
    with httpx.Client(
        base_url=serve(engine), headers=dict(agent_client.headers), timeout=30
    ) as fresh:
        assert twin.evaluate(model_call("a4", 124), fresh) == "allow"
        assert twin.evaluate(model_call("a3", 124), fresh) == "warn"
        assert twin.evaluate(deploy("a3", 125), fresh) == "warn"
        # Its cached engine of a3 catches up with a step the first worker stores in
        # another task...
        twin.record(step("a5", "task.start", 125))
        assert twin.record(model_call("a5", 125.5)) == "allow"
        assert twin.evaluate(model_call("a3", 126), fresh) == "block"
        # ... counts that step once (a3's own call at 123 has left the minute at 184) ...
        assert twin.evaluate(model_call("a3", 184), fresh) == "warn"
        # ... and serves steps stamped days later, then earlier again.
        assert twin.evaluate(model_call("a3", 200_000), fresh) == "warn"
        assert twin.evaluate(model_call("a3", 184), fresh) == "warn"
    assert twin.evaluate(model_call("a3", 126)) == "block"


def test_of_other_tasks_the_service_reads_only_what_per_agent_policies_can_count() -> None:
    window = agent_window(load_policies(AGENT_POLICIES))
    assert window is not None
    # Model calls of the last minute and deploys of the last day, completed ones only; the
    # per-task policy needs nothing from other tasks.
    assert set(window.reaches) == {
        Reach(step_types=frozenset({"step.model"}), seconds=60, attempts=False),
        Reach(step_types=frozenset({"step.exec"}), seconds=86_400, attempts=False),
    }
    assert window.shortest == 60
    attempts = {
        "version": 1,
        "name": "attempts",
        "policies": [
            {
                "id": "few-tries",
                "rule": "rate_limit",
                "params": {"max": 5, "window_seconds": 10, "per": "agent", "count_attempts": True},
            }
        ],
    }
    counted = agent_window(load_policies(attempts))
    assert counted is not None
    [reach] = counted.reaches
    assert (reach.seconds, reach.attempts) == (10, True)
    assert reach.step_types is not None and "step.exec" in reach.step_types
    assert agent_window(load_policies(POLICIES)) is None
