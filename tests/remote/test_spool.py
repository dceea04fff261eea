"""The trace spool: ordered, durable, exactly-once delivery across restarts and crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from pathguard.canonical import canonical_json
from pathguard.errors import PathguardError, TraceIntegrityError
from pathguard.remote import SpoolFullError, SpoolLockedError, TraceSpool
from pathguard.trace import HashChain, TraceRecord, TraceSink, verify_records
from pathguard.vocabulary import Behavior, Status, StepType


def step(task_id: str, n: int, payload: str = "") -> Behavior:
    return Behavior(
        step_type=StepType.step_model,
        step_name="chat",
        input={"n": n, "payload": payload},
        agent_key="bot",
        task_id=task_id,
        status=Status.completed,
        timestamp=1000.0 + n,
    )


def records(count: int, task_id: str = "t1", payload: str = "") -> list[TraceRecord]:
    chain = HashChain()
    return [chain.append(step(task_id, n, payload)) for n in range(count)]


def drain(spool: TraceSpool, batch: int = 7) -> list[TraceRecord]:
    """Ship everything the way the shipper does: read a batch, then ack it."""
    out: list[TraceRecord] = []
    while True:
        start = spool.acked
        got = spool.pending(batch)
        if not got:
            return out
        out.extend(got)
        spool.ack(start + len(got))


def test_the_spool_is_a_trace_sink(tmp_path: Path) -> None:
    with TraceSpool(tmp_path) as spool:
        assert isinstance(spool, TraceSink)
        chain = HashChain(sinks=[spool])
        written = [chain.append(step("t1", n)) for n in range(3)]
        assert spool.pending() == written


def test_order_is_preserved_across_reopen_and_segments(tmp_path: Path) -> None:
    original = records(50)
    with TraceSpool(tmp_path, segment_bytes=2000) as spool:
        for r in original[:30]:
            spool.append(r)
    with TraceSpool(tmp_path, segment_bytes=2000) as spool:
        for r in original[30:]:
            spool.append(r)
        assert spool.stats()["segments"] > 3
    with TraceSpool(tmp_path, segment_bytes=2000) as spool:
        assert len(spool) == 50
        assert spool.pending(1000) == original
        assert verify_records(spool.pending(1000)).ok


def test_the_ack_cursor_survives_a_restart(tmp_path: Path) -> None:
    original = records(20)
    with TraceSpool(tmp_path) as spool:
        for r in original:
            spool.append(r)
        first = spool.pending(8)
        spool.ack(spool.acked + len(first))
        assert first == original[:8]
    with TraceSpool(tmp_path) as spool:
        assert spool.acked == 8
        assert drain(spool) == original[8:]
    with TraceSpool(tmp_path) as spool:
        assert spool.pending() == []
        # New records continue the positions; nothing acked comes back.
        spool.append(original[0])
        assert spool.pending() == [original[0]]


def test_acking_deletes_delivered_segments_and_repeated_acks_are_harmless(
    tmp_path: Path,
) -> None:
    with TraceSpool(tmp_path, segment_bytes=1500) as spool:
        for r in records(40):
            spool.append(r)
        before = spool.stats()["segments"]
        assert drain(spool, batch=9) != []
        stats = spool.stats()
        assert (stats["pending"], stats["acked"], stats["end"]) == (0, 40, 40)
        assert stats["segments"] == 1 < before
        spool.ack(3)  # an old ack changes nothing
        assert spool.acked == 40
        with pytest.raises(ValueError, match="spool ends at 40"):
            spool.ack(41)
    segments = [p for p in tmp_path.iterdir() if p.name.startswith("segment-")]
    assert len(segments) == 1


def test_an_unacked_batch_is_returned_again(tmp_path: Path) -> None:
    original = records(5)
    with TraceSpool(tmp_path) as spool:
        for r in original:
            spool.append(r)
        assert spool.pending(3) == original[:3]
        # The post failed: no ack, so the same records come again, and nothing is skipped.
        assert spool.pending(3) == original[:3]
        spool.ack(2)
        assert spool.pending(10) == original[2:]


def test_a_torn_last_line_is_dropped_and_nothing_complete_is_lost(tmp_path: Path) -> None:
    original = records(6)
    with TraceSpool(tmp_path) as spool:
        for r in original[:5]:
            spool.append(r)
    (segment,) = tmp_path.glob("segment-*.jsonl")
    with open(segment, "ab") as f:
        f.write(b'{"v":1,"agent_key":"bot","task_id":"t1","seq":5,"tim')
    with TraceSpool(tmp_path) as spool:
        assert spool.pending() == original[:5]
        spool.append(original[5])
        assert spool.pending() == original
        assert verify_records(spool.pending()).ok


def test_a_corrupt_record_in_a_sealed_segment_is_reported(tmp_path: Path) -> None:
    with TraceSpool(tmp_path, segment_bytes=1500) as spool:
        for r in records(20):
            spool.append(r)
    first = sorted(tmp_path.glob("segment-*.jsonl"))[0]
    lines = first.read_bytes().split(b"\n")
    lines[1] = b"{garbage}"
    first.write_bytes(b"\n".join(lines))
    with (
        TraceSpool(tmp_path, segment_bytes=1500) as spool,
        pytest.raises(TraceIntegrityError, match="corrupt record at position 1"),
    ):
        spool.pending()


def test_a_cursor_ahead_of_the_data_never_hides_new_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = records(4)
    with TraceSpool(tmp_path) as spool:
        spool.append(original[0])
    (tmp_path / "cursor.json").write_text('{"acked": 10}')
    with TraceSpool(tmp_path) as spool:
        assert "past the last record" in caplog.text
        spool.append(original[1])
        assert spool.pending() == [original[1]]


def test_an_unreadable_cursor_ships_again_rather_than_skipping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = records(4)
    with TraceSpool(tmp_path) as spool:
        for r in original:
            spool.append(r)
        spool.ack(2)
    (tmp_path / "cursor.json").write_text("{torn")
    with TraceSpool(tmp_path) as spool:
        assert "records will be shipped again from 0" in caplog.text
        assert spool.pending() == original


def test_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    with TraceSpool(tmp_path, segment_bytes=4000) as spool:
        per_thread = 200

        def work(task: str) -> None:
            chain = HashChain(sinks=[spool])
            for n in range(per_thread):
                chain.append(step(task, n))

        threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        shipped = drain(spool, batch=97)
    assert len(shipped) == 6 * per_thread
    assert verify_records(shipped).ok
    for i in range(6):
        assert [r.seq for r in shipped if r.task_id == f"t{i}"] == list(range(per_thread))


def test_record_sync_mode_round_trips(tmp_path: Path) -> None:
    original = records(3)
    with TraceSpool(tmp_path, sync="record") as spool:
        for r in original:
            spool.append(r)
    with TraceSpool(tmp_path) as spool:
        assert spool.pending() == original


def test_a_second_process_cannot_open_the_same_spool(tmp_path: Path) -> None:
    with TraceSpool(tmp_path):
        script = "import sys; from pathguard.remote import TraceSpool; TraceSpool(sys.argv[1])"
        result = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)], capture_output=True, timeout=60
        )
        assert result.returncode != 0
        assert b"SpoolLockedError" in result.stderr
        assert b"in use by another process" in result.stderr
    assert issubclass(SpoolLockedError, PathguardError)


def test_append_after_close_says_what_to_do(tmp_path: Path) -> None:
    spool = TraceSpool(tmp_path)
    spool.close()
    spool.close()
    with pytest.raises(RuntimeError, match="open a new TraceSpool"):
        spool.append(records(1)[0])


APPENDER = textwrap.dedent(
    """
    import sys
    from pathguard.remote import TraceSpool
    from pathguard.trace import HashChain
    from pathguard.vocabulary import Behavior, Status, StepType

    spool = TraceSpool(sys.argv[1], segment_bytes=int(sys.argv[2]))
    # Resume the chain where the spool (and an earlier killed run) left it.
    existing = spool.pending(10**9)
    chain = (
        HashChain(next_seq=existing[-1].seq + 1, prev_hash=existing[-1].hash, sinks=[spool])
        if existing
        else HashChain(sinks=[spool])
    )
    n = chain.next_seq
    while True:
        record = chain.append(Behavior(
            step_type=StepType.step_model, step_name="chat", agent_key="bot",
            task_id="t1", status=Status.completed, timestamp=1000.0 + n,
            input={"n": n, "payload": "x" * (n % 5000)},
        ))
        # The record is appended: announce it, so the parent knows it must survive.
        sys.stdout.write(f"{record.seq}\\n")
        sys.stdout.flush()
        n += 1
    """
)


def run_and_kill(directory: Path, after: int) -> int:
    """Run the appender until it has announced `after` more records, SIGKILL it, and return
    the last seq it announced."""
    proc = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(directory), "60000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    last = -1
    try:
        for _ in range(after):
            line = proc.stdout.readline()
            if not line:
                break
            last = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
    assert last >= 0, err.decode()
    return last


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
def test_a_process_killed_mid_append_loses_no_complete_record(tmp_path: Path) -> None:
    delivered: list[TraceRecord] = []
    announced = run_and_kill(tmp_path, 300)
    with TraceSpool(tmp_path, segment_bytes=60000) as spool:
        got = spool.pending(10**9)
        # Every record whose append returned is there (maybe one more, killed before print).
        assert [r.seq for r in got] == list(range(len(got)))
        assert len(got) >= announced + 1
        assert verify_records(got).ok
        # Ship part of it, then crash again while the spool holds unacked records.
        half = got[: len(got) // 2]
        spool.ack(spool.acked + len(half))
        delivered.extend(half)
    announced = run_and_kill(tmp_path, 200)
    with TraceSpool(tmp_path, segment_bytes=60000) as spool:
        delivered.extend(drain(spool, batch=50))
    assert delivered[-1].seq >= announced
    # Exactly once and in order across both crashes and the restart between them.
    assert [r.seq for r in delivered] == list(range(len(delivered)))
    assert verify_records(delivered).ok


def test_max_bytes_refuses_new_records_until_delivery_frees_room(tmp_path: Path) -> None:
    original = records(30)
    line = len(canonical_json(original[0].to_dict())) + 1
    with TraceSpool(tmp_path, segment_bytes=line * 4, max_bytes=line * 10 + line // 2) as spool:
        for r in original[:10]:
            spool.append(r)
        with pytest.raises(SpoolFullError, match="max_bytes limit; seq 10 of task 't1'"):
            spool.append(original[10])
        assert spool.stats()["refused"] == 1
        assert spool.pending(100) == original[:10]
        # Delivering the first two full segments deletes them and makes room again.
        spool.ack(8)
        spool.append(original[10])
        assert spool.pending(100) == original[8:11]
        assert spool.stats()["bytes"] <= line * 10
