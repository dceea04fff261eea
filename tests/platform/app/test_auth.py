"""Who may call what: no key, wrong keys, agent keys outside their agent, on the real server."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from pathguard.platform.keys import KEY_PREFIX

ADMIN_ONLY = [
    ("GET", "/v1/agents"),
    ("GET", "/v1/agents/support-bot"),
    ("POST", "/v1/agents/support-bot/assignments"),
    ("GET", "/v1/policy-sets"),
    ("POST", "/v1/policy-sets"),
    ("GET", "/v1/policy-sets/1"),
    ("PUT", "/v1/policy-sets/1"),
    ("DELETE", "/v1/policy-sets/1"),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/t1"),
    ("GET", "/v1/incidents"),
    ("PATCH", "/v1/incidents/1"),
    ("GET", "/v1/audit/verify"),
]
EVERY = [*ADMIN_ONLY, ("POST", "/v1/agents/register"), ("POST", "/v1/traces")]
BODIES = {
    "/v1/agents/support-bot/assignments": {"policy_set_ids": []},
    "/v1/policy-sets": {"version": 1, "name": "x"},
    "/v1/policy-sets/1": {"version": 1, "name": "x"},
    "/v1/incidents/1": {"status": "resolved"},
    "/v1/agents/register": {"name": "Bot", "purpose": "help"},
    "/v1/traces": {"records": []},
}


def call(client: httpx.Client, method: str, path: str) -> httpx.Response:
    body = BODIES.get(path)
    return client.request(method, path, json=body if method != "GET" else None)


@pytest.mark.parametrize(("method", "path"), EVERY)
def test_no_key_is_401_saying_only_that_a_valid_key_is_needed(
    anonymous: httpx.Client, method: str, path: str
) -> None:
    response = call(anonymous, method, path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"detail": response.json()["detail"]}
    assert "valid API key" in response.json()["detail"]


@pytest.mark.parametrize(
    "presented",
    [
        "not-a-key",
        f"{KEY_PREFIX}000000000000_secret",  # well-formed, unknown id
        "Basic dXNlcjpwYXNz",
        "' OR 1=1 --",
    ],
)
def test_a_wrong_key_gets_the_same_401_as_no_key(
    api_url: str, anonymous: httpx.Client, presented: str
) -> None:
    expected = anonymous.get("/v1/agents").json()
    response = httpx.get(
        f"{api_url}/v1/agents", headers={"Authorization": f"Bearer {presented}"}, timeout=30
    )
    assert response.status_code == 401
    assert response.json() == expected


def test_a_real_key_with_a_changed_secret_is_refused(
    api_url: str, make_key: Callable[[str | None], str]
) -> None:
    key = make_key(None)
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    response = httpx.get(
        f"{api_url}/v1/agents", headers={"Authorization": f"Bearer {forged}"}, timeout=30
    )
    assert response.status_code == 401
    assert key not in response.text and forged not in response.text


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY)
def test_an_agent_key_on_an_admin_endpoint_is_403(
    agent_client: httpx.Client, method: str, path: str
) -> None:
    response = call(agent_client, method, path)
    assert response.status_code == 403
    assert "admin key" in response.json()["detail"]


def test_an_agent_key_cannot_register_another_agent(agent_client: httpx.Client) -> None:
    response = agent_client.post(
        "/v1/agents/register", json={"agent_key": "other-bot", "name": "X", "purpose": "p"}
    )
    assert response.status_code == 403
    assert "other-bot" in response.json()["detail"]
