"""API keys on SQLite and PostgreSQL: shown once, stored hashed, checked in constant time."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pathguard.platform.keys import (
    KEY_PREFIX,
    Principal,
    authenticate,
    create_key,
    list_keys,
    revoke_key,
)
from pathguard.platform.models import ApiKey


def make(sessions: sessionmaker[Session], *, admin: bool, agent_key: str | None) -> str:
    with sessions.begin() as session:
        return create_key(session, admin=admin, agent_key=agent_key)


def who(sessions: sessionmaker[Session], secret: str) -> Principal | None:
    with sessions() as session:
        return authenticate(session, secret)


def test_an_admin_key_authenticates_as_admin(sessions: sessionmaker[Session]) -> None:
    secret = make(sessions, admin=True, agent_key=None)
    assert secret.startswith(KEY_PREFIX)
    principal = who(sessions, secret)
    assert principal is not None
    assert (principal.admin, principal.agent_key) == (True, None)
    assert principal.may_act_for("any-agent")


def test_an_agent_key_acts_only_for_its_agent(sessions: sessionmaker[Session]) -> None:
    secret = make(sessions, admin=False, agent_key="x'); DROP TABLE api_keys; --")
    principal = who(sessions, secret)
    assert principal is not None
    assert principal.agent_key == "x'); DROP TABLE api_keys; --"
    assert not principal.admin
    assert not principal.may_act_for("another-agent")


def test_only_a_salted_hash_of_the_secret_is_stored(sessions: sessionmaker[Session]) -> None:
    first = make(sessions, admin=True, agent_key=None)
    second = make(sessions, admin=True, agent_key=None)
    with sessions() as session:
        rows = list(session.scalars(select(ApiKey)))
    assert len(rows) == 2
    raws = [secret.split("_", 2)[2] for secret in (first, second)]
    for row in rows:
        stored = " ".join([row.id, row.salt, row.hash, row.kdf])
        assert not any(raw in stored for raw in raws)
        assert row.kdf.startswith("scrypt:")
    assert rows[0].salt != rows[1].salt


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "not-a-key",
        KEY_PREFIX,
        KEY_PREFIX + "zzzzzzzzzzzz_secret",
        KEY_PREFIX + "0123456789ab_secret",
        KEY_PREFIX + "0123456789ab_" + "x" * 500,
    ],
)
def test_unknown_or_malformed_keys_are_refused(
    sessions: sessionmaker[Session], presented: str
) -> None:
    make(sessions, admin=True, agent_key=None)
    assert who(sessions, presented) is None


def test_a_wrong_secret_for_a_real_key_id_is_refused(sessions: sessionmaker[Session]) -> None:
    secret = make(sessions, admin=True, agent_key=None)
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert who(sessions, tampered) is None


def test_a_revoked_key_is_refused(sessions: sessionmaker[Session]) -> None:
    secret = make(sessions, admin=False, agent_key="bot")
    principal = who(sessions, secret)
    assert principal is not None
    with sessions.begin() as session:
        assert revoke_key(session, principal.key_id)
        assert not revoke_key(session, principal.key_id)
        assert list_keys(session) == []
    assert who(sessions, secret) is None


def test_list_keys_shows_roles_without_secrets(sessions: sessionmaker[Session]) -> None:
    make(sessions, admin=True, agent_key=None)
    make(sessions, admin=False, agent_key="bot")
    with sessions() as session:
        keys = list_keys(session)
    assert sorted((k.admin, k.agent_key) for k in keys) == [(False, "bot"), (True, None)]


@pytest.mark.parametrize(
    ("admin", "agent_key", "message"),
    [
        (True, "bot", "not both"),
        (False, None, "Pass admin=True"),
        (False, "", "Pass admin=True"),
        (False, "a\x00b", "NUL"),
    ],
)
def test_a_key_is_either_admin_or_for_one_agent(
    sessions: sessionmaker[Session], admin: bool, agent_key: str | None, message: str
) -> None:
    with sessions.begin() as session, pytest.raises(ValueError, match=message):
        create_key(session, admin=admin, agent_key=agent_key)
