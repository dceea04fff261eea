"""The real server: uvicorn in a thread on a free loopback port, one per database backend.

`api_url` starts it on the run's migrated database the first time a test of that backend
asks (tables are emptied before each test by `database_url`) and stops it at the end of the
run. `admin` and `agent_client` give httpx clients with keys made for the test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from pathguard.platform.app import create_app
from pathguard.platform.keys import create_key

AGENT = "support-bot"


class _Running:
    def __init__(self, engine: Engine) -> None:
        config = uvicorn.Config(
            create_app(engine=engine),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
            ws="none",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="pathguard-test-server")
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("The test server did not start; see the log above.")
            self.thread.join(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def _servers() -> Iterator[dict[int, _Running]]:
    servers: dict[int, _Running] = {}
    yield servers
    for running in servers.values():
        running.stop()


@pytest.fixture
def api_url(engine: Engine, _servers: dict[int, _Running]) -> str:
    """The URL of a running server on `engine` (SQLite, then PostgreSQL)."""
    running = _servers.get(id(engine))
    if running is None:
        running = _servers[id(engine)] = _Running(engine)
    return running.url


@pytest.fixture
def serve() -> Iterator[Callable[[Engine], str]]:
    """Start a server of its own on an engine, for this test only; returns its URL."""
    started: list[_Running] = []

    def start(engine: Engine) -> str:
        started.append(_Running(engine))
        return started[-1].url

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def make_key(sessions: sessionmaker[Session]) -> Callable[[str | None], str]:
    """Create a key: `make_key(None)` an admin key, `make_key("bot")` an agent key."""

    def make(agent: str | None) -> str:
        with sessions.begin() as session:
            return create_key(session, admin=agent is None, agent_key=agent)

    return make


def _client(url: str, key: str | None) -> httpx.Client:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


@pytest.fixture
def anonymous(api_url: str) -> Iterator[httpx.Client]:
    with _client(api_url, None) as client:
        yield client


@pytest.fixture
def admin(api_url: str, make_key: Callable[[str | None], str]) -> Iterator[httpx.Client]:
    with _client(api_url, make_key(None)) as client:
        yield client


@pytest.fixture
def agent_client(api_url: str, make_key: Callable[[str | None], str]) -> Iterator[httpx.Client]:
    """A client with the agent key of `AGENT`."""
    with _client(api_url, make_key(AGENT)) as client:
        yield client


@pytest.fixture
def other_agent(api_url: str, make_key: Callable[[str | None], str]) -> Iterator[httpx.Client]:
    """A client with the key of another agent, `other-bot`."""
    with _client(api_url, make_key("other-bot")) as client:
        yield client
