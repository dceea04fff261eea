"""Policy bundles as the platform serves them, and their signatures.

A bundle is the agent's effective policy document: the body of
`GET /v1/agents/{key}/policies` is the PolicySet as JSON (UTF-8), the `ETag` header carries
its version, and the signature header carries one or both signatures over the exact body bytes:

```
X-Pathguard-Signature: hmac-sha256=<hex digest>, ed25519=<base64 signature>
```

- `hmac-sha256` is HMAC-SHA256 keyed with the shared secret `PATHGUARD_POLICY_HMAC_SECRET`,
  written as lowercase hex.
- `ed25519` is an Ed25519 signature by the server's private key, standard base64; the SDK is
  configured with the public key (`PATHGUARD_POLICY_ED25519_PUBLIC_KEY`, PEM or the raw 32
  bytes in base64).

Every configured key must verify: with a secret and a public key both configured, a bundle
needs both signatures. With neither configured, the body is only validated as a policy
document. The ETag is not covered by a signature; it is a cache validator, not a claim.
Ed25519 needs the `cryptography` package (`pip install 'pathguard[client]'`); HMAC does not.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from pathguard.errors import ConfigurationError, PathguardError, PolicyLoadError
from pathguard.policies import PolicySet

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "ED25519_PUBLIC_KEY_ENV",
    "HMAC_SECRET_ENV",
    "SIGNATURE_HEADER",
    "BundleVerificationError",
    "PolicyBundle",
    "VerificationKeys",
    "load_ed25519_public_key",
    "parse_signature_header",
    "sign_ed25519",
    "sign_hmac",
    "signature_header",
    "verify_bundle",
]

SIGNATURE_HEADER: Final = "X-Pathguard-Signature"
HMAC_SECRET_ENV: Final = "PATHGUARD_POLICY_HMAC_SECRET"
ED25519_PUBLIC_KEY_ENV: Final = "PATHGUARD_POLICY_ED25519_PUBLIC_KEY"

_HMAC: Final = "hmac-sha256"
_ED25519: Final = "ed25519"


class BundleVerificationError(PathguardError, ValueError):
    """A policy bundle (from the server or the disk cache) failed verification and was refused."""


Secret = str | bytes


def _secret_bytes(secret: Secret) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def _require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the dev environment has cryptography
        raise ImportError(
            "Ed25519 policy signatures need the cryptography package; install it with "
            "pip install 'pathguard[client]'."
        ) from exc


# -- signing (the server's side, and tests) ----------------------------------------------------


def sign_hmac(body: bytes, secret: Secret) -> str:
    """The HMAC-SHA256 of `body` keyed with `secret`, as lowercase hex."""
    return hmac.new(_secret_bytes(secret), body, hashlib.sha256).hexdigest()


def sign_ed25519(body: bytes, private_key: Ed25519PrivateKey) -> str:
    """The Ed25519 signature of `body`, as standard base64."""
    return base64.b64encode(private_key.sign(body)).decode("ascii")


def signature_header(
    body: bytes,
    *,
    hmac_secret: Secret | None = None,
    ed25519_private_key: Ed25519PrivateKey | None = None,
) -> str:
    """The value of the `X-Pathguard-Signature` header for `body` with the given keys."""
    parts = []
    if hmac_secret is not None:
        parts.append(f"{_HMAC}={sign_hmac(body, hmac_secret)}")
    if ed25519_private_key is not None:
        parts.append(f"{_ED25519}={sign_ed25519(body, ed25519_private_key)}")
    if not parts:
        raise ValueError("signature_header needs an hmac_secret, an ed25519_private_key or both.")
    return ", ".join(parts)


# -- keys --------------------------------------------------------------------------------------


def load_ed25519_public_key(key: str | bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    """Read an Ed25519 public key from PEM text or the raw 32 bytes in base64.

    Raises ConfigurationError when the value is neither.
    """
    _require_cryptography()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    text = key.decode("ascii", errors="replace") if isinstance(key, bytes) else str(key)
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            loaded = serialization.load_pem_public_key(text.encode("ascii"))
        except ValueError:
            raise ConfigurationError(
                "The Ed25519 public key is PEM text that cannot be read; give the server's "
                "public key as PEM ('-----BEGIN PUBLIC KEY-----') or as base64 of its 32 bytes."
            ) from None
        if not isinstance(loaded, ed25519.Ed25519PublicKey):
            raise ConfigurationError(
                f"The PEM public key is a {type(loaded).__name__}, not an Ed25519 key; "
                "configure the server's Ed25519 public key."
            )
        return loaded
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigurationError(
            "The Ed25519 public key is neither PEM text nor base64 of 32 raw bytes; give the "
            "server's public key in one of those forms."
        )
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class VerificationKeys:
    """The keys bundles are checked with; both None means unsigned bundles are accepted."""

    hmac_secret: bytes | None = None
    ed25519_public_key: Ed25519PublicKey | None = None

    @classmethod
    def create(
        cls,
        *,
        hmac_secret: Secret | None = None,
        ed25519_public_key: str | bytes | Ed25519PublicKey | None = None,
    ) -> VerificationKeys:
        """Normalise the keys (an empty secret is refused: it would sign nothing)."""
        if hmac_secret is not None and not _secret_bytes(hmac_secret):
            raise ConfigurationError(
                f"The policy HMAC secret is empty; set {HMAC_SECRET_ENV} to the server's "
                "secret or leave it unset."
            )
        return cls(
            hmac_secret=None if hmac_secret is None else _secret_bytes(hmac_secret),
            ed25519_public_key=None
            if ed25519_public_key is None
            else load_ed25519_public_key(ed25519_public_key),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> VerificationKeys:
        """Keys from PATHGUARD_POLICY_HMAC_SECRET and PATHGUARD_POLICY_ED25519_PUBLIC_KEY."""
        environ = os.environ if environ is None else environ
        return cls.create(
            hmac_secret=environ.get(HMAC_SECRET_ENV) or None,
            ed25519_public_key=environ.get(ED25519_PUBLIC_KEY_ENV) or None,
        )

    @property
    def configured(self) -> bool:
        """Whether any signature is required."""
        return self.hmac_secret is not None or self.ed25519_public_key is not None


# -- verification ------------------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, item in headers.items():
        if key.lower() == lowered:
            return item
    return None


def parse_signature_header(value: str) -> dict[str, str]:
    """`"hmac-sha256=ab.., ed25519=Zm.."` as `{"hmac-sha256": "ab..", "ed25519": "Zm.."}`.

    Raises BundleVerificationError on a malformed or repeated entry.
    """
    found: dict[str, str] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        scheme, sep, sig = part.partition("=")
        scheme = scheme.strip().lower()
        if not sep or not scheme or not sig.strip():
            raise BundleVerificationError(
                f"The {SIGNATURE_HEADER} header entry {part[:40]!r} is not 'scheme=signature'."
            )
        if scheme in found:
            raise BundleVerificationError(
                f"The {SIGNATURE_HEADER} header names {scheme!r} twice; a bundle carries one "
                "signature per scheme."
            )
        found[scheme] = sig.strip()
    return found


def _check_hmac(body: bytes, given: str | None, secret: bytes) -> None:
    if given is None:
        raise BundleVerificationError(
            f"The policy bundle has no {_HMAC} signature, but an HMAC secret is configured; "
            f"the server must sign bundles with the same {HMAC_SECRET_ENV}."
        )
    expected = sign_hmac(body, secret)
    if not hmac.compare_digest(expected.encode("ascii"), given.lower().encode("utf-8")):
        raise BundleVerificationError(
            "The policy bundle's HMAC-SHA256 signature does not match its body: the bundle "
            f"was changed in transit or the server uses a different {HMAC_SECRET_ENV}."
        )


def _check_ed25519(body: bytes, given: str | None, key: Ed25519PublicKey) -> None:
    if given is None:
        raise BundleVerificationError(
            f"The policy bundle has no {_ED25519} signature, but an Ed25519 public key is "
            "configured; the server must sign bundles with the matching private key."
        )
    try:
        signature = base64.b64decode(given, validate=True)
    except (binascii.Error, ValueError):
        raise BundleVerificationError(
            "The policy bundle's Ed25519 signature is not valid base64."
        ) from None
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(signature, body)
    except InvalidSignature:
        raise BundleVerificationError(
            "The policy bundle's Ed25519 signature does not verify with the configured public "
            "key: the bundle was changed or signed by a different key."
        ) from None


def _check_signatures(body: bytes, signature: str | None, keys: VerificationKeys) -> None:
    if not keys.configured:
        return
    found = parse_signature_header(signature) if signature else {}
    if keys.hmac_secret is not None:
        _check_hmac(body, found.get(_HMAC), keys.hmac_secret)
    if keys.ed25519_public_key is not None:
        _check_ed25519(body, found.get(_ED25519), keys.ed25519_public_key)


def _parse_policy_set(body: bytes) -> PolicySet:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleVerificationError("The policy bundle's body is not UTF-8 text.") from None
    try:
        return PolicySet.from_json(text, source="<policy bundle>")
    except PolicyLoadError as exc:
        raise BundleVerificationError(
            f"The policy bundle's body is not a valid policy document. {exc}"
        ) from None


def _verify(body: bytes, signature: str | None, keys: VerificationKeys) -> PolicySet:
    # Signatures first: an unauthenticated body is not even parsed.
    _check_signatures(body, signature, keys)
    return _parse_policy_set(body)


def verify_bundle(
    body: bytes,
    headers: Mapping[str, str],
    *,
    hmac_secret: Secret | None = None,
    ed25519_public_key: str | bytes | Ed25519PublicKey | None = None,
) -> PolicySet:
    """Check a served bundle's signatures (every configured key) and parse its PolicySet.

    `headers` is looked up case-insensitively. Raises BundleVerificationError saying what
    failed; ConfigurationError when a key itself is unusable.
    """
    keys = VerificationKeys.create(hmac_secret=hmac_secret, ed25519_public_key=ed25519_public_key)
    return _verify(body, _header(headers, SIGNATURE_HEADER), keys)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PolicyBundle:
    """A verified policy bundle: the exact body bytes, what came with them, and the parsed set.

    `etag` is the server's version tag (for `If-None-Match`), `signature` the raw signature
    header (kept so a cached copy can be verified again), `fetched_at` seconds since the epoch.
    """

    body: bytes
    etag: str | None
    signature: str | None
    fetched_at: float
    policy_set: PolicySet

    @classmethod
    def verify(
        cls,
        body: bytes,
        headers: Mapping[str, str],
        *,
        fetched_at: float,
        keys: VerificationKeys | None = None,
    ) -> PolicyBundle:
        """Verify a served body and headers (see `verify_bundle`) into a bundle."""
        keys = keys or VerificationKeys()
        signature = _header(headers, SIGNATURE_HEADER)
        return cls(
            body=bytes(body),
            etag=_header(headers, "ETag"),
            signature=signature,
            fetched_at=float(fetched_at),
            policy_set=_verify(body, signature, keys),
        )

    def headers(self) -> dict[str, str]:
        """The headers the bundle was served with (ETag and signature, when present)."""
        out = {}
        if self.etag is not None:
            out["ETag"] = self.etag
        if self.signature is not None:
            out[SIGNATURE_HEADER] = self.signature
        return out
