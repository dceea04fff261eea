"""The demo behind `make demo` runs offline and shows each kind of decision."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from pathguard import verify_jsonl

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_support_bot_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = load_example("support_bot")
    trace = tmp_path / "trace.jsonl"
    assert demo.main(["--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    # One path blocked, with the explanation printed.
    assert "T-200 blocked" in out
    assert "✗ no-email-after-customer-data" in out
    # One path needs an approval, granted by the scripted approver, then the step runs.
    assert "approval asked for run_diagnostics" in out
    assert "gate:approved" in out
    assert "T-300 done" in out
    # One path warns and completes.
    assert "! warning:" in out and "injection-in-prompt" in out
    assert "T-400 done" in out
    # A shadow policy is reported without acting.
    assert "(shadow: business-hours-exec)" in out
    result = verify_jsonl(trace)
    assert result.ok and result.tasks == 4
    assert "chain intact" in out
