"""Benchmark trace ingest: a real platform server, N concurrent clients posting trace batches.

Prints sustained steps/s and p50/p99 batch latency for 1, 4 and 16 concurrent clients, on
SQLite and on PostgreSQL side by side, and whether each ingest target is met.

    .venv/bin/python benchmarks/ingest.py             # full run, plain-text tables
    .venv/bin/python benchmarks/ingest.py --markdown  # the same, as markdown (for the docs)
    .venv/bin/python benchmarks/ingest.py --quick     # tiny sizes: a smoke test, not figures

The server is `uvicorn pathguard.platform.app:create_app` in a process of its own on a free
loopback port, so server and clients do not share a GIL. Every run uses fresh databases: a
temporary SQLite file and a PostgreSQL schema created for the run and dropped at its end
(`--postgres-url`, default `PATHGUARD_TEST_POSTGRES_URL` or the local test server; skipped,
saying why, when unreachable). Every batch is built, hash-chained and serialised before timing.
Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import sqlalchemy
from engine import Report
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

import pathguard
from pathguard.platform.database import DATABASE_URL_ENV, create_engine, session_factory
from pathguard.platform.keys import create_key
from pathguard.platform.migrations import upgrade
from pathguard.trace import HashChain
from pathguard.vocabulary import Behavior, Status, StepType, Verb

AGENT = "bench-agent"
BATCH = 100  # records per batch
DEFAULT_POSTGRES = os.environ.get(
    "PATHGUARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TARGET_STEPS_PER_S = 5000
TARGET_P99_MS = 250
TARGET_CLIENTS = 16
WALL = time.perf_counter
MAX_ATTEMPTS = 30  # posts of one batch the server answers "send this batch again"
RETRY_PAUSE_S = 0.005  # times the attempt number (at most 0.1 s), before posting again


def busy(response: httpx.Response) -> bool:
    """Whether the server refused a batch only because another was stored at the same time
    (409 conflict) or the database was busy with other writes (503): send it again."""
    if response.status_code == 503:
        return True
    if response.status_code != 409:
        return False
    try:
        answer = response.json()
    except ValueError:
        return False
    return (
        isinstance(answer, dict)
        and answer.get("kind") == "conflict"
        and answer.get("index") is None
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Config:
    quick: bool
    clients: tuple[int, ...]
    total_batches: int  # timed batches per scenario, split over its clients
    min_batches: int  # timed batches per client at least
    warmup: int  # untimed batches per client before the timed window
    batches_per_task: int  # a client starts a new task after this many batches

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(True, (1, 4), 4, 2, 1, 2)
        return cls(False, (1, 4, TARGET_CLIENTS), 240, 15, 2, 10)

    def timed_batches(self, clients: int) -> int:
        """Timed batches per client."""
        return max(self.min_batches, self.total_batches // clients)


# -- the workload -----------------------------------------------------------------------------

# A support agent's loop; each task is task.start and then this cycle, repeated.
_CYCLE: tuple[tuple[StepType, Verb | None, str, dict[str, Any]], ...] = (
    (StepType.step_model, Verb.POST, "chat", {"usage": {"cost_usd": 0.0004, "tokens": 812}}),
    (
        StepType.step_resource,
        Verb.GET,
        "read_ticket",
        {"target": {"domain": "api.example.com", "trust": "trusted"}},
    ),
    (StepType.step_self, Verb.POST, "write_note", {"target": {"path": "/srv/agent/notes.md"}}),
    (
        StepType.step_resource,
        Verb.POST,
        "update_ticket",
        {"target": {"domain": "crm.example.com", "trust": "trusted"}},
    ),
    (StepType.step_message, Verb.POST, "reply", {"message": {"channel": "chat"}}),
)


def task_batches(task_id: str, batches: int) -> list[bytes]:
    """`batches` JSON bodies of BATCH chained records each: one task, in order."""
    chain = HashChain()
    bodies: list[bytes] = []
    t0 = 1_736_942_400.0
    for _ in range(batches):
        records = []
        for _ in range(BATCH):
            seq = chain.next_seq
            if seq == 0:
                behavior = Behavior(
                    step_type=StepType.task_start,
                    step_name="task",
                    agent_key=AGENT,
                    task_id=task_id,
                    status=Status.completed,
                    timestamp=t0,
                )
            else:
                step_type, verb, name, properties = _CYCLE[(seq - 1) % len(_CYCLE)]
                behavior = Behavior(
                    step_type=step_type,
                    verb=verb,
                    step_name=name,
                    properties=properties,
                    input={"text": f"ticket {task_id} step {seq}: please look into it"},
                    output={"status": "ok", "chars": 120 + seq % 50},
                    agent_key=AGENT,
                    task_id=task_id,
                    status=Status.completed,
                    timestamp=t0 + seq * 0.25,
                )
            records.append(chain.append(behavior).to_dict())
        bodies.append(httpx.Request("POST", "/", json={"records": records}).read())
    return bodies


def client_bodies(cfg: Config, clients: int, client: int) -> list[bytes]:
    """Every body one client posts in a scenario, warm-up first; a new task every few."""
    total = cfg.warmup + cfg.timed_batches(clients)
    bodies: list[bytes] = []
    task = 0
    while len(bodies) < total:
        n = min(cfg.batches_per_task, total - len(bodies))
        bodies += task_batches(f"n{clients}-client{client}-task{task}", n)
        task += 1
    return bodies


# -- the databases and the server -------------------------------------------------------------


def postgres_unreachable(url: str) -> str | None:
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means: not measured, and say why
        return (
            f"PostgreSQL at {make_url(url).render_as_string(hide_password=True)} is "
            f"unreachable ({type(exc).__name__}); pass --postgres-url to a running server"
        )
    return None


def _postgres_admin(url: str, sql: str) -> None:
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(sql))
    finally:
        engine.dispose()


@contextmanager
def fresh_database(backend: str, postgres_url: str) -> Iterator[URL]:
    """A migrated, empty database of its own, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="pathguard-bench-") as folder:
            url = make_url(f"sqlite:///{folder}/pathguard.db")
            upgrade(url)
            yield url
        return
    schema = f"pathguard_bench_{uuid.uuid4().hex[:12]}"
    _postgres_admin(postgres_url, f'CREATE SCHEMA "{schema}"')
    try:
        url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
        upgrade(url)
        yield url
    finally:
        _postgres_admin(postgres_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def agent_key(url: URL) -> str:
    engine = create_engine(url)
    try:
        with session_factory(engine).begin() as session:
            return create_key(session, admin=False, agent_key=AGENT)
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def server(url: URL, workers: int) -> Iterator[str]:
    """`uvicorn pathguard.platform.app:create_app` on `url`, in a process of its own."""
    port = free_port()
    env = os.environ | {DATABASE_URL_ENV: url.render_as_string(hide_password=False)}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "pathguard.platform.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"The server exited with code {process.returncode}; see above.")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("The server did not answer /healthz within 60 s.")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- measuring --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stats:
    clients: int
    batches: int  # timed batches posted
    failed: int
    retries: int  # posts answered "stored at the same time; send this batch again"
    window_s: float
    latencies_ms: tuple[float, ...]  # of the stored batches
    first_error: str | None

    @property
    def steps_per_s(self) -> float:
        return (self.batches - self.failed) * BATCH / self.window_s

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run_clients(base: str, key: str, cfg: Config, bodies: Sequence[Sequence[bytes]]) -> Stats:
    """Each client posts its warm-up batches, waits for the others, then its timed ones."""
    n = len(bodies)
    barrier = threading.Barrier(n + 1)
    starts: list[float] = [0.0] * n
    ends: list[float] = [0.0] * n
    latencies: list[list[float]] = [[] for _ in range(n)]
    failures: list[list[str]] = [[] for _ in range(n)]
    retries = [0] * n
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def post(http: httpx.Client, body: bytes, c: int) -> float | None:
        t0 = WALL()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = http.post("/v1/traces", content=body)
            except httpx.HTTPError as exc:
                failures[c].append(f"{type(exc).__name__}: {exc}")
                return None
            if response.status_code == 200 and response.json().get("stored") == BATCH:
                return WALL() - t0
            if not busy(response) or attempt == MAX_ATTEMPTS:
                break
            retries[c] += 1  # the server asks for the batch again, as a real client would
            time.sleep(min(0.1, RETRY_PAUSE_S * attempt))
        failures[c].append(f"HTTP {response.status_code}: {response.text[:200]}")
        return None

    def client(c: int) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
            for body in bodies[c][: cfg.warmup]:
                post(http, body, c)
            failures[c].clear()  # only timed batches count
            retries[c] = 0
            barrier.wait()
            starts[c] = WALL()
            for body in bodies[c][cfg.warmup :]:
                elapsed = post(http, body, c)
                if elapsed is not None:
                    latencies[c].append(elapsed * 1000)
            ends[c] = WALL()

    threads = [threading.Thread(target=client, args=(c,), name=f"client-{c}") for c in range(n)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    errors = [e for f in failures for e in f]
    return Stats(
        clients=n,
        batches=sum(len(b) - cfg.warmup for b in bodies),
        failed=len(errors),
        retries=sum(retries),
        window_s=max(ends) - min(starts),
        latencies_ms=tuple(x for lat in latencies for x in lat),
        first_error=errors[0] if errors else None,
    )


def measure_backend(
    backend: str,
    postgres_url: str,
    cfg: Config,
    workloads: dict[int, list[list[bytes]]],
    workers: int,
) -> tuple[dict[int, Stats], str]:
    """Every scenario on one fresh database of `backend`; also the database's version."""
    results: dict[int, Stats] = {}
    with fresh_database(backend, postgres_url) as url:
        key = agent_key(url)
        version = database_version(url)
        with server(url, workers) as base:
            for clients in cfg.clients:
                log(f"{backend}: {clients} client(s)")
                results[clients] = run_clients(base, key, cfg, workloads[clients])
    return results, version


def database_version(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL)"
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            version = connection.execute(text("SHOW server_version")).scalar_one()
        return f"PostgreSQL {version}"
    finally:
        engine.dispose()


# -- the report -------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    if value is None or value != value:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


@dataclasses.dataclass
class Results:
    cfg: Config
    workers: int
    measured: dict[str, dict[int, Stats]]  # backend -> clients -> stats
    versions: dict[str, str]
    skipped: dict[str, str]  # backend -> why it was not measured
    load: list[tuple[float, float, float]]


BACKENDS = (("sqlite", "SQLite"), ("postgresql", "PostgreSQL"))


def render(res: Results, markdown: bool) -> str:
    cfg, out = res.cfg, Report(markdown)
    out.heading("pathguard ingest benchmark")
    (l1, l5, _), (e1, e5, _) = res.load[0], res.load[-1]
    facts = [
        f"machine: {os.cpu_count()} CPUs, {platform.machine()}, {platform.system()} "
        f"{platform.release()}; load average (1 min, 5 min) {l1:.2f}, {l5:.2f} at the start, "
        f"{e1:.2f}, {e5:.2f} at the end",
        f"python: {platform.python_implementation()} {platform.python_version()}; "
        f"pathguard {pathguard.__version__}; httpx {httpx.__version__}",
        "databases: "
        + "; ".join(
            res.versions.get(b, f"{label}: not measured ({res.skipped.get(b, '?')})")
            for b, label in BACKENDS
        ),
        f"server: uvicorn pathguard.platform.app:create_app, {res.workers} worker process(es), "
        "on 127.0.0.1, in a process of its own; client threads in this process (httpx, one "
        "connection each); client, server and database share the machine",
        f"workload: POST /v1/traces with {BATCH} hash-chained records of one task per batch "
        f"(a client starts a new task every {cfg.batches_per_task} batches, so most "
        "batches continue a stored chain, which the server checks before storing), built and "
        "serialised before timing; one agent key; a fresh database per backend, the scenarios "
        "run one after the other on it",
        f"method: each client posts {cfg.warmup} untimed warm-up batch(es), then all start "
        "together; steps/s = stored steps / (last client done − first client started); latency "
        "= wall time of one POST, request to parsed answer",
    ]
    if cfg.quick:
        facts.insert(0, "QUICK RUN: tiny sizes; the figures mean nothing")
    out.bullets(facts)

    out.heading("Sustained ingest (steps/s; batch latency p50 / p99 in ms)")
    rows = []
    for clients in cfg.clients:
        row = [f"{clients}", f"{cfg.timed_batches(clients):,} × {BATCH} steps each"]
        for backend, _ in BACKENDS:
            s = res.measured.get(backend, {}).get(clients)
            if s is None:
                row += ["—"] * 4
            else:
                p50, p99 = s.percentile(0.50), s.percentile(0.99)
                row += [rate(s.steps_per_s), ms(p50), ms(p99), f"{s.retries:,}"]
        rows.append(row)
    out.table(
        [
            "clients",
            "batches per client",
            "SQLite steps/s",
            "SQLite p50",
            "SQLite p99",
            "SQLite retried",
            "PostgreSQL steps/s",
            "PostgreSQL p50",
            "PostgreSQL p99",
            "PostgreSQL retried",
        ],
        rows,
    )
    errors = [
        f"{label}, {c} client(s): {s.failed} batch(es) failed, first: {s.first_error}"
        for b, label in BACKENDS
        for c, s in res.measured.get(b, {}).items()
        if s.failed
    ]
    out.bullets(
        [
            'retried: posts the server answered 409 "Another batch was being stored at the same '
            'time; send this batch again" or 503 "database busy", posted again after '
            f"{RETRY_PAUSE_S * 1000:.0f} ms × "
            f"the attempt number, at most 100 ms (at most {MAX_ATTEMPTS} attempts); the latency "
            "of a batch includes its retries",
            *(errors or ["every timed batch was stored whole (HTTP 200, stored = 100)"]),
        ]
    )

    out.heading("Targets")
    out.table(["target", "scenario", "measured", "status"], targets(res))
    return str(out)


def targets(res: Results) -> list[list[str]]:
    def status(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "MISSED")

    rows = []
    pg = res.measured.get("postgresql", {})
    if pg:
        best = max(pg.values(), key=lambda s: s.steps_per_s)
        rows.append(
            [
                f"≥ {TARGET_STEPS_PER_S:,} steps/s into PostgreSQL, chains checked on ingest",
                f"PostgreSQL, best of {', '.join(str(c) for c in pg)} clients ({best.clients})",
                f"{rate(best.steps_per_s)} steps/s",
                status(best.steps_per_s >= TARGET_STEPS_PER_S and not best.failed),
            ]
        )
    else:
        rows.append([f"≥ {TARGET_STEPS_PER_S:,} steps/s into PostgreSQL", "—", "—", status(None)])
    for backend, label in (("postgresql", "PostgreSQL"), ("sqlite", "SQLite")):
        s = res.measured.get(backend, {}).get(TARGET_CLIENTS)
        p99 = None if s is None else s.percentile(0.99)
        rows.append(
            [
                f"p99 batch latency < {TARGET_P99_MS} ms with {TARGET_CLIENTS} clients",
                f"{label}, {TARGET_CLIENTS} clients",
                "—" if p99 is None else f"{ms(p99)} ms",
                status(None if s is None or p99 is None else p99 < TARGET_P99_MS and not s.failed),
            ]
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES,
        help="the PostgreSQL server to use (a schema is created there and dropped)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="measure SQLite only")
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes (default 1)"
    )
    args = parser.parse_args(argv)
    load = [os.getloadavg()]
    cfg = Config.make(args.quick)

    log("building the batches")
    workloads = {
        clients: [client_bodies(cfg, clients, c) for c in range(clients)] for clients in cfg.clients
    }
    skipped: dict[str, str] = {}
    if args.no_postgres:
        skipped["postgresql"] = "--no-postgres"
    else:
        reason = postgres_unreachable(args.postgres_url)
        if reason is not None:
            skipped["postgresql"] = reason
            log(f"note: {reason}; measuring SQLite only")

    measured: dict[str, dict[int, Stats]] = {}
    versions: dict[str, str] = {}
    for backend, _ in BACKENDS:
        if backend in skipped:
            continue
        measured[backend], versions[backend] = measure_backend(
            backend, args.postgres_url, cfg, workloads, args.workers
        )
    load.append(os.getloadavg())
    print(render(Results(cfg, args.workers, measured, versions, skipped, load), args.markdown))
    failed = any(s.failed for stats in measured.values() for s in stats.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
