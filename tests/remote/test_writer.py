"""The trace writer: a bounded queue in front of the sinks, written in order by one thread."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from pathguard.canonical import canonical_json
from pathguard.decisions import Action, Decision
from pathguard.remote import TraceSpool
from pathguard.remote.writer import TraceWriter
from pathguard.trace import HashChain, MemorySink, TraceRecord, verify_records
from pathguard.vocabulary import Behavior, Status, StepType


def step(task_id: str, n: int) -> Behavior:
    return Behavior(
        step_type=StepType.step_model,
        step_name="chat",
        input={"n": n},
        agent_key="bot",
        task_id=task_id,
        status=Status.completed,
        timestamp=1000.0 + n,
    )


def by_task(records: list[TraceRecord]) -> dict[str | None, list[int]]:
    seqs: dict[str | None, list[int]] = defaultdict(list)
    for record in records:
        seqs[record.task_id].append(record.seq)
    return seqs


def test_records_from_many_threads_arrive_once_in_seq_order_with_valid_chains(
    tmp_path: Path,
) -> None:
    sink = MemorySink()
    with TraceSpool(tmp_path) as spool:
        writer = TraceWriter([sink, spool], max_queue=50)
        shared = HashChain()  # one task whose steps run on several threads at once

        def agent(name: str) -> None:
            own = HashChain()
            for n in range(300):
                writer.put(own, step(name, n), None)
                writer.put(shared, step("shared", n), None)

        threads = [threading.Thread(target=agent, args=(f"t{i}",)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        writer.close()
        spooled = spool.pending(10_000)
    assert len(sink.records) == 6 * 300 * 2
    assert verify_records(sink.records).ok
    assert spooled == sink.records  # every sink got the same records in the same order
    for task_id, seqs in by_task(sink.records).items():
        assert seqs == list(range(len(seqs))), task_id


def test_a_full_queue_makes_the_caller_write_and_loses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = MemorySink()
    writer = TraceWriter([sink], max_queue=1)
    chain = HashChain()
    with caplog.at_level(logging.WARNING, logger="pathguard"):
        for n in range(500):
            writer.put(chain, step("t1", n), None)
    writer.drain()
    # The writer thread looks at the queue every few milliseconds, far slower than this loop
    # fills it: the caller wrote records itself, and said so once.
    assert writer.helped > 0
    assert [r.seq for r in sink.records] == list(range(500))
    assert verify_records(sink.records).ok
    assert [r.message for r in caplog.records].count(
        "the trace queue is full (1 records): the agent's threads now write trace records "
        "themselves until the writer catches up"
    ) == 1
    writer.close()


def test_drain_writes_everything_queued_before_it_returns() -> None:
    sink = MemorySink()
    writer = TraceWriter([sink])
    chain = HashChain()
    for n in range(1000):
        writer.put(chain, step("t1", n), None)
    writer.drain()
    assert len(sink.records) == 1000
    assert len(writer) == 0
    writer.close()


def test_after_a_close_entries_are_written_by_the_thread_that_puts_them() -> None:
    sink = MemorySink()
    writer = TraceWriter([sink])
    chain = HashChain()
    writer.put(chain, step("t1", 0), None)
    writer.close()
    assert len(sink.records) == 1
    writer.put(chain, step("t1", 1), None)
    assert [r.seq for r in sink.records] == [0, 1]


def test_the_after_hook_sees_each_record_with_its_seq() -> None:
    seen: list[tuple[str | None, Action | None, int]] = []
    writer = TraceWriter(
        [MemorySink()],
        after=lambda b, d, seq: seen.append((b.task_id, None if d is None else d.action, seq)),
    )
    chain = HashChain()
    writer.put(chain, step("t1", 0), None)
    writer.put(chain, step("t1", 1), Decision(action=Action.warn))
    writer.close()
    assert seen == [("t1", None, 0), ("t1", Action.warn, 1)]


def test_a_step_that_cannot_become_a_record_is_logged_and_the_others_are_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = MemorySink()
    writer = TraceWriter([sink])
    chain = HashChain()
    bad = Behavior._trusted(
        StepType.step_model, None, "chat", {"when": object()}, None, {}, "bot", "t1", 1.0
    )
    writer.put(chain, step("t1", 0), None)
    writer.put(chain, bad, None)
    writer.put(chain, step("t1", 2), None)
    writer.close()
    assert [r.input for r in sink.records] == [{"n": 0}, {"n": 2}]
    assert verify_records(sink.records).ok  # the bad step took no seq: the chain is whole
    assert "could not make a trace record of step 'chat' of task t1" in caplog.text


def test_a_batch_goes_to_the_spool_in_order_and_a_full_spool_refuses_only_the_rest(
    tmp_path: Path,
) -> None:
    chain = HashChain()
    records = [chain.append(step("t1", n)) for n in range(10)]
    three = sum(len(canonical_json(r.to_dict())) + 1 for r in records[:3])
    with TraceSpool(tmp_path / "small", segment_bytes=three) as spool:
        spool.write_many(records)  # three records a segment: the batch spans four
        assert spool.pending(100) == records
        assert spool.stats()["segments"] == 4
    with TraceSpool(tmp_path / "full", max_bytes=three) as full:
        full.write_many(records)
        assert full.pending(100) == records[:3]
        assert full.refused == 7
