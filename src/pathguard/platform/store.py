"""The platform's repository: every read and write the API makes, as functions of a Session.

No function here commits: the caller owns the transaction (`sessions.begin()` in
`pathguard.platform.database`), so a request that fails half-way leaves nothing behind.

The heart is `ingest_traces`: a batch of trace records is validated, checked against the
stored chain of each task (one SELECT of the task heads per batch), and written with bulk
inserts, together with the incidents its decisions raise. A batch either goes in whole or
not at all; `IngestError` names the first record that stopped it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

from sqlalchemy import and_, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from pathguard.canonical import canonical_json
from pathguard.errors import PathguardError, TraceIntegrityError
from pathguard.platform.models import (
    INCIDENT_STATUSES,
    Agent,
    Assignment,
    Base,
    Incident,
    PolicySetRow,
    PolicySetVersion,
    Task,
    TraceRecordRow,
    Webhook,
    WebhookDelivery,
    utcnow,
)
from pathguard.policies import PolicySet
from pathguard.trace import GENESIS, TraceRecord, record_hash

__all__ = [
    "ChainProblem",
    "IncidentChange",
    "IngestError",
    "IngestResult",
    "InvalidTransitionError",
    "NotFoundError",
    "PolicySetView",
    "StoredVerifyResult",
    "TaskTail",
    "assign_policy_sets",
    "count_rows",
    "create_policy_set",
    "create_webhook",
    "delete_policy_set",
    "delete_webhook",
    "due_deliveries",
    "enqueue_event",
    "get_agent",
    "get_incident",
    "get_policy_set",
    "get_task",
    "ingest_traces",
    "list_agents",
    "list_incidents",
    "list_policy_sets",
    "list_tasks",
    "list_webhooks",
    "ping",
    "policy_set_history",
    "policy_sets_for_agent",
    "record_delivery_attempt",
    "record_incident",
    "task_records",
    "unassign_policy_set",
    "update_incident",
    "update_policy_set",
    "upsert_agent",
    "verify_stored",
]

logger = logging.getLogger("pathguard")

MAX_ID_LENGTH: Final = 256
_SEVERITY_RANK: Final = {"low": 0, "medium": 1, "high": 2, "critical": 3}
_ACTION_RANK: Final = {"warn": 0, "approval_denied": 1, "block": 2}
_TASK_END: Final = {"task.end": "completed", "task.error": "error"}
# Which status an incident may move to from each status (reopening is allowed).
_TRANSITIONS: Final = {
    "open": frozenset({"acknowledged", "resolved", "ignored"}),
    "acknowledged": frozenset({"resolved", "ignored", "open"}),
    "resolved": frozenset({"open"}),
    "ignored": frozenset({"open"}),
}


class NotFoundError(PathguardError, LookupError):
    """The agent, policy set, task, incident or webhook asked for does not exist."""


class InvalidTransitionError(PathguardError, ValueError):
    """An incident cannot move from its current status to the one asked for."""


class IngestError(PathguardError, ValueError):
    """A trace batch was refused; nothing of it was stored.

    `kind` is `invalid` (a record is malformed or its hash does not recompute), `forbidden`
    (a record of another agent), `chain` (the batch does not continue the stored chain) or
    `conflict` (a record with a seq already stored under another hash). `index` is the
    record's position in the batch (0-based); `task_id` and `seq` name it when known.
    """

    def __init__(
        self,
        reason: str,
        *,
        kind: Literal["invalid", "forbidden", "chain", "conflict"],
        index: int | None = None,
        task_id: str | None = None,
        seq: int | None = None,
    ) -> None:
        self.reason = reason
        self.kind = kind
        self.index = index
        self.task_id = task_id
        self.seq = seq
        where = []
        if index is not None:
            where.append(f"record {index} of the batch")
        if task_id is not None:
            where.append(f"task {task_id!r}")
        if seq is not None:
            where.append(f"seq {seq}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(f"The batch was not stored. {prefix}{reason}")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TaskTail:
    """Where a task's stored chain ends after a batch, and what the batch did to it."""

    task_id: str
    next_seq: int
    head_hash: str
    stored: int
    duplicates: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class IncidentChange:
    """An incident a batch opened (`created`) or added repeats to."""

    id: int
    task_id: str | None
    policy_id: str
    created: bool


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class IngestResult:
    """What a stored batch did: per task the chain tail and counts, and the incidents."""

    tasks: tuple[TaskTail, ...]
    incidents: tuple[IncidentChange, ...] = ()

    @property
    def stored(self) -> int:
        return sum(t.stored for t in self.tasks)

    @property
    def duplicates(self) -> int:
        return sum(t.duplicates for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stored": self.stored,
            "duplicates": self.duplicates,
            "tasks": [t.to_dict() for t in self.tasks],
        }


# -- trace ingestion --------------------------------------------------------------------------


