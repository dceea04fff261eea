"""Engines and sessions: SQLite by default, PostgreSQL when a URL says so.

The database URL is, in order: the `url` argument, `PATHGUARD_DATABASE_URL`, and the SQLite
file `./.pathguard/pathguard.db` (its folder is created on first use). SQLite connections use
write-ahead logging, enforce foreign keys, wait up to 15 s for a lock, and start real
transactions (`BEGIN`), so a batch that fails leaves nothing behind on either database.

```python
engine = create_engine()              # or create_engine("postgresql+psycopg://...")
upgrade(engine)                       # pathguard.platform.migrations
sessions = session_factory(engine)
with sessions.begin() as session:     # commits on success, rolls back on an exception
    ...
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

import sqlalchemy
from sqlalchemy import Engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from pathguard.errors import ConfigurationError

__all__ = [
    "DATABASE_URL_ENV",
    "DEFAULT_DATABASE_PATH",
    "create_engine",
    "resolve_url",
    "session_factory",
]

DATABASE_URL_ENV: Final = "PATHGUARD_DATABASE_URL"
DEFAULT_DATABASE_PATH: Final = Path(".pathguard") / "pathguard.db"


def resolve_url(url: str | URL | None = None) -> URL:
    """The database URL to use: `url`, else `PATHGUARD_DATABASE_URL`, else the default file."""
    if url is None or url == "":
        url = os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{DEFAULT_DATABASE_PATH}"
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigurationError(
            f"The database URL {str(url)!r} is not a URL; use for example "
            "'sqlite:///path/to/pathguard.db' or "
            "'postgresql+psycopg://user:password@host:5432/dbname'."
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigurationError(
            f"pathguard stores its data in SQLite or PostgreSQL, not "
            f"{parsed.get_backend_name()!r}; use a 'sqlite:///...' or "
            "'postgresql+psycopg://...' URL."
        )
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # Plain postgresql:// would pick psycopg2, which the server extra does not install.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_engine(url: str | URL | None = None, **kwargs: Any) -> Engine:
    """An engine for `url` (see `resolve_url`); creates the SQLite file's folder if needed."""
    parsed = resolve_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, **kwargs)
    if parsed.get_driver_name() == "psycopg":
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ImportError(
                "A PostgreSQL database needs psycopg, which the server extra provides; "
                "install it with: pip install 'pathguard[server]'"
            ) from None
    kwargs.setdefault("pool_pre_ping", True)
    return sqlalchemy.create_engine(parsed, **kwargs)


def _sqlite_engine(url: URL, **kwargs: Any) -> Engine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("connect_args", {}).setdefault("timeout", 15.0)
    engine = sqlalchemy.create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin: sqlite3
        # would otherwise start them only at the first write, and DDL would not be atomic.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sqlalchemy.Connection) -> None:
        # IMMEDIATE takes the write lock up front, waiting up to the busy timeout: a deferred
        # transaction that reads first and writes later cannot wait for it in WAL mode and
        # fails at once when another writer is active. SQLite has one writer at a time anyway.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to `engine`; objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)
