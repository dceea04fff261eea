"""`pathguard db upgrade` and `pathguard keys create`, driven through Typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pathguard.cli import app
from pathguard.platform.database import DATABASE_URL_ENV, create_engine, session_factory
from pathguard.platform.keys import KEY_PREFIX, authenticate
from pathguard.platform.migrations import current_revision, head_revision

runner = CliRunner()


def _url(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _secret(output: str) -> str:
    [line] = [line for line in output.splitlines() if line.startswith(KEY_PREFIX)]
    return line.strip()


def test_db_upgrade_migrates_the_database_it_is_given(fresh_url: URL) -> None:
    result = runner.invoke(app, ["db", "upgrade", "--database-url", _url(fresh_url)])
    assert result.exit_code == 0, result.output
    assert f"schema at revision {head_revision()}" in result.output
    assert current_revision(fresh_url) == head_revision()


def test_db_upgrade_uses_the_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / ".pathguard" / "pathguard.db").is_file()


def test_db_upgrade_explains_a_bad_url() -> None:
    result = runner.invoke(app, ["db", "upgrade", "--database-url", "mysql://u@h/db"])
    assert result.exit_code == 2
    assert "SQLite or PostgreSQL" in result.output


@pytest.mark.parametrize(
    ("args", "admin", "agent"),
    [(["--admin"], True, None), (["--agent", "support-bot"], False, "support-bot")],
)
def test_keys_create_prints_a_working_key_once(
    fresh_url: URL, args: list[str], admin: bool, agent: str | None
) -> None:
    result = runner.invoke(app, ["keys", "create", *args, "--database-url", _url(fresh_url)])
    assert result.exit_code == 0, result.output
    assert "it will not be shown again" in result.output
    engine = create_engine(fresh_url)
    try:
        with session_factory(engine)() as session:
            principal = authenticate(session, _secret(result.output))
    finally:
        engine.dispose()
    assert principal is not None
    assert (principal.admin, principal.agent_key) == (admin, agent)


def test_keys_create_reads_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "env" / "pathguard.db"
    monkeypatch.setenv(DATABASE_URL_ENV, f"sqlite:///{path}")
    result = runner.invoke(app, ["keys", "create", "--admin"])
    assert result.exit_code == 0, result.output
    assert path.is_file()


@pytest.mark.parametrize("args", [[], ["--admin", "--agent", "bot"]])
def test_keys_create_needs_exactly_one_of_admin_or_agent(args: list[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pathguard.db'}"
    result = runner.invoke(app, ["keys", "create", *args, "--database-url", url])
    assert result.exit_code == 2
    assert "either --admin or --agent KEY" in result.output
    assert not (tmp_path / "pathguard.db").exists()
