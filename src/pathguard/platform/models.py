"""The platform's tables, as SQLAlchemy 2 typed ORM classes.

```
api_keys             id (key id, the public part of a key), salt, hash, kdf, admin, agent_key,
                     created_at, revoked_at; an admin key has no agent, an agent key has one
agents               key, name, purpose, owner, tools, risk_classification, environment,
                     metadata, decision (the last registration decision), registered_at, updated_at
policy_sets          id, name, current_version, created_at, deleted_at (deletes are soft)
policy_set_versions  (policy_set_id, version), document, digest, created_at, created_by;
                     every change is a new row, old ones are kept
assignments          (agent_key, policy_set_id), created_at, created_by
tasks                (agent_key, task_id), started_at, ended_at, status (running, completed,
                     error), step_count (= the next seq), head_hash, chain_ok, updated_at
trace_records        (agent_key, task_id, seq), record (the canonical JSON of the whole record),
                     hash, prev_hash, step_type, step_name, status, action, timestamp
incidents            id; (agent_key, task_id, policy_id) unique; severity, action (warn, block,
                     approval_denied, approval_required), reason, status (open,
                     acknowledged, resolved, ignored), count, first_seen, last_seen,
                     seq (the first step), last_seq, acted_by, acted_at
webhooks             id, url, secret, events, created_at, created_by, deleted_at
webhook_deliveries   id, webhook_id, event, payload, status (pending, delivered, failed),
                     attempts, next_attempt_at, last_attempt_at, response_status, error,
                     created_at, delivered_at
```

A trace record is kept as the canonical JSON text it was hashed from, not as a JSON column:
the stored bytes are then exactly what the hash covers (PostgreSQL's jsonb would reorder keys
and refuses `\\u0000`), and the chain can be recomputed from the row alone. The other columns of
`trace_records` are copies for querying; `verify_stored` checks that they still agree.
Agent keys and task ids have no foreign key to `agents`: an agent may write traces before
(or without) registering. All times are timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "INCIDENT_ACTIONS",
    "INCIDENT_STATUSES",
    "TASK_STATUSES",
    "Agent",
    "ApiKey",
    "Assignment",
    "Base",
    "Incident",
    "PolicySetRow",
    "PolicySetVersion",
    "Task",
    "TraceRecordRow",
    "UTCDateTime",
    "Webhook",
    "WebhookDelivery",
    "utcnow",
]

INCIDENT_STATUSES: Final = ("open", "acknowledged", "resolved", "ignored")
INCIDENT_ACTIONS: Final = ("warn", "block", "approval_denied", "approval_required")
TASK_STATUSES: Final = ("running", "completed", "error")
DELIVERY_STATUSES: Final = ("pending", "delivered", "failed")

# Named constraints, so that later migrations can refer to them on every database.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored as UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(
                f"The time {value.isoformat()} has no time zone; pass an aware datetime "
                "(for example datetime.now(datetime.UTC))."
            )
        value = value.astimezone(dt.UTC)
        # SQLite stores the text as given; without the zone all stored times compare as UTC.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """The declarative base of every platform table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
        str: String(),
    }


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class ApiKey(Base):
    """A hashed API key: admin (no agent) or bound to one agent."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(
            "(admin AND agent_key IS NULL) OR (NOT admin AND agent_key IS NOT NULL)",
            name="admin_or_agent",
        ),
    )

    id: Mapped[str] = mapped_column(primary_key=True)
    salt: Mapped[str]
    hash: Mapped[str]
    kdf: Mapped[str]
    admin: Mapped[bool] = mapped_column(Boolean())
    agent_key: Mapped[str | None] = mapped_column(index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]


class Agent(Base):
    """A registered agent and its declaration."""

    __tablename__ = "agents"

    key: Mapped[str] = mapped_column(primary_key=True)
    name: Mapped[str]
    purpose: Mapped[str] = mapped_column(Text())
    owner: Mapped[str | None]
    tools: Mapped[list[Any]] = mapped_column(default=list)
    risk_classification: Mapped[str] = mapped_column(default="minimal")
    environment: Mapped[str | None]
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    decision: Mapped[dict[str, Any] | None]
    registered_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PolicySetRow(Base):
    """A named, versioned policy document; `deleted_at` marks a soft delete."""

    __tablename__ = "policy_sets"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    name: Mapped[str]
    current_version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[dt.datetime | None]


class PolicySetVersion(Base):
    """One version of a policy set's document; never changed once written."""

    __tablename__ = "policy_set_versions"

    policy_set_id: Mapped[int] = mapped_column(
        ForeignKey("policy_sets.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(primary_key=True)
    document: Mapped[dict[str, Any]]
    digest: Mapped[str]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None]


class Assignment(Base):
    """A policy set applied to an agent."""

    __tablename__ = "assignments"

    agent_key: Mapped[str] = mapped_column(primary_key=True)
    policy_set_id: Mapped[int] = mapped_column(
        ForeignKey("policy_sets.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None]


class Task(Base):
    """One task's chain state and summary, kept in step with its trace records."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(_one_of("status", TASK_STATUSES), name="status"),
        Index("ix_tasks_started_at", "started_at"),
    )

    agent_key: Mapped[str] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(primary_key=True)
    started_at: Mapped[dt.datetime | None]
    ended_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(default="running")
    step_count: Mapped[int] = mapped_column(default=0)
    head_hash: Mapped[str]
    chain_ok: Mapped[bool] = mapped_column(Boolean(), default=True)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class TraceRecordRow(Base):
    """One stored trace record: its canonical JSON plus columns copied out for queries."""

    __tablename__ = "trace_records"
    __table_args__ = (
        ForeignKeyConstraint(
            ["agent_key", "task_id"], ["tasks.agent_key", "tasks.task_id"], ondelete="CASCADE"
        ),
        Index("ix_trace_records_agent_key_timestamp", "agent_key", "timestamp"),
    )

    agent_key: Mapped[str] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True)
    record: Mapped[str] = mapped_column(Text())
    hash: Mapped[str]
    prev_hash: Mapped[str]
    step_type: Mapped[str]
    step_name: Mapped[str | None]
    status: Mapped[str]
    action: Mapped[str | None]
    timestamp: Mapped[dt.datetime]


class Incident(Base):
    """A policy violation in one task, with how often it repeated and who acted on it."""

    __tablename__ = "incidents"
    __table_args__ = (
        UniqueConstraint("agent_key", "task_id", "policy_id"),
        CheckConstraint(_one_of("status", INCIDENT_STATUSES), name="status"),
        CheckConstraint(_one_of("action", INCIDENT_ACTIONS), name="action"),
        Index("ix_incidents_status_last_seen", "status", "last_seen"),
    )

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    agent_key: Mapped[str]
    task_id: Mapped[str | None]
    policy_id: Mapped[str]
    severity: Mapped[str]
    action: Mapped[str]
    reason: Mapped[str] = mapped_column(Text())
    status: Mapped[str] = mapped_column(default="open")
    count: Mapped[int] = mapped_column(default=1)
    first_seen: Mapped[dt.datetime]
    last_seen: Mapped[dt.datetime]
    seq: Mapped[int | None]
    last_seq: Mapped[int | None]
    acted_by: Mapped[str | None]
    acted_at: Mapped[dt.datetime | None]


class Webhook(Base):
    """A subscription to incident events; `secret` signs each delivery (HMAC-SHA256)."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(Text())
    secret: Mapped[str]
    events: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None]
    deleted_at: Mapped[dt.datetime | None]


class WebhookDelivery(Base):
    """One event to deliver to one webhook, with its attempts and outcome."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(_one_of("status", DELIVERY_STATUSES), name="status"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    webhook_id: Mapped[int] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str]
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[dt.datetime | None]
    response_status: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text())
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[dt.datetime | None]
