"""The demo behind `make demo`: the platform on SQLite, and the support bot governed through it.

1. Creates a fresh SQLite database (`.pathguard/demo.db` by default), an admin key and a key
   for the agent `support-bot`, and starts `pathguard serve` on it in a process of its own.
2. As the admin, publishes examples/support_bot_policies.yaml as a policy set and assigns it
   to the agent (which registers itself with its own key first).
3. Runs the support bot of examples/support_bot.py with `Guard(api_url=..., api_key=...)`:
   the policies come from the server, the trace goes to the server.
4. Reads back what the server stored (each task's steps and decisions, the incidents, the
   audit of the hash chains), saves the printable compliance report, and prints where to look.

The server keeps running until Ctrl-C (or stops at once with `--exit`). Offline, no API keys
for any model provider.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

# Run as a script (`python examples/platform_demo.py`) or loaded by the tests: either way the
# support bot sits next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support_bot import POLICIES, build_agent, describe, run_tickets

from pathguard import TraceRecord
from pathguard.platform.database import create_engine, session_factory
from pathguard.platform.keys import create_key
from pathguard.platform.migrations import upgrade

AGENT = "support-bot"


def free_port(preferred: int) -> int:
    """`preferred` when nothing listens on it, else a free port the system picks."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def fresh_database(path: Path) -> str:
    """An empty, migrated SQLite database at `path` (an older demo database is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        old.unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


def make_keys(url: str) -> tuple[str, str]:
    """A new admin key and a new key for the demo agent (only their hashes are stored)."""
    engine = create_engine(url)
    try:
        with session_factory(engine).begin() as session:
            admin = create_key(session, admin=True, agent_key=None)
            agent = create_key(session, admin=False, agent_key=AGENT)
    finally:
        engine.dispose()
    return admin, agent


@contextlib.contextmanager
def running_server(url: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`pathguard serve` on 127.0.0.1:`port` in its own process, until the block ends."""
    command = [sys.executable, "-m", "pathguard.cli", "serve", "--port", str(port)]
    command += ["--database-url", url]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_up(server, port, log)
            yield server
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def wait_until_up(server: subprocess.Popen[bytes], port: int, log: IO[bytes]) -> None:
    """Return once the server answers /healthz; raise with its output if it stopped."""
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            log.seek(0)
            output = log.read().decode(errors="replace")
            raise RuntimeError(f"the server stopped while starting:\n{output}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not answer /healthz within 60 seconds")
        time.sleep(0.1)


def publish_policies(api: httpx.Client, agent: httpx.Client) -> dict[str, Any]:
    """The agent registers itself; the admin publishes the policy set and assigns it."""
    agent.post(
        "/v1/agents/register",
        json={
            "name": "Support Bot",
            "purpose": "Customer support triage and response",
            "owner": "ops@example.com",
            "tools": ["read_ticket", "lookup_customer", "send_reply", "send_email"],
            "risk_classification": "limited",
            "environment": "demo",
        },
    ).raise_for_status()
    created = api.post(
        "/v1/policy-sets",
        content=POLICIES.read_bytes(),
        headers={"Content-Type": "application/yaml"},
    )
    created.raise_for_status()
    policy_set: dict[str, Any] = created.json()
    api.post(
        f"/v1/agents/{AGENT}/assignments", json={"policy_set_ids": [policy_set["id"]]}
    ).raise_for_status()
    return policy_set


def show_stored(api: httpx.Client, outcomes: dict[str, tuple[str, str]]) -> bool:
    """Print what the server stored for each ticket's task; True when every chain verifies."""
    print("\nWhat the platform stored:")
    for ticket, (task_id, outcome) in outcomes.items():
        task = api.get(f"/v1/tasks/{task_id}", params={"agent": AGENT}).json()
        chain = "chain ok" if task["chain_ok"] else "CHAIN BROKEN"
        print(f"\n{ticket} ({outcome}) task {task_id}: {task['step_count']} steps, {chain}")
        for step in task["steps"]:
            print(describe(TraceRecord.from_dict(step)))
    incidents = api.get("/v1/incidents", params={"agent": AGENT}).json()
    print(f"\nincidents: {len(incidents)}")
    for incident in incidents:
        print(
            f"  #{incident['id']} {incident['action']:<6} {incident['policy_id']} "
            f"[{incident['severity']}] ×{incident['count']}: {incident['reason']}"
        )
    audit = api.get("/v1/audit/verify", params={"agent": AGENT}).json()
    verdict = "every chain intact" if audit["ok"] else f"BROKEN: {audit['first_error']}"
    print(f"audit: {audit['tasks']} tasks, {audit['records']} records, {verdict}")
    return bool(audit["ok"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--database", type=Path, default=Path(".pathguard") / "demo.db", help="SQLite file"
    )
    parser.add_argument("--port", type=int, default=8400, help="preferred port (8400)")
    parser.add_argument("--exit", action="store_true", help="stop the server when done")
    args = parser.parse_args(argv)

    url = fresh_database(args.database)
    admin_key, agent_key = make_keys(url)
    port = free_port(args.port)
    base = f"http://127.0.0.1:{port}"
    print(f"pathguard platform demo: server on {base}, database {args.database}")

    with running_server(url, port) as server:
        with (
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin_key}"}) as api,
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {agent_key}"}) as me,
        ):
            policy_set = publish_policies(api, me)
            print(
                f"published policy set {policy_set['name']!r} (id {policy_set['id']}, "
                f"version {policy_set['version']}) and assigned it to {AGENT!r}"
            )
            with tempfile.TemporaryDirectory(prefix="pathguard-demo-") as cache:
                guard, tools = build_agent(api_url=base, api_key=agent_key, cache_dir=cache)
                status = guard.status()
                outcomes = run_tickets(guard, tools)
                delivered = guard.flush(timeout=30)
                guard.close()
            print(f"\npolicies: {status['state']}; every record delivered: {delivered}")
            ok = show_stored(api, outcomes) and delivered

            report = args.database.parent / "demo-report.html"
            page = api.get("/v1/reports/compliance", params={"agent": AGENT, "format": "html"})
            page.raise_for_status()
            report.write_text(page.text, encoding="utf-8")

        auth = f'-H "Authorization: Bearer {admin_key}"'
        print("\nWhere to look:")
        print(f"  API reference       {base}/docs   (OpenAPI: {base}/openapi.json)")
        print(f"  admin key           {admin_key}")
        print(f"  tasks               curl {auth} {base}/v1/tasks?agent={AGENT}")
        print(f"  incidents           curl {auth} {base}/v1/incidents")
        print(f"  compliance report   {report.resolve()}   (saved from {base}")
        print(f"                      /v1/reports/compliance?agent={AGENT}&format=html)")
        print(f"  serve it again      pathguard serve --database-url sqlite:///{args.database}")
        if args.exit or not ok:
            return 0 if ok else 1
        print("\nThe server keeps running; press Ctrl-C to stop it.")
        with contextlib.suppress(KeyboardInterrupt):
            server.wait()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
