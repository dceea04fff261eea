"""The agent's effective policy bundle: merged sets, ETag and 304, signatures the SDK accepts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from pathguard.canonical import canonical_json
from pathguard.errors import ConfigurationError
from pathguard.platform.app import create_app
from pathguard.remote.bundle import SIGNATURE_HEADER, BundleVerificationError, verify_bundle

AGENT = "support-bot"


def document(name: str, *ids: str) -> dict[str, Any]:
    return {
        "version": 1,
        "name": name,
        "policies": [
            {
                "id": policy_id,
                "scope": "agent_registration",
                "rule": "field_not_empty",
                "params": {"field": "owner"},
            }
            for policy_id in ids
        ],
    }


def create(admin: httpx.Client, doc: dict[str, Any]) -> int:
    response = admin.post("/v1/policy-sets", json=doc)
    assert response.status_code == 201
    set_id: int = response.json()["id"]
    return set_id


def assign(admin: httpx.Client, *set_ids: int, agent: str = AGENT) -> None:
    response = admin.post(
        f"/v1/agents/{agent}/assignments",
        json={"policy_set_ids": list(set_ids), "replace": True},
    )
    assert response.status_code == 200


def test_the_bundle_merges_the_assigned_sets_and_changes_its_etag_with_them(
    admin: httpx.Client, agent_client: httpx.Client
) -> None:
    base = create(admin, document("base", "needs-owner"))
    extra = create(admin, document("extra", "needs-owner-too"))
    assign(admin, base)
    first = agent_client.get(f"/v1/agents/{AGENT}/policies")
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert SIGNATURE_HEADER not in first.headers  # no key configured on the shared server
    assert [p.id for p in verify_bundle(first.content, first.headers).policies] == ["needs-owner"]
    assert first.content == canonical_json(first.json())

    assign(admin, base, extra)
    second = agent_client.get(f"/v1/agents/{AGENT}/policies")
    merged = verify_bundle(second.content, second.headers)
    assert [p.id for p in merged.policies] == ["needs-owner", "needs-owner-too"]
    assert second.headers["etag"] != first.headers["etag"]
    assert second.headers["etag"].startswith('"')  # strong

    admin.delete(f"/v1/policy-sets/{extra}")
    third = agent_client.get(f"/v1/agents/{AGENT}/policies")
    assert (third.headers["etag"], third.content) == (first.headers["etag"], first.content)


def test_a_matching_if_none_match_is_304_with_no_body(agent_client: httpx.Client) -> None:
    first = agent_client.get(f"/v1/agents/{AGENT}/policies")
    assert first.status_code == 200
    assert verify_bundle(first.content, first.headers).policies == ()
    etag = first.headers["etag"]
    again = agent_client.get(f"/v1/agents/{AGENT}/policies", headers={"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    listed = agent_client.get(
        f"/v1/agents/{AGENT}/policies", headers={"If-None-Match": f'"other", W/{etag}'}
    )
    assert listed.status_code == 304
    stale = agent_client.get(f"/v1/agents/{AGENT}/policies", headers={"If-None-Match": '"old"'})
    assert (stale.status_code, stale.content) == (200, first.content)


def test_only_the_agent_itself_or_an_admin_may_read_its_bundle(
    admin: httpx.Client, other_agent: httpx.Client, anonymous: httpx.Client
) -> None:
    assert admin.get(f"/v1/agents/{AGENT}/policies").status_code == 200
    refused = other_agent.get(f"/v1/agents/{AGENT}/policies")
    assert refused.status_code == 403
    assert "other-bot" in refused.json()["detail"]
    assert anonymous.get(f"/v1/agents/{AGENT}/policies").status_code == 401


def test_two_sets_with_one_policy_id_are_a_409_naming_both(
    admin: httpx.Client, agent_client: httpx.Client
) -> None:
    one = create(admin, document("one", "shared-id"))
    two = create(admin, document("two", "shared-id"))
    assign(admin, one, two)
    response = agent_client.get(f"/v1/agents/{AGENT}/policies")
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "'shared-id'" in detail
    assert f"policy set {one} ('one')" in detail
    assert f"policy set {two} ('two')" in detail


def _pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def test_signed_bundles_verify_in_the_sdk_with_hmac_and_ed25519(
    engine: Engine,
    serve: Callable[[Engine], str],
    make_key: Callable[[str | None], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    monkeypatch.setenv("PATHGUARD_POLICY_HMAC_SECRET", "s3cret")
    monkeypatch.setenv("PATHGUARD_POLICY_ED25519_PRIVATE_KEY", _pem(private))
    url = serve(engine)
    headers = {"Authorization": f"Bearer {make_key(None)}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        set_id = create(client, document("base", "needs-owner"))
        assign(client, set_id)
        response = client.get(f"/v1/agents/{AGENT}/policies")
    assert response.status_code == 200
    body, got = response.content, response.headers
    assert verify_bundle(body, got, hmac_secret="s3cret").name == "base"
    assert verify_bundle(body, got, ed25519_public_key=public).name == "base"
    assert verify_bundle(body, got, hmac_secret="s3cret", ed25519_public_key=public).name == "base"
    with pytest.raises(BundleVerificationError, match="HMAC"):
        verify_bundle(body, got, hmac_secret="another secret")
    with pytest.raises(BundleVerificationError, match="Ed25519"):
        verify_bundle(body.replace(b"owner", b"0wner"), got, ed25519_public_key=public)


def test_a_private_key_that_is_not_ed25519_pem_stops_the_app(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATHGUARD_POLICY_ED25519_PRIVATE_KEY", "not a key")
    with pytest.raises(ConfigurationError, match="PATHGUARD_POLICY_ED25519_PRIVATE_KEY"):
        create_app(engine=engine)
