"""Alembic's environment: runs migrations on the connection `pathguard.platform.migrations`
hands over (there is no alembic.ini; see `upgrade`)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from pathguard.platform.models import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "Run pathguard's migrations with `pathguard db upgrade` or "
            "pathguard.platform.migrations.upgrade(), not with the alembic command."
        )
    _run(connection)


_main()
