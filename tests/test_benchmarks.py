"""Smoke test of the engine benchmark script: it runs and prints its tables (no timings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "engine.py"


def test_engine_benchmark_quick_run_prints_its_tables() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--markdown"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "QUICK RUN" in out
    assert "| scenario | call |" in out
    for scenario in (
        "0 policies, empty history",
        "10 policies, empty history",
        "100 policies, 10-step history",
        "100 policies, 40-step history",
    ):
        assert f"| {scenario} | evaluate |" in out
        assert f"| {scenario} | evaluate + record |" in out
    assert "| 100 policies, @guard.step overhead |" in out
    assert "| 100 recorded steps |" in out  # the memory table
    assert "| evaluate p99 ≤ 25 µs |" in out  # the targets table
    # With or without the peer installed, the report says which engines it measured.
    assert "peer: " in out
