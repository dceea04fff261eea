"""`pathguard serve`: the command exists, migrates, says how to get a key, and serves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from typer.testing import CliRunner

from pathguard.cli import app
from pathguard.platform.migrations import current_revision, head_revision


def test_serve_has_help_naming_its_options() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--host", "--port", "--database-url"):
        assert option in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_migrates_prints_how_to_make_a_key_and_answers(tmp_path: Path) -> None:
    db = tmp_path / "pathguard.db"
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pathguard.cli import main; main()",
            "serve",
            "--port",
            str(port),
            "--database-url",
            f"sqlite:///{db}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "Uvicorn running" in line or "Application startup complete" in line:
                break
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}/v1" in output
        assert "pathguard keys create --admin" in output
        response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert response.json() == {"status": "ok"}
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()
    assert current_revision(f"sqlite:///{db}") == head_revision()
