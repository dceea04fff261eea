"""Migrations and database setup: upgrade from nothing, idempotence, models in step with the
migrations, the default SQLite file, its pragmas, and the server-extra import guard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError

from pathguard.errors import ConfigurationError
from pathguard.platform.database import DATABASE_URL_ENV, create_engine, resolve_url
from pathguard.platform.migrations import current_revision, head_revision, upgrade
from pathguard.platform.models import Base


def test_upgrade_creates_every_table_on_an_empty_database(fresh_url: URL) -> None:
    assert current_revision(fresh_url) is None
    assert upgrade(fresh_url) == head_revision()
    engine = create_engine(fresh_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_upgrade_is_safe_to_run_again(fresh_url: URL) -> None:
    upgrade(fresh_url)
    assert upgrade(fresh_url) == head_revision()
    assert current_revision(fresh_url) == head_revision()


def test_the_models_match_the_migrations(fresh_url: URL) -> None:
    upgrade(fresh_url)
    engine = create_engine(fresh_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


_INCIDENT = (
    "INSERT INTO incidents (agent_key, task_id, policy_id, severity, action, reason, status, "
    "count, first_seen, last_seen) VALUES ('a', NULL, :policy, 'high', :action, 'r', 'open', "
    "1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)


def test_upgrading_from_0001_keeps_incidents_and_admits_approval_required(
    fresh_url: URL,
) -> None:
    assert upgrade(fresh_url, revision="0001") == "0001"
    engine = create_engine(fresh_url)
    try:
        with engine.begin() as connection:
            connection.execute(text(_INCIDENT), {"policy": "before", "action": "block"})
        assert upgrade(fresh_url) == head_revision()
        with engine.begin() as connection:
            connection.execute(text(_INCIDENT), {"policy": "after", "action": "approval_required"})
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(text(_INCIDENT), {"policy": "bad", "action": "shrug"})
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT policy_id, action FROM incidents ORDER BY id"))
            assert [tuple(r) for r in rows] == [
                ("before", "block"),
                ("after", "approval_required"),
            ]
    finally:
        engine.dispose()


def test_the_default_database_is_a_sqlite_file_created_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    upgrade()
    assert (tmp_path / ".pathguard" / "pathguard.db").is_file()


def test_the_environment_variable_chooses_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "elsewhere" / "db.sqlite"
    monkeypatch.setenv(DATABASE_URL_ENV, f"sqlite:///{path}")
    assert resolve_url().database == str(path)
    assert resolve_url("sqlite:///given.db").database == "given.db"


def test_plain_postgresql_urls_use_psycopg() -> None:
    assert resolve_url("postgresql://u@h/db").drivername == "postgresql+psycopg"


@pytest.mark.parametrize(
    ("url", "message"), [("not a url", "is not a URL"), ("mysql://u@h/db", "not 'mysql'")]
)
def test_unusable_urls_are_refused_with_a_hint(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        resolve_url(url)


def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db' / 'pathguard.db'}")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        engine.dispose()


def test_importing_the_platform_without_the_server_extra_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['sqlalchemy'] = None\n"
        "import pathguard\n"  # the core keeps importing
        "try:\n"
        "    import pathguard.platform\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "pip install 'pathguard[server]'" in result.stdout
    assert "sqlalchemy" in result.stdout
