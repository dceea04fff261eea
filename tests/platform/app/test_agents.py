"""Registration, agents and assignments on the real server."""

from __future__ import annotations

from typing import Any

import httpx

from pathguard.platform.keys import KEY_PREFIX

NEEDS_OWNER: dict[str, Any] = {
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


def assign_needs_owner(admin: httpx.Client, agent: str = "support-bot") -> int:
    created = admin.post("/v1/policy-sets", json=NEEDS_OWNER)
    assert created.status_code == 201, created.text
    set_id: int = created.json()["id"]
    assigned = admin.post(f"/v1/agents/{agent}/assignments", json={"policy_set_ids": [set_id]})
    assert assigned.status_code == 200, assigned.text
    assert assigned.json() == {"agent_key": agent, "policy_set_ids": [set_id]}
    return set_id


def test_an_agent_registers_itself_and_the_admin_sees_it(
    agent_client: httpx.Client, admin: httpx.Client
) -> None:
    response = agent_client.post(
        "/v1/agents/register",
        json={
            "name": "Support bot",
            "purpose": "answer tickets",
            "owner": "ops@example.com",
            "tools": ["search", "reply"],
            "risk_classification": "limited",
            "environment": "prod",
            "metadata": {"team": "support"},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] is True
    assert body["decision"]["action"] == "allow"
    assert body["agent"]["key"] == "support-bot"
    again = agent_client.post("/v1/agents/register", json={"name": "Bot 2", "purpose": "x"})
    assert again.json()["created"] is False
    listed = admin.get("/v1/agents").json()
    assert [(a["key"], a["name"], a["owner"]) for a in listed] == [("support-bot", "Bot 2", None)]
    one = admin.get("/v1/agents/support-bot").json()
    assert one["decision"]["action"] == "allow"
    assert KEY_PREFIX not in admin.get("/v1/agents").text


def test_a_blocked_registration_is_answered_stored_and_opens_an_incident(
    agent_client: httpx.Client, admin: httpx.Client
) -> None:
    assign_needs_owner(admin)
    response = agent_client.post("/v1/agents/register", json={"name": "Bot", "purpose": "help"})
    assert response.status_code == 200
    decision = response.json()["decision"]
    assert decision["action"] == "block"
    assert [v["policy_id"] for v in decision["violations"]] == ["needs-owner"]
    assert admin.get("/v1/agents/support-bot").json()["decision"]["action"] == "block"
    [incident] = admin.get("/v1/incidents", params={"agent": "support-bot"}).json()
    assert (incident["policy_id"], incident["action"], incident["task_id"]) == (
        "needs-owner",
        "block",
        None,
    )
    fixed = agent_client.post(
        "/v1/agents/register", json={"name": "Bot", "purpose": "help", "owner": "me"}
    )
    assert fixed.json()["decision"]["action"] == "allow"


def test_a_registration_needing_approval_opens_an_approval_required_incident(
    agent_client: httpx.Client, admin: httpx.Client
) -> None:
    document = {
        **NEEDS_OWNER,
        "name": "high-risk-review",
        "policies": [
            {
                "id": "high-risk-needs-review",
                "scope": "agent_registration",
                "rule": "field_in_list",
                "params": {"field": "risk_classification", "values": ["minimal", "limited"]},
                "effect": "approve",
            }
        ],
    }
    set_id = admin.post("/v1/policy-sets", json=document).json()["id"]
    admin.post("/v1/agents/support-bot/assignments", json={"policy_set_ids": [set_id]})
    response = agent_client.post(
        "/v1/agents/register",
        json={"name": "Bot", "purpose": "help", "risk_classification": "high"},
    )
    assert response.json()["decision"]["action"] == "approve"
    [incident] = admin.get("/v1/incidents", params={"agent": "support-bot"}).json()
    assert (incident["policy_id"], incident["action"], incident["status"]) == (
        "high-risk-needs-review",
        "approval_required",
        "open",
    )


def test_an_admin_registers_an_agent_it_names(admin: httpx.Client) -> None:
    missing = admin.post("/v1/agents/register", json={"name": "Bot", "purpose": "help"})
    assert missing.status_code == 422
    assert "agent_key" in missing.json()["detail"]
    named = admin.post(
        "/v1/agents/register", json={"agent_key": "b", "name": "Bot", "purpose": "help"}
    )
    assert named.status_code == 200
    assert named.json()["agent"]["key"] == "b"


def test_a_bad_registration_body_is_422_with_a_sentence(agent_client: httpx.Client) -> None:
    response = agent_client.post(
        "/v1/agents/register",
        json={"name": "Bot", "purpose": "help", "risk_classification": "extreme"},
    )
    assert response.status_code == 422
    assert "risk_classification" in response.json()["detail"]
    assert response.json()["problems"][0]["location"] == "risk_classification"


def test_unknown_agents_and_policy_sets_are_404(admin: httpx.Client) -> None:
    assert admin.get("/v1/agents/nobody").status_code == 404
    response = admin.post("/v1/agents/nobody/assignments", json={"policy_set_ids": [99]})
    assert response.status_code == 404
    assert "no policy set 99" in response.json()["detail"]


def test_sql_looking_text_is_stored_as_text(
    agent_client: httpx.Client, admin: httpx.Client
) -> None:
    sql = "x'); DROP TABLE agents; --"
    response = agent_client.post(
        "/v1/agents/register",
        json={"name": sql, "purpose": sql, "tools": [sql], "metadata": {sql: sql}},
    )
    assert response.status_code == 200
    [agent] = admin.get("/v1/agents").json()
    assert (agent["name"], agent["tools"], agent["metadata"]) == (sql, [sql], {sql: sql})
    assert admin.get("/v1/agents/" + "x'%20OR%20'1'='1").status_code == 404
