"""Policy bundles: signing, verification with HMAC-SHA256 and Ed25519, and refusals."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pathguard.errors import ConfigurationError, PathguardError
from pathguard.policies import PolicySet
from pathguard.remote import (
    BundleVerificationError,
    PolicyBundle,
    VerificationKeys,
    sign_ed25519,
    sign_hmac,
    signature_header,
    verify_bundle,
)

SECRET = "s3cret-shared-with-the-server"

DOCUMENT = {
    "version": 1,
    "name": "effective",
    "policies": [
        {
            "id": "exec-needs-approval",
            "when": {"step_type": "step.exec"},
            "rule": "requires_prior",
            "params": {"step_type": "step.gate"},
            "effect": "block",
        }
    ],
}
BODY = json.dumps(DOCUMENT).encode("utf-8")


@pytest.fixture
def private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def public_raw_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def test_hmac_signed_bundle_verifies_into_its_policy_set() -> None:
    headers = {"X-Pathguard-Signature": f"hmac-sha256={sign_hmac(BODY, SECRET)}"}
    policy_set = verify_bundle(BODY, headers, hmac_secret=SECRET)
    assert isinstance(policy_set, PolicySet)
    assert policy_set.name == "effective"
    assert [p.id for p in policy_set.policies] == ["exec-needs-approval"]


def test_header_names_are_case_insensitive() -> None:
    headers = {"x-pathguard-signature": f"hmac-sha256={sign_hmac(BODY, SECRET)}"}
    assert verify_bundle(BODY, headers, hmac_secret=SECRET).name == "effective"


@pytest.mark.parametrize("form", ["pem", "raw-base64", "object"])
def test_ed25519_signed_bundle_verifies_with_each_key_form(
    private_key: Ed25519PrivateKey, form: str
) -> None:
    keys: dict[str, str | Ed25519PublicKey] = {
        "pem": public_pem(private_key),
        "raw-base64": public_raw_b64(private_key),
        "object": private_key.public_key(),
    }
    key = keys[form]
    headers = {"X-Pathguard-Signature": f"ed25519={sign_ed25519(BODY, private_key)}"}
    assert verify_bundle(BODY, headers, ed25519_public_key=key).name == "effective"


def test_both_keys_configured_need_both_signatures(private_key: Ed25519PrivateKey) -> None:
    both = signature_header(BODY, hmac_secret=SECRET, ed25519_private_key=private_key)
    pub = public_pem(private_key)
    assert verify_bundle(
        BODY, {"X-Pathguard-Signature": both}, hmac_secret=SECRET, ed25519_public_key=pub
    )
    hmac_only = signature_header(BODY, hmac_secret=SECRET)
    with pytest.raises(BundleVerificationError, match="no ed25519 signature"):
        verify_bundle(
            BODY, {"X-Pathguard-Signature": hmac_only}, hmac_secret=SECRET, ed25519_public_key=pub
        )


def test_a_changed_body_is_refused_with_hmac() -> None:
    headers = {"X-Pathguard-Signature": f"hmac-sha256={sign_hmac(BODY, SECRET)}"}
    tampered = BODY.replace(b'"block"', b'"warn"')
    with pytest.raises(BundleVerificationError, match="HMAC-SHA256 signature does not match"):
        verify_bundle(tampered, headers, hmac_secret=SECRET)


def test_a_different_secret_is_refused() -> None:
    headers = {"X-Pathguard-Signature": f"hmac-sha256={sign_hmac(BODY, 'other')}"}
    with pytest.raises(BundleVerificationError, match="different PATHGUARD_POLICY_HMAC_SECRET"):
        verify_bundle(BODY, headers, hmac_secret=SECRET)


def test_a_changed_body_is_refused_with_ed25519(private_key: Ed25519PrivateKey) -> None:
    headers = {"X-Pathguard-Signature": f"ed25519={sign_ed25519(BODY, private_key)}"}
    with pytest.raises(BundleVerificationError, match="Ed25519 signature does not verify"):
        verify_bundle(BODY + b" ", headers, ed25519_public_key=public_pem(private_key))


def test_a_signature_by_another_key_is_refused(private_key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    headers = {"X-Pathguard-Signature": f"ed25519={sign_ed25519(BODY, other)}"}
    with pytest.raises(BundleVerificationError, match="signed by a different key"):
        verify_bundle(BODY, headers, ed25519_public_key=public_pem(private_key))


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "has no hmac-sha256 signature"),
        ({"X-Pathguard-Signature": "ed25519=AAAA"}, "has no hmac-sha256 signature"),
        ({"X-Pathguard-Signature": "hmac-sha256"}, "is not 'scheme=signature'"),
        ({"X-Pathguard-Signature": "hmac-sha256=ab, hmac-sha256=cd"}, "names 'hmac-sha256' twice"),
    ],
)
def test_missing_or_malformed_signatures_are_refused(headers: dict[str, str], message: str) -> None:
    with pytest.raises(BundleVerificationError, match=message):
        verify_bundle(BODY, headers, hmac_secret=SECRET)


def test_unsigned_bundles_are_accepted_when_no_key_is_configured() -> None:
    assert verify_bundle(BODY, {}).name == "effective"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not a valid policy document"),
        (
            json.dumps({"version": 1, "name": "x", "policies": [{"rule": "nope"}]}).encode(),
            "unknown rule",
        ),
    ],
)
def test_a_signed_body_that_is_not_a_policy_document_is_refused(body: bytes, message: str) -> None:
    headers = {"X-Pathguard-Signature": f"hmac-sha256={sign_hmac(body, SECRET)}"}
    with pytest.raises(BundleVerificationError, match=message) as info:
        verify_bundle(body, headers, hmac_secret=SECRET)
    assert isinstance(info.value, PathguardError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "bad",
    [
        "not a key",
        base64.b64encode(b"short").decode(),
        "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----",
    ],
)
def test_an_unusable_public_key_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ConfigurationError, match=r"Ed25519 public key|PEM"):
        verify_bundle(BODY, {}, ed25519_public_key=bad)


def test_keys_from_the_environment(private_key: Ed25519PrivateKey) -> None:
    env = {
        "PATHGUARD_POLICY_HMAC_SECRET": SECRET,
        "PATHGUARD_POLICY_ED25519_PUBLIC_KEY": public_raw_b64(private_key),
    }
    keys = VerificationKeys.from_env(env)
    assert keys.configured
    header = signature_header(BODY, hmac_secret=SECRET, ed25519_private_key=private_key)
    bundle = PolicyBundle.verify(
        BODY, {"X-Pathguard-Signature": header, "ETag": '"v7"'}, fetched_at=5.0, keys=keys
    )
    assert bundle.etag == '"v7"'
    assert bundle.policy_set.name == "effective"
    assert bundle.headers() == {"ETag": '"v7"', "X-Pathguard-Signature": header}
    assert not VerificationKeys.from_env({}).configured


def test_an_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="secret is empty"):
        VerificationKeys.create(hmac_secret="")
