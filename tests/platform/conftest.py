"""Storage fixtures: every test that uses them runs on SQLite and on PostgreSQL.

Each test run migrates one SQLite file and one PostgreSQL schema of its own (a unique name
on `search_path`, dropped at the end), and every test starts from empty tables, so tests are
isolated from each other and from other runs sharing the server. `fresh_url` gives a
database with no schema at all, for migration tests.

The PostgreSQL server is `PATHGUARD_TEST_POSTGRES_URL` (default: the local test server); its
tests are skipped, saying why, only when it cannot be reached.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from pathguard.platform.database import create_engine, session_factory
from pathguard.platform.migrations import upgrade
from pathguard.platform.models import Base

POSTGRES_URL = os.environ.get(
    "PATHGUARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", "postgresql"]

_reachable: dict[str, str | None] = {}


def _postgres_unreachable() -> str | None:
    """Why the PostgreSQL server cannot be used, or None when it can (asked once)."""
    if "answer" not in _reachable:
        try:
            engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            engine.dispose()
            _reachable["answer"] = None
        except Exception as exc:  # any failure to connect means: skip, and say why
            _reachable["answer"] = (
                f"PostgreSQL at {POSTGRES_URL} is unreachable ({type(exc).__name__}); set "
                "PATHGUARD_TEST_POSTGRES_URL to a running server to run these tests."
            )
    return _reachable["answer"]


def _schema_url(schema: str) -> URL:
    return make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})


def _admin(sql: str) -> None:
    engine = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(sql))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def _postgres_schemas() -> Iterator[list[str]]:
    """Schema names created in this run; all dropped at the end."""
    created: list[str] = []
    yield created
    for schema in created:
        _admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _new_postgres_url(created: list[str]) -> URL:
    reason = _postgres_unreachable()
    if reason is not None:
        pytest.skip(reason)
    schema = f"pathguard_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE SCHEMA "{schema}"')
    created.append(schema)
    return _schema_url(schema)


@pytest.fixture(scope="session", params=BACKENDS)
def _migrated_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _postgres_schemas: list[str],
) -> URL:
    """One migrated database per backend for the whole run."""
    if request.param == "sqlite":
        url = make_url(f"sqlite:///{tmp_path_factory.mktemp('db') / 'pathguard.db'}")
    else:
        url = _new_postgres_url(_postgres_schemas)
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def _engines() -> Iterator[dict[str, Engine]]:
    engines: dict[str, Engine] = {}
    yield engines
    for engine in engines.values():
        engine.dispose()


def _empty(engine: Engine) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                connection.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def database_url(_migrated_url: URL, _engines: dict[str, Engine]) -> URL:
    """A migrated database with empty tables (SQLite, then PostgreSQL)."""
    key = _migrated_url.render_as_string(hide_password=False)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = create_engine(_migrated_url)
    _empty(engine)
    return _migrated_url


@pytest.fixture
def engine(database_url: URL, _engines: dict[str, Engine]) -> Engine:
    """An engine on `database_url` (shared across the run, tables emptied per test)."""
    return _engines[database_url.render_as_string(hide_password=False)]


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """The session factory the platform uses, on `engine`."""
    return session_factory(engine)


@pytest.fixture(params=BACKENDS)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path, _postgres_schemas: list[str]) -> URL:
    """A database with no tables at all: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        return make_url(f"sqlite:///{tmp_path / 'fresh' / 'pathguard.db'}")
    return _new_postgres_url(_postgres_schemas)
