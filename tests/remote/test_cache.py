"""The policy cache: atomic, private, verified again on load."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pathguard.remote import (
    BundleVerificationError,
    PolicyBundle,
    PolicyCache,
    VerificationKeys,
    signature_header,
)

SECRET = "cache-secret"
KEYS = VerificationKeys.create(hmac_secret=SECRET)


def body_named(name: str) -> bytes:
    return json.dumps(
        {
            "version": 1,
            "name": name,
            "policies": [
                {"id": "p", "rule": "requires_prior", "params": {"step_type": "step.gate"}}
            ],
        }
    ).encode("utf-8")


def bundle_named(name: str, etag: str = '"1"') -> PolicyBundle:
    body = body_named(name)
    headers = {"ETag": etag, "X-Pathguard-Signature": signature_header(body, hmac_secret=SECRET)}
    return PolicyBundle.verify(body, headers, fetched_at=1700000000.5, keys=KEYS)


def test_round_trip(tmp_path: Path) -> None:
    cache = PolicyCache(tmp_path / "cache", keys=KEYS)
    assert cache.load() is None
    bundle = bundle_named("first")
    cache.save(bundle)
    loaded = PolicyCache(tmp_path / "cache", keys=KEYS).load()
    assert loaded == bundle
    assert loaded is not None and loaded.policy_set.name == "first"


def test_a_new_save_replaces_the_old_bundle(tmp_path: Path) -> None:
    cache = PolicyCache(tmp_path, keys=KEYS)
    cache.save(bundle_named("first", '"1"'))
    cache.save(bundle_named("second", '"2"'))
    loaded = cache.load()
    assert loaded is not None and (loaded.etag, loaded.policy_set.name) == ('"2"', "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy-bundle.json"]


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_the_cache_file_is_private(tmp_path: Path) -> None:
    cache = PolicyCache(tmp_path / "c", keys=KEYS)
    cache.save(bundle_named("first"))
    assert stat.S_IMODE(cache.path.stat().st_mode) == 0o600


def test_a_tampered_cache_file_is_refused(tmp_path: Path) -> None:
    cache = PolicyCache(tmp_path, keys=KEYS)
    cache.save(bundle_named("first"))
    document = json.loads(cache.path.read_text())
    body = base64.b64decode(document["body"]).replace(b"first", b"evil!")
    document["body"] = base64.b64encode(body).decode()
    cache.path.write_text(json.dumps(document))
    with pytest.raises(BundleVerificationError, match="tampered") as info:
        cache.load()
    assert str(cache.path) in str(info.value)
    assert "HMAC-SHA256 signature does not match" in str(info.value)


def test_a_cache_written_without_keys_is_refused_once_keys_are_configured(tmp_path: Path) -> None:
    body = body_named("unsigned")
    PolicyCache(tmp_path).save(PolicyBundle.verify(body, {}, fetched_at=1.0))
    assert PolicyCache(tmp_path).load() is not None
    with pytest.raises(BundleVerificationError, match="no hmac-sha256 signature"):
        PolicyCache(tmp_path, keys=KEYS).load()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"format": 1, "body": ', "is not valid JSON"),
        (b"[1, 2]", "does not hold a JSON object"),
        (b'{"format": 9, "body": ""}', "has format 9"),
        (
            b'{"format": 1, "etag": null, "signature": null, "fetched_at": 1, "body": "%%"}',
            "not valid base64",
        ),
    ],
)
def test_a_corrupt_cache_file_is_refused_with_a_clear_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    cache = PolicyCache(tmp_path, keys=KEYS)
    cache.path.write_bytes(content)
    with pytest.raises(BundleVerificationError, match=message) as info:
        cache.load()
    assert "delete it" in str(info.value)


def test_garbage_in_a_temp_file_never_replaces_the_good_bundle(tmp_path: Path) -> None:
    cache = PolicyCache(tmp_path, keys=KEYS)
    cache.save(bundle_named("good"))
    (tmp_path / ".policy-bundle.abc123.tmp").write_bytes(b'{"format": 1, "bo')
    loaded = PolicyCache(tmp_path, keys=KEYS).load()
    assert loaded is not None and loaded.policy_set.name == "good"


CRASHING_SAVE = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathguard.remote import PolicyBundle, PolicyCache, VerificationKeys, signature_header

    directory, secret = sys.argv[1], sys.argv[2]
    body = json.dumps({"version": 1, "name": "never-installed"}).encode()
    keys = VerificationKeys.create(hmac_secret=secret)
    headers = {"X-Pathguard-Signature": signature_header(body, hmac_secret=secret)}
    bundle = PolicyBundle.verify(body, headers, fetched_at=2.0, keys=keys)

    def die(fd):
        # The process dies with the new bundle written to its temp file, before the rename.
        os.kill(os.getpid(), signal.SIGKILL)

    os.fsync = die
    PolicyCache(directory, keys=keys).save(bundle)
    """
)


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
def test_a_process_killed_mid_save_leaves_the_good_bundle(tmp_path: Path) -> None:
    cache = PolicyCache(tmp_path, keys=KEYS)
    cache.save(bundle_named("good"))
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_SAVE, str(tmp_path), SECRET],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1  # the half-finished save really happened
    loaded = PolicyCache(tmp_path, keys=KEYS).load()
    assert loaded is not None and loaded.policy_set.name == "good"
