"""Benchmark the pathguard engine, side by side with the peer `kyvvu-engine`.

Prints p50 and p99 (wall and CPU time) of `evaluate` and of `evaluate` + `record` for a set
of scenarios (0, 10 and 100 policies; empty, 50, 1,000 and 10,000-step histories), the
overhead of a `@guard.step` call, engine memory per open task, the peer's figures and the
ratios, and whether each performance target is met.

    .venv/bin/python benchmarks/engine.py             # full run, plain-text tables
    .venv/bin/python benchmarks/engine.py --markdown  # the same, as markdown (for the docs)
    .venv/bin/python benchmarks/engine.py --quick     # tiny sizes: a smoke test, not figures

The peer is optional (`pip install kyvvu-engine`, or `make bench`); without it only
pathguard is measured. Both engines get the same 100 policies, written in each engine's own
built-in rules (the neutral mix is `_GROUPS` below; `_peer_kyvvu.py` translates it), and the
same steps. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import _peer_kyvvu as peer

import pathguard
from pathguard.engine import PolicyEngine
from pathguard.errors import PolicyLoadError
from pathguard.policies import PolicySet
from pathguard.vocabulary import AgentRegistration, Behavior, Status

AGENT = "bench-agent"
NOW = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)  # noon: inside every working-hours window
ROOT = "/srv/agent"
TOOLS = (
    "chat",
    "read_ticket",
    "write_note",
    "approve",
    "update_ticket",
    "reply",
    "run_report",
    "get_token",
    "delete_ticket",
)
POLICY_COUNT = 100
TIMER_FLOOR_RUNS = 20_000

R, M, X, C = "step.resource", "step.model", "step.exec", "step.credential"
MSG, S, G = "step.message", "step.self", "step.gate"


# -- the neutral description of steps and policies -------------------------------------------


@dataclasses.dataclass(frozen=True)
class Step:
    """One step, described independently of either engine's vocabulary."""

    step_type: str
    verb: str | None
    name: str
    text: str = "hello"
    domain: str | None = None
    trust: str | None = None
    path: str | None = None
    cost: float | None = None
    channel: str | None = None
    gate: bool = False  # an approved human gate


@dataclasses.dataclass(frozen=True)
class Spec:
    """One policy: a rule kind both engines have, what it targets, and its arguments."""

    id: str
    kind: str
    target: str | None
    verb: str | None
    args: Mapping[str, Any]


START = Step("task.start", None, "task")
# The recorded history repeats this cycle after one task.start: a support agent's loop.
CYCLE = (
    Step(M, "POST", "chat", cost=0.0004),
    Step(R, "GET", "read_ticket", domain="api.example.com", trust="trusted"),
    Step(S, "POST", "write_note", path=f"{ROOT}/notes/today.md"),
    Step(G, None, "approve", gate=True),
    Step(R, "POST", "update_ticket", domain="crm.example.com", trust="trusted"),
    Step(MSG, "POST", "reply", channel="chat"),
)
# The intended steps that are evaluated, in turn, in every timing loop.
ROTATION = (
    Step(R, "GET", "read_ticket", domain="api.example.com", trust="trusted"),
    Step(M, "POST", "chat", cost=0.0004),
    Step(R, "POST", "update_ticket", domain="crm.example.com", trust="trusted"),
    Step(MSG, "POST", "reply", channel="chat"),
)

_NAMES = "^(" + "|".join(TOOLS) + ")$"
_BIG = 10**6

