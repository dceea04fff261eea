"""`GET /healthz`, /openapi.json and error shapes, on the real server."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from sqlalchemy import Engine

from pathguard.platform.database import create_engine


def test_healthz_answers_ok_without_a_key(anonymous: httpx.Client) -> None:
    response = anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_is_503_when_the_database_does_not_answer(
    serve: Callable[[Engine], str],
) -> None:
    # Nothing listens on port 9 of the loopback interface: every connection is refused.
    engine = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:9/none", connect_args={"connect_timeout": 2}
    )
    try:
        response = httpx.get(f"{serve(engine)}/healthz", timeout=30)
    finally:
        engine.dispose()
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert "database" in response.json()["detail"]


def test_openapi_lists_the_versioned_endpoints(anonymous: httpx.Client) -> None:
    paths = anonymous.get("/openapi.json").json()["paths"]
    assert {
        "/v1/agents/register",
        "/v1/agents/{key}/assignments",
        "/v1/policy-sets/{set_id}",
        "/v1/traces",
        "/v1/tasks/{task_id}",
        "/v1/incidents/{incident_id}",
        "/v1/audit/verify",
    } <= set(paths)
    assert "requestBody" in paths["/v1/traces"]["post"]


def test_an_unknown_path_is_a_json_sentence(anonymous: httpx.Client) -> None:
    response = anonymous.get("/v1/nothing-here")
    assert response.status_code == 404
    assert "openapi.json" in response.json()["detail"]
