"""Smoke test of the ingest benchmark script: it runs a real server and prints its tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ingest.py"


def test_ingest_benchmark_quick_run_prints_its_tables() -> None:
    # Uses PostgreSQL too when PATHGUARD_TEST_POSTGRES_URL (or the local test server) answers;
    # otherwise the script measures SQLite only and says why.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--markdown"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr + done.stdout
    out = done.stdout
    assert "QUICK RUN" in out
    assert "| clients | batches per client | SQLite steps/s | SQLite p50 | SQLite p99 |" in out
    assert "| PostgreSQL steps/s | PostgreSQL p50 | PostgreSQL p99 |" in out
    for clients in (1, 4):
        assert f"| {clients} | " in out
    assert "every timed batch was stored whole" in out
    assert "| target | scenario | measured | status |" in out
    assert "steps/s into PostgreSQL" in out
    assert "| p99 batch latency < 250 ms with 16 clients | SQLite, 16 clients |" in out
    # The report names the databases it measured, or why PostgreSQL was not measured.
    assert "SQLite 3." in out
    assert "PostgreSQL 1" in out or "PostgreSQL: not measured" in out