def _when(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


@dataclasses.dataclass(slots=True)
class _Parsed:
    index: int
    record: TraceRecord
    body: str  # the canonical JSON the hash covers
    when: dt.datetime


def _bad_text(value: str | None) -> bool:
    # PostgreSQL text cannot hold NUL; refuse it on SQLite too so both behave the same.
    return value is not None and (len(value) > MAX_ID_LENGTH or "\x00" in value)


def _parse(index: int, d: Mapping[str, Any], agent_key: str) -> _Parsed:
    task_id = d.get("task_id") if isinstance(d, Mapping) else None
    task = task_id if isinstance(task_id, str) else None
    try:
        record = TraceRecord.from_dict(d)
    except TraceIntegrityError as exc:
        raise IngestError(
            str(exc), kind="invalid", index=index, task_id=task, seq=exc.seq
        ) from None
    except (TypeError, ValueError) as exc:
        raise IngestError(
            f"The record is not a trace record ({exc}).", kind="invalid", index=index, task_id=task
        ) from None
    seq = record.seq
    if record.agent_key != agent_key:
        raise IngestError(
            f"The record belongs to agent {record.agent_key!r}, not {agent_key!r}; send each "
            "agent's records with that agent's key.",
            kind="forbidden",
            index=index,
            task_id=task,
            seq=seq,
        )
    if record.task_id is None:
        raise IngestError(
            "The record has no task_id; the platform stores the records of tasks only.",
            kind="invalid",
            index=index,
            seq=seq,
        )
    for name in ("task_id", "step_type", "step_name", "status"):
        if _bad_text(getattr(record, name)):
            raise IngestError(
                f"The record's {name} is longer than {MAX_ID_LENGTH} characters or holds a "
                "NUL character.",
                kind="invalid",
                index=index,
                task_id=task,
                seq=seq,
            )
    try:
        body = canonical_json(record.body())
    except (TypeError, ValueError) as exc:
        raise IngestError(
            f"The record cannot be put in canonical JSON form ({exc}).",
            kind="invalid",
            index=index,
            task_id=task,
            seq=seq,
        ) from None
    digest = "sha256:" + hashlib.sha256(record.prev_hash.encode("utf-8") + body).hexdigest()
    if digest != record.hash:
        raise IngestError(
            "The record's content does not match its hash: it was changed after it was written.",
            kind="invalid",
            index=index,
            task_id=task,
            seq=seq,
        )
    try:
        when = _when(record.timestamp)
    except (OverflowError, OSError, ValueError):
        raise IngestError(
            f"The record's timestamp {record.timestamp!r} is not a time in seconds since 1970.",
            kind="invalid",
            index=index,
            task_id=task,
            seq=seq,
        ) from None
    return _Parsed(index=index, record=record, body=body.decode("utf-8"), when=when)


@dataclasses.dataclass(slots=True)
class _TaskPlan:
    task_id: str
    exists: bool
    next_seq: int
    head: str
    new: list[_Parsed] = dataclasses.field(default_factory=list)
    duplicates: int = 0
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    status: str | None = None


def _chain_problem(plan: _TaskPlan, items: list[_Parsed]) -> IngestError | None:
    """Check that the new records continue the stored chain; the first problem, if any."""
    expected, head = plan.next_seq, plan.head
    for item in items:
        r = item.record
        if r.seq != expected:
            if expected == 0:
                why = (
                    f"the task has no stored records, so the batch must start at seq 0, not "
                    f"seq {r.seq}."
                )
            else:
                why = (
                    f"the stored chain ends at seq {expected - 1}, so the next record must have "
                    f"seq {expected}, not seq {r.seq}: send the missing records first."
                )
            return IngestError(
                f"The record does not continue its task's chain: {why}",
                kind="chain",
                index=item.index,
                task_id=plan.task_id,
                seq=r.seq,
            )
        if r.prev_hash != head:
            what = "the genesis hash" if expected == 0 else f"the hash of seq {expected - 1}"
            return IngestError(
                f"The record's prev_hash does not match {what}: the chain was changed or forked.",
                kind="chain",
                index=item.index,
                task_id=plan.task_id,
                seq=r.seq,
            )
        expected += 1
        head = r.hash
    return None


def ingest_traces(
    session: Session, agent_key: str, records: Sequence[Mapping[str, Any]]
) -> IngestResult:
    """Store a batch of trace records of one agent, all or nothing.

    Records are grouped by task; within a task they may come in any order. Each task's new
    records must continue its stored chain (the first new record has the stored next seq and
    links to the stored head). A record stored before with the same hash is a duplicate: it
    is accepted and not stored again. Raises IngestError naming the first bad record, having
    written nothing. The caller commits.
    """
    parsed = [_parse(i, d, agent_key) for i, d in enumerate(records)]
    by_task: dict[str, list[_Parsed]] = {}
    for item in parsed:
        by_task.setdefault(item.record.task_id or "", []).append(item)
    if not by_task:
        return IngestResult(tasks=())

    heads = {
        row.task_id: (row.step_count, row.head_hash)
        for row in session.execute(
            select(Task.task_id, Task.step_count, Task.head_hash).where(
                Task.agent_key == agent_key, Task.task_id.in_(list(by_task))
            )
        )
    }
    plans: dict[str, _TaskPlan] = {}
    old: dict[str, list[_Parsed]] = {}
    problems: list[IngestError] = []
    for task_id, items in by_task.items():
        items.sort(key=lambda p: p.record.seq)
        next_seq, head = heads.get(task_id, (0, GENESIS))
        plan = plans[task_id] = _TaskPlan(
            task_id=task_id, exists=task_id in heads, next_seq=next_seq, head=head
        )
        seen: dict[int, _Parsed] = {}
        for item in items:
            twin = seen.get(item.record.seq)
            if twin is not None:
                if twin.record.hash != item.record.hash:
                    problems.append(_conflict(item, "another record of this batch"))
                    break
                plan.duplicates += 1
                continue
            seen[item.record.seq] = item
            if item.record.seq < next_seq:
                old.setdefault(task_id, []).append(item)
            else:
                plan.new.append(item)
        problem = _chain_problem(plan, plan.new)
        if problem is not None:
            problems.append(problem)
    problems.extend(_check_duplicates(session, agent_key, old, plans))
    if problems:
        raise min(problems, key=lambda p: p.index if p.index is not None else -1)

    try:
        incidents = _write(session, agent_key, plans)
    except OperationalError as exc:
        if session.get_bind().dialect.name != "sqlite" or "locked" not in str(exc.orig):
            raise
        raise IngestError(
            "Another batch was being stored at the same time; send this batch again.",
            kind="conflict",
        ) from exc
    except IntegrityError as exc:
        raise IngestError(
            "Another batch for the same task was stored at the same time; send this batch "
            "again to have it checked against the chain as it is now.",
            kind="conflict",
        ) from exc
    return IngestResult(
        tasks=tuple(
            TaskTail(
                task_id=p.task_id,
                next_seq=p.next_seq + len(p.new),
                head_hash=p.new[-1].record.hash if p.new else p.head,
                stored=len(p.new),
                duplicates=p.duplicates,
            )
            for p in plans.values()
        ),
        incidents=incidents,
    )


def _conflict(item: _Parsed, where: str) -> IngestError:
    return IngestError(
        f"A record with this seq is already in {where} with a different hash: the chain was "
        "forked or a record was changed after it was sent.",
        kind="conflict",
        index=item.index,
        task_id=item.record.task_id,
        seq=item.record.seq,
    )


def _check_duplicates(
    session: Session, agent_key: str, old: dict[str, list[_Parsed]], plans: dict[str, _TaskPlan]
) -> list[IngestError]:
    """Compare records below a task's stored next seq with what is stored (one SELECT)."""
    if not old:
        return []
    ranges = [
        and_(
            TraceRecordRow.task_id == task_id,
            TraceRecordRow.seq.between(items[0].record.seq, items[-1].record.seq),
        )
        for task_id, items in old.items()
    ]
    stored = {
        (row.task_id, row.seq): row.hash
        for row in session.execute(
            select(TraceRecordRow.task_id, TraceRecordRow.seq, TraceRecordRow.hash).where(
                TraceRecordRow.agent_key == agent_key, or_(*ranges)
            )
        )
    }
    problems = []
    for task_id, items in old.items():
        for item in items:
            if stored.get((task_id, item.record.seq)) != item.record.hash:
                problems.append(_conflict(item, "the stored chain"))
                break
            plans[task_id].duplicates += 1
    return problems


def _write(
    session: Session, agent_key: str, plans: dict[str, _TaskPlan]
) -> tuple[IncidentChange, ...]:
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for plan in plans.values():
        for item in plan.new:
            r = item.record
            when = item.when
            if r.seq == 0:
                plan.started_at = when
            ended = _TASK_END.get(r.step_type)
            if ended is not None and r.status != "blocked":
                plan.ended_at, plan.status = when, ended
            decision = r.decision
            action = decision.get("action") if isinstance(decision, dict) else None
            rows.append(
                {
                    "agent_key": agent_key,
                    "task_id": plan.task_id,
                    "seq": r.seq,
                    "record": item.body,
                    "hash": r.hash,
                    "prev_hash": r.prev_hash,
                    "step_type": r.step_type,
                    "step_name": r.step_name,
                    "status": r.status,
                    "action": action if isinstance(action, str) and len(action) < 64 else None,
                    "timestamp": when,
                }
            )
    created = [p for p in plans.values() if not p.exists and p.new]
    changed = [p for p in plans.values() if p.exists and p.new]
    if created:
        session.execute(
            insert(Task),
            [
                {
                    "agent_key": agent_key,
                    "task_id": p.task_id,
                    "started_at": p.started_at,
                    "ended_at": p.ended_at,
                    "status": p.status or "running",
                    "step_count": p.next_seq + len(p.new),
                    "head_hash": p.new[-1].record.hash,
                    "chain_ok": True,
                    "updated_at": now,
                }
                for p in created
            ],
        )
    for p in changed:
        values: dict[str, Any] = {
            "step_count": p.next_seq + len(p.new),
            "head_hash": p.new[-1].record.hash,
            "updated_at": now,
        }
        if p.status is not None:
            values["status"], values["ended_at"] = p.status, p.ended_at
        session.execute(
            update(Task)
            .where(Task.agent_key == agent_key, Task.task_id == p.task_id)
            .values(**values)
        )
    if rows:
        _insert_records(session, rows)
    return _raise_incidents(session, agent_key, plans)


_RECORD_COLUMNS: Final = (
    "agent_key",
    "task_id",
    "seq",
    "record",
    "hash",
    "prev_hash",
    "step_type",
    "step_name",
    "status",
    "action",
    "timestamp",
)


def _insert_records(session: Session, rows: list[dict[str, Any]]) -> None:
    connection = session.connection()
    if connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg":
        # COPY is several times faster than INSERT for the bulk of a batch; it runs in the
        # session's transaction, so a later failure still rolls it back.
        import psycopg

        dbapi: Any = connection.connection.dbapi_connection
        statement = f"COPY trace_records ({', '.join(_RECORD_COLUMNS)}) FROM STDIN"
        try:
            with dbapi.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(tuple(row[c] for c in _RECORD_COLUMNS))
        except psycopg.IntegrityError as exc:
            raise IntegrityError(statement, None, exc) from exc
        return
    session.execute(insert(TraceRecordRow), rows)


@dataclasses.dataclass(slots=True)
class _Seen:
    severity: str
    action: str
    reason: str
    count: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    seq: int
    last_seq: int


def _incident_action(record: TraceRecord, violation: Mapping[str, Any]) -> str | None:
    effect = violation.get("effect")
    if violation.get("mode") == "shadow":
        return None
    if effect == "warn" or effect == "block":
        return str(effect)
    if effect == "approve" and record.status == "blocked":
        return "approval_denied"  # an approval that was granted is not an incident
    return None


def _violations(plans: Iterable[_TaskPlan]) -> dict[tuple[str, str], _Seen]:
    found: dict[tuple[str, str], _Seen] = {}
    for plan in plans:
        for item in plan.new:
            r = item.record
            decision = r.decision
            if not isinstance(decision, dict):
                continue
            violations = decision.get("violations")
            if not isinstance(violations, list):
                continue
            for v in violations:
                if not isinstance(v, dict) or not isinstance(v.get("policy_id"), str):
                    continue
                action = _incident_action(r, v)
                if action is None:
                    continue
                severity = v.get("severity")
                severity = severity if severity in _SEVERITY_RANK else "medium"
                raw_reason = v.get("reason")
                reason = raw_reason if isinstance(raw_reason, str) else ""
                when = item.when
                key = (plan.task_id, v["policy_id"])
                seen = found.get(key)
                if seen is None:
                    found[key] = _Seen(severity, action, reason, 1, when, when, r.seq, r.seq)
                    continue
                seen.count += 1
                seen.last_seen, seen.last_seq, seen.reason = when, r.seq, reason or seen.reason
                seen.severity = _stronger(seen.severity, severity, _SEVERITY_RANK)
                seen.action = _stronger(seen.action, action, _ACTION_RANK)
    return found


def _stronger(a: str, b: str, rank: Mapping[str, int]) -> str:
    return b if rank.get(b, -1) > rank.get(a, -1) else a


def _raise_incidents(
    session: Session, agent_key: str, plans: dict[str, _TaskPlan]
) -> tuple[IncidentChange, ...]:
    found = _violations(plans.values())
    if not found:
        return ()
    existing = {
        (i.task_id or "", i.policy_id): i
        for i in session.scalars(
            select(Incident).where(
                Incident.agent_key == agent_key,
                Incident.task_id.in_({task for task, _ in found}),
                Incident.policy_id.in_({policy for _, policy in found}),
            )
        )
    }
    changes = []
    fresh = []
    for (task_id, policy_id), seen in found.items():
        incident = existing.get((task_id, policy_id))
        if incident is None:
            incident = Incident(
                agent_key=agent_key,
                task_id=task_id,
                policy_id=policy_id,
                severity=seen.severity,
                action=seen.action,
                reason=seen.reason,
                status="open",
                count=seen.count,
                first_seen=seen.first_seen,
                last_seen=seen.last_seen,
                seq=seen.seq,
                last_seq=seen.last_seq,
            )
            session.add(incident)
            fresh.append(incident)
            continue
        _repeat(incident, seen)
        changes.append(incident)
    session.flush()
    return tuple(
        IncidentChange(id=i.id, task_id=i.task_id, policy_id=i.policy_id, created=i in fresh)
        for i in (*fresh, *changes)
    )


def _repeat(incident: Incident, seen: _Seen) -> None:
    incident.count += seen.count
    incident.last_seen = max(incident.last_seen, seen.last_seen)
    incident.last_seq = seen.last_seq
    incident.reason = seen.reason or incident.reason
    incident.severity = _stronger(incident.severity, seen.severity, _SEVERITY_RANK)
    incident.action = _stronger(incident.action, seen.action, _ACTION_RANK)
    if incident.status == "resolved":
        # It was fixed and came back; an ignored incident stays ignored.
        incident.status = "open"


def record_incident(
    session: Session,
    *,
    agent_key: str,
    task_id: str | None,
    policy_id: str,
    severity: str,
    action: str,
    reason: str,
    seen_at: dt.datetime | None = None,
    seq: int | None = None,
) -> IncidentChange:
    """Open an incident, or count a repeat of it (e.g. from a registration decision)."""
    when = seen_at or utcnow()
    clause = Incident.task_id.is_(None) if task_id is None else Incident.task_id == task_id
    incident = session.scalars(
        select(Incident).where(
            Incident.agent_key == agent_key, clause, Incident.policy_id == policy_id
        )
    ).first()
    seen = _Seen(severity, action, reason, 1, when, when, seq or 0, seq or 0)
    if incident is not None:
        _repeat(incident, seen)
        if seq is None:
            incident.last_seq = None
        session.flush()
        return IncidentChange(id=incident.id, task_id=task_id, policy_id=policy_id, created=False)
    incident = Incident(
        agent_key=agent_key,
        task_id=task_id,
        policy_id=policy_id,
        severity=severity,
        action=action,
        reason=reason,
        status="open",
        count=1,
        first_seen=when,
        last_seen=when,
        seq=seq,
        last_seq=seq,
    )
    session.add(incident)
    session.flush()
    return IncidentChange(id=incident.id, task_id=task_id, policy_id=policy_id, created=True)


# -- verification of what is stored -----------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ChainProblem:
    """The first record of a stored task that does not verify, and why (a full sentence)."""

    agent_key: str
    task_id: str
    seq: int | None
    reason: str

    def __str__(self) -> str:
        at = f", seq {self.seq}" if self.seq is not None else ""
        return f"task {self.task_id!r} of agent {self.agent_key!r}{at}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class StoredVerifyResult:
    """The outcome of re-checking stored chains: one problem per broken task, in order."""

    tasks: int
    records: int
    problems: tuple[ChainProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_error(self) -> ChainProblem | None:
        return self.problems[0] if self.problems else None

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tasks": self.tasks,
            "records": self.records,
            "first_error": None if self.first_error is None else self.first_error.to_dict(),
            "problems": [p.to_dict() for p in self.problems],
        }


def _row_problem(row: TraceRecordRow, expected_seq: int, head: str) -> tuple[str, str | None]:
    """Why a stored row does not verify (or "" when it does), and its hash for the next row."""
    try:
        body = json.loads(row.record)
    except ValueError:
        return "The stored record is not valid JSON.", None
    if not isinstance(body, dict) or "hash" in body:
        return "The stored record is not a record body.", None
    full = {**body, "hash": row.hash}
    try:
        TraceRecord.from_dict(full)
        recomputed = record_hash(str(body.get("prev_hash")), body)
    except (TraceIntegrityError, TypeError, ValueError) as exc:
        return f"The stored record is not a valid trace record ({exc}).", None
    if recomputed != row.hash:
        return (
            "The record's content does not match its hash: it was changed after it was stored."
        ), None
    decision = body.get("decision")
    action = decision.get("action") if isinstance(decision, dict) else None
    copies = {
        "seq": (body["seq"], row.seq),
        "prev_hash": (body["prev_hash"], row.prev_hash),
        "agent_key": (body["agent_key"], row.agent_key),
        "task_id": (body["task_id"], row.task_id),
        "step_type": (body["step_type"], row.step_type),
        "step_name": (body.get("step_name"), row.step_name),
        "status": (body["status"], row.status),
        "action": (action, row.action),
        "timestamp": (_when(float(body["timestamp"])), row.timestamp),
    }
    for column, (recorded, stored) in copies.items():
        if recorded != stored:
            return (
                f"The {column} column ({stored!r}) differs from the record ({recorded!r}): "
                "the row was edited after it was stored."
            ), None
    if row.seq != expected_seq:
        if row.seq > expected_seq:
            return (
                f"Seq {expected_seq} of this task is missing: a stored record was deleted."
            ), None
        return f"Seq {row.seq} appears twice in this task.", None
    if row.prev_hash != head:
        what = "the genesis hash" if row.seq == 0 else f"the hash of seq {row.seq - 1}"
        return (
            f"The record's prev_hash does not match {what}: the record before it was changed "
            "or replaced."
        ), None
    return "", row.hash


def verify_stored(
    session: Session,
    agent_key: str | None = None,
    task_id: str | None = None,
    *,
    update_status: bool = True,
) -> StoredVerifyResult:
    """Re-read stored records and recompute each task's chain; name the first broken record.

    Also checks that the columns copied out of each record still agree with it, and that the
    chain reaches the head and length the task row remembers (which catches records deleted
    from the end). With `update_status`, each checked task's `chain_ok` is set accordingly.
    """
    task_query = select(Task).order_by(Task.agent_key, Task.task_id)
    row_query = select(TraceRecordRow).order_by(
        TraceRecordRow.agent_key, TraceRecordRow.task_id, TraceRecordRow.seq
    )
    if agent_key is not None:
        task_query = task_query.where(Task.agent_key == agent_key)
        row_query = row_query.where(TraceRecordRow.agent_key == agent_key)
    if task_id is not None:
        task_query = task_query.where(Task.task_id == task_id)
        row_query = row_query.where(TraceRecordRow.task_id == task_id)
    tasks = {(t.agent_key, t.task_id): t for t in session.scalars(task_query)}
    state: dict[tuple[str, str], tuple[int, str, ChainProblem | None]] = {
        key: (0, GENESIS, None) for key in tasks
    }
    count = 0
    for row in session.scalars(row_query.execution_options(yield_per=1000)):
        count += 1
        key = (row.agent_key, row.task_id)
        expected, head, problem = state.get(key, (0, GENESIS, None))
        if problem is not None:
            continue
        reason, new_head = _row_problem(row, expected, head)
        if reason:
            state[key] = (
                expected,
                head,
                ChainProblem(
                    agent_key=row.agent_key, task_id=row.task_id, seq=row.seq, reason=reason
                ),
            )
        else:
            state[key] = (row.seq + 1, new_head or head, None)
    problems = []
    for key, (next_seq, head, problem) in state.items():
        task = tasks.get(key)
        if (
            problem is None
            and task is not None
            and (task.step_count != next_seq or task.head_hash != head)
        ):
            problem = ChainProblem(
                agent_key=key[0],
                task_id=key[1],
                seq=next_seq if next_seq < task.step_count else None,
                reason=(
                    f"The task has {task.step_count} records ending in hash {task.head_hash}, "
                    f"but the stored chain has {next_seq}: records were deleted from the end or "
                    "the task row was edited."
                ),
            )
        if problem is not None:
            problems.append(problem)
        if update_status and task is not None and task.chain_ok != (problem is None):
            task.chain_ok = problem is None
    problems.sort(key=lambda p: (p.agent_key, p.task_id))
    if update_status:
        session.flush()
    for p in problems:
        logger.warning("a stored trace chain does not verify: %s", p)
    return StoredVerifyResult(tasks=len(state), records=count, problems=tuple(problems))


# -- tasks ------------------------------------------------------------------------------------


def get_task(session: Session, agent_key: str, task_id: str) -> Task | None:
    """A task's summary row."""
    return session.get(Task, (agent_key, task_id))


def list_tasks(
    session: Session,
    *,
    agent_key: str | None = None,
    task_id: str | None = None,
    status: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Task]:
    """Tasks, most recently updated first."""
    query = select(Task)
    if agent_key is not None:
        query = query.where(Task.agent_key == agent_key)
    if task_id is not None:
        query = query.where(Task.task_id == task_id)
    if status is not None:
        query = query.where(Task.status == status)
    if since is not None:
        query = query.where(Task.started_at >= since)
    if until is not None:
        query = query.where(Task.started_at < until)
    query = query.order_by(Task.updated_at.desc(), Task.agent_key, Task.task_id)
    return list(session.scalars(query.limit(limit).offset(offset)))


def task_records(
    session: Session, agent_key: str, task_id: str, *, after_seq: int = -1, limit: int = 10_000
) -> list[dict[str, Any]]:
    """A task's stored records as trace-record dicts (with `hash`), in seq order."""
    rows = session.execute(
        select(TraceRecordRow.record, TraceRecordRow.hash)
        .where(
            TraceRecordRow.agent_key == agent_key,
            TraceRecordRow.task_id == task_id,
            TraceRecordRow.seq > after_seq,
        )
        .order_by(TraceRecordRow.seq)
        .limit(limit)
    )
    return [{**json.loads(record), "hash": digest} for record, digest in rows]


# -- agents -----------------------------------------------------------------------------------


def upsert_agent(
    session: Session,
    *,
    key: str,
    name: str,
    purpose: str,
    owner: str | None = None,
    tools: Sequence[str] = (),
    risk_classification: str = "minimal",
    environment: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    decision: Mapping[str, Any] | None = None,
) -> tuple[Agent, bool]:
    """Register an agent or update its declaration; returns it and whether it is new."""
    now = utcnow()
    agent = session.get(Agent, key)
    created = agent is None
    if agent is None:
        agent = Agent(key=key, registered_at=now, name=name, purpose=purpose)
        session.add(agent)
    agent.name = name
    agent.purpose = purpose
    agent.owner = owner
    agent.tools = list(tools)
    agent.risk_classification = risk_classification
    agent.environment = environment
    agent.meta = dict(metadata or {})
    agent.decision = None if decision is None else dict(decision)
    agent.updated_at = now
    session.flush()
    return agent, created


def get_agent(session: Session, key: str) -> Agent | None:
    """A registered agent, or None."""
    return session.get(Agent, key)


def list_agents(session: Session) -> list[Agent]:
    """Every registered agent, by key."""
    return list(session.scalars(select(Agent).order_by(Agent.key)))


# -- policy sets ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PolicySetView:
    """A policy set at one version."""

    id: int
    name: str
    version: int
    document: dict[str, Any]
    digest: str
    created_at: dt.datetime
    created_by: str | None
    deleted_at: dt.datetime | None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["created_at"] = self.created_at.isoformat()
        d["deleted_at"] = None if self.deleted_at is None else self.deleted_at.isoformat()
        return d


def _view(row: PolicySetRow, version: PolicySetVersion) -> PolicySetView:
    return PolicySetView(
        id=row.id,
        name=row.name,
        version=version.version,
        document=version.document,
        digest=version.digest,
        created_at=version.created_at,
        created_by=version.created_by,
        deleted_at=row.deleted_at,
    )


def _validated(document: Mapping[str, Any]) -> PolicySet:
    """The document as a PolicySet; PolicyLoadError listing every problem otherwise."""
    return PolicySet.from_dict(document, source="<policy set>")


def create_policy_set(
    session: Session, document: Mapping[str, Any], *, created_by: str | None = None
) -> PolicySetView:
    """Store a validated policy document as version 1 of a new set (named by the document)."""
    policy_set = _validated(document)
    now = utcnow()
    row = PolicySetRow(name=policy_set.name, current_version=1, created_at=now)
    session.add(row)
    session.flush()
    version = PolicySetVersion(
        policy_set_id=row.id,
        version=1,
        document=policy_set.to_dict(),
        digest=policy_set.digest,
        created_at=now,
        created_by=created_by,
    )
    session.add(version)
    session.flush()
    return _view(row, version)


def _live_row(session: Session, set_id: int) -> PolicySetRow:
    row = session.get(PolicySetRow, set_id)
    if row is None or row.deleted_at is not None:
        raise NotFoundError(f"There is no policy set {set_id}; list them with GET /v1/policy-sets.")
    return row


def update_policy_set(
    session: Session, set_id: int, document: Mapping[str, Any], *, created_by: str | None = None
) -> PolicySetView:
    """Store a new version of a policy set (the old versions are kept)."""
    policy_set = _validated(document)
    row = _live_row(session, set_id)
    row.current_version += 1
    row.name = policy_set.name
    version = PolicySetVersion(
        policy_set_id=row.id,
        version=row.current_version,
        document=policy_set.to_dict(),
        digest=policy_set.digest,
        created_at=utcnow(),
        created_by=created_by,
    )
    session.add(version)
    session.flush()
    return _view(row, version)


def delete_policy_set(session: Session, set_id: int) -> None:
    """Soft-delete a policy set: it stops applying to agents, its versions are kept."""
    row = _live_row(session, set_id)
    row.deleted_at = utcnow()
    session.flush()


def get_policy_set(
    session: Session, set_id: int, *, version: int | None = None, include_deleted: bool = False
) -> PolicySetView | None:
    """A policy set at its current version (or at `version`), or None."""
    row = session.get(PolicySetRow, set_id)
    if row is None or (row.deleted_at is not None and not include_deleted):
        return None
    stored = session.get(PolicySetVersion, (set_id, version or row.current_version))
    return None if stored is None else _view(row, stored)


def list_policy_sets(session: Session, *, include_deleted: bool = False) -> list[PolicySetView]:
    """Every policy set at its current version, by id."""
    query = (
        select(PolicySetRow, PolicySetVersion)
        .join(
            PolicySetVersion,
            and_(
                PolicySetVersion.policy_set_id == PolicySetRow.id,
                PolicySetVersion.version == PolicySetRow.current_version,
            ),
        )
        .order_by(PolicySetRow.id)
    )
    if not include_deleted:
        query = query.where(PolicySetRow.deleted_at.is_(None))
    return [_view(row, version) for row, version in session.execute(query)]


def policy_set_history(session: Session, set_id: int) -> list[PolicySetView]:
    """Every version of a policy set, oldest first."""
    row = session.get(PolicySetRow, set_id)
    if row is None:
        return []
    versions = session.scalars(
        select(PolicySetVersion)
        .where(PolicySetVersion.policy_set_id == set_id)
        .order_by(PolicySetVersion.version)
    )
    return [_view(row, v) for v in versions]


# -- assignments ------------------------------------------------------------------------------


def assign_policy_sets(
    session: Session,
    agent_key: str,
    set_ids: Iterable[int],
    *,
    replace: bool = False,
    created_by: str | None = None,
) -> list[int]:
    """Apply policy sets to an agent (`replace=True` drops the others); returns its set ids."""
    wanted = list(dict.fromkeys(set_ids))
    for set_id in wanted:
        _live_row(session, set_id)
    current = set(
        session.scalars(select(Assignment.policy_set_id).where(Assignment.agent_key == agent_key))
    )
    if replace:
        for set_id in current - set(wanted):
            unassign_policy_set(session, agent_key, set_id)
        current &= set(wanted)
    now = utcnow()
    for set_id in wanted:
        if set_id not in current:
            session.add(
                Assignment(
                    agent_key=agent_key, policy_set_id=set_id, created_at=now, created_by=created_by
                )
            )
    session.flush()
    return [v.id for v in policy_sets_for_agent(session, agent_key)]


def unassign_policy_set(session: Session, agent_key: str, set_id: int) -> bool:
    """Stop applying a policy set to an agent; False when it was not applied."""
    row = session.get(Assignment, (agent_key, set_id))
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def policy_sets_for_agent(session: Session, agent_key: str) -> list[PolicySetView]:
    """The live policy sets applied to an agent, at their current versions, by id."""
    query = (
        select(PolicySetRow, PolicySetVersion)
        .join(Assignment, Assignment.policy_set_id == PolicySetRow.id)
        .join(
            PolicySetVersion,
            and_(
                PolicySetVersion.policy_set_id == PolicySetRow.id,
                PolicySetVersion.version == PolicySetRow.current_version,
            ),
        )
        .where(Assignment.agent_key == agent_key, PolicySetRow.deleted_at.is_(None))
        .order_by(PolicySetRow.id)
    )
    return [_view(row, version) for row, version in session.execute(query)]


# -- incidents --------------------------------------------------------------------------------


def get_incident(session: Session, incident_id: int) -> Incident | None:
    """An incident by id, or None."""
    return session.get(Incident, incident_id)


def list_incidents(
    session: Session,
    *,
    agent_key: str | None = None,
    task_id: str | None = None,
    status: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Incident]:
    """Incidents, most recently seen first."""
    query = select(Incident)
    if agent_key is not None:
        query = query.where(Incident.agent_key == agent_key)
    if task_id is not None:
        query = query.where(Incident.task_id == task_id)
    if status is not None:
        query = query.where(Incident.status == status)
    if since is not None:
        query = query.where(Incident.last_seen >= since)
    if until is not None:
        query = query.where(Incident.first_seen < until)
    query = query.order_by(Incident.last_seen.desc(), Incident.id.desc())
    return list(session.scalars(query.limit(limit).offset(offset)))


def update_incident(
    session: Session, incident_id: int, *, status: str, acted_by: str | None
) -> Incident:
    """Move an incident to `status` (open → acknowledged → resolved or ignored), noting who
    and when. NotFoundError or InvalidTransitionError when it cannot."""
    if status not in INCIDENT_STATUSES:
        raise InvalidTransitionError(
            f"{status!r} is not an incident status; use one of {', '.join(INCIDENT_STATUSES)}."
        )
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise NotFoundError(f"There is no incident {incident_id}.")
    if status != incident.status and status not in _TRANSITIONS[incident.status]:
        allowed = ", ".join(sorted(_TRANSITIONS[incident.status]))
        raise InvalidTransitionError(
            f"An incident that is {incident.status} cannot become {status}; it can become "
            f"{allowed}."
        )
    incident.status = status
    incident.acted_by = acted_by
    incident.acted_at = utcnow()
    session.flush()
    return incident


# -- webhooks ---------------------------------------------------------------------------------


def create_webhook(
    session: Session,
    *,
    url: str,
    secret: str,
    events: Sequence[str] = ("incident.created",),
    created_by: str | None = None,
) -> Webhook:
    """Subscribe `url` to events; deliveries are signed with `secret`."""
    hook = Webhook(url=url, secret=secret, events=list(events), created_by=created_by)
    session.add(hook)
    session.flush()
    return hook


def list_webhooks(session: Session) -> list[Webhook]:
    """The webhooks that are not deleted, by id."""
    return list(
        session.scalars(select(Webhook).where(Webhook.deleted_at.is_(None)).order_by(Webhook.id))
    )


def delete_webhook(session: Session, webhook_id: int) -> None:
    """Stop a webhook (soft delete; its delivery log is kept)."""
    hook = session.get(Webhook, webhook_id)
    if hook is None or hook.deleted_at is not None:
        raise NotFoundError(f"There is no webhook {webhook_id}.")
    hook.deleted_at = utcnow()
    session.flush()


def enqueue_event(session: Session, event: str, payload: Mapping[str, Any]) -> list[int]:
    """Queue one delivery of an event to every webhook subscribed to it; their ids."""
    hooks = [h for h in list_webhooks(session) if event in h.events]
    deliveries = [
        WebhookDelivery(webhook_id=h.id, event=event, payload=dict(payload), status="pending")
        for h in hooks
    ]
    session.add_all(deliveries)
    session.flush()
    return [d.id for d in deliveries]


def due_deliveries(
    session: Session, *, now: dt.datetime | None = None, limit: int = 50
) -> list[WebhookDelivery]:
    """Pending deliveries whose next attempt is due, oldest first."""
    query = (
        select(WebhookDelivery)
        .where(
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= (now or utcnow()),
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Several workers may send at once; each takes different rows.
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


def record_delivery_attempt(
    session: Session,
    delivery_id: int,
    *,
    ok: bool,
    response_status: int | None = None,
    error: str | None = None,
    retry_at: dt.datetime | None = None,
) -> WebhookDelivery:
    """Log one attempt: delivered, to be retried at `retry_at`, or failed for good."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise NotFoundError(f"There is no webhook delivery {delivery_id}.")
    now = utcnow()
    delivery.attempts += 1
    delivery.last_attempt_at = now
    delivery.response_status = response_status
    delivery.error = error
    if ok:
        delivery.status, delivery.delivered_at = "delivered", now
    elif retry_at is not None:
        delivery.next_attempt_at = retry_at
    else:
        delivery.status = "failed"
    session.flush()
    return delivery


# -- health -----------------------------------------------------------------------------------


def ping(session: Session) -> None:
    """Raise if the database cannot answer a trivial query (for /healthz)."""
    session.execute(text("SELECT 1")).scalar_one()


def count_rows(session: Session, model: type[Base]) -> int:
    """How many rows a table holds (for metrics)."""
    return int(session.scalar(select(func.count()).select_from(model)) or 0)