# (kind, target step type or None for every step, target verb, one args dict per policy).
# Each row is a family of policies of one rule kind; the order puts ten different kinds
# first, so that the 10-policy scenario (one policy of each of the first ten rows) is varied.
# To change the mix, edit this table: `_peer_kyvvu.py` translates every kind it names.
_GROUPS: tuple[tuple[str, str | None, str | None, tuple[Mapping[str, Any], ...]], ...] = (
    (
        "domain_allowlist",
        R,
        None,
        (
            {"domains": ["example.com"]},
            {"domains": ["example.com", "example.org"]},
            {"domains": ["api.example.com", "crm.example.com"]},
            {"domains": ["example.com", "openai.com"]},
            {"domains": ["example.com", "internal.test"]},
        ),
    ),
    (
        "requires_prior",
        R,
        "GET",
        (
            {"required": M},
            {"required": "task.start"},
            {"required": M},
            {"required": "task.start"},
        ),
    ),
    ("requires_gate", R, "POST", ({}, {"within": 10}, {"within": 100})),
    ("max_steps", M, None, tuple({"step_type": M, "max": _BIG * k} for k in (1, 10, 100))),
    (
        "field_matches_regex",
        None,
        None,
        (
            {"field": "step_name", "pattern": "^[a-z_]+$"},
            {"field": "step_name", "pattern": "^[a-z]"},
            {"field": "step_name", "pattern": "[a-z]$"},
            {"field": "step_name", "pattern": "^[^ ]{1,64}$"},
            {"field": "step_name", "pattern": _NAMES},
        ),
    ),
    (
        "sequence_forbidden",
        None,
        None,
        (
            {"sequence": [C, X]},
            {"sequence": ["step.unknown", MSG]},
            {"sequence": [X, C, MSG]},
        ),
    ),
    ("taint", R, "POST", ({"source": R, "trust": "untrusted"},) * 2),
    ("step_name_allowlist", R, None, ({},) * 2),
    ("not_after", R, None, ({"forbidden": "step.unknown"},) * 2),
    (
        "budget",
        M,
        None,
        tuple(
            {"step_type": M, "property": "usage.cost_usd", "max": m} for m in (1000, 5000, 10000)
        ),
    ),
    ("max_consecutive", M, None, tuple({"step_type": M, "max": m} for m in (20, 50, 100))),
    ("directly_preceded_by", R, "DELETE", ({"required": G},) * 2),
    ("requires_prior_without_intervening", R, "DELETE", ({"required": G, "forbidden": M},) * 2),
    ("requires_dedicated_prior", R, "DELETE", ({"required": G},)),
    (
        "conditional_successor",
        None,
        None,
        (
            {"trigger": R, "trust": "untrusted", "forbidden": X},
            {"trigger": R, "trust": "untrusted", "forbidden": C},
        ),
    ),
    ("not_history_contains", None, None, ({"step_type": "step.unknown"}, {"step_type": X})),
    ("any_of_current_or_history", None, None, ({"current": M, "history": "task.start"},)),
    ("history_contains", None, None, ({"step_type": "task.start"},) * 2),
    (
        "working_hours",
        None,
        None,
        (
            {"start_hour": 6, "end_hour": 22, "timezone": "UTC"},
            {"start_hour": 22, "end_hour": 20, "timezone": "Europe/Amsterdam"},
        ),
    ),
    ("field_not_empty", None, None, ({"field": "step_name"}, {"field": "input.text"})),
    (
        "field_in_list",
        None,
        None,
        (
            {"field": "step_name", "values": list(TOOLS)},
            {"field": "step_name", "values": [*TOOLS, "search", "summarise"]},
        ),
    ),
    ("path_within_root", S, None, ({"root": ROOT},) * 3),
    ("requires_prior", X, None, ({"required": G},) * 3),
    ("taint", X, None, ({"source": C},) * 3),
    ("requires_gate", X, None, ({}, {"within": 5})),
    ("not_after", X, None, ({"forbidden": "step.unknown"},) * 2),
    ("step_name_allowlist", X, None, ({},)),
    ("step_name_allowlist", M, None, ({},) * 2),
    ("max_steps", X, None, ({"step_type": X, "max": 50},)),
    ("max_steps", C, None, ({"step_type": C, "max": 10},)),
    ("max_steps", MSG, None, ({"step_type": MSG, "max": _BIG},) * 2),
    ("max_steps", S, None, ({"step_type": S, "max": _BIG},) * 2),
    ("max_steps", G, None, ({"step_type": G, "max": _BIG},) * 2),
    ("max_steps", R, None, ({"step_type": R, "max": _BIG},) * 3),
    ("requires_dedicated_prior", C, None, ({"required": G},) * 3),
    ("requires_prior", C, None, ({"required": G},) * 2),
    ("requires_prior", MSG, None, ({"required": M},) * 2),
    ("requires_gate", MSG, "POST", ({},) * 2),
    ("not_after", MSG, None, ({"forbidden": X},) * 2),
    ("requires_prior", M, None, ({"required": "task.start"},) * 2),
    ("requires_prior", S, None, ({"required": M},) * 2),
    ("requires_prior", G, None, ({"required": "task.start"},)),
    ("not_after", R, "GET", ({"forbidden": X},) * 2),
    ("requires_gate", R, "DELETE", ({},) * 2),
)


def all_specs() -> list[Spec]:
    """The full neutral mix, ids numbered per kind, ordered round-robin over the rows."""
    rows = [
        [(kind, target, verb, args) for args in variants]
        for kind, target, verb, variants in _GROUPS
    ]
    specs: list[Spec] = []
    seen: dict[str, int] = {}
    for i in range(max(len(r) for r in rows)):
        for row in rows:
            if i < len(row):
                kind, target, verb, args = row[i]
                seen[kind] = seen.get(kind, 0) + 1
                specs.append(Spec(f"{kind}-{seen[kind]}", kind, target, verb, args))
    return specs


# -- pathguard's side -------------------------------------------------------------------------


def _child(rule: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"rule": rule, "params": dict(params)}


