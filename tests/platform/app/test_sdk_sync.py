"""The SDK's platform sync against the real server: PolicySync pulls, TraceShipper pushes."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine

from pathguard import BlockedError, Guard, StepType
from pathguard.engine import PolicyEngine
from pathguard.platform.app import create_app
from pathguard.policies import PolicySet
from pathguard.remote import TraceSpool, VerificationKeys
from pathguard.remote.sync import PolicySync, TraceShipper
from pathguard.vocabulary import AgentRegistration

AGENT = "support-bot"


def document(name: str, *ids: str) -> dict[str, Any]:
    return {
        "version": 1,
        "name": name,
        "policies": [
            {
                "id": policy_id,
                "scope": "agent_registration",
                "rule": "field_not_empty",
                "params": {"field": "owner"},
            }
            for policy_id in ids
        ],
    }


def publish(admin: httpx.Client, *docs: dict[str, Any]) -> None:
    """Create the sets and make them the agent's assignment."""
    ids = []
    for doc in docs:
        response = admin.post("/v1/policy-sets", json=doc)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    response = admin.post(
        f"/v1/agents/{AGENT}/assignments", json={"policy_set_ids": ids, "replace": True}
    )
    assert response.status_code == 200, response.text


def ownerless_is_blocked(policy_set: PolicySet) -> bool:
    registration = AgentRegistration(agent_key=AGENT, name="bot", purpose="support")
    return PolicyEngine(policy_set).evaluate_registration(registration).action.value == "block"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def late_server() -> Iterator[Callable[[Engine, int], None]]:
    """Start a server on a given port (one nothing listened on before), for this test only."""
    started: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(engine: Engine, port: int) -> None:
        config = uvicorn.Config(
            create_app(engine=engine),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            ws="none",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="pathguard-late-server")
        thread.start()
        started.append((server, thread))
        while not server.started:
            assert thread.is_alive(), "the late test server did not start"
            thread.join(0.01)

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(10)


# -- PolicySync --------------------------------------------------------------------------------


def test_the_agents_policies_are_fetched_verified_cached_and_kept_on_304(
    api_url: str, admin: httpx.Client, make_key: Callable[[str | None], str], tmp_path: Path
) -> None:
    publish(admin, document("base", "needs-owner"))
    updates: list[PolicySet] = []
    sync = PolicySync(
        api_url, make_key(AGENT), AGENT, cache_dir=tmp_path / "cache", on_update=updates.append
    )
    assert sync.state() == "unavailable"
    with sync.start():
        assert sync.wait_first(10)
        assert sync.status()["state"] == "enforcing"
        assert [s.name for s in updates] == ["base"]
        assert ownerless_is_blocked(updates[0])
        etag = sync.status()["etag"]

        assert sync.refresh()  # unchanged: a 304, the same set stays and no update is sent
        assert (sync.status()["etag"], len(updates)) == (etag, 1)

        publish(admin, document("base", "needs-owner"), document("extra", "needs-owner-too"))
        assert sync.refresh()
        assert [p.id for p in updates[-1].policies] == ["needs-owner", "needs-owner-too"]
        assert sync.status()["etag"] != etag
    cache_file = tmp_path / "cache" / "policy-bundle.json"
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600


def test_with_the_server_down_the_cache_is_enforced_and_reported_stale(
    api_url: str, admin: httpx.Client, make_key: Callable[[str | None], str], tmp_path: Path
) -> None:
    publish(admin, document("base", "needs-owner"))
    key = make_key(AGENT)
    with PolicySync(api_url, key, AGENT, cache_dir=tmp_path) as first:
        assert first.wait_first(10)
    down = f"http://127.0.0.1:{free_port()}"
    updates: list[PolicySet] = []
    with PolicySync(
        down, key, AGENT, cache_dir=tmp_path, timeout=0.5, on_update=updates.append
    ) as cold:
        assert cold.wait_first(10)  # the cached set is in force at once
        assert [s.name for s in updates] == ["base"]
        assert not cold.refresh()
        status = cold.status()
        assert (status["state"], status["source"]) == ("stale", "cache")
        assert "unreachable" in status["last_error"]
    with PolicySync(down, key, AGENT, cache_dir=tmp_path / "empty", timeout=0.5) as nothing:
        assert not nothing.wait_first(10)
        assert nothing.state() == "unavailable"
        assert nothing.policy_set is None


