"""Trace ingestion: a batch is checked against the stored chains and written whole, with the
incidents its decisions raise.

One SELECT of the task heads per batch, bulk inserts (COPY on PostgreSQL with psycopg). A
batch either goes in whole or not at all; `IngestError` names the first record that
stopped it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from pathguard.canonical import canonical_json
from pathguard.errors import PathguardError, TraceIntegrityError
from pathguard.platform.models import Task, TraceRecordRow, utcnow
from pathguard.platform.store._common import MAX_ID_LENGTH, _when
from pathguard.platform.store.incidents import IncidentChange, _raise_incidents
from pathguard.trace import GENESIS, TraceRecord

__all__ = [
    "IngestError",
    "IngestResult",
    "TaskTail",
    "ingest_traces",
]

_TASK_END: Final = {"task.end": "completed", "task.error": "error"}


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
