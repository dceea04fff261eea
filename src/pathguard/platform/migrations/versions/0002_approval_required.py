"""Incidents may record `approval_required`: a registration that policies send for approval.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BEFORE = "action IN ('warn', 'block', 'approval_denied')"
_AFTER = "action IN ('warn', 'block', 'approval_denied', 'approval_required')"


def _replace(condition: str) -> None:
    # SQLite rebuilds the table in batch mode; PostgreSQL alters it in place.
    with op.batch_alter_table("incidents") as batch:
        batch.drop_constraint(op.f("ck_incidents_action"), type_="check")
        batch.create_check_constraint(op.f("ck_incidents_action"), condition)


def upgrade() -> None:
    _replace(_AFTER)


def downgrade() -> None:
    op.execute("DELETE FROM incidents WHERE action = 'approval_required'")
    _replace(_BEFORE)
