"""Benchmark the pathguard engine, side by side with the peer `kyvvu-engine`.

Prints p50 and p99 (wall and CPU time) of `evaluate` and of `evaluate` + `record` for 0, 10
and 100 policies over empty, 50, 1,000 and 10,000-step histories, the overhead of a
`@guard.step` call, engine memory per open task, the peer's figures and the ratios, and
whether each performance target is met.

    .venv/bin/python benchmarks/engine.py             # full run, plain-text tables
    .venv/bin/python benchmarks/engine.py --markdown  # the same, as markdown (for the docs)
    .venv/bin/python benchmarks/engine.py --quick     # tiny sizes: a smoke test, not figures

The peer is optional (`pip install kyvvu-engine`, or `make bench`); without it only
pathguard is measured. Both engines get the same 100 policies, each written in the engine's
own built-in rules (the neutral mix is `_GROUPS` below, `_peer_kyvvu.py` translates it for
the peer), and the same steps. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
from pathguard.vocabulary import AgentRegistration, Behavior, RiskClass, Status

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

R, M, X, C = "step.resource", "step.model", "step.exec", "step.credential"
MSG, S, G, START_T = "step.message", "step.self", "step.gate", "task.start"


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
    target: str | None  # a step type, or None for every step
    verb: str | None
    args: Mapping[str, Any]


START = Step(START_T, None, "task")
# The recorded history is one task.start and then this cycle: a support agent's loop.
CYCLE = (
    Step(M, "POST", "chat", cost=0.0004),
    Step(R, "GET", "read_ticket", domain="api.example.com", trust="trusted"),
    Step(S, "POST", "write_note", path=f"{ROOT}/notes/today.md"),
    Step(G, None, "approve", gate=True),
    Step(R, "POST", "update_ticket", domain="crm.example.com", trust="trusted"),
    Step(MSG, "POST", "reply", channel="chat"),
)
# The intended steps every timing loop evaluates, in turn.
ROTATION = (CYCLE[1], CYCLE[0], CYCLE[4], CYCLE[5])

_NAMES = "^(" + "|".join(TOOLS) + ")$"
_BIG = 10**6

# The mix: (rule kind, target step type or None for every step, target verb, one args dict
# per policy). Ten different kinds come first: the 10-policy scenario takes the first policy
# of each of the first ten rows. To change the mix, edit this table (a new kind needs a
# translation in `_OURS` below and in `_peer_kyvvu._TRANSLATIONS`).
# fmt: off
_GROUPS: tuple[tuple[str, str | None, str | None, tuple[Mapping[str, Any], ...]], ...] = (
    ("domain_allowlist", R, None, (
        {"domains": ["example.com"]}, {"domains": ["example.com", "example.org"]},
        {"domains": ["api.example.com", "crm.example.com"]},
        {"domains": ["example.com", "openai.com"]}, {"domains": ["example.com", "internal.test"]},
    )),
    ("requires_prior", R, "GET", ({"required": M}, {"required": START_T}) * 2),
    ("requires_gate", R, "POST", ({}, {"within": 10}, {"within": 100})),
    ("max_steps", M, None, tuple({"step_type": M, "max": _BIG * k} for k in (1, 10, 100))),
    ("field_matches_regex", None, None, tuple({"field": "step_name", "pattern": p} for p in (
        "^[a-z_]+$", "^[a-z]", "[a-z]$", "^[^ ]{1,64}$", _NAMES))),
    ("sequence_forbidden", None, None, (
        {"sequence": [C, X]}, {"sequence": ["step.unknown", MSG]}, {"sequence": [X, C, MSG]},
    )),
    ("taint", R, "POST", ({"source": R, "trust": "untrusted"},) * 2),
    ("step_name_allowlist", R, None, ({},) * 2),
    ("not_after", R, None, ({"forbidden": "step.unknown"},) * 2),
    ("budget", M, None, tuple(
        {"step_type": M, "property": "usage.cost_usd", "max": m} for m in (1000, 5000, 10000))),
    ("max_consecutive", M, None, tuple({"step_type": M, "max": m} for m in (20, 50, 100))),
    ("directly_preceded_by", R, "DELETE", ({"required": G},) * 2),
    ("requires_prior_without_intervening", R, "DELETE", ({"required": G, "forbidden": M},) * 2),
    ("requires_dedicated_prior", R, "DELETE", ({"required": G},)),
    ("conditional_successor", None, None, (
        {"trigger": R, "trust": "untrusted", "forbidden": X},
        {"trigger": R, "trust": "untrusted", "forbidden": C},
    )),
    ("not_history_contains", None, None, ({"step_type": "step.unknown"}, {"step_type": X})),
    ("any_of_current_or_history", None, None, ({"current": M, "history": START_T},)),
    ("history_contains", None, None, ({"step_type": START_T},) * 2),
    ("working_hours", None, None, (
        {"start_hour": 6, "end_hour": 22, "timezone": "UTC"},
        {"start_hour": 22, "end_hour": 20, "timezone": "Europe/Amsterdam"},
    )),
    ("field_not_empty", None, None, ({"field": "step_name"}, {"field": "input.text"})),
    ("field_in_list", None, None, (
        {"field": "step_name", "values": list(TOOLS)},
        {"field": "step_name", "values": [*TOOLS, "search", "summarise"]},
    )),
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
    ("requires_prior", M, None, ({"required": START_T},) * 2),
    ("requires_prior", S, None, ({"required": M},) * 2),
    ("requires_prior", G, None, ({"required": START_T},)),
    ("not_after", R, "GET", ({"forbidden": X},) * 2),
    ("requires_gate", R, "DELETE", ({},) * 2),
)
# fmt: on


def all_specs() -> list[Spec]:
    """The whole neutral mix, ordered round-robin over the rows, ids numbered per kind."""
    rows = [[(kind, target, verb, a) for a in variants] for kind, target, verb, variants in _GROUPS]
    specs: list[Spec] = []
    count: dict[str, int] = {}
    for i in range(max(len(row) for row in rows)):
        for kind, target, verb, args in (row[i] for row in rows if i < len(row)):
            count[kind] = count.get(kind, 0) + 1
            specs.append(Spec(f"{kind}-{count[kind]}", kind, target, verb, args))
    return specs


# -- pathguard's side -------------------------------------------------------------------------


def _sub(rule: str, **params: Any) -> dict[str, Any]:
    return {"rule": rule, "params": params}


def _of(step_type: str) -> dict[str, Any]:
    return {"step_type": step_type}


# Each neutral kind -> (pathguard rule, params).
# fmt: off
_OURS: dict[str, Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]]] = {
    "field_not_empty": lambda a: ("field_not_empty", {"field": a["field"]}),
    "field_matches_regex": lambda a: ("field_matches_regex", dict(a)),
    "field_in_list": lambda a: ("field_in_list", dict(a)),
    "sequence_forbidden": lambda a: ("sequence_forbidden", {"sequence": a["sequence"]}),
    "conditional_successor": lambda a: ("conditional_successor", {
        "trigger": a["trigger"], "condition": {"properties.target.trust": a["trust"]},
        "forbidden": a["forbidden"]}),
    "not_history_contains": lambda a: (
        "not", {"rule": _sub("history_contains", **_of(a["step_type"]))}),
    "any_of_current_or_history": lambda a: ("any_of", {"rules": [
        _sub("current_is", **_of(a["current"])),
        _sub("history_contains", **_of(a["history"]))]}),
    "history_contains": lambda a: ("history_contains", _of(a["step_type"])),
    "working_hours": lambda a: ("working_hours", dict(a)),
    "domain_allowlist": lambda a: ("domain_allowlist", {"domains": a["domains"]}),
    "requires_prior": lambda a: ("requires_prior", _of(a["required"])),
    "requires_gate": lambda a: ("requires_gate", {"gate_type": "human_approval", **(
        {"within": a["within"]} if a.get("within") else {})}),
    "not_after": lambda a: ("not_after", _of(a["forbidden"])),
    "taint": lambda a: ("taint", {"source": {
        "step_type": a["source"], "properties": {"target.trust": a["trust"]}}
        if a.get("trust") else a["source"]}),
    "directly_preceded_by": lambda a: ("directly_preceded_by", _of(a["required"])),
    "requires_prior_without_intervening": lambda a: (
        "requires_prior_without_intervening", {"required": a["required"],
                                               "forbidden": a["forbidden"]}),
    "requires_dedicated_prior": lambda a: ("requires_dedicated_prior", _of(a["required"])),
    "step_name_allowlist": lambda a: ("step_name_allowlist", {}),
    "max_steps": lambda a: ("max_steps", {"max": a["max"], "filter": _of(a["step_type"])}),
    "max_consecutive": lambda a: (
        "max_consecutive", {"max": a["max"], "filter": _of(a["step_type"])}),
    "budget": lambda a: ("budget", {
        "property": a["property"], "max": a["max"], "filter": _of(a["step_type"])}),
    "path_within_root": lambda a: (
        "path_within_root", {"root": a["root"], "field": "properties.target.path"}),
}
# fmt: on


def our_document(specs: Sequence[Spec]) -> dict[str, Any]:
    policies = []
    for spec in specs:
        rule, params = _OURS[spec.kind](spec.args)
        policy = {"id": spec.id, "rule": rule, "params": params, "severity": "high"}
        if spec.target is not None:
            policy["when"] = {
                "step_type": spec.target,
                **({"verb": spec.verb} if spec.verb else {}),
            }
        policies.append(policy)
    return {"version": 1, "name": "benchmark", "policies": policies}


class OursSide:
    """pathguard's engine behind the benchmark's engine-neutral surface."""

    label = "pathguard"

    def __init__(self, *, history_limit: int = 1000) -> None:
        self.history_limit = history_limit
        self.engine = PolicyEngine(None, history_limit=history_limit)

    def load(self, specs: Sequence[Spec]) -> None:
        self.engine = PolicyEngine(
            PolicySet.from_dict(our_document(specs)), history_limit=self.history_limit
        )
        self.engine.register(
            AgentRegistration(
                agent_key=AGENT,
                name="Benchmark agent",
                purpose="benchmark",
                tools=TOOLS,
                risk_classification=RiskClass.limited,
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
        target = {"domain": step.domain, "trust": step.trust, "path": step.path}
        if any(v is not None for v in target.values()):
            properties["target"] = {k: v for k, v in target.items() if v is not None}
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
    """The specs whose kind pathguard can load today, and why the others cannot be."""
    missing: dict[str, str] = {}
    for spec in specs:
        if spec.kind in missing:
            continue
        try:
            PolicySet.from_dict(our_document([spec]))
        except PolicyLoadError as exc:
            missing[spec.kind] = str(exc).splitlines()[-1].strip()
    return [s for s in specs if s.kind not in missing], missing


def fill_to(specs: Sequence[Spec], count: int) -> list[Spec]:
    """Exactly `count` specs: the first ones, then extra copies when kinds are missing."""
    out = list(specs[:count])
    for i in range(count - len(out)):
        base = specs[i % len(specs)]
        out.append(dataclasses.replace(base, id=f"{base.id}-copy{i // len(specs) + 1}"))
    return out


# -- timing -----------------------------------------------------------------------------------

# Each timed call is read with both clocks, wall outside and the thread's CPU time inside, so
# the two figures describe the same calls; what reading the clocks costs is subtracted.
WALL, CPU = time.perf_counter_ns, time.thread_time_ns
Samples = tuple[list[int], list[int]]  # (wall, cpu) in ns


@dataclasses.dataclass(frozen=True)
class Config:
    quick: bool
    histories: tuple[int, int, int]
    budget_s: float  # time spent per timed pass, within [n_min, n_max] calls
    n_min: int
    n_max: int
    memory_steps: tuple[int, int, int]
    memory_tasks: int
    peer_memory_tasks: int
    guard_calls_per_task: int
    floor: tuple[float, float] = (0.0, 0.0)  # timer cost (wall, CPU) in µs, subtracted

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(True, (10, 20, 40), 0.01, 5, 40, (100, 150, 200), 2, 1, 10)
        return cls(False, (50, 1000, 10_000), 1.0, 200, 20_000, (100, 1000, 10_000), 10, 3, 50)


@dataclasses.dataclass(frozen=True)
class Stats:
    n: int
    wall: tuple[float, float]  # p50, p99 in µs
    cpu: tuple[float, float]
    evaluated: float | None = None

    @classmethod
    def of(cls, samples: Samples, cfg: Config, evaluated: float | None = None) -> Stats:
        """p50 and p99 of both clocks, less the cost of reading the clocks."""
        (w50, w99), (c50, c99) = summary(samples[0]), summary(samples[1])
        fw, fc = cfg.floor
        wall, cpu = (max(0.0, w50 - fw), w99 - fw), (max(0.0, c50 - fc), c99 - fc)
        return cls(len(samples[0]), wall, cpu, evaluated)


def summary(samples: Sequence[int]) -> tuple[float, float]:
    """Nearest-rank p50 and p99 of nanosecond samples, in µs."""
    ordered = sorted(samples)
    p50, p99 = (ordered[max(0, math.ceil(q * len(ordered)) - 1)] / 1000 for q in (0.5, 0.99))
    return p50, p99


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timer_floor() -> tuple[float, float]:
    """p50 wall and CPU time of timing an empty call the way every call is timed (µs)."""
    wall, cpu = [0] * 20_000, [0] * 20_000
    for i in range(20_000):
        w0 = WALL()
        c0 = CPU()
        c1 = CPU()
        w1 = WALL()
        wall[i], cpu[i] = w1 - w0, c1 - c0
    return summary(wall)[0], summary(cpu)[0]


def iterations(per_call_ns: float, cfg: Config) -> int:
    return max(cfg.n_min, min(cfg.n_max, int(cfg.budget_s * 1e9 / max(per_call_ns, 1.0))))


def probe(fn: Callable[[], Any], runs: int = 7) -> float:
    """Median wall time of a few calls, in ns (to size the timed loops)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return sorted(times)[len(times) // 2]


class Task:
    """One open task on one side, its history recorded and its rotation steps pre-built."""

    counter = 0

    def __init__(self, side: Any, history: int) -> None:
        Task.counter += 1
        self.side = side
        self.id = f"bench-{Task.counter}"
        side.open_task(self.id)
        self.record = side.recorder()
        if history:
            self.record(side.behavior(START, self.id, completed=True))
            cycle = [side.behavior(s, self.id, completed=True) for s in CYCLE]
            for i in range(history - 1):
                self.record(cycle[i % len(cycle)])
        self.intended = [side.behavior(s, self.id, completed=False) for s in ROTATION]
        self.completed = [side.behavior(s, self.id, completed=True) for s in ROTATION]
        self.evaluate = side.evaluator(self.id)

    def close(self) -> None:
        self.side.close_task(self.id)


def time_evaluate(task: Task, n: int) -> Samples:
    evaluate, intended, k = task.evaluate, task.intended, len(task.intended)
    wall, cpu = [0] * n, [0] * n
    gc.disable()
    try:
        for i in range(n):
            b = intended[i % k]
            w0 = WALL()
            c0 = CPU()
            evaluate(b)
            c1 = CPU()
            w1 = WALL()
            wall[i], cpu[i] = w1 - w0, c1 - c0
    finally:
        gc.enable()
    return wall, cpu


def time_evaluate_record(task: Task, n: int) -> Samples:
    evaluate, record, k = task.evaluate, task.record, len(task.intended)
    intended, completed = task.intended, task.completed
    wall, cpu = [0] * n, [0] * n
    gc.disable()
    try:
        for i in range(n):
            b, c = intended[i % k], completed[i % k]
            w0 = WALL()
            c0 = CPU()
            evaluate(b)
            record(c)
            c1 = CPU()
            w1 = WALL()
            wall[i], cpu[i] = w1 - w0, c1 - c0
    finally:
        gc.enable()
    return wall, cpu


def measure_evaluate(side: Any, histories: Sequence[int], cfg: Config) -> list[Stats]:
    """`evaluate` on one task per history length, timed in interleaved batches so that every
    history length sees the same machine conditions (the growth target compares them)."""
    tasks = [Task(side, history) for history in histories]
    try:
        evaluated: list[float] = []
        sizes: list[int] = []
        for task in tasks:
            decisions = [task.evaluate(b) for b in task.intended]
            evaluated.append(sum(side.evaluated(d) for d in decisions) / len(decisions))
            k = len(task.intended)
            per_call = probe(functools.partial(time_evaluate, task, k)) / k
            sizes.append(iterations(per_call, cfg))
            time_evaluate(task, min(sizes[-1], 200))  # warm-up
        rounds = 10
        samples: list[Samples] = [([], []) for _ in tasks]
        gc.collect()
        for r in range(rounds):
            for task, n, (wall, cpu) in zip(tasks, sizes, samples, strict=True):
                w, c = time_evaluate(task, n * (r + 1) // rounds - n * r // rounds)
                wall += w
                cpu += c
        return [Stats.of(x, cfg, e) for x, e in zip(samples, evaluated, strict=True)]
    finally:
        for task in tasks:
            task.close()


def measure_evaluate_record(side: Any, history: int, cfg: Config) -> Stats:
    # Recording lengthens the history, so the timed pairs run in rounds, each on a fresh task
    # holding the scenario's history: it never grows by more than a tenth (or 5 steps).
    per_round = max(5, history // 10)
    warm = Task(side, history)
    n = iterations(probe(lambda: time_evaluate_record(warm, 1)), cfg)
    time_evaluate_record(warm, per_round)
    warm.close()
    gc.collect()
    wall: list[int] = []
    cpu: list[int] = []
    while len(wall) < n:
        task = Task(side, history)
        w, c = time_evaluate_record(task, min(per_round, n - len(wall)))
        task.close()
        wall += w
        cpu += c
    return Stats.of((wall, cpu), cfg)


def check_agreement(sides: Mapping[str, Any], specs: Sequence[Spec], history: int) -> list[str]:
    """Where the engines disagree on which policies a rotation step violates."""
    verdicts = {}
    for key, side in sides.items():
        side.load(specs)
        task = Task(side, history)
        verdicts[key] = [side.violated(task.evaluate(b)) for b in task.intended]
        task.close()
    return [
        f"{step.step_type} {step.name}: only pathguard {sorted(ours - theirs)}, "
        f"only the peer {sorted(theirs - ours)}"
        for step, ours, theirs in zip(ROTATION, verdicts["ours"], verdicts["peer"], strict=True)
        if ours != theirs
    ]


# -- the @guard.step row ----------------------------------------------------------------------


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

    plain = Stats.of(_time_plain(chat, 20 * cfg.n_min), cfg)
    out: dict[str, Stats] = {}
    for label, sinks in (("no trace sink", 0), ("MemorySink (hash-chained trace)", 1)):
        try:
            guard = Guard(
                agent_key=AGENT,
                policies=our_document(specs),
                clock=NOW.timestamp,
                sinks=[MemorySink() for _ in range(sinks)],
            )
            guard.register_agent(
                name="Benchmark agent",
                purpose="benchmark",
                tools=TOOLS,
                risk_classification="limited",
            )
            governed = guard.step(
                StepType.step_model, Verb.POST, properties={"usage": {"cost_usd": 0.0004}}
            )(chat)
            gate = guard.step(StepType.step_gate)(approve)
            first = _time_guard(guard, governed, gate, 20, 20)
        except Exception as exc:  # a benchmark row, not library code: say what went wrong
            return out, f"not measured: {type(exc).__name__}: {exc}"
        n = iterations(summary(first[0])[0] * 1000, cfg)
        timed = Stats.of(_time_guard(guard, governed, gate, n, cfg.guard_calls_per_task), cfg)
        out[label] = Stats(
            n,
            (timed.wall[0] - plain.wall[0], timed.wall[1] - plain.wall[1]),
            (timed.cpu[0] - plain.cpu[0], timed.cpu[1] - plain.cpu[1]),
        )
    return out, ""


def _time_plain(fn: Callable[[str], Any], n: int) -> Samples:
    wall, cpu = [0] * n, [0] * n
    gc.collect()
    gc.disable()
    try:
        for i in range(n):
            w0 = WALL()
            c0 = CPU()
            fn("hi")
            c1 = CPU()
            w1 = WALL()
            wall[i], cpu[i] = w1 - w0, c1 - c0
    finally:
        gc.enable()
    return wall, cpu


def _time_guard(
    guard: Any, chat: Callable[[str], Any], gate: Callable[[str], Any], n: int, per_task: int
) -> Samples:
    """Time governed `chat` calls in tasks of `per_task` calls, each after an untimed approval
    gate: a realistic path, and one that no policy of the mix refuses."""
    wall: list[int] = []
    cpu: list[int] = []
    gc.collect()
    while len(wall) < n:
        gc.disable()
        try:
            with guard.task():
                for _ in range(min(per_task, n - len(wall))):
                    gate("ok")
                    w0 = WALL()
                    c0 = CPU()
                    chat("hi")
                    c1 = CPU()
                    w1 = WALL()
                    wall.append(w1 - w0)
                    cpu.append(c1 - c0)
        finally:
            gc.enable()
    return wall, cpu


# -- memory -----------------------------------------------------------------------------------


def memory_per_task(side: Any, specs: Sequence[Spec], steps: int, tasks: int) -> int:
    """Bytes the engine holds per open task after `steps` recorded steps (tracemalloc).

    Every step is a fresh behaviour, so whatever the engine keeps of the history counts; a
    warm-up task first builds the engine's per-agent caches."""
    side.load(specs)
    Task(side, len(CYCLE) + 1).close()
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
    value = float(f"{value:.3g}")  # three significant figures, then pick the format
    for limit, text in ((1000, f"{value:,.0f}"), (100, f"{value:.0f}"), (10, f"{value:.1f}")):
        if value >= limit:
            return text
    return f"{value:.2f}"


def times(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:,.0f}×" if value >= 10 else f"{value:.1f}×"


def ratio(peer_value: float, ours: float) -> float | None:
    return peer_value / ours if ours > 0 else None


def kib(value: int | None) -> str:
    return "—" if value is None else f"{value / 1024:,.1f} KiB"


class Report:
    """Plain-text or markdown tables and lists."""

    def __init__(self, markdown: bool) -> None:
        self.markdown = markdown
        self.parts: list[str] = []

    def heading(self, text: str) -> None:
        self.parts.append(f"\n### {text}\n" if self.markdown else f"\n{text}\n{'=' * len(text)}")

    def bullets(self, items: Sequence[str]) -> None:
        self.parts.append("\n".join(("- " if self.markdown else "  ") + i for i in items))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if self.markdown:
            align = ("---" if i < 2 else "---:" for i in range(len(headers)))
            lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
            self.parts.append("\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]))
            return
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
        lines = [fmt.format(*headers), "  ".join("-" * w for w in widths)]
        self.parts.append("\n".join(lines + [fmt.format(*r) for r in rows]))

    def __str__(self) -> str:
        return "\n".join(self.parts)


@dataclasses.dataclass
class Results:
    cfg: Config
    scenarios: Sequence[tuple[str, Sequence[Spec], int]]
    latency: dict[tuple[str, str, str], Stats]
    guard: dict[str, Stats]
    guard_note: str
    memory: dict[tuple[str, int], int]
    specs: Sequence[Spec]
    missing: Mapping[str, str]
    disagreements: list[str]
    peer_text: str
    load: list[tuple[float, float, float]]


def render(res: Results, markdown: bool) -> str:
    cfg, out = res.cfg, Report(markdown)
    out.heading("pathguard engine benchmark")
    (l1, l5, _), (e1, e5, _) = res.load[0], res.load[-1]
    facts = [
        f"machine: {os.cpu_count()} CPUs, {platform.machine()}, {platform.system()} "
        f"{platform.release()}; load average (1 min, 5 min) {l1:.2f}, {l5:.2f} at the start, "
        f"{e1:.2f}, {e5:.2f} at the end",
        f"python: {platform.python_implementation()} {platform.python_version()}; "
        f"pathguard {pathguard.__version__}; peer: {res.peer_text}",
        "method: each call timed on its own with two clocks, wall (time.perf_counter_ns) "
        "around CPU (time.thread_time_ns: the calling thread only, so time the thread spends "
        "descheduled is not in it); garbage collector disabled during timed loops "
        "(gc.disable, with a full gc.collect before each timed pass); warm-up calls first",
        "timer floor (p50 of timing an empty call, subtracted from every figure): "
        f"wall {cfg.floor[0]:.2f} µs, CPU {cfg.floor[1]:.2f} µs",
        "evaluated steps, in turn: "
        + ", ".join(f"{s.step_type} {s.verb} {s.name}" for s in ROTATION),
        "evaluate + record: timed together, on tasks holding the scenario's history, in rounds "
        "on fresh tasks so that the history grows by at most a tenth (or 5 steps)",
    ]
    if cfg.quick:
        facts.insert(0, "QUICK RUN: tiny sizes and iteration counts; the figures mean nothing")
    out.bullets(facts)

    out.heading("Latency (µs per call; × = peer time / pathguard time, CPU)")
    rows = []
    for label, _, _ in res.scenarios:
        for call in ("evaluate", "evaluate + record"):
            o, p = res.latency[(label, call, "ours")], res.latency.get((label, call, "peer"))
            evaluated = "" if o.evaluated is None else f"{o.evaluated:.1f}"
            if p is not None and p.evaluated is not None:
                evaluated += f" / {p.evaluated:.0f}"
            theirs = [us(v) for v in (*p.wall, *p.cpu)] if p else ["—"] * 4
            ratios = [times(ratio(p.cpu[i], o.cpu[i])) for i in (0, 1)] if p else ["—"] * 2
            n = f"{o.n:,} / {p.n:,}" if p else f"{o.n:,}"
            rows.append(
                [label, call, n, evaluated, *(us(v) for v in (*o.wall, *o.cpu)), *theirs, *ratios]
            )
    for label, g in res.guard.items():
        rows.append(
            [
                "100 policies, @guard.step overhead",
                label,
                f"{g.n:,}",
                "",
                *(us(v) for v in (*g.wall, *g.cpu)),
                *["—"] * 6,
            ]
        )
    out.table(
        [
            "scenario",
            "call",
            "n ours / peer",
            "policies evaluated ours / peer",
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
        ],
        rows,
    )
    notes = [
        "policies evaluated: policies whose target matched the step, mean over the evaluated "
        "steps; the peer runs the rule of every loaded policy on every step",
        "@guard.step overhead: a governed call minus a plain call, per percentile; tasks of "
        f"{cfg.guard_calls_per_task} calls, each after an (untimed) approval gate; the step is "
        "built, evaluated, run and recorded",
    ]
    if res.guard_note:
        notes.append(f"@guard.step: {res.guard_note}")
    out.bullets(notes)

    out.heading("Engine memory per open task (tracemalloc; pathguard with history_limit=100)")
    out.table(
        ["after", "", "pathguard", "peer"],
        [
            [
                f"{steps:,} recorded steps",
                "",
                kib(res.memory.get(("ours", steps))),
                kib(res.memory.get(("peer", steps))),
            ]
            for steps in cfg.memory_steps
        ],
    )

    out.heading("Targets (judged on CPU time; wall time shown too)")
    out.table(["target", "scenario", "measured", "status"], targets(res))

    out.heading("Policy mix")
    counts: dict[str, int] = {}
    for spec in res.specs:
        counts[spec.kind] = counts.get(spec.kind, 0) + 1
    targeted = sum(1 for s in res.specs if s.target is not None)
    mix = [
        f"{len(res.specs)} policies, {targeted} targeted at one step type (some also at a "
        f"verb), {len(res.specs) - targeted} at every step: "
        + ", ".join(f"{kind} ×{n}" for kind, n in sorted(counts.items())),
        "the same kinds in both engines, each written in the engine's own built-in rules (the "
        "peer's names are in benchmarks/_peer_kyvvu.py); the 10-policy scenario has one policy "
        "of each of ten kinds",
        *(f"left out, pathguard cannot load it: {k} ({why})" for k, why in res.missing.items()),
    ]
    if res.peer_text.startswith("kyvvu"):
        mix.append(
            "decisions agree: both engines find the same policies violated on every "
            "evaluated step of every scenario"
            if not res.disagreements
            else "decisions differ: " + "; ".join(res.disagreements)
        )
    out.bullets(mix)
    return str(out)


def targets(res: Results) -> list[list[str]]:
    def status(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "MISSED")

    def both(s: Stats) -> str:
        return f"{us(s.cpu[1])} µs CPU ({us(s.wall[1])} µs wall)"

    short, long = res.scenarios[2][0], res.scenarios[4][0]
    o50, o_long = res.latency[(short, "evaluate", "ours")], res.latency[(long, "evaluate", "ours")]
    p50, p_long = (
        res.latency.get((short, "evaluate", "peer")),
        res.latency.get((long, "evaluate", "peer")),
    )
    rows = [["evaluate p99 ≤ 25 µs", short, both(o50), status(o50.cpu[1] <= 25)]]
    if p50 is not None:
        r50, r99 = (ratio(p50.cpu[i], o50.cpu[i]) for i in (0, 1))
        ok = r50 is not None and r99 is not None and min(r50, r99) >= 40
        rows.append(
            [
                "evaluate ≥ 40× faster than the peer (p50 and p99)",
                short,
                f"{times(r50)} at p50, {times(r99)} at p99",
                status(ok),
            ]
        )
    else:
        rows.append(["evaluate ≥ 40× faster than the peer", short, "—", status(None)])
    growth = o_long.cpu[1] / o50.cpu[1]
    peer_growth = f" (peer: {times(p_long.cpu[1] / p50.cpu[1])})" if p50 and p_long else ""
    rows.append(
        [
            f"evaluate p99 at {long.split(', ')[1]} within 1.2× of {short.split(', ')[1]}",
            "100 policies",
            f"{growth:.2f}×{peer_growth}",
            status(growth <= 1.2),
        ]
    )
    g = res.guard.get("no trace sink")
    rows.append(
        [
            "@guard.step overhead p99 ≤ 50 µs",
            "100 policies, no trace sink",
            both(g) if g else "—",
            status(None if g is None else g.cpu[1] <= 50),
        ]
    )
    first, *rest = res.cfg.memory_steps
    base, later = res.memory[("ours", first)], max(res.memory[("ours", s)] for s in rest)
    rows.append(
        [
            "engine memory per open task bounded by the history retention",
            "history_limit=100",
            f"{kib(base)} after {first:,} steps, at most {kib(later)} after up to {rest[-1]:,}",
            status(later <= base * 1.1),
        ]
    )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and iteration counts: a smoke test, not figures",
    )
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--no-peer", action="store_true", help="measure pathguard only")
    args = parser.parse_args(argv)
    load = [os.getloadavg()]
    cfg = dataclasses.replace(Config.make(args.quick), floor=timer_floor())

    specs, missing = usable_specs([s for s in all_specs() if s.kind in peer.KINDS])
    full, ten = fill_to(specs, POLICY_COUNT), fill_to(specs, 10)
    use_peer = peer.AVAILABLE and not args.no_peer
    sides: dict[str, Any] = {"ours": OursSide()}
    if use_peer:
        sides["peer"] = peer.PeerSide(agent_key=AGENT, tools=TOOLS, now=NOW)
        peer_text = f"kyvvu-engine {peer.VERSION}"
    elif peer.AVAILABLE:
        peer_text = "not measured (--no-peer)"
    else:
        peer_text = "not measured: kyvvu-engine is not installed (pip install kyvvu-engine)"
        log(f"note: the peer is {peer_text}; measuring pathguard only")

    h1, h2, h3 = cfg.histories
    scenarios = (
        ("0 policies, empty history", [], 0),
        ("10 policies, empty history", ten, 0),
        *((f"100 policies, {h:,}-step history", full, h) for h in (h1, h2, h3)),
    )
    latency: dict[tuple[str, str, str], Stats] = {}
    disagreements: list[str] = []
    # Scenarios that share a policy set are measured together (interleaved evaluate batches).
    groups = [[scenarios[0]], [scenarios[1]], list(scenarios[2:])]
    for group in groups:
        policy_specs = group[0][1]
        for key, side in sides.items():
            side.load(policy_specs)
            log(f"{side.label}: {', '.join(label for label, _, _ in group)}")
            stats = measure_evaluate(side, [history for _, _, history in group], cfg)
            for (label, _, history), evaluate_stats in zip(group, stats, strict=True):
                latency[(label, "evaluate", key)] = evaluate_stats
                latency[(label, "evaluate + record", key)] = measure_evaluate_record(
                    side, history, cfg
                )
        if use_peer:
            for label, _, history in group:
                disagreements += [
                    f"{label}, {d}" for d in check_agreement(sides, policy_specs, history)
                ]

    log("pathguard: @guard.step")
    guard, guard_note = measure_guard(full, cfg)

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
    load.append(os.getloadavg())

    results = Results(
        cfg,
        scenarios,
        latency,
        guard,
        guard_note,
        memory,
        full,
        missing,
        disagreements,
        peer_text,
        load,
    )
    print(render(results, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