_OURS: dict[str, Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]]] = {
    "field_not_empty": lambda a: ("field_not_empty", {"field": a["field"]}),
    "field_matches_regex": lambda a: (
        "field_matches_regex",
        {"field": a["field"], "pattern": a["pattern"]},
    ),
    "field_in_list": lambda a: ("field_in_list", {"field": a["field"], "values": a["values"]}),
    "sequence_forbidden": lambda a: ("sequence_forbidden", {"sequence": list(a["sequence"])}),
    "conditional_successor": lambda a: (
        "conditional_successor",
        {
            "trigger": a["trigger"],
            "condition": {"properties.target.trust": a["trust"]},
            "forbidden": a["forbidden"],
        },
    ),
    "not_history_contains": lambda a: (
        "not",
        {"rule": _child("history_contains", {"step_type": a["step_type"]})},
    ),
    "any_of_current_or_history": lambda a: (
        "any_of",
        {
            "rules": [
                _child("current_is", {"step_type": a["current"]}),
                _child("history_contains", {"step_type": a["history"]}),
            ]
        },
    ),
    "history_contains": lambda a: ("history_contains", {"step_type": a["step_type"]}),
    "working_hours": lambda a: ("working_hours", dict(a)),
    "domain_allowlist": lambda a: ("domain_allowlist", {"domains": list(a["domains"])}),
    "requires_prior": lambda a: ("requires_prior", {"step_type": a["required"]}),
    "requires_gate": lambda a: (
        "requires_gate",
        {"gate_type": "human_approval", **({"within": a["within"]} if a.get("within") else {})},
    ),
    "not_after": lambda a: ("not_after", {"step_type": a["forbidden"]}),
    "taint": lambda a: (
        "taint",
        {
            "source": {"step_type": a["source"], "properties": {"target.trust": a["trust"]}}
            if a.get("trust")
            else a["source"]
        },
    ),
    "directly_preceded_by": lambda a: ("directly_preceded_by", {"step_type": a["required"]}),
    "requires_prior_without_intervening": lambda a: (
        "requires_prior_without_intervening",
        {"required": a["required"], "forbidden": a["forbidden"]},
    ),
    "requires_dedicated_prior": lambda a: (
        "requires_dedicated_prior",
        {"step_type": a["required"]},
    ),
    "step_name_allowlist": lambda a: ("step_name_allowlist", {}),
    "max_steps": lambda a: (
        "max_steps",
        {"max": a["max"], "filter": {"step_type": a["step_type"]}},
    ),
    "max_consecutive": lambda a: (
        "max_consecutive",
        {"max": a["max"], "filter": {"step_type": a["step_type"]}},
    ),
    "budget": lambda a: (
        "budget",
        {"property": a["property"], "max": a["max"], "filter": {"step_type": a["step_type"]}},
    ),
    "path_within_root": lambda a: (
        "path_within_root",
        {"root": a["root"], "field": "properties.target.path"},
    ),
}


def our_policy(spec: Spec) -> dict[str, Any]:
    rule, params = _OURS[spec.kind](spec.args)
    policy: dict[str, Any] = {"id": spec.id, "rule": rule, "params": params, "severity": "high"}
    if spec.target is not None:
        policy["when"] = {"step_type": spec.target, **({"verb": spec.verb} if spec.verb else {})}
    return policy


def our_document(specs: Sequence[Spec]) -> dict[str, Any]:
    return {"version": 1, "name": "benchmark", "policies": [our_policy(s) for s in specs]}


class OursSide:
    """pathguard's engine behind the benchmark's engine-neutral surface."""

    label = "pathguard"

    def __init__(self, *, history_limit: int = 1000) -> None:
        self.history_limit = history_limit
        self.engine = PolicyEngine(None, history_limit=history_limit)

    def load(self, specs: Sequence[Spec]) -> None:
        policy_set = PolicySet.from_dict(our_document(specs))
        self.engine = PolicyEngine(policy_set, history_limit=self.history_limit)
        self.engine.register(
            AgentRegistration(
                agent_key=AGENT,
                name="Benchmark agent",
                purpose="benchmark",
                tools=TOOLS,
                risk_classification="limited",
            )
        )

    def open_task(self, task_id: str) -> None:
        self.engine.start_task(task_id, agent_key=AGENT)

    def close_task(self, task_id: str) -> None:
        self.engine.end_task(task_id)

    def evaluator(self, task_id: str) -> Callable[[Any], Any]:
        return self.engine.evaluate

    def recorder(self) -> Callable[[Any], Any]:
        return self.engine.record

    def behavior(self, step: Step, task_id: str, *, completed: bool) -> Behavior:
        properties: dict[str, Any] = {}
        target = {
            k: v
            for k, v in (("domain", step.domain), ("trust", step.trust), ("path", step.path))
            if v is not None
        }
        if target:
            properties["target"] = target
        if step.cost is not None:
            properties["usage"] = {"cost_usd": step.cost}
        if step.channel is not None:
            properties["message"] = {"channel": step.channel}
        if step.gate:
            properties["guard"] = {"gate_type": "human_approval", "decision": "approved"}
        marker = step.step_type.startswith("task.")
        return Behavior(
            step_type=step.step_type,  # type: ignore[arg-type]  # parsed from its dotted value
            verb=step.verb,  # type: ignore[arg-type]
            step_name=step.name,
            properties=properties,
            input=None if marker else {"text": step.text},
            output={"status": "ok"} if completed and not marker else None,
            agent_key=AGENT,
            task_id=task_id,
            status=Status.completed if completed else Status.intended,
            timestamp=NOW.timestamp(),
        )

    @staticmethod
    def violated(decision: Any) -> frozenset[str]:
        return frozenset(v.policy_id for v in (*decision.violations, *decision.shadow))

    @staticmethod
    def evaluated(decision: Any) -> int:
        return len(decision.evaluated)


