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


def test_platform_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = load_example("platform_demo")
    database = tmp_path / "demo.db"
    assert demo.main(["--database", str(database), "--port", "0", "--exit"]) == 0
    out = capsys.readouterr().out
    # The policies came from the server, and every record reached it.
    assert "policies: enforcing; every record delivered: True" in out
    # What the server stored: the blocked email, the approval gate, the warnings.
    stored = out.split("What the platform stored:")[1]
    assert "T-200 (blocked)" in stored and "BLOCK         step.message   POST  send_email" in stored
    assert "gate:approved step.gate" in stored
    assert stored.count("WARN          step.model") == 4
    # Incidents raised from the ingested decisions, and the stored chains verified.
    assert "block  no-email-after-customer-data [critical]" in stored
    assert "injection-in-prompt [high] ×4" in stored
    assert "audit: 4 tasks, 25 records, every chain intact" in stored
    # Where to look, with the saved printable report.
    report = tmp_path / "demo-report.html"
    assert f"compliance report   {report.resolve()}" in out
    assert "<title>Compliance report: Support Bot</title>" in report.read_text()
    assert "/docs" in out and "admin key           pgk_" in out
