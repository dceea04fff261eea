"""A SQLite database busy with another writer: the server says so (503) and stores nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import URL
from tests.platform.app.test_traces import AGENT, trace

from pathguard.platform.database import create_engine


def test_a_batch_sent_while_another_writer_holds_sqlite_gets_503_and_can_be_sent_again(
    database_url: URL,
    serve: Callable[..., str],
    make_key: Callable[[str | None], str],
) -> None:
    if database_url.get_backend_name() != "sqlite":
        pytest.skip("only SQLite has a single writer lock to wait for")
    # A server whose connections give up waiting for the write lock after a fifth of a second.
    engine = create_engine(database_url, connect_args={"timeout": 0.2})
    url = serve(engine)
    records = trace("busy-task")
    headers = {"Authorization": f"Bearer {make_key(AGENT)}"}
    holder = sqlite3.connect(str(database_url.database), timeout=5)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer, holding the lock
        refused = httpx.post(f"{url}/v1/traces", json={"records": records}, headers=headers)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert "nothing was stored" in refused.json()["detail"]
    finally:
        holder.rollback()
        holder.close()
    again = httpx.post(f"{url}/v1/traces", json={"records": records}, headers=headers)
    assert again.status_code == 200
    assert again.json()["stored"] == len(records)
    engine.dispose()
