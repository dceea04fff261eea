"""Schema migrations (Alembic), run from Python: no alembic.ini is needed.

`upgrade(target)` brings a database to the newest schema and is safe to run again; the server
runs it on start and `pathguard db upgrade` runs it by hand. New revisions go in `versions/`;
write them with `op.batch_alter_table` so that they also run on SQLite.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from pathguard.platform.database import create_engine

__all__ = ["alembic_config", "current_revision", "head_revision", "upgrade"]

logger = logging.getLogger("pathguard")

_HERE: Final = Path(__file__).resolve().parent


def alembic_config() -> Config:
    """An Alembic configuration pointing at pathguard's migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    return config


def head_revision() -> str:
    """The newest revision this pathguard knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # there is always an initial revision
    return head


def current_revision(target: str | URL | Engine | None = None) -> str | None:
    """The revision the database is at, or None when it has no pathguard schema yet."""
    engine, owned = _engine(target)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        if owned:
            engine.dispose()


def upgrade(target: str | URL | Engine | None = None, revision: str = "head") -> str:
    """Apply every migration up to `revision` to the database at `target`; return the
    revision it is at. `target` is a URL, an Engine, or None for the configured database."""
    engine, owned = _engine(target)
    try:
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        now = current_revision(engine)
        logger.info("the pathguard database %s is at revision %s", _safe(engine), now)
        assert now is not None
        return now
    finally:
        if owned:
            engine.dispose()


def _engine(target: str | URL | Engine | None) -> tuple[Engine, bool]:
    if isinstance(target, Engine):
        return target, False
    return create_engine(target), True


def _safe(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
