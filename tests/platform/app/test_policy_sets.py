"""Versioned policy documents over HTTP: create, read, new versions, soft delete, problems."""

from __future__ import annotations

from typing import Any

import httpx

DOC: dict[str, Any] = {
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


def test_every_change_is_a_new_version_and_deletes_are_soft(admin: httpx.Client) -> None:
    created = admin.post("/v1/policy-sets", json=DOC)
    assert created.status_code == 201
    set_id = created.json()["id"]
    assert created.json()["version"] == 1
    assert created.json()["created_by"]
    updated = admin.put(f"/v1/policy-sets/{set_id}", json={**DOC, "name": "base-2"})
    assert (updated.status_code, updated.json()["version"]) == (200, 2)
    assert admin.get(f"/v1/policy-sets/{set_id}").json()["name"] == "base-2"
    first = admin.get(f"/v1/policy-sets/{set_id}", params={"version": 1}).json()
    assert (first["document"]["name"], first["version"]) == ("base", 1)
    assert [s["id"] for s in admin.get("/v1/policy-sets").json()] == [set_id]
    assert admin.delete(f"/v1/policy-sets/{set_id}").status_code == 204
    assert admin.get(f"/v1/policy-sets/{set_id}").status_code == 404
    assert admin.get("/v1/policy-sets").json() == []
    [kept] = admin.get("/v1/policy-sets", params={"include_deleted": True}).json()
    assert kept["deleted_at"] is not None
    assert admin.delete(f"/v1/policy-sets/{set_id}").status_code == 404


def test_a_document_that_does_not_load_lists_its_problems(admin: httpx.Client) -> None:
    bad = {"version": 1, "name": "bad", "policies": [{"id": "x", "rule": "no_such_rule"}]}
    response = admin.post("/v1/policy-sets", json=bad)
    assert response.status_code == 422
    body = response.json()
    assert "problem" in body["detail"]
    [problem] = body["problems"]
    assert problem["policy_id"] == "x"
    assert problem["field"] == "rule"
    assert problem["line"] is not None
    assert admin.get("/v1/policy-sets").json() == []


def test_a_yaml_document_is_accepted_and_its_problems_have_lines(admin: httpx.Client) -> None:
    yaml_doc = "version: 1\nname: y\npolicies:\n  - id: a\n    rule: nope\n"
    response = admin.post(
        "/v1/policy-sets", content=yaml_doc, headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 422
    assert response.json()["problems"][0]["line"] == 5
    good = admin.post(
        "/v1/policy-sets",
        content="version: 1\nname: y\n",
        headers={"Content-Type": "application/yaml"},
    )
    assert (good.status_code, good.json()["name"]) == (201, "y")


def test_a_body_that_is_not_json_is_422(admin: httpx.Client) -> None:
    response = admin.post(
        "/v1/policy-sets", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert "JSON" in response.json()["problems"][0]["message"]


def test_an_oversized_document_is_413(admin: httpx.Client) -> None:
    response = admin.post(
        "/v1/policy-sets",
        content=b" " * (1024 * 1024 + 1),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert "split" in response.json()["detail"]


def test_unknown_or_out_of_range_ids_are_answered_cleanly(admin: httpx.Client) -> None:
    assert admin.get("/v1/policy-sets/12345").status_code == 404
    assert admin.get("/v1/policy-sets/99999999999999999999").status_code == 422
    assert admin.put("/v1/policy-sets/7", json=DOC).status_code == 404
