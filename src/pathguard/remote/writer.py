"""The trace writer: a bounded in-memory queue in front of the trace sinks, and its thread.

A Guard with `api_url` does not build trace records on the agent's thread. `put` appends
(chain, behaviour, decision) to a queue, which costs well under a microsecond; one background
thread takes entries in FIFO order, turns each into its task's next hash-chained record
(`HashChain.link`) and writes the records to the sinks (the on-disk spool among them), a
batch at a time. One lock covers taking entries from the queue and writing them, so the
records of a task reach every sink in seq order, whichever thread writes them.

When the queue holds `max_queue` entries (the writer is far behind), `put` does not drop
anything: the calling thread writes the oldest entries itself before it queues its own, so
the agent slows down to the speed of the disk instead of losing records (a warning is logged
the first time). `drain` writes everything queued so far in the calling thread.

The price of the queue: records still in it when the process is killed (SIGKILL, a power
cut) are lost; what was written reached the spool. `drain` (called by `guard.flush()` and
`guard.close()`, and at interpreter exit) makes every queued record durable.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Final

from pathguard.decisions import Decision
from pathguard.trace import HashChain, TraceRecord, TraceSink
from pathguard.vocabulary import Behavior

__all__ = ["TraceWriter"]

logger = logging.getLogger("pathguard")

Entry = tuple[HashChain, Behavior, Decision | None]
AfterWrite = Callable[[Behavior, Decision | None, int], None]

_BATCH: Final = 256  # entries written per turn of the lock: bounds a helping caller's wait
_POLL: Final = 0.02  # seconds between looks at the queue while steps keep coming
_IDLE_POLLS: Final = 25  # empty looks after which the thread sleeps until `put` wakes it


class TraceWriter:
    """A bounded queue of trace entries and the daemon thread that writes them to `sinks`.

    `sinks` is kept by reference (sinks added later count). `after(behavior, decision, seq)`,
    when given, is called on the writing thread after each record is written (the Guard
    reports incidents from there). Errors are logged, never raised into `put`.
    """

    def __init__(
        self,
        sinks: Sequence[TraceSink],
        *,
        max_queue: int = 10_000,
        after: AfterWrite | None = None,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1.")
        self.sinks = sinks
        self.max_queue = max_queue
        self.after = after
        self.written = 0
        self.helped = 0  # entries written by callers of `put` because the queue was full
        self._items: collections.deque[Entry] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # True while the thread waits without a timeout; only then does `put` have to wake it.
        # While steps keep coming the thread polls, so the agent's thread never signals.
        self._sleeping = False
        self._closed = False
        self._warned = False
        self._thread = threading.Thread(
            target=self._run, name="pathguard-trace-writer", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"TraceWriter(queued={len(self._items)}, written={self.written})"

    def __len__(self) -> int:
        """How many entries wait in the queue."""
        return len(self._items)

    # -- the agent's side ----------------------------------------------------------------------

    def put(self, chain: HashChain, behavior: Behavior, decision: Decision | None) -> None:
        """Queue one entry for the writer thread (the hot path: no I/O, no hashing)."""
        items = self._items
        items.append((chain, behavior, decision))
        if len(items) > self.max_queue or self._closed:
            self._help()
        elif self._sleeping:
            self._wake.set()

    def _help(self) -> None:
        if self._closed or not self._thread.is_alive():
            # Nobody else will write: everything queued goes now, the caller's entry last.
            self.drain()
            return
        if not self._warned:
            self._warned = True
            logger.warning(
                "the trace queue is full (%d records): the agent's threads now write trace "
                "records themselves until the writer catches up",
                self.max_queue,
            )
        with self._lock:
            self.helped += self._write(1)

    def drain(self) -> None:
        """Write every entry queued before this call, in the calling thread."""
        with self._lock:
            while self._items:
                self._write(_BATCH)

    def close(self) -> None:
        """Drain the queue and stop the thread (safe to call twice); later entries are
        written by the thread that puts them."""
        if not self._closed:
            self._closed = True
            self._wake.set()
            self._thread.join()
            atexit.unregister(self.close)
        self.drain()

    # -- the writer's side ---------------------------------------------------------------------

    def _run(self) -> None:
        idle = 0
        while not self._closed:
            try:
                with self._lock:
                    wrote = self._write(_BATCH)
            except Exception:  # keep the thread alive: a dead writer would stall the agent
                logger.exception("the trace writer failed")
                wrote = 0
            if wrote:
                idle = 0
                if self._items:
                    continue
            else:
                idle += 1
            if idle < _IDLE_POLLS:
                self._wake.wait(_POLL)
                self._wake.clear()
                continue
            self._wake.clear()
            self._sleeping = True
            # Checked after `_sleeping` is set: an entry put before that is seen here, one
            # put after it finds `_sleeping` and wakes us.
            if not self._items and not self._closed:
                self._wake.wait()
            self._sleeping = False
            idle = 0

    def _write(self, limit: int) -> int:
        """Take up to `limit` entries off the queue, write their records; under self._lock."""
        items = self._items
        batch: list[Entry] = []
        while items and len(batch) < limit:
            batch.append(items.popleft())
        if not batch:
            return 0
        records: list[TraceRecord] = []
        linked: list[Entry] = []
        for entry in batch:
            chain, behavior, decision = entry
            try:
                records.append(chain.link(behavior, decision))
            except Exception as exc:  # one bad entry must not cost the others their records
                logger.error(
                    "pathguard could not make a trace record of step %r of task %s: %r",
                    behavior.step_name,
                    behavior.task_id,
                    exc,
                )
                continue
            linked.append(entry)
        for sink in tuple(self.sinks):
            _write_all(sink, records)
        self.written += len(records)
        after = self.after
        if after is not None:
            for (_, behavior, decision), record in zip(linked, records, strict=True):
                try:
                    after(behavior, decision, record.seq)
                except Exception:
                    logger.exception("the after-write hook of the trace writer failed")
        return len(batch)


def _write_all(sink: TraceSink, records: list[TraceRecord]) -> None:
    many = getattr(sink, "write_many", None)
    if many is not None:
        # A sink with `write_many` (the spool) takes a batch in one system call and reports
        # the records it refused itself.
        try:
            many(records)
        except Exception as exc:
            logger.error("a trace sink failed to take %d records: %r", len(records), exc)
        return
    for record in records:
        try:
            sink.write(record)
        except Exception as exc:  # one broken sink must not stop the others
            logger.error(
                "a trace sink failed to take record seq %d of task %s: %r",
                record.seq,
                record.task_id,
                exc,
            )
