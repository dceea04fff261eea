"""Guard(api_url=...) with the platform down: the trace queue, the spool, and the core install.

The tests with a running platform are in tests/platform/app/test_sdk_sync.py.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from pathguard import ConfigurationError, Guard, StepType
from pathguard.remote import TraceSpool
from pathguard.trace import MemorySink, TraceRecord, verify_records

AGENT = "support-bot"


def dead_url() -> str:
    """The URL of a port nothing listens on: the platform is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def offline_guard(tmp_path: Path, **options: object) -> Guard:
    # fail_mode "open": with no policy set ever loaded, steps still run (and are traced).
    return Guard(
        AGENT, api_url=dead_url(), api_key="k", cache_dir=tmp_path, fail_mode="open", **options
    )


def seqs_by_task(records: list[TraceRecord]) -> dict[str | None, list[int]]:
    seqs: dict[str | None, list[int]] = defaultdict(list)
    for record in records:
        seqs[record.task_id].append(record.seq)
    return seqs


def test_records_of_tasks_on_many_threads_are_queued_then_written_in_order(
    tmp_path: Path,
) -> None:
    sink = MemorySink()
    guard = offline_guard(tmp_path, sinks=[sink])

    @guard.step(StepType.step_exec)
    def run(i: int) -> int:
        return i

    def agent() -> None:
        for _ in range(5):
            with guard.task():
                for i in range(20):
                    run(i)

    try:
        threads = [threading.Thread(target=agent) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not guard.flush(timeout=2)  # the platform is down: nothing was shipped ...
        traces = guard.status()["traces"]
        assert (traces["queued"], traces["pending"]) == (0, 4 * 5 * 22)  # ... all is spooled
        assert guard._link is not None
        spooled = guard._link.spool.pending(1000)
    finally:
        guard.close(timeout=1)
    assert len(sink.records) == 4 * 5 * 22
    assert spooled == sink.records
    assert verify_records(sink.records).ok
    seqs = seqs_by_task(sink.records)
    assert len(seqs) == 20
    assert all(s == list(range(22)) for s in seqs.values())


def test_a_full_trace_queue_slows_the_agent_down_instead_of_losing_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = MemorySink()
    guard = offline_guard(tmp_path, sinks=[sink], trace_queue_size=1)

    @guard.step(StepType.step_exec)
    def run(i: int) -> int:
        return i

    try:
        with caplog.at_level(logging.WARNING, logger="pathguard"), guard.task():
            for i in range(300):
                run(i)
        guard.flush(timeout=1)
    finally:
        guard.close(timeout=1)
    assert "the trace queue is full (1 records)" in caplog.text
    assert [r.seq for r in sink.records] == list(range(302))
    assert verify_records(sink.records).ok


def test_with_a_queue_size_of_0_records_are_written_before_the_step_returns(
    tmp_path: Path,
) -> None:
    sink = MemorySink()
    guard = offline_guard(tmp_path, sinks=[sink], trace_queue_size=0)

    @guard.step(StepType.step_exec)
    def run() -> int:
        return len(sink.records)

    try:
        with guard.task():
            assert run() == 1  # task.start is in the sink when the step runs
            assert [r.step_type for r in sink.records] == ["task.start", "step.exec"]
    finally:
        guard.close(timeout=1)


def test_removing_a_sink_first_writes_what_was_queued_for_it(tmp_path: Path) -> None:
    from pathguard.testing import recording

    guard = offline_guard(tmp_path)

    @guard.step(StepType.step_exec)
    def run() -> None: ...

    try:
        with recording(guard) as records, guard.task():
            run()
        assert [r.step_type for r in records] == ["task.start", "step.exec", "task.end"]
    finally:
        guard.close(timeout=1)


@pytest.mark.parametrize(
    ("options", "variable"),
    [({"trace_queue_size": -1}, None), ({}, "-1")],
)
def test_a_negative_trace_queue_size_is_a_configuration_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, int],
    variable: str | None,
) -> None:
    if variable is not None:
        monkeypatch.setenv("PATHGUARD_TRACE_QUEUE_SIZE", variable)
    with pytest.raises(ConfigurationError, match="PATHGUARD_TRACE_QUEUE_SIZE"):
        offline_guard(tmp_path, **options)


_KILLED_AGENT = """
import sys, time
from pathguard import Guard, StepType

guard = Guard("support-bot", api_url=sys.argv[2], api_key="k", cache_dir=sys.argv[1],
              fail_mode="open")

@guard.step(StepType.step_exec)
def run(i):
    return i

with guard.task():
    for i in range(50):
        run(i)
guard.flush(timeout=0.5)  # the platform is down: this makes the records durable, no more
print("flushed", flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
def test_records_flushed_before_a_sigkill_are_in_the_spool_for_the_next_process(
    tmp_path: Path,
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_AGENT), str(tmp_path), dead_url()],
        stdout=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"flushed\n"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with TraceSpool(tmp_path / "spool") as spool:
        left = spool.pending(1000)
    assert [r.seq for r in left] == list(range(52))
    assert verify_records(left).ok


_NO_HTTPX = """
import sys
sys.modules["httpx"] = None  # as in a core install, without the [server] extra
import pathguard
from pathguard import ConfigurationError, Guard

Guard("bot", policies=None)
for options in ({"api_url": "http://127.0.0.1:1", "api_key": "k"},
                {"incident_webhook": "http://127.0.0.1:1/hook"}):
    try:
        Guard("bot", **options)
    except ConfigurationError as exc:
        print(exc)
"""


def test_the_core_imports_without_httpx_and_says_which_extra_the_platform_needs() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _NO_HTTPX], capture_output=True, text=True, check=True
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert all("pip install 'pathguard[server]'" in line for line in lines)
