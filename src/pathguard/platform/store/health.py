"""Database checks for the health endpoint and the metrics."""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from pathguard.platform.models import Base

__all__ = [
    "count_rows",
    "ping",
]


def ping(session: Session) -> None:
    """Raise if the database cannot answer a trivial query (for /healthz)."""
    session.execute(text("SELECT 1")).scalar_one()


def count_rows(session: Session, model: type[Base]) -> int:
    """How many rows a table holds (for metrics)."""
    return int(session.scalar(select(func.count()).select_from(model)) or 0)
