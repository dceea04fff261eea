"""The import guard of `pathguard.platform`: fail at import, naming the extra to install."""

from __future__ import annotations

import importlib.util

__all__ = ["require_server_extra"]

# What `pip install 'pathguard[server]'` brings that the platform needs in every process.
# psycopg is left out on purpose: SQLite works without it (see database.create_engine).
_SERVER_MODULES = ("sqlalchemy", "alembic", "fastapi", "uvicorn", "jinja2", "prometheus_client")


def _missing() -> list[str]:
    missing = []
    for name in _SERVER_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require_server_extra() -> None:
    """Raise ImportError naming `pip install 'pathguard[server]'` when a server module is absent."""
    missing = _missing()
    if missing:
        raise ImportError(
            f"pathguard.platform needs {', '.join(missing)}, which the server extra provides; "
            "install it with: pip install 'pathguard[server]'"
        )
