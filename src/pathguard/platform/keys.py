"""API keys: created once, shown once, stored only as a salted scrypt hash.

A key reads `pgk_<id>_<secret>`: `id` is 12 hex characters stored in the clear to find the
row, `secret` is 256 random bits. Only `scrypt(secret, salt)` with a per-key salt is stored,
with the parameters used (`kdf`), so they can be raised later without invalidating old keys.
The secret is already unguessable, so the hash is a second line of defence for a leaked
database rather than a brake on guessing; its cost is kept low enough to run per request.

Admin keys may do everything; an agent key belongs to one agent (spec/platform.md §2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from pathguard.platform.models import ApiKey, utcnow

__all__ = ["KEY_PREFIX", "Principal", "authenticate", "create_key", "list_keys", "revoke_key"]

KEY_PREFIX: Final = "pgk_"
_ID_HEX: Final = 12
_KDF: Final = "scrypt:n=4096,r=8,p=1"
_MAX_AGENT_KEY: Final = 256


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Principal:
    """Who a request acts as: an admin, or one agent (`agent_key`)."""

    key_id: str
    admin: bool
    agent_key: str | None

    def may_act_for(self, agent_key: str) -> bool:
        """Whether this principal may read or write the data of `agent_key`."""
        return self.admin or self.agent_key == agent_key


def _derive(secret: str, salt: bytes, kdf: str) -> bytes:
    name, _, params = kdf.partition(":")
    if name != "scrypt":
        raise ValueError(f"The key hash function {kdf!r} is not one pathguard knows.")
    p = dict(item.split("=", 1) for item in params.split(","))
    return hashlib.scrypt(
        secret.encode("utf-8"),
        salt=salt,
        n=int(p["n"]),
        r=int(p["r"]),
        p=int(p["p"]),
        maxmem=64 * 1024 * 1024,
        dklen=32,
    )


def create_key(session: Session, *, admin: bool, agent_key: str | None) -> str:
    """Create an admin key (`admin=True`, no agent) or an agent key; return it, once.

    The caller commits the session. The returned string is the only copy of the secret.
    """
    if admin and agent_key is not None:
        raise ValueError("An admin key has no agent; pass admin=True or an agent_key, not both.")
    if not admin and not agent_key:
        raise ValueError("Pass admin=True for an admin key, or the agent_key of an agent key.")
    if agent_key is not None and (len(agent_key) > _MAX_AGENT_KEY or "\x00" in agent_key):
        raise ValueError(
            f"The agent key must be at most {_MAX_AGENT_KEY} characters without NUL characters."
        )
    key_id = secrets.token_hex(_ID_HEX // 2)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    session.add(
        ApiKey(
            id=key_id,
            salt=salt.hex(),
            hash=_derive(secret, salt, _KDF).hex(),
            kdf=_KDF,
            admin=admin,
            agent_key=agent_key,
            created_at=utcnow(),
        )
    )
    session.flush()
    return f"{KEY_PREFIX}{key_id}_{secret}"


def _split(presented: str) -> tuple[str, str] | None:
    if not presented.startswith(KEY_PREFIX):
        return None
    rest = presented[len(KEY_PREFIX) :]
    key_id, sep, secret = rest[:_ID_HEX], rest[_ID_HEX : _ID_HEX + 1], rest[_ID_HEX + 1 :]
    if sep != "_" or not secret or len(secret) > 128:
        return None
    try:
        int(key_id, 16)
    except ValueError:
        return None
    return key_id, secret


def authenticate(session: Session, secret: str) -> Principal | None:
    """The principal a presented key stands for, or None (unknown, malformed or revoked)."""
    parts = _split(secret)
    if parts is None:
        return None
    key_id, raw = parts
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    try:
        expected = bytes.fromhex(row.hash)
        actual = _derive(raw, bytes.fromhex(row.salt), row.kdf)
    except (ValueError, KeyError):
        return None
    if not hmac.compare_digest(expected, actual):
        return None
    return Principal(key_id=row.id, admin=row.admin, agent_key=row.agent_key)


def revoke_key(session: Session, key_id: str) -> bool:
    """Revoke a key by id; False when there is no such key or it was already revoked."""
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    session.flush()
    return True


def list_keys(session: Session) -> list[Principal]:
    """Every key that is not revoked, oldest first (ids and roles only; no secrets)."""
    rows = session.scalars(
        select(ApiKey).where(ApiKey.revoked_at.is_(None)).order_by(ApiKey.created_at, ApiKey.id)
    )
    return [Principal(key_id=r.id, admin=r.admin, agent_key=r.agent_key) for r in rows]