def usable_specs(specs: Sequence[Spec]) -> tuple[list[Spec], dict[str, str]]:
    """Keep the kinds pathguard can load today (rule modules may still be missing)."""
    missing: dict[str, str] = {}
    for spec in specs:
        if spec.kind in missing or spec.kind not in peer.KINDS:
            continue
        try:
            PolicySet.from_dict(our_document([spec]))
        except PolicyLoadError as exc:
            missing[spec.kind] = str(exc).splitlines()[-1].strip()
    return [s for s in specs if s.kind not in missing], missing


def fill_to(specs: Sequence[Spec], count: int) -> list[Spec]:
    """Exactly `count` specs: extra copies of the available ones when kinds are missing."""
    out = list(specs[:count])
    i = 0
    while len(out) < count and specs:
        base = specs[i % len(specs)]
        out.append(dataclasses.replace(base, id=f"{base.id}-x{i // len(specs) + 1}"))
        i += 1
    return out


# -- timing -----------------------------------------------------------------------------------

Clock = Callable[[], int]
CLOCKS: tuple[tuple[str, Clock], ...] = (
    ("wall", time.perf_counter_ns),
    ("cpu", time.thread_time_ns),
)


@dataclasses.dataclass
class Config:
    quick: bool
    histories: tuple[int, int, int]
    budget_s: float
    n_min: int
    n_max: int
    memory_steps: tuple[int, int, int]
    memory_tasks: int
    peer_memory_tasks: int
    guard_calls_per_task: int

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(True, (10, 20, 40), 0.01, 5, 40, (100, 150, 200), 2, 1, 10)
        return cls(False, (50, 1000, 10_000), 1.0, 200, 20_000, (100, 1000, 10_000), 10, 3, 50)


