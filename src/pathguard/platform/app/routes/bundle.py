"""`GET /v1/agents/{key}/policies`: the agent's effective policy bundle (spec/platform.md §3).

The bundle is one policy document: the policies of every live policy set assigned to the
agent, in policy-set id order, merged into one set. An agent with nothing assigned gets a set
with no policies. The body is the canonical JSON (RFC 8785) of the document, so the same
policies always give the same bytes; the strong `ETag` is the document's digest, and a
request whose `If-None-Match` names it gets 304 with no body.

Two policy sets that use the same policy id cannot be merged (the engine names violations by
id); the bundle is then refused with 409 naming the id and both sets.

Signatures (read once, when `create_app` runs; see `pathguard.remote.bundle` for the SDK side):

- `PATHGUARD_POLICY_HMAC_SECRET`: a shared secret; the server adds `hmac-sha256=<hex>`.
- `PATHGUARD_POLICY_ED25519_PRIVATE_KEY`: an Ed25519 private key as unencrypted PKCS#8 PEM
  (`-----BEGIN PRIVATE KEY-----`); the server adds `ed25519=<base64>`. The SDK is given the
  matching public key.

With either set, every bundle carries the `X-Pathguard-Signature` header over the exact body.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from fastapi import APIRouter, Header, HTTPException, Request, Response, status

from pathguard.canonical import canonical_json
from pathguard.errors import ConfigurationError
from pathguard.platform.app.auth import Credentials, require_agent
from pathguard.platform.app.routes._common import AUTH_ERRORS, AgentKeyPath, Sessions
from pathguard.platform.app.schemas import ErrorOut
from pathguard.platform.store import PolicySetView, policy_sets_for_agent
from pathguard.policies import PolicySet
from pathguard.remote.bundle import HMAC_SECRET_ENV, SIGNATURE_HEADER, signature_header

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "ED25519_PRIVATE_KEY_ENV",
    "BundleConflictError",
    "SigningKeys",
    "effective_policy_set",
    "etag_matches",
    "router",
]

ED25519_PRIVATE_KEY_ENV: Final = "PATHGUARD_POLICY_ED25519_PRIVATE_KEY"

router = APIRouter(prefix="/v1/agents", tags=["agents"], responses=AUTH_ERRORS)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SigningKeys:
    """The keys the server signs bundles with; both None means bundles go unsigned."""

    hmac_secret: bytes | None = None
    ed25519_private_key: Ed25519PrivateKey | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SigningKeys:
        """Keys from PATHGUARD_POLICY_HMAC_SECRET and PATHGUARD_POLICY_ED25519_PRIVATE_KEY.

        Raises ConfigurationError when the private key is not an Ed25519 key in PEM.
        """
        environ = os.environ if environ is None else environ
        secret = environ.get(HMAC_SECRET_ENV) or None
        pem = environ.get(ED25519_PRIVATE_KEY_ENV) or None
        return cls(
            hmac_secret=None if secret is None else secret.encode("utf-8"),
            ed25519_private_key=None if pem is None else _load_private_key(pem),
        )

    @property
    def configured(self) -> bool:
        """Whether bundles are signed at all."""
        return self.hmac_secret is not None or self.ed25519_private_key is not None

    def header(self, body: bytes) -> str | None:
        """The signature header value for `body`, or None when no key is configured."""
        if not self.configured:
            return None
        return signature_header(
            body, hmac_secret=self.hmac_secret, ed25519_private_key=self.ed25519_private_key
        )


def _load_private_key(pem: str) -> Ed25519PrivateKey:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - the server extra has cryptography
        raise ImportError(
            "Signing policy bundles with Ed25519 needs the cryptography package; install it "
            "with pip install 'pathguard[server]'."
        ) from exc
    try:
        key = serialization.load_pem_private_key(pem.strip().encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise ConfigurationError(
            f"{ED25519_PRIVATE_KEY_ENV} cannot be read as an unencrypted PEM private key; give "
            "the Ed25519 private key as PKCS#8 PEM ('-----BEGIN PRIVATE KEY-----')."
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigurationError(
            f"{ED25519_PRIVATE_KEY_ENV} holds a {type(key).__name__}, not an Ed25519 key; "
            "generate one with `openssl genpkey -algorithm ed25519`."
        )
    return key


class BundleConflictError(ValueError):
    """Two policy sets assigned to one agent use the same policy id."""


def effective_policy_set(agent_key: str, views: list[PolicySetView]) -> PolicySet:
    """The assigned policy sets merged into one (in the given order).

    Raises BundleConflictError when two sets use the same policy id.
    """
    sets = [PolicySet.from_dict(v.document, source=f"<policy set {v.id}>") for v in views]
    owner: dict[str, PolicySetView] = {}
    for view, policy_set in zip(views, sets, strict=True):
        for policy in policy_set.policies:
            first = owner.setdefault(policy.id, view)
            if first is not view:
                raise BundleConflictError(
                    f"Policy id {policy.id!r} is in policy set {first.id} ({first.name!r}) and "
                    f"in policy set {view.id} ({view.name!r}), both assigned to agent "
                    f"{agent_key!r}; rename the policy in one set or unassign one of them."
                )
    if not sets:
        return PolicySet(name=f"{agent_key} (no policy sets assigned)")
    if len(sets) == 1:
        return sets[0]
    return sets[0].merged_with(*sets[1:], name=" + ".join(v.name for v in views))


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` value names `etag` (weak comparison, as RFC 9110 says)."""
    if if_none_match is None:
        return False
    opaque = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == opaque:
            return True
    return False


@router.get(
    "/{key}/policies",
    response_class=Response,
    responses={
        200: {
            "description": "The bundle: a policy document as canonical JSON.",
            "content": {"application/json": {}},
        },
        304: {"description": "The bundle is the one named in If-None-Match."},
        409: {"model": ErrorOut, "description": "Two assigned sets use the same policy id."},
    },
)
def agent_policies(
    key: AgentKeyPath,
    request: Request,
    sessions: Sessions,
    credentials: Credentials,
    if_none_match: str | None = Header(default=None),
) -> Response:
    """The agent's effective policy bundle, with ETag and signature (the agent's key or admin)."""
    with sessions.begin() as session:
        require_agent(session, credentials, key)
        views = policy_sets_for_agent(session, key)
    try:
        policy_set = effective_policy_set(key, views)
    except BundleConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    etag = f'"{policy_set.digest}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    body = canonical_json(policy_set.to_dict())
    keys: SigningKeys = getattr(request.app.state, "bundle_keys", SigningKeys())
    signature = keys.header(body)
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    return Response(content=body, media_type="application/json", headers=headers)
