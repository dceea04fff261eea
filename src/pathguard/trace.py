"""The tamper-evident trace: records, the per-task hash chain, sinks and verification.

Every recorded behaviour becomes a `TraceRecord`. The records of one task form a hash chain:
each carries the hash of the record before it (`prev_hash`; the first carries `GENESIS`) and
its own `hash`, the SHA-256 of `prev_hash` followed by the RFC 8785 canonical JSON of the
record without its `hash`. Editing, deleting, duplicating or reordering a record breaks the
chain at a place `verify_records` / `verify_jsonl` can name.

`JsonlSink` appends one canonical JSON line per record from a background thread, so the
agent's thread never waits on the disk; `MemorySink` keeps records in a list for tests.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from pathguard.canonical import canonical_json
from pathguard.decisions import Decision
from pathguard.errors import CaptureError, TraceIntegrityError
from pathguard.vocabulary import Behavior, Status, StepType, Verb

__all__ = [
    "GENESIS",
    "HashChain",
    "JsonlSink",
    "MemorySink",
    "TraceProblem",
    "TraceRecord",
    "TraceSink",
    "VerifyResult",
    "read_jsonl",
    "record_hash",
    "verify_jsonl",
    "verify_records",
]

logger = logging.getLogger("pathguard")

GENESIS: Final = "sha256:" + "0" * 64
"""The `prev_hash` of the first record of every task."""

TRACE_VERSION: Final = 1


def record_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """The hash of a record: `sha256:` + SHA-256 of `prev_hash` then the canonical JSON body.

    `body` is the record as a dict without its `hash` key (it includes `prev_hash`).
    """
    digest = hashlib.sha256(prev_hash.encode("utf-8") + canonical_json(body))
    return "sha256:" + digest.hexdigest()


def _plain(value: Any) -> Any:
    """A private JSON-data copy of a value (so later mutation cannot desync the hash)."""
    kind = type(value)  # exact-type fast paths first: this walks every record
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        return {k if type(k) is str else str(k): _plain(v) for k, v in value.items()}
    if kind is list:
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return _plain(value.value)
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return [_plain(v) for v in sorted(value, key=repr)]
    raise CaptureError(
        f"A {type(value).__qualname__} cannot be written to the trace; give the step "
        "JSON data (dicts, lists, strings, numbers, booleans, None)."
    )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TraceRecord:
    """One recorded behaviour as it is written to the trace, linked into its task's chain.

    Build records with `HashChain.append` or `TraceRecord.from_behavior`, which fill `hash`;
    the nested dicts belong to the record and must not be mutated.
    """

    v: int = TRACE_VERSION
    agent_key: str | None
    task_id: str | None
    seq: int
    timestamp: float
    step_type: str
    verb: str | None = None
    scope: str
    step_name: str | None = None
    status: str
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    input: Any = None
    output: Any = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    decision: dict[str, Any] | None = None
    prev_hash: str
    hash: str
    # The record's canonical JSON line, kept by `from_behavior` (not a field of the record).
    _line: bytes | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_behavior(
        cls, b: Behavior, *, decision: Decision | None, seq: int, prev_hash: str
    ) -> TraceRecord:
        """Freeze a behaviour (and the decision that let it run or blocked it) into a record."""
        # The body in two parts: the keys that sort before "hash" and those after it. Their
        # canonical JSON joined is the body's (which the hash covers), and with the hash put
        # between them it is the record's line, so a sink need not encode the record again.
        head: dict[str, Any] = {
            "agent_key": b.agent_key,
            "decision": None if decision is None else _plain(decision.to_dict()),
        }
        tail: dict[str, Any] = {
            "input": _plain(b.input),
            "meta": _plain(b.meta),
            "output": _plain(b.output),
            "prev_hash": prev_hash,
            "properties": _plain(b.properties),
            "scope": b.step_type.scope.value,
            "seq": seq,
            "status": b.status.value,
            "step_name": b.step_name,
            "step_type": b.step_type.value,
            "task_id": b.task_id,
            "timestamp": float(b.timestamp),
            "v": TRACE_VERSION,
            "verb": None if b.verb is None else b.verb.value,
        }
        first = canonical_json(head)[:-1]  # without its "}"
        rest = canonical_json(tail)[1:]  # without its "{"
        digest = hashlib.sha256(prev_hash.encode("utf-8") + first + b"," + rest)
        record = cls(**head, **tail, hash="sha256:" + digest.hexdigest())
        line = b"".join((first, b',"hash":"', record.hash.encode("ascii"), b'",', rest, b"\n"))
        object.__setattr__(record, "_line", line)
        return record

    def canonical_line(self) -> bytes:
        """The record as one line of canonical JSON, newline included (as sinks write it)."""
        line = self._line
        if line is None:
            line = canonical_json(self.to_dict()) + b"\n"
            object.__setattr__(self, "_line", line)
        return line

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON data, in field order (the nested values are shared, not copied)."""
        return {f: getattr(self, f) for f in _FIELDS}

    def body(self) -> dict[str, Any]:
        """The dict the hash covers: everything but `hash`."""
        return {f: getattr(self, f) for f in _FIELDS if f != "hash"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TraceRecord:
        """Rebuild a record from its dict; TraceIntegrityError if it is not a v1 record."""
        problem = _shape_problem(d)
        if problem is not None:
            raise TraceIntegrityError(problem, seq=_int_or_none(d, "seq"))
        values = {f: d.get(f, _OPTIONAL.get(f)) for f in _FIELDS}
        values["timestamp"] = float(values["timestamp"])
        values["properties"] = values["properties"] or {}
        values["meta"] = values["meta"] or {}
        return cls(**values)

    def to_behavior(self) -> Behavior:
        """The recorded behaviour, with its recorded status, seq and timestamp."""
        return Behavior(
            step_type=StepType.parse(self.step_type),
            verb=None if self.verb is None else Verb.parse(self.verb),
            step_name=self.step_name,
            properties=self.properties,
            input=self.input,
            output=self.output,
            meta=self.meta,
            agent_key=self.agent_key,
            task_id=self.task_id,
            seq=self.seq,
            status=Status(self.status),
            timestamp=self.timestamp,
        )

    def verify_hash(self) -> bool:
        """Whether `hash` recomputes from the record's content and `prev_hash`."""
        return record_hash(self.prev_hash, self.body()) == self.hash


_FIELDS: Final = tuple(f.name for f in dataclasses.fields(TraceRecord) if f.init)
_OPTIONAL: Final[dict[str, Any]] = {
    "verb": None,
    "step_name": None,
    "properties": {},
    "input": None,
    "output": None,
    "meta": {},
    "decision": None,
}


def _int_or_none(d: Any, key: str) -> int | None:
    value = d.get(key) if isinstance(d, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _shape_problem(d: Any) -> str | None:
    """Why a parsed value is not a version-1 trace record, or None when it is one."""
    if not isinstance(d, Mapping):
        return f"The line holds a JSON {type(d).__name__}, not a trace record object."
    version = d.get("v")
    if version != TRACE_VERSION:
        return f"The record has version {version!r}; this pathguard reads version 1 records."
    missing = [f for f in _FIELDS if f not in d and f not in _OPTIONAL]
    if missing:
        return f"The record has no {', '.join(repr(f) for f in missing)} field."
    extra = sorted(str(k) for k in d if k not in _FIELDS)
    if extra:
        return f"The record has unexpected fields: {', '.join(repr(k) for k in extra)}."
    if _int_or_none(d, "seq") is None or d["seq"] < 0:
        return f"The record's seq is {d['seq']!r}; it must be a whole number, 0 or more."
    for key in ("prev_hash", "hash", "step_type", "scope", "status"):
        if not isinstance(d[key], str):
            return f"The record's {key!r} is {d[key]!r}; it must be a string."
    for key in ("agent_key", "task_id"):
        if d[key] is not None and not isinstance(d[key], str):
            return f"The record's {key!r} is {d[key]!r}; it must be a string or null."
    stamp = d["timestamp"]
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        return f"The record's timestamp is {stamp!r}; it must be a number of seconds."
    return None


# -- the chain --------------------------------------------------------------------------------


class HashChain:
    """The chain state of one task: assigns seq 0, 1, 2, ... and links each record to the last.

    Thread-safe. When `sinks` are given (the sequence is kept by reference, so later additions
    count), `append` writes each record to them under the chain's lock, which keeps the order
    of lines in a file equal to the order of `seq` even when several threads take steps in the
    same task; a sink that raises is logged and skipped. `link` builds the next record without
    writing it, for a caller that writes records itself in seq order (a Guard with `api_url`
    does this on its trace writer thread). `next_seq` and `prev_hash` resume an existing chain.
    """

    def __init__(
        self,
        *,
        next_seq: int = 0,
        prev_hash: str = GENESIS,
        sinks: Sequence[TraceSink] = (),
    ) -> None:
        if next_seq < 0:
            raise ValueError("next_seq must be 0 or more.")
        self._seq = next_seq
        self._head = prev_hash
        self._sinks = sinks
        self._task: tuple[str | None, str | None] | None = None
        self._lock = threading.Lock()

    @property
    def next_seq(self) -> int:
        """The seq the next appended record will get."""
        return self._seq

    @property
    def head(self) -> str:
        """The hash of the last record (GENESIS before the first)."""
        return self._head

    def link(self, behavior: Behavior, decision: Decision | None = None) -> TraceRecord:
        """Turn a behaviour into the chain's next record and return it, writing it nowhere."""
        with self._lock:
            return self._link(behavior, decision)

    def _link(self, behavior: Behavior, decision: Decision | None) -> TraceRecord:
        # Under self._lock.
        task = (behavior.agent_key, behavior.task_id)
        if self._task is None:
            self._task = task
        elif task != self._task:
            raise ValueError(
                f"This HashChain holds the records of task {self._task[1]!r} of agent "
                f"{self._task[0]!r}, not task {task[1]!r} of agent {task[0]!r}; use one "
                "chain per task."
            )
        record = TraceRecord.from_behavior(
            behavior, decision=decision, seq=self._seq, prev_hash=self._head
        )
        self._seq += 1
        self._head = record.hash
        return record

    def append(self, behavior: Behavior, decision: Decision | None = None) -> TraceRecord:
        """Turn a behaviour into the chain's next record, hand it to the sinks, return it."""
        with self._lock:
            record = self._link(behavior, decision)
            for sink in self._sinks:
                try:
                    sink.write(record)
                except Exception as exc:  # one broken sink must not stop the others
                    logger.error(
                        "a trace sink failed to take record seq %d of task %s: %r",
                        record.seq,
                        record.task_id,
                        exc,
                    )
        return record


# -- sinks ------------------------------------------------------------------------------------


@runtime_checkable
class TraceSink(Protocol):
    """Where trace records go. `write` must not block on I/O; `flush` waits until they are out."""

    def write(self, record: TraceRecord) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class MemorySink:
    """Keeps records in a list (`sink.records`), for tests and `pathguard.testing`."""

    def __init__(self) -> None:
        self.records: list[TraceRecord] = []
        self.closed = False

    def write(self, record: TraceRecord) -> None:
        self.records.append(record)

    def flush(self) -> None:
        """Nothing to do: records are stored as they are written."""

    def close(self) -> None:
        self.closed = True

    def dicts(self) -> list[dict[str, Any]]:
        """The records as dicts, ready for `verify_records`."""
        return [r.to_dict() for r in self.records]


_STOP: Final = object()


class JsonlSink:
    """Appends one canonical JSON line per record to a file, from a background writer thread.

    `write` only puts the record on a bounded queue. When the queue is full (the disk is far
    behind), `write` waits for room rather than dropping a record: an audit trail with holes
    is worse than a brief stall. `flush` waits until everything written before it is on disk
    (and fsync-ed when `fsync=True`); `close` flushes and stops the thread, and runs at exit.
    Opening an existing file appends to it. Write errors are logged to the `pathguard` logger
    and counted in `errors`; they never reach the agent's thread.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, fsync: bool = False, max_queue: int = 10_000
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1.")
        self.path = Path(path)
        self.fsync = fsync
        self.errors = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - owned by the sink until close()
        self._end_cleanly()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._cond = threading.Condition()
        self._queued = 0
        self._done = 0
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"pathguard-trace-writer:{self.path.name}", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)

    def _end_cleanly(self) -> None:
        # A process that died mid-line leaves a partial record; start on a fresh line so the
        # damage stays on its own (reported) line instead of corrupting the next record.
        if self._file.tell() > 0:
            with open(self.path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                if existing.read(1) != b"\n":
                    self._file.write(b"\n")
                    self._file.flush()

    def write(self, record: TraceRecord) -> None:
        """Queue a record for the writer thread."""
        with self._cond:
            if self._closed:
                raise RuntimeError(
                    f"The trace sink for {str(self.path)!r} is closed; open a new JsonlSink "
                    "to keep writing."
                )
            self._queued += 1
        self._queue.put(record)

    def flush(self) -> None:
        """Wait until every record written before this call is on disk."""
        with self._cond:
            target = self._queued
            while self._done < target and self._thread.is_alive():
                self._cond.wait(timeout=1.0)

    def close(self) -> None:
        """Flush, stop the writer thread and close the file (safe to call twice)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self.flush()
        self._queue.put(_STOP)
        self._thread.join()
        self._file.close()
        atexit.unregister(self.close)

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [item for item in batch if item is not _STOP]
            stop = len(records) != len(batch)
            try:
                self._write_batch(records)
            except Exception:  # keep the writer alive: a dead one would stall every write
                self.errors += len(records)
                logger.exception(
                    "the trace writer for %s failed on %d records", self.path, len(records)
                )
            finally:
                with self._cond:
                    self._done += len(records)
                    self._cond.notify_all()

    def _write_batch(self, records: list[TraceRecord]) -> None:
        lines = []
        for record in records:
            try:
                lines.append(record.canonical_line())
            except ValueError as exc:
                self.errors += 1
                logger.error(
                    "trace record seq %s of task %s was not written: %s",
                    record.seq,
                    record.task_id,
                    exc,
                )
        if not lines:
            return
        try:
            self._file.write(b"".join(lines))
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            self.errors += len(lines)
            logger.error("%d trace records were not written to %s: %s", len(lines), self.path, exc)


# -- verification -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TraceProblem:
    """Where a trace stops verifying and why (`reason` is a full sentence)."""

    line: int
    reason: str
    agent_key: str | None = None
    task_id: str | None = None
    seq: int | None = None

    def __str__(self) -> str:
        where = [f"line {self.line}"]
        if self.task_id is not None or self.seq is not None:
            task = f"task {self.task_id!r}"
            if self.agent_key is not None:
                task += f" of agent {self.agent_key!r}"
            where.append(task)
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        return f"{', '.join(where)}: {self.reason}"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class VerifyResult:
    """The outcome of checking a trace: `ok`, how much was read, and the first problem."""

    ok: bool
    records: int
    tasks: int
    first_error: TraceProblem | None = None

    def __bool__(self) -> bool:
        return self.ok

    def summary(self) -> str:
        """`N records in M tasks, chain intact`, or the first problem."""
        if self.ok:
            return (
                f"{self.records} record{'s' if self.records != 1 else ''} in {self.tasks} "
                f"task{'s' if self.tasks != 1 else ''}, chain intact"
            )
        return f"chain broken at {self.first_error}"


class _Unparsable:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Chain:
    __slots__ = ("head", "lines", "next_seq")

    def __init__(self) -> None:
        self.next_seq = 0
        self.head = GENESIS
        self.lines: dict[int, int] = {}  # seq -> line, to name duplicates


TaskKey = tuple[str | None, str | None]


def _check(items: Iterator[tuple[int, Any]]) -> VerifyResult:
    chains: dict[TaskKey, _Chain] = {}
    count = 0

    def fail(line: int, reason: str, d: Any = None) -> VerifyResult:
        key: TaskKey = (None, None)
        if isinstance(d, Mapping):
            agent, task = d.get("agent_key"), d.get("task_id")
            key = (
                agent if isinstance(agent, str) else None,
                task if isinstance(task, str) else None,
            )
        return VerifyResult(
            ok=False,
            records=count,
            tasks=len(chains),
            first_error=TraceProblem(
                line=line,
                reason=reason,
                agent_key=key[0],
                task_id=key[1],
                seq=_int_or_none(d, "seq"),
            ),
        )

    for line, d in items:
        if isinstance(d, _Unparsable):
            return fail(line, d.reason)
        if isinstance(d, TraceRecord):
            d = d.to_dict()
        shape = _shape_problem(d)
        if shape is not None:
            return fail(line, shape, d)
        body = {k: v for k, v in d.items() if k != "hash"}
        try:
            expected_hash = record_hash(d["prev_hash"], body)
        except ValueError as exc:
            return fail(line, f"The record cannot be put in canonical JSON form ({exc}).", d)
        if expected_hash != d["hash"]:
            return fail(
                line,
                "The record's content does not match its hash: it was changed "
                "after it was written.",
                d,
            )
        key = (d["agent_key"], d["task_id"])
        chain = chains.get(key)
        if chain is None:
            chain = chains[key] = _Chain()
        seq = d["seq"]
        if seq < chain.next_seq:
            first = chain.lines.get(seq)
            where = f" (first on line {first})" if first is not None else ""
            return fail(
                line,
                f"Seq {seq} of this task appears a second time{where}: a record "
                "was duplicated or replayed.",
                d,
            )
        if seq > chain.next_seq:
            missing = chain.next_seq
            later = _find_later(items, key, missing)
            if later is not None:
                return fail(
                    line,
                    f"The records are out of order: seq {seq} comes before seq "
                    f"{missing}, which is on line {later}.",
                    d,
                )
            if missing == 0:
                return fail(
                    line,
                    f"The task's first record has seq {seq}; seq 0 to {seq - 1} are missing.",
                    d,
                )
            return fail(
                line,
                f"Seq {missing} of this task is missing: the record before this "
                f"one has seq {missing - 1}, so a record was deleted.",
                d,
            )
        if d["prev_hash"] != chain.head:
            if seq == 0:
                return fail(line, "The task's first record does not link to the genesis hash.", d)
            return fail(
                line,
                f"prev_hash does not match the hash of the task's previous "
                f"record (seq {seq - 1}, line {chain.lines[seq - 1]}): that record "
                "was changed or replaced.",
                d,
            )
        chain.head = d["hash"]
        chain.next_seq = seq + 1
        chain.lines[seq] = line
        count += 1
    return VerifyResult(ok=True, records=count, tasks=len(chains))


def _find_later(items: Iterator[tuple[int, Any]], key: TaskKey, seq: int) -> int | None:
    """The line of a later record of the task with this seq (to tell reordering from loss)."""
    for line, d in items:
        if (
            isinstance(d, Mapping)
            and (d.get("agent_key"), d.get("task_id")) == key
            and d.get("seq") == seq
        ):
            return line
    return None


def verify_records(records: Iterable[Mapping[str, Any] | TraceRecord]) -> VerifyResult:
    """Check the chains of records given in trace order; `line` counts from 1 in the input."""
    return _check(iter(enumerate(records, start=1)))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for key, value in pairs:
        if key in d:
            # A second copy of a key would let a line show one value and hash another.
            raise ValueError(f"the key {key!r} appears twice")
        d[key] = value
    return d


def _parse_lines(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
                yield number, json.loads(text, object_pairs_hook=_no_duplicate_keys)
            except UnicodeDecodeError:
                yield number, _Unparsable("The line is not valid UTF-8 text.")
            except json.JSONDecodeError as exc:
                yield (
                    number,
                    _Unparsable(f"The line is not valid JSON ({exc.msg} at column {exc.colno})."),
                )
            except ValueError as exc:
                yield number, _Unparsable(f"The line is not a valid record: {exc}.")


def verify_jsonl(path: str | os.PathLike[str]) -> VerifyResult:
    """Check a JSONL trace file; OSError (e.g. FileNotFoundError) if it cannot be read."""
    return _check(_parse_lines(Path(path)))


def read_jsonl(path: str | os.PathLike[str], *, verify: bool = True) -> list[TraceRecord]:
    """Read a JSONL trace into records; TraceIntegrityError on a broken chain or bad line.

    With `verify=False` the chain is not checked, but every line must still be a record.
    """
    path = Path(path)
    if verify:
        result = verify_jsonl(path)
        if result.first_error is not None:
            problem = result.first_error
            raise TraceIntegrityError(
                f"The trace {str(path)!r} does not verify at {problem}",
                line=problem.line,
                seq=problem.seq,
            )
    records: list[TraceRecord] = []
    for line, d in _parse_lines(path):
        if isinstance(d, _Unparsable):
            raise TraceIntegrityError(f"{path}, line {line}: {d.reason}", line=line)
        try:
            records.append(TraceRecord.from_dict(d))
        except TraceIntegrityError as exc:
            raise TraceIntegrityError(
                f"{path}, line {line}: {exc}", line=line, seq=exc.seq
            ) from None
    return records