@dataclasses.dataclass
class Stats:
    n: int
    wall: tuple[float, float]  # p50, p99 in µs
    cpu: tuple[float, float]
    evaluated: float | None = None


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in microseconds."""
    index = max(0, math.ceil(q * len(sorted_ns)) - 1)
    return sorted_ns[index] / 1000


def summary(samples: Sequence[int]) -> tuple[float, float]:
    ordered = sorted(samples)
    return percentile(ordered, 0.50), percentile(ordered, 0.99)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timer_floor(clock: Clock) -> float:
    """p50 of two back-to-back clock reads: what an empty timed call costs (µs)."""
    samples = []
    for _ in range(TIMER_FLOOR_RUNS):
        t0 = clock()
        samples.append(clock() - t0)
    return summary(samples)[0]


class Task:
    """One open task on one side, with its history recorded and its steps pre-built."""

    counter = 0

    def __init__(self, side: Any, history: int) -> None:
        Task.counter += 1
        self.side = side
        self.id = f"bench-{Task.counter}"
        side.open_task(self.id)
        record = side.recorder()
        if history:
            record(side.behavior(START, self.id, completed=True))
            cycle = [side.behavior(s, self.id, completed=True) for s in CYCLE]
            for i in range(history - 1):
                record(cycle[i % len(cycle)])
        self.intended = [side.behavior(s, self.id, completed=False) for s in ROTATION]
        self.completed = [side.behavior(s, self.id, completed=True) for s in ROTATION]
        self.evaluate = side.evaluator(self.id)
        self.record = record

    def close(self) -> None:
        self.side.close_task(self.id)


def time_evaluate(task: Task, n: int, clock: Clock) -> list[int]:
    evaluate, intended = task.evaluate, task.intended
    k = len(intended)
    out = [0] * n
    gc.disable()
    try:
        for i in range(n):
            b = intended[i % k]
            t0 = clock()
            evaluate(b)
            out[i] = clock() - t0
    finally:
        gc.enable()
    return out


def time_evaluate_record(task: Task, n: int, clock: Clock) -> list[int]:
    evaluate, record = task.evaluate, task.record
    intended, completed = task.intended, task.completed
    k = len(intended)
    out = [0] * n
    gc.disable()
    try:
        for i in range(n):
            b, c = intended[i % k], completed[i % k]
            t0 = clock()
            evaluate(b)
            record(c)
            out[i] = clock() - t0
    finally:
        gc.enable()
    return out


def iterations(per_call_ns: float, cfg: Config) -> int:
    wanted = int(cfg.budget_s * 1e9 / max(per_call_ns, 1.0))
    return max(cfg.n_min, min(cfg.n_max, wanted))


def probe(fn: Callable[[], Any], runs: int = 7) -> float:
    """Median wall time of a few calls, in ns (to size the timed loops)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return sorted(times)[len(times) // 2]


def measure_evaluate(side: Any, history: int, cfg: Config) -> Stats:
    task = Task(side, history)
    try:
        decisions = [task.evaluate(b) for b in task.intended]
        evaluated = sum(side.evaluated(d) for d in decisions) / len(decisions)
        k = len(task.intended)
        per_call = probe(lambda: [task.evaluate(b) for b in task.intended]) / k
        n = iterations(per_call, cfg)
        time_evaluate(task, min(n, 200), time.perf_counter_ns)  # warm-up
        results = {}
        for name, clock in CLOCKS:
            gc.collect()
            results[name] = summary(time_evaluate(task, n, clock))
    finally:
        task.close()
    return Stats(n, results["wall"], results["cpu"], evaluated)


def measure_evaluate_record(side: Any, history: int, cfg: Config) -> Stats:
    # Recording grows the history, so the timed calls run in rounds of a few steps, each on
    # a fresh task with the scenario's history: the history stays within 10% of its size.
    per_round = max(5, history // 10)
    warm = Task(side, history)
    per_call = probe(lambda: (warm.evaluate(warm.intended[0]), warm.record(warm.completed[0])))
    time_evaluate_record(warm, per_round, time.perf_counter_ns)
    warm.close()
    n = iterations(per_call, cfg)
    results = {}
    for name, clock in CLOCKS:
        gc.collect()
        samples: list[int] = []
        while len(samples) < n:
            task = Task(side, history)
            samples += time_evaluate_record(task, min(per_round, n - len(samples)), clock)
            task.close()
        results[name] = summary(samples)
    return Stats(n, results["wall"], results["cpu"])


# -- the @guard.step row ------------------------------------------------------------------


def measure_guard(specs: Sequence[Spec], cfg: Config) -> tuple[dict[str, Stats], str]:
    """Overhead of a `@guard.step` call over a plain call, with and without a trace sink."""
    try:
        from pathguard.guard import Guard
        from pathguard.trace import MemorySink
        from pathguard.vocabulary import StepType, Verb
    except ImportError as exc:
        return {}, f"not measured: the Guard SDK is not importable yet ({exc})"

    def chat(text: str) -> str:
        return text

    def approve(text: str) -> bool:
        return True

    plain = {name: summary(_time_plain(chat, 20 * cfg.n_min, clock)) for name, clock in CLOCKS}
    out: dict[str, Stats] = {}
    for label, sinks in (("no trace sink", []), ("MemorySink (hash-chained trace)", [1])):
        try:
            guard = Guard(
                agent_key=AGENT,
                policies=our_document(specs),
                clock=NOW.timestamp,
                sinks=[MemorySink() for _ in sinks],
            )
            guard.register_agent(
                name="Benchmark agent",
                purpose="benchmark",
                tools=TOOLS,
                risk_classification="limited",
            )
            governed_chat = guard.step(
                StepType.step_model, Verb.POST, properties={"usage": {"cost_usd": 0.0004}}
            )(chat)
            governed_gate = guard.step(StepType.step_gate)(approve)
            probe_ns = _time_guard(
                guard, governed_chat, governed_gate, 20, 20, time.perf_counter_ns
            )
        except Exception as exc:  # a benchmark row, not library code: say what went wrong
            return out, f"not measured: {type(exc).__name__}: {exc}"
        n = iterations(summary(probe_ns)[0] * 1000, cfg)
        stats = {}
        for name, clock in CLOCKS:
            p50, p99 = summary(
                _time_guard(guard, governed_chat, governed_gate, n, cfg.guard_calls_per_task, clock)
            )
            stats[name] = (p50 - plain[name][0], p99 - plain[name][1])
        out[label] = Stats(n, stats["wall"], stats["cpu"])
    return out, ""


def _time_plain(fn: Callable[[str], Any], n: int, clock: Clock) -> list[int]:
    out = [0] * n
    gc.collect()
    gc.disable()
    try:
        for i in range(n):
            t0 = clock()
            fn("hi")
            out[i] = clock() - t0
    finally:
        gc.enable()
    return out


def _time_guard(
    guard: Any,
    chat: Callable[[str], Any],
    gate: Callable[[str], Any],
    n: int,
    per_task: int,
    clock: Clock,
) -> list[int]:
    """Time `chat` calls inside tasks of `per_task` calls, with an (untimed) approval gate
    before each one: a realistic path, and one no policy of the mix refuses."""
    out: list[int] = []
    gc.collect()
    while len(out) < n:
        gc.disable()
        try:
            with guard.task():
                for _ in range(min(per_task, n - len(out))):
                    gate("ok")
                    t0 = clock()
                    chat("hi")
                    out.append(clock() - t0)
        finally:
            gc.enable()
    return out


# -- memory ---------------------------------------------------------------------------------


def memory_per_task(side: Any, specs: Sequence[Spec], steps: int, tasks: int) -> int:
    """Bytes the engine keeps per open task after `steps` recorded steps (tracemalloc).

    Every step is a fresh behaviour, so whatever the engine retains of the history is
    counted; one warm-up task first builds the engine's per-agent caches."""
    side.load(specs)
    warm = Task(side, len(CYCLE) + 1)
    warm.close()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for t in range(tasks):
            task_id = f"memory-{t}"
            side.open_task(task_id)
            record = side.recorder()
            record(side.behavior(START, task_id, completed=True))
            for i in range(steps - 1):
                record(side.behavior(CYCLE[i % len(CYCLE)], task_id, completed=True))
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) // tasks


# -- the report -------------------------------------------------------------------------------


def us(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def times(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:,.0f}×" if value >= 10 else f"{value:.1f}×"


def kib(value: int | None) -> str:
    return "—" if value is None else f"{value / 1024:,.1f} KiB"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = [
            "| " + " | ".join(headers) + " |",
            "|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*headers), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines)


def heading(text: str, markdown: bool) -> str:
    return f"\n### {text}\n" if markdown else f"\n{text}\n{'=' * len(text)}"


def ratio(peer_value: float | None, ours: float | None) -> float | None:
    if peer_value is None or ours is None or ours <= 0:
        return None
    return peer_value / ours


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and iteration counts (a smoke test, not figures)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--no-peer", action="store_true", help="measure pathguard only")
    args = parser.parse_args(argv)
    cfg = Config.make(args.quick)
    md = args.markdown

    specs, missing = usable_specs(all_specs())
    full = fill_to(specs, POLICY_COUNT)
    ten = fill_to(specs, 10)

    use_peer = peer.AVAILABLE and not args.no_peer
    sides: dict[str, Any] = {"ours": OursSide()}
    if use_peer:
        sides["peer"] = peer.PeerSide(agent_key=AGENT, tools=TOOLS, now=NOW)

    h1, h2, h3 = cfg.histories
    scenarios = (
        ("0 policies, empty history", [], 0),
        ("10 policies, empty history", ten, 0),
        (f"100 policies, {h1:,}-step history", full, h1),
        (f"100 policies, {h2:,}-step history", full, h2),
        (f"100 policies, {h3:,}-step history", full, h3),
    )
    results: dict[tuple[str, str, str], Stats] = {}
    disagreements: list[str] = []
    for label, policy_specs, history in scenarios:
        for key, side in sides.items():
            side.load(policy_specs)
            log(f"{side.label}: {label}: evaluate")
            results[(label, "evaluate", key)] = measure_evaluate(side, history, cfg)
            log(f"{side.label}: {label}: evaluate + record")
            results[(label, "evaluate + record", key)] = measure_evaluate_record(side, history, cfg)
        if use_peer:
            disagreements += check_agreement(sides, policy_specs, history, label)

    log("pathguard: @guard.step overhead")
    guard_stats, guard_note = measure_guard(full, cfg)

    memory: dict[tuple[str, int], int] = {}
    for steps in cfg.memory_steps:
        log(f"memory after {steps:,} steps")
        memory[("ours", steps)] = memory_per_task(
            OursSide(history_limit=100), full, steps, cfg.memory_tasks
        )
        if use_peer:
            memory[("peer", steps)] = memory_per_task(
                peer.PeerSide(agent_key=AGENT, tools=TOOLS, now=NOW),
                full,
                steps,
                cfg.peer_memory_tasks,
            )

    print(
        report(
            cfg,
            md,
            scenarios,
            results,
            guard_stats,
            guard_note,
            memory,
            use_peer,
            full,
            missing,
            disagreements,
        )
    )
    return 0


def check_agreement(
    sides: Mapping[str, Any], specs: Sequence[Spec], history: int, label: str
) -> list[str]:
    """Do both engines find the same policies violated for each rotation step?"""
    verdicts = {}
    for key, side in sides.items():
        side.load(specs)
        task = Task(side, history)
        verdicts[key] = [side.violated(task.evaluate(b)) for b in task.intended]
        task.close()
    out = []
    for step, ours, theirs in zip(ROTATION, verdicts["ours"], verdicts["peer"], strict=True):
        if ours != theirs:
            out.append(
                f"{label}, {step.step_type} {step.verb} {step.name}: only pathguard "
                f"{sorted(ours - theirs)}, only the peer {sorted(theirs - ours)}"
            )
    return out


def report(
    cfg: Config,
    md: bool,
    scenarios: Sequence[tuple[str, Sequence[Spec], int]],
    results: Mapping[tuple[str, str, str], Stats],
    guard_stats: Mapping[str, Stats],
    guard_note: str,
    memory: Mapping[tuple[str, int], int],
    use_peer: bool,
    full: Sequence[Spec],
    missing: Mapping[str, str],
    disagreements: Sequence[str],
) -> str:
    out: list[str] = []
    cpus = os.cpu_count()
    peer_text = (
        f"kyvvu-engine {peer.VERSION}"
        if use_peer
        else (
            "not measured (kyvvu-engine is not installed; `pip install kyvvu-engine` to compare)"
            if not peer.AVAILABLE
            else "not measured (--no-peer)"
        )
    )
    out.append(heading("pathguard engine benchmark", md))
    facts = [
        f"machine: {cpus} CPUs (os.cpu_count), {platform.machine()}, {platform.system()} "
        f"{platform.release()}",
        f"python: {platform.python_implementation()} {platform.python_version()}",
        f"pathguard {pathguard.__version__}; peer: {peer_text}",
        "method: every call timed on its own, wall = time.perf_counter_ns, "
        "CPU = time.thread_time_ns; garbage collector disabled during timed loops "
        "(gc.disable; a full gc.collect before each timed pass); warm-up calls before timing",
        f"timer floor (two back-to-back reads, p50): wall {timer_floor(time.perf_counter_ns):.3f} "
        f"µs, CPU {timer_floor(time.thread_time_ns):.3f} µs (included in every figure)",
        "evaluated steps rotate over: "
        + ", ".join(f"{s.step_type} {s.verb} {s.name}" for s in ROTATION),
        "evaluate + record: each call pair on a task holding the scenario's history, in rounds "
        "on fresh tasks so the history grows by at most 10% (or 5 steps)",
    ]
    if cfg.quick:
        facts.insert(0, "QUICK RUN: tiny sizes and iteration counts; the figures mean nothing")
    out.append("\n".join(f"- {f}" if md else f"  {f}" for f in facts))

    out.append(heading("Latency (µs per call; × = peer time / pathguard time, wall)", md))
    headers = [
        "scenario",
        "call",
        "n ours/peer",
        "policies evaluated ours/peer",
        "ours p50",
        "ours p99",
        "ours CPU p50",
        "ours CPU p99",
        "peer p50",
        "peer p99",
        "peer CPU p50",
        "peer CPU p99",
        "× p50",
        "× p99",
    ]
    rows = []
    for label, _, _ in scenarios:
        for call in ("evaluate", "evaluate + record"):
            o = results[(label, call, "ours")]
            p = results.get((label, call, "peer"))
            evaluated = (
                ""
                if o.evaluated is None
                else (
                    f"{o.evaluated:.1f} / {p.evaluated:.0f}"
                    if p and p.evaluated is not None
                    else f"{o.evaluated:.1f}"
                )
            )
            rows.append(
                [
                    label,
                    call,
                    f"{o.n:,} / {p.n:,}" if p else f"{o.n:,}",
                    evaluated,
                    us(o.wall[0]),
                    us(o.wall[1]),
                    us(o.cpu[0]),
                    us(o.cpu[1]),
                    us(p.wall[0] if p else None),
                    us(p.wall[1] if p else None),
                    us(p.cpu[0] if p else None),
                    us(p.cpu[1] if p else None),
                    times(ratio(p.wall[0], o.wall[0]) if p else None),
                    times(ratio(p.wall[1], o.wall[1]) if p else None),
                ]
            )
    for label, stats in guard_stats.items():
        rows.append(
            [
                "100 policies, @guard.step overhead",
                label,
                f"{stats.n:,}",
                "",
                us(stats.wall[0]),
                us(stats.wall[1]),
                us(stats.cpu[0]),
                us(stats.cpu[1]),
                "—",
                "—",
                "—",
                "—",
                "—",
                "—",
            ]
        )
    out.append(table(headers, rows, md))
    notes = [
        "policies evaluated = policies whose target matched the step (mean over the rotation); "
        "the peer runs every loaded policy's rule on every step",
        "@guard.step overhead = decorated call minus plain call, per percentile; the task "
        f"holds up to {cfg.guard_calls_per_task} steps; tasks are opened and closed outside "
        "the timed calls",
    ]
    if guard_note:
        notes.append(f"@guard.step: {guard_note}")
    out.append("\n".join(f"- {n}" if md else f"  {n}" for n in notes))

    out.append(
        heading("Engine memory per open task (tracemalloc, pathguard history_limit=100)", md)
    )
    mem_rows = []
    for steps in cfg.memory_steps:
        mem_rows.append(
            [
                f"{steps:,} recorded steps",
                "",
                kib(memory.get(("ours", steps))),
                kib(memory.get(("peer", steps))),
            ]
        )
    out.append(table(["after", "", "pathguard", "peer"], mem_rows, md))

    out.append(heading("Targets", md))
    out.append(
        table(
            ["target", "", "measured", "status"],
            targets(cfg, scenarios, results, guard_stats, memory, use_peer),
            md,
        )
    )

    out.append(heading("Policy mix", md))
    counts: dict[str, int] = {}
    for spec in full:
        counts[spec.kind] = counts.get(spec.kind, 0) + 1
    targeted = sum(1 for s in full if s.target is not None)
    mix = [
        f"{len(full)} policies, {targeted} targeted at one step type (and maybe a verb), "
        f"{len(full) - targeted} at every step: "
        + ", ".join(f"{kind} ×{n}" for kind, n in sorted(counts.items())),
        "the same kinds in both engines, each in its own built-in rules (see "
        "benchmarks/_peer_kyvvu.py for the peer's names); the 10-policy scenario takes one "
        "policy of each of ten kinds",
    ]
    for kind, why in missing.items():
        mix.append(f"left out, pathguard cannot load it yet: {kind} ({why})")
    if use_peer:
        mix.append(
            "decisions agree: both engines find the same policies violated for every rotation "
            "step of every scenario"
            if not disagreements
            else "decisions differ: " + "; ".join(disagreements)
        )
    out.append("\n".join(f"- {m}" if md else f"  {m}" for m in mix))
    return "\n".join(out)


def targets(
    cfg: Config,
    scenarios: Sequence[tuple[str, Sequence[Spec], int]],
    results: Mapping[tuple[str, str, str], Stats],
    guard_stats: Mapping[str, Stats],
    memory: Mapping[tuple[str, int], int],
    use_peer: bool,
) -> list[list[str]]:
    def status(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "MISSED")

    short, long = scenarios[2][0], scenarios[4][0]
    o50 = results[(short, "evaluate", "ours")]
    o10k = results[(long, "evaluate", "ours")]
    p50 = results.get((short, "evaluate", "peer"))
    rows = [
        [
            "evaluate p99 ≤ 25 µs",
            short,
            f"{us(o50.wall[1])} µs wall, {us(o50.cpu[1])} µs CPU",
            status(o50.wall[1] <= 25),
        ]
    ]
    if p50 is not None:
        r50, r99 = ratio(p50.wall[0], o50.wall[0]), ratio(p50.wall[1], o50.wall[1])
        ok = r50 is not None and r99 is not None and min(r50, r99) >= 40
        rows.append(
            [
                "≥ 40× faster than the peer (p50 and p99)",
                short,
                f"{times(r50)} at p50, {times(r99)} at p99",
                status(ok),
            ]
        )
    else:
        rows.append(["≥ 40× faster than the peer", short, "—", status(None)])
    growth = o10k.wall[1] / o50.wall[1]
    peer_growth = ""
    p10k = results.get((long, "evaluate", "peer"))
    if p50 is not None and p10k is not None:
        peer_growth = f" (peer: {times(p10k.wall[1] / p50.wall[1])})"
    rows.append(
        [
            f"{long.split(', ')[1]}: evaluate p99 within 1.2× of {short.split(', ')[1]}",
            "100 policies",
            f"{growth:.2f}×{peer_growth}",
            status(growth <= 1.2),
        ]
    )
    guard = guard_stats.get("no trace sink")
    rows.append(
        [
            "@guard.step overhead p99 ≤ 50 µs",
            "100 policies, no trace sink",
            f"{us(guard.wall[1])} µs wall, {us(guard.cpu[1])} µs CPU" if guard else "—",
            status(None if guard is None else guard.wall[1] <= 50),
        ]
    )
    first, *rest = cfg.memory_steps
    base = memory[("ours", first)]
    later = max(memory[("ours", s)] for s in rest)
    rows.append(
        [
            "memory per open task bounded by history retention, not step count",
            "history_limit=100",
            f"{kib(base)} after {first:,} steps, at most {kib(later)} after more",
            status(later <= base * 1.1),
        ]
    )
    return rows


if __name__ == "__main__":
    sys.exit(main())