def test_a_bundle_with_a_bad_signature_is_refused_and_the_last_good_set_stays(
    engine: Engine,
    serve: Callable[[Engine], str],
    make_key: Callable[[str | None], str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    keys = VerificationKeys.create(hmac_secret="s3cret")
    monkeypatch.setenv("PATHGUARD_POLICY_HMAC_SECRET", "s3cret")
    good = serve(engine)
    admin_key = make_key(None)
    with httpx.Client(base_url=good, headers={"Authorization": f"Bearer {admin_key}"}) as admin:
        publish(admin, document("signed", "needs-owner"))
    key = make_key(AGENT)
    with PolicySync(good, key, AGENT, cache_dir=tmp_path, keys=keys) as sync:
        assert sync.wait_first(10)
        assert sync.state() == "enforcing"

    monkeypatch.setenv("PATHGUARD_POLICY_HMAC_SECRET", "a secret of an impostor")
    impostor = serve(engine)
    with httpx.Client(base_url=impostor, headers={"Authorization": f"Bearer {admin_key}"}) as admin:
        publish(admin, document("forged", "other-rule"))  # a new ETag, signed with another key
    updates: list[PolicySet] = []
    with PolicySync(
        impostor, key, AGENT, cache_dir=tmp_path, keys=keys, on_update=updates.append
    ) as sync:
        assert sync.wait_first(10)
        assert not sync.refresh()
        status = sync.status()
        assert status["state"] == "stale"
        assert "HMAC" in status["last_error"]
        assert sync.policy_set is not None and sync.policy_set.name == "signed"
        assert [s.name for s in updates] == ["signed"]  # only the cached set was ever loaded


# -- TraceShipper ------------------------------------------------------------------------------


def run_task(guard: Guard, n: int) -> str:
    """A task of `n` governed steps, the last one blocked; returns its id."""

    @guard.step(StepType.step_exec)
    def run(i: int) -> int:
        return i

    with guard.task() as task_id:
        for i in range(n - 1):
            run(i)
        with pytest.raises(BlockedError):
            run(n - 1)
    return task_id


def local_guard(spool: TraceSpool, limit: int) -> Guard:
    policies = {
        "version": 1,
        "name": "local",
        "policies": [
            {
                "id": "few-execs",
                "when": {"step_type": "step.exec"},
                "rule": "max_steps",
                "params": {"max": limit},
            },
        ],
    }
    return Guard(agent_key=AGENT, policies=policies, sinks=[spool])


def test_records_spooled_while_the_server_is_down_arrive_once_in_order_when_it_is_back(
    engine: Engine,
    late_server: Callable[[Engine, int], None],
    admin: httpx.Client,
    make_key: Callable[[str | None], str],
    tmp_path: Path,
) -> None:
    port = free_port()
    spool = TraceSpool(tmp_path / "spool")
    guard = local_guard(spool, 4)
    shipper = TraceShipper(
        f"http://127.0.0.1:{port}", make_key(AGENT), spool, interval=0.05, batch=3, timeout=1
    ).start()
    try:
        task_id = run_task(guard, 5)  # the agent goes on while nothing listens
        written = spool.end
        assert written >= 6
        assert not shipper.flush(timeout=2)
        assert len(spool) == written
        assert shipper.status()["state"] == "failing"

        late_server(engine, port)
        assert shipper.flush(timeout=30)
        assert len(spool) == 0
        assert shipper.status()["state"] == "ok"
    finally:
        shipper.close()
        guard.close()
    stored = admin.get(f"/v1/tasks/{task_id}").json()
    assert [s["seq"] for s in stored["steps"]] == list(range(written))
    assert [s["status"] for s in stored["steps"]][-2:] == ["blocked", "completed"]
    audit = admin.get("/v1/audit/verify").json()
    assert (audit["ok"], audit["records"]) == (True, written)


def test_a_new_spool_on_the_same_directory_ships_what_the_last_process_left(
    api_url: str,
    agent_client: httpx.Client,
    admin: httpx.Client,
    make_key: Callable[[str | None], str],
    tmp_path: Path,
) -> None:
    key = make_key(AGENT)
    spool = TraceSpool(tmp_path / "spool")
    guard = local_guard(spool, 2)
    task_id = run_task(guard, 3)
    with TraceShipper(f"http://127.0.0.1:{free_port()}", key, spool, timeout=0.5) as dead:
        assert not dead.flush(timeout=2)
    guard.close()  # closes the spool: the "process" ends with everything undelivered
    left = spool.end

    # The old process had posted its first batch but died before acking it.
    reopened = TraceSpool(tmp_path / "spool")
    assert len(reopened) == left
    first_batch = [r.to_dict() for r in reopened.pending(2)]
    assert agent_client.post("/v1/traces", json={"records": first_batch}).status_code == 200

    with TraceShipper(api_url, key, reopened, interval=0.05, batch=2) as shipper:
        assert shipper.flush(timeout=30)
        assert shipper.status()["shipped"] == left
    assert len(reopened) == 0
    reopened.close()
    stored = admin.get(f"/v1/tasks/{task_id}").json()
    assert [s["seq"] for s in stored["steps"]] == list(range(left))
    assert admin.get("/v1/audit/verify").json()["ok"] is True


def test_flush_without_a_thread_ships_in_the_calling_thread(
    api_url: str, admin: httpx.Client, make_key: Callable[[str | None], str], tmp_path: Path
) -> None:
    with TraceSpool(tmp_path / "spool") as spool:
        guard = Guard(agent_key=AGENT, policies=None, sinks=[spool])
        with guard.task() as task_id:
            pass
        shipper = TraceShipper(api_url, make_key(AGENT), spool)
        assert shipper.flush()
        assert len(spool) == 0
    assert admin.get(f"/v1/tasks/{task_id}").json()["step_count"] == 2


# -- Guard(api_url=...) ------------------------------------------------------------------------

EXEC_LIMIT = {
    "version": 1,
    "name": "platform",
    "policies": [
        {
            "id": "one-exec",
            "when": {"step_type": "step.exec"},
            "rule": "max_steps",
            "params": {"max": 1},
        }
    ],
}


def test_a_guard_with_api_url_enforces_the_platforms_policies_and_ships_its_trace(
    api_url: str, admin: httpx.Client, make_key: Callable[[str | None], str], tmp_path: Path
) -> None:
    publish(admin, EXEC_LIMIT)
    guard = Guard(AGENT, api_url=api_url, api_key=make_key(AGENT), cache_dir=tmp_path)
    try:
        task_id = run_task(guard, 2)  # the platform's one-exec policy blocks the second exec
        assert guard.status()["state"] == "enforcing"
        assert guard.flush(timeout=30)
        assert guard.status()["traces"]["pending"] == 0
    finally:
        guard.close()
    steps = admin.get(f"/v1/tasks/{task_id}").json()["steps"]
    assert [s["status"] for s in steps] == ["completed", "completed", "blocked", "completed"]
    assert steps[2]["decision"]["violations"][0]["policy_id"] == "one-exec"
    assert admin.get("/v1/audit/verify").json()["ok"] is True


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
def test_with_no_policy_set_ever_loaded_fail_mode_decides_every_step(
    fail_mode: Any, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    guard = Guard(AGENT, api_url=down, api_key="k", cache_dir=tmp_path, fail_mode=fail_mode)
    try:

        @guard.step(StepType.step_exec)
        def run() -> str:
            return "ran"

        with guard.task():
            if fail_mode == "open":
                assert run() == "ran"
            else:
                with pytest.raises(BlockedError) as info:
                    run()
                [violation] = info.value.decision.violations
                assert violation.policy_id == "pathguard.no-policies"
        assert guard.status()["state"] == "unavailable"
        assert not guard.flush(timeout=2)  # nothing listens: the records stay for later
        traces = guard.status()["traces"]
        assert (traces["queued"], traces["pending"]) == (0, 3)  # in the spool, on disk
    finally:
        guard.close(timeout=1)


def test_a_restarted_guard_enforces_the_cache_offline_and_a_later_one_ships_the_spool(
    api_url: str, admin: httpx.Client, make_key: Callable[[str | None], str], tmp_path: Path
) -> None:
    publish(admin, EXEC_LIMIT)
    key = make_key(AGENT)
    with Guard(AGENT, api_url=api_url, api_key=key, cache_dir=tmp_path) as online:
        assert online.status()["state"] == "enforcing"

    down = f"http://127.0.0.1:{free_port()}"
    offline = Guard(AGENT, api_url=down, api_key=key, cache_dir=tmp_path)
    task_id = run_task(offline, 2)  # the cached one-exec policy still blocks the second exec
    assert offline.status()["state"] == "stale"
    assert not offline.flush(timeout=2)
    offline.close(timeout=1)

    with Guard(AGENT, api_url=api_url, api_key=key, cache_dir=tmp_path) as back:
        assert back.flush(timeout=30)
    steps = admin.get(f"/v1/tasks/{task_id}").json()["steps"]
    assert [s["seq"] for s in steps] == [0, 1, 2, 3]
    assert steps[2]["status"] == "blocked"
    assert admin.get("/v1/audit/verify").json()["ok"] is True


def test_a_policy_update_applies_to_tasks_started_after_it(
    api_url: str, admin: httpx.Client, make_key: Callable[[str | None], str], tmp_path: Path
) -> None:
    publish(admin, EXEC_LIMIT)
    with Guard(AGENT, api_url=api_url, api_key=make_key(AGENT), cache_dir=tmp_path) as guard:
        assert guard.policy_sync is not None

        @guard.step(StepType.step_exec)
        def run() -> None:
            pass

        with guard.task():
            run()
            publish(admin, document("lenient"))
            assert guard.policy_sync.refresh()
            with pytest.raises(BlockedError):
                run()  # the open task keeps the set it started with
        with guard.task():
            run()
            run()


def test_a_task_started_before_the_first_policy_set_is_held_to_it_with_its_whole_path(
    engine: Engine,
    late_server: Callable[[Engine, int], None],
    admin: httpx.Client,
    make_key: Callable[[str | None], str],
    tmp_path: Path,
) -> None:
    port = free_port()
    key = make_key(AGENT)
    guard = Guard(AGENT, api_url=f"http://127.0.0.1:{port}", api_key=key, cache_dir=tmp_path)
    assert guard.policy_sync is not None

    @guard.step(StepType.step_exec)
    def run() -> str:
        return "ran"

    try:
        with guard.task(properties={"source": "email"}):  # the platform is not up yet
            with pytest.raises(BlockedError) as before:
                run()
            assert before.value.decision.violations[0].policy_id == "pathguard.no-policies"

            late_server(engine, port)
            publish(admin, NO_EXEC_AFTER_EMAIL)
            assert guard.policy_sync.refresh()
            # The task moved to the set that arrived, and the set sees where the task began.
            with pytest.raises(BlockedError) as after:
                run()
            assert [v.policy_id for v in after.value.decision.violations] == ["no-exec-after-email"]
        with guard.task(properties={"source": "web"}):
            assert run() == "ran"
        assert guard.flush(timeout=30)
    finally:
        guard.close()
    assert admin.get("/v1/audit/verify").json()["ok"] is True


NO_EXEC_AFTER_EMAIL = {
    "version": 1,
    "name": "email-is-untrusted",
    "policies": [
        {
            "id": "no-exec-after-email",
            "when": {"step_type": "step.exec"},
            "rule": "not_after",
            "params": {"step_type": "task.start", "properties": {"source": "email"}},
        }
    ],
}


def test_ending_a_task_ships_its_records_without_waiting_for_the_timer(
    api_url: str, admin: httpx.Client, make_key: Callable[[str | None], str], tmp_path: Path
) -> None:
    publish(admin, document("lenient"))
    guard = Guard(AGENT, api_url=api_url, api_key=make_key(AGENT), cache_dir=tmp_path)
    assert guard.trace_shipper is not None
    shipped = threading.Event()

    @guard.step(StepType.step_exec)
    def run() -> None: ...

    try:
        guard.trace_shipper.interval = 3600.0
        with guard.task():
            run()
        assert guard.flush(timeout=30)  # from now on the shipper waits an hour, or a wake-up
        with guard.task() as task_id:
            run()
        # end_task queued task.end, then woke the shipper, which drains the queue first.
        for _ in range(300):
            if admin.get(f"/v1/tasks/{task_id}").status_code == 200:
                shipped.set()
                break
            shipped.wait(0.1)
        assert shipped.is_set()
        steps = admin.get(f"/v1/tasks/{task_id}").json()["steps"]
        assert [s["step_type"] for s in steps] == ["task.start", "step.exec", "task.end"]
    finally:
        guard.close()


@pytest.fixture
def incident_receiver() -> Iterator[tuple[str, list[tuple[str, bytes]], threading.Condition]]:
    """A real HTTP server on loopback keeping each POST's signature header and body."""
    posts: list[tuple[str, bytes]] = []
    arrived = threading.Condition()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with arrived:
                posts.append((self.headers["X-Pathguard-Signature"], body))
                arrived.notify_all()
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/incidents", posts, arrived
    server.shutdown()
    server.server_close()


def test_a_block_reaches_the_incident_webhook_at_once_and_the_platform_with_the_trace(
    api_url: str,
    admin: httpx.Client,
    make_key: Callable[[str | None], str],
    tmp_path: Path,
    incident_receiver: tuple[str, list[tuple[str, bytes]], threading.Condition],
) -> None:
    url, posts, arrived = incident_receiver
    publish(admin, EXEC_LIMIT)
    guard = Guard(
        AGENT,
        api_url=api_url,
        api_key=make_key(AGENT),
        cache_dir=tmp_path,
        incident_webhook=url,
        incident_webhook_secret="hook-secret",
    )
    try:
        task_id = run_task(guard, 2)
        with arrived:
            assert arrived.wait_for(lambda: len(posts) == 1, 30)
        assert guard.flush(timeout=30)
    finally:
        guard.close()
    [(signature, body)] = posts
    assert signature == "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
    data = json.loads(body)["data"]
    assert (data["task_id"], data["seq"], data["action"]) == (task_id, 2, "block")
    assert [v["policy_id"] for v in data["violations"]] == ["one-exec"]
    [incident] = admin.get("/v1/incidents", params={"agent": AGENT}).json()
    assert (incident["task_id"], incident["policy_id"], incident["seq"]) == (
        task_id,
        "one-exec",
        2,
    )
