"""docs/how-to/run-the-platform.md runs as written, against the real server.

Its Python blocks share one namespace (a later block uses the clients and the task of an
earlier one), with the environment the page tells the reader to export.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "how-to" / "run-the-platform.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_the_how_to_runs_against_a_real_server(
    api_url: str,
    make_key: Callable[[str | None], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATHGUARD_API_URL", api_url)
    monkeypatch.setenv("ADMIN_KEY", make_key(None))
    monkeypatch.setenv("PATHGUARD_API_KEY", make_key("support-bot"))
    code = [m.group(2) for m in FENCE.finditer(PAGE.read_text()) if m.group(1) == "python"]
    assert len(code) == 3
    namespace: dict[str, object] = {"__name__": "__docs__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, block in enumerate(code):
            exec(compile(block, f"{PAGE.name}#{i}", "exec"), namespace)
    for client in ("admin", "agent"):
        namespace[client].close()  # type: ignore[attr-defined]
    printed = out.getvalue().splitlines()
    assert printed[0] == "support version 1"
    # The policy came from the server and blocked the email.
    assert "✗ no-email-after-customer-data [block, medium]" in out.getvalue()
    assert "enforcing" in printed
    # The server stored the task's four records in order with the decisions.
    assert "4 steps, chain ok: True" in printed
    assert "2 step.message blocked block" in printed
    assert "block no-email-after-customer-data open" in printed
    assert printed[-1] == "True"  # the audit
    report = (tmp_path / "compliance-report.html").read_text()
    assert "<title>Compliance report: Support Bot</title>" in report
