"""The initial schema: keys, agents, policy sets, assignments, tasks, traces, incidents, webhooks.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    def when(name: str, nullable: bool = False) -> sa.Column[Any]:
        return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)

    def text(name: str, nullable: bool = False) -> sa.Column[Any]:
        return sa.Column(name, sa.String(), nullable=nullable)

    op.create_table(
        "api_keys",
        text("id"),
        text("salt"),
        text("hash"),
        text("kdf"),
        sa.Column("admin", sa.Boolean(), nullable=False),
        text("agent_key", nullable=True),
        when("created_at"),
        when("revoked_at", nullable=True),
        sa.CheckConstraint(
            "(admin AND agent_key IS NULL) OR (NOT admin AND agent_key IS NOT NULL)",
            name=op.f("ck_api_keys_admin_or_agent"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_agent_key"), "api_keys", ["agent_key"])

    op.create_table(
        "agents",
        text("key"),
        text("name"),
        sa.Column("purpose", sa.Text(), nullable=False),
        text("owner", nullable=True),
        sa.Column("tools", sa.JSON(), nullable=False),
        text("risk_classification"),
        text("environment", nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("decision", sa.JSON(), nullable=True),
        when("registered_at"),
        when("updated_at"),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_agents")),
    )

    op.create_table(
        "policy_sets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        text("name"),
        sa.Column("current_version", sa.Integer(), nullable=False),
        when("created_at"),
        when("deleted_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_sets")),
    )

    op.create_table(
        "policy_set_versions",
        sa.Column("policy_set_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        text("digest"),
        when("created_at"),
        text("created_by", nullable=True),
        sa.ForeignKeyConstraint(
            ["policy_set_id"],
            ["policy_sets.id"],
            name=op.f("fk_policy_set_versions_policy_set_id_policy_sets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("policy_set_id", "version", name=op.f("pk_policy_set_versions")),
    )

    op.create_table(
        "assignments",
        text("agent_key"),
        sa.Column("policy_set_id", sa.Integer(), nullable=False),
        when("created_at"),
        text("created_by", nullable=True),
        sa.ForeignKeyConstraint(
            ["policy_set_id"],
            ["policy_sets.id"],
            name=op.f("fk_assignments_policy_set_id_policy_sets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agent_key", "policy_set_id", name=op.f("pk_assignments")),
    )
    op.create_index(op.f("ix_assignments_policy_set_id"), "assignments", ["policy_set_id"])

    op.create_table(
        "tasks",
        text("agent_key"),
        text("task_id"),
        when("started_at", nullable=True),
        when("ended_at", nullable=True),
        text("status"),
        sa.Column("step_count", sa.Integer(), nullable=False),
        text("head_hash"),
        sa.Column("chain_ok", sa.Boolean(), nullable=False),
        when("updated_at"),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'error')", name=op.f("ck_tasks_status")
        ),
        sa.PrimaryKeyConstraint("agent_key", "task_id", name=op.f("pk_tasks")),
    )
    op.create_index("ix_tasks_started_at", "tasks", ["started_at"])

    op.create_table(
        "trace_records",
        text("agent_key"),
        text("task_id"),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        text("hash"),
        text("prev_hash"),
        text("step_type"),
        text("step_name", nullable=True),
        text("status"),
        text("action", nullable=True),
        when("timestamp"),
        sa.ForeignKeyConstraint(
            ["agent_key", "task_id"],
            ["tasks.agent_key", "tasks.task_id"],
            name=op.f("fk_trace_records_agent_key_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agent_key", "task_id", "seq", name=op.f("pk_trace_records")),
    )
    op.create_index(
        "ix_trace_records_agent_key_timestamp", "trace_records", ["agent_key", "timestamp"]
    )

    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        text("agent_key"),
        text("task_id", nullable=True),
        text("policy_id"),
        text("severity"),
        text("action"),
        sa.Column("reason", sa.Text(), nullable=False),
        text("status"),
        sa.Column("count", sa.Integer(), nullable=False),
        when("first_seen"),
        when("last_seen"),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("last_seq", sa.Integer(), nullable=True),
        text("acted_by", nullable=True),
        when("acted_at", nullable=True),
        sa.CheckConstraint(
            "action IN ('warn', 'block', 'approval_denied')", name=op.f("ck_incidents_action")
        ),
        sa.CheckConstraint(
            "status IN ('open', 'acknowledged', 'resolved', 'ignored')",
            name=op.f("ck_incidents_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
        sa.UniqueConstraint(
            "agent_key",
            "task_id",
            "policy_id",
            name=op.f("uq_incidents_agent_key_task_id_policy_id"),
        ),
    )
    op.create_index("ix_incidents_status_last_seen", "incidents", ["status", "last_seen"])

    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        text("secret"),
        sa.Column("events", sa.JSON(), nullable=False),
        when("created_at"),
        text("created_by", nullable=True),
        when("deleted_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
    )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        text("event"),
        sa.Column("payload", sa.JSON(), nullable=False),
        text("status"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        when("next_attempt_at"),
        when("last_attempt_at", nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        when("created_at"),
        when("delivered_at", nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')",
            name=op.f("ck_webhook_deliveries_status"),
        ),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
            name=op.f("fk_webhook_deliveries_webhook_id_webhooks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(op.f("ix_webhook_deliveries_webhook_id"), "webhook_deliveries", ["webhook_id"])
    op.create_index(
        "ix_webhook_deliveries_status_next_attempt_at",
        "webhook_deliveries",
        ["status", "next_attempt_at"],
    )


def downgrade() -> None:
    for table in (
        "webhook_deliveries",
        "webhooks",
        "incidents",
        "trace_records",
        "tasks",
        "assignments",
        "policy_set_versions",
        "policy_sets",
        "agents",
        "api_keys",
    ):
        op.drop_table(table)
