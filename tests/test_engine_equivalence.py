"""The engine's incremental monitors decide exactly like the naive reference evaluator.

Random policy sets (drawn from every built-in path, counting and logic rule, and the simple
field rules) run over random paths: before each step is recorded, the engine's
decision must equal the one `tests/reference.py` reaches by rescanning the full history.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pathguard import (
    AgentRegistration,
    Behavior,
    PolicyEngine,
    PolicySet,
    RiskClass,
    Status,
    StepType,
    canonical_hash,
    rule_names,
)
from pathguard.rules import get_rule
from reference import REFERENCE_RULES, naive_decision, naive_targeted

AGENT = "bot"
AGENTS = [AGENT, "helper"]
INPUTS: list[Any] = [None, {"q": 1}, {"q": 2}, "hello"]
INPUT_HASHES = [canonical_hash(v) for v in INPUTS]

# Only the step types and values the random paths use, so that filters match often.
STEP_TYPES = ["step.resource", "step.exec", "step.gate", "step.model", "step.message"]
PROPERTY_CONDITIONS: list[dict[str, Any]] = [
    {"target": {"trust": "untrusted"}},
    {"target.trust": {"ne": "trusted"}},
    {"guard.decision": "approved"},
    {"data.classification": {"in": ["pii", "secret"]}},
    {"usage.cost_usd": {"gt": 1}},
]
ENTRY_CONDITIONS: list[dict[str, Any]] = [
    {"output.status": "error"},
    {"output": {"status": "ok"}},
    {"properties.target.trust": "untrusted"},
    {"step_name": {"matches": "^db_"}},
    {"output.status": {"ne": "ok"}},  # absent outputs (task markers included) meet it
    {},
]

PATH_RULES = [
    "history_contains",
    "current_is",
    "requires_prior",
    "directly_preceded_by",
    "requires_prior_without_intervening",
    "requires_dedicated_prior",
    "requires_gate",
    "sequence_forbidden",
    "not_after",
    "taint",
    "conditional_successor",
]
COUNTING_RULES = ["max_steps", "max_consecutive", "budget", "rate_limit", "max_task_duration"]
FIELD_RULES = [
    "field_not_empty",
    "field_in_list",
    "field_matches_regex",
    "field_max_length",
    "forbidden_for_classification",
]
LOGIC_RULES = ["all_of", "any_of", "not"]


# -- policies -----------------------------------------------------------------------------


def _maybe(draw: st.DrawFn, key: str, strategy: st.SearchStrategy[Any]) -> dict[str, Any]:
    return {key: draw(strategy)} if draw(st.booleans()) else {}


@st.composite
def filter_fields(draw: st.DrawFn, *, need_type: bool) -> dict[str, Any]:
    """`step_type`, `verb`, `step_name`, `properties`: the fields of a step filter."""
    spec: dict[str, Any] = {}
    if need_type or draw(st.booleans()):
        types = draw(st.lists(st.sampled_from(STEP_TYPES), min_size=1, max_size=2, unique=True))
        spec["step_type"] = types[0] if len(types) == 1 and draw(st.booleans()) else types
    if draw(st.integers(0, 3)) == 0:
        spec["verb"] = draw(st.sampled_from(["GET", "POST", ["GET", "POST"]]))
    if draw(st.integers(0, 4)) == 0:
        spec["step_name"] = draw(st.sampled_from(["db_*", "send_*", ["approve", "run"]]))
    if draw(st.integers(0, 2)) == 0:
        spec["properties"] = draw(st.sampled_from(PROPERTY_CONDITIONS))
    return spec


def filter_values() -> st.SearchStrategy[Any]:
    """A filter-valued param: a bare step type or a filter object (maybe without a type)."""
    return st.one_of(st.sampled_from(STEP_TYPES), filter_fields(need_type=False))


def _attempts(draw: st.DrawFn) -> dict[str, Any]:
    return _maybe(draw, "count_attempts", st.booleans())


def _counting_filter(draw: st.DrawFn) -> dict[str, Any]:
    return _maybe(draw, "filter", filter_fields(need_type=False))


def _per(draw: st.DrawFn, depth: int) -> dict[str, Any]:
    # A combinator keeps one state for all its children, so the loader refuses per-agent
    # children there.
    per = draw(st.sampled_from(["agent", "task", None] if depth == 0 else ["task", None]))
    return {} if per is None else {"per": per}


@st.composite
def rule_specs(
    draw: st.DrawFn, depth: int = 0, focus: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """One `{rule, params}` spec for a registered rule, with small random params.

    With `focus`, top-level rules are drawn from those names only (children stay free).
    """
    leaves = PATH_RULES + COUNTING_RULES + FIELD_RULES
    logic = LOGIC_RULES if depth < 2 else []
    if focus and depth == 0:
        name = draw(st.sampled_from(focus))
    else:
        name = draw(st.sampled_from(leaves + logic if draw(st.integers(0, 3)) == 0 else leaves))
    p: dict[str, Any] = {}
    if name in (
        "history_contains",
        "current_is",
        "requires_prior",
        "directly_preceded_by",
        "requires_dedicated_prior",
        "not_after",
    ):
        p.update(draw(filter_fields(need_type=True)))
        if name != "current_is":
            p.update(_attempts(draw))
        if name == "history_contains":
            p.update(_maybe(draw, "min_count", st.integers(1, 3)))
        if name == "requires_prior":
            p.update(_maybe(draw, "within", st.integers(1, 6)))
    elif name == "requires_prior_without_intervening":
        p = {
            "required": draw(filter_values()),
            "forbidden": draw(filter_values()),
            **_attempts(draw),
        }
    elif name == "requires_gate":
        p.update(_maybe(draw, "gate_type", st.sampled_from(["human_approval", "guardrail"])))
        p.update(_maybe(draw, "within", st.integers(1, 6)))
        p.update(_maybe(draw, "bind_to_input", st.booleans()))
    elif name == "sequence_forbidden":
        p = {"sequence": draw(st.lists(filter_values(), min_size=1, max_size=3)), **_attempts(draw)}
    elif name == "taint":
        p = {
            "source": draw(filter_values()),
            **_maybe(draw, "cleared_by", filter_values()),
            **_attempts(draw),
        }
    elif name == "conditional_successor":
        p = {
            "trigger": draw(filter_values()),
            "condition": draw(st.sampled_from(ENTRY_CONDITIONS)),
            **_attempts(draw),
        }
        which = draw(st.sampled_from(["required", "forbidden", "both"]))
        if which in ("required", "both"):
            p["required"] = draw(filter_values())
        if which in ("forbidden", "both"):
            p["forbidden"] = draw(filter_values())
    elif name in ("max_steps", "max_consecutive"):
        least = 0 if name == "max_steps" else 1
        p = {"max": draw(st.integers(least, 6)), **_counting_filter(draw), **_attempts(draw)}
    elif name == "budget":
        p = {
            "property": "usage.cost_usd",
            "max": draw(st.sampled_from([0, 1, 2.5, 4, 10, 25])),
            **_counting_filter(draw),
            **_attempts(draw),
        }
    elif name == "rate_limit":
        p = {
            "max": draw(st.integers(1, 4)),
            "window_seconds": draw(st.sampled_from([1, 2, 5, 10, 30, 60, 0.5, 2.5])),
            **_counting_filter(draw),
            **_per(draw, depth),
            **_attempts(draw),
        }
    elif name == "max_task_duration":
        p = {"seconds": draw(st.sampled_from([5, 30, 60, 120, 300, 0.5]))}
    elif name == "field_not_empty":
        p = {
            "field": draw(
                st.sampled_from(["input", "input.q", "properties.target.trust", "step_name"])
            )
        }
    elif name == "field_in_list":
        p = {
            "field": draw(st.sampled_from(["properties.data.classification", "step_name"])),
            "values": draw(st.sampled_from([["public"], ["public", "pii"], ["db_read"]])),
        }
    elif name == "field_matches_regex":
        p = {
            "field": draw(st.sampled_from(["step_name", "input", "properties.target.trust"])),
            "pattern": draw(st.sampled_from(["^db_", "ll", "trust"])),
        }
    elif name == "field_max_length":
        p = {
            "field": draw(
                st.sampled_from(["input", "step_name", "properties.data.classification"])
            ),
            "max": draw(st.integers(0, 7)),
        }
    elif name == "forbidden_for_classification":
        p = {"classes": draw(st.sampled_from([["pii"], ["secret", "pii"], ["internal"]]))}
    elif name in ("all_of", "any_of"):
        p = {"rules": draw(st.lists(rule_specs(depth + 1), min_size=1, max_size=3))}
    elif name == "not":
        p = {"rule": draw(rule_specs(depth + 1))}
    else:  # pragma: no cover - every name above has a branch
        raise AssertionError(name)
    return {"rule": name, "params": p}


@st.composite
def when_clauses(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.integers(0, 9))
    if kind < 5:
        return {}
    if kind == 5:  # task markers are targeted only when named
        return {
            "when": {
                "step_type": draw(
                    st.sampled_from(["task.start", "task.end", ["task.idle", "step.exec"]])
                )
            }
        }
    return {"when": draw(filter_fields(need_type=False))}


@st.composite
def policy_sets(draw: st.DrawFn) -> PolicySet:
    # Half the sets draw every policy from one to three rules, so that each rule meets many
    # parameter combinations on the same path.
    focus = None
    if draw(st.booleans()):
        names = PATH_RULES + COUNTING_RULES + FIELD_RULES + LOGIC_RULES
        focus = tuple(draw(st.lists(st.sampled_from(names), min_size=1, max_size=3)))
    policies = []
    for i in range(draw(st.integers(1, 12))):
        spec = draw(rule_specs(focus=focus))
        policy: dict[str, Any] = {"id": f"p{i}", **spec, **draw(when_clauses())}
        policy["effect"] = draw(st.sampled_from(["block", "approve", "warn"]))
        policy["severity"] = draw(st.sampled_from(["low", "medium", "high", "critical"]))
        policy["mode"] = draw(st.sampled_from(["enforce", "enforce", "enforce", "shadow"]))
        if draw(st.integers(0, 9)) == 0:
            policy["agents"] = draw(st.sampled_from([[AGENT], ["someone-else"]]))
        if draw(st.integers(0, 9)) == 0:
            policy["risk_classification"] = draw(st.sampled_from([["limited"], ["high"]]))
        policies.append(policy)
    return PolicySet.from_dict({"version": 1, "name": "random", "policies": policies})


registrations = st.sampled_from(
    [
        None,
        AgentRegistration(
            agent_key=AGENT,
            name="Bot",
            purpose="testing",
            tools=("chat",),
            risk_classification=RiskClass.limited,
        ),
    ]
)


# -- paths --------------------------------------------------------------------------------
# A path is drawn as one list of small-integer tuples (one per step) and built in plain
# Python, which keeps generation cheap next to the replay itself.

KINDS: list[tuple[StepType, list[str | None], list[str | None]]] = [
    (StepType.step_resource, ["GET", "POST", "PATCH", "DELETE"], ["db_read", "db_write", "fetch"]),
    (StepType.step_exec, [None], ["run", "db_migrate"]),
    (StepType.step_gate, [None], ["approve"]),
    (StepType.step_gate, [None], ["review"]),  # gates twice as often: many rules read them
    (StepType.step_model, ["POST"], ["chat"]),
    (StepType.step_message, ["GET", "POST"], ["send_email", "inbox"]),
    (StepType.step_credential, ["GET"], ["vault"]),
    (StepType.task_idle, [None], [None]),
    (StepType.task_end, [None], [None]),
    (StepType.task_start, [None], [None]),  # a second start: the first one counts
]
TRUST: list[str | None] = [None, "untrusted", "trusted"]
CLASSES: list[Any] = [None, "pii", "public", "secret", ["public", "pii"], []]
COSTS: list[Any] = [None, 1, 0, 2.5, 0.5, True, "3", "absent", -1, float("nan")]
GATE_TYPES = ["human_approval", "guardrail"]
DECISIONS = ["approved", "denied"]
HASHES: list[str | None] = [*INPUT_HASHES, None, "sha256:0"]
OUTPUTS: list[Any] = [None, {"status": "error"}, {"status": "ok"}]
STATUSES = [Status.completed, Status.blocked, Status.failed, Status.intended]
GAPS = [1, 0, 2, 5, 10, 30, -3, -20]  # the last two only with backwards clocks

_TASK = st.integers(0, 2)
_SEED_REST = (
    st.integers(0, len(KINDS) - 1),
    st.integers(0, 3),  # verb and name picks (taken modulo the choices)
    st.integers(0, len(TRUST) - 1),
    st.integers(0, len(CLASSES) - 1),
    st.integers(0, len(COSTS) - 1),
    st.integers(0, len(GATE_TYPES) - 1),
    st.integers(0, len(DECISIONS) - 1),
    st.integers(0, len(HASHES) - 1),
    st.integers(0, len(INPUTS) - 1),
    st.integers(0, len(OUTPUTS) - 1),
    # completed most of the time
    st.integers(0, 6).map(lambda i: STATUSES[max(0, i - 3)]),
)


def _properties(seed: tuple[Any, ...], step_type: StepType) -> dict[str, Any]:
    _, _, _, _, trust, cls, cost, gate, decision, digest, *_ = seed
    props: dict[str, Any] = {}
    if step_type.scope.value == "task":
        return props
    if TRUST[trust] is not None:
        props["target"] = {"trust": TRUST[trust]}
    if CLASSES[cls] is not None:
        props["data"] = {"classification": CLASSES[cls]}
    if COSTS[cost] is not None:
        props["usage"] = {} if COSTS[cost] == "absent" else {"cost_usd": COSTS[cost]}
    if step_type is StepType.step_gate:
        guard: dict[str, Any] = {"gate_type": GATE_TYPES[gate], "decision": DECISIONS[decision]}
        if HASHES[digest] is not None:
            guard["approved_input_hash"] = HASHES[digest]
        props["guard"] = guard
    return props


def _build_path(seeds: list[tuple[Any, ...]], tasks: int, agents: int) -> list[Behavior]:
    clock = 1000.0
    opened: set[str] = set()
    path: list[Behavior] = []
    for seed in seeds:
        task, gap, kind, pick, *_rest = seed
        index = task % tasks
        task_id = f"t{index + 1}"
        agent_key = AGENTS[index % agents]
        clock += GAPS[gap]
        if task_id not in opened:  # every task opens with task.start
            opened.add(task_id)
            path.append(
                Behavior(
                    step_type=StepType.task_start,
                    agent_key=agent_key,
                    task_id=task_id,
                    status=Status.completed,
                    timestamp=clock,
                )
            )
            continue
        step_type, verbs, names = KINDS[kind]
        path.append(
            Behavior(
                step_type=step_type,
                verb=verbs[pick % len(verbs)],
                step_name=names[pick % len(names)],
                properties=_properties(seed, step_type),
                input=INPUTS[seed[10]],
                output=OUTPUTS[seed[11]],
                agent_key=agent_key,
                task_id=task_id,
                status=seed[12],
                timestamp=clock,
            )
        )
    return path


def paths(
    tasks: int = 1, agents: int = 1, *, backwards: bool = False
) -> st.SearchStrategy[list[Behavior]]:
    """30-80 behaviours over `tasks` interleaved tasks (spread over `agents` agents), each
    opened by `task.start`. Clocks move in whole seconds so window edges are hit exactly;
    with `backwards`, a step may carry an earlier timestamp than the one before it (the
    clocks of concurrent tasks are not ordered)."""
    gap = st.integers(0, len(GAPS) - 1) if backwards else st.integers(0, len(GAPS) - 3)
    seed = st.tuples(_TASK, gap, *_SEED_REST)
    return st.lists(seed, min_size=30, max_size=80).map(lambda s: _build_path(s, tasks, agents))


# -- the comparison -----------------------------------------------------------------------
# Hypothesis does not shrink here (a replay is too long for its shrinker to finish in
# reasonable time). Policies are independent, so a disagreement is cut down by hand instead:
# keep the one policy that disagrees, then drop every path entry that is not needed.

Outcome = tuple[Any, list[str], list[str], list[str]]


@dataclasses.dataclass(frozen=True)
class Case:
    """One run: policies, the path recorded in order, the registered agent, the engine option."""

    policy_set: PolicySet
    path: list[Behavior]
    registration: AgentRegistration | None
    history_limit: int

    def but(self, **changes: Any) -> Case:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Mismatch:
    index: int
    intended: Behavior
    engine: Outcome | str
    reference: Outcome
    explanation: str


def _first_mismatch(case: Case) -> Mismatch | None:
    """Replay a path through the engine and the reference; the first step they disagree on."""
    policy_set, registration = case.policy_set, case.registration
    engine = PolicyEngine(policy_set, history_limit=case.history_limit)
    if registration is not None:
        engine.register(registration)
    histories: dict[str | None, list[Behavior]] = {}
    owners: dict[str | None, str | None] = {}
    for index, step in enumerate(case.path):
        history = histories.setdefault(step.task_id, [])
        owners.setdefault(step.task_id, step.agent_key)
        agent = registration if registration and registration.agent_key == step.agent_key else None
        intended = step.replace(status=Status.intended)
        action, enforced, shadow = naive_decision(
            policy_set,
            history,
            intended,
            agent=agent,
            agent_histories=[h for t, h in histories.items() if owners[t] == step.agent_key],
        )
        expected = (action, enforced, shadow, naive_targeted(policy_set, intended, agent=agent))
        got: Outcome | str
        try:
            decision = engine.evaluate(intended)
            got = (
                decision.action,
                sorted(v.policy_id for v in decision.violations),
                sorted(v.policy_id for v in decision.shadow),
                list(decision.evaluated),
            )
            explanation = decision.explain()
        except Exception as exc:  # an engine crash is a disagreement too
            got = explanation = f"evaluate raised {exc!r}"
        if got != expected:
            return Mismatch(index, intended, got, expected, explanation)
        try:
            engine.record(step)
        except Exception as exc:
            return Mismatch(index, intended, f"record raised {exc!r}", expected, "")
        history.append(step)
    return None


def _with_policies(case: Case, keep: list[Any]) -> Case:
    return case.but(policy_set=PolicySet(name=case.policy_set.name, policies=tuple(keep)))


def _minimise(case: Case) -> tuple[Case, Mismatch]:
    """A smaller case that still disagrees: fewer policies, fewer and plainer entries."""
    mismatch = _first_mismatch(case)
    assert mismatch is not None
    case = case.but(path=case.path[: mismatch.index + 1])
    policies = list(case.policy_set.policies)
    for policy in policies:
        if _first_mismatch(_with_policies(case, [policy])) is not None:
            policies = [policy]
            break
    else:
        for policy in list(policies):
            fewer = [p for p in policies if p is not policy]
            if fewer and _first_mismatch(_with_policies(case, fewer)) is not None:
                policies = fewer
    case = _with_policies(case, policies)
    changed = True
    while changed:
        changed = False
        for i in reversed(range(len(case.path))):
            shorter = case.but(path=case.path[:i] + case.path[i + 1 :])
            if shorter.path and _first_mismatch(shorter) is not None:
                case, changed = shorter, True
    for i in range(len(case.path)):
        progress = True
        while progress:
            progress = False
            for simpler in _simpler(case.path[i]):
                candidate = case.but(path=[*case.path[:i], simpler, *case.path[i + 1 :]])
                if _first_mismatch(candidate) is not None:
                    case, progress = candidate, True
                    break
    final = _first_mismatch(case)
    assert final is not None
    return case.but(path=case.path[: final.index + 1]), final


def _simpler(b: Behavior) -> list[Behavior]:
    """Plainer variants of one entry, tried in turn by the minimiser."""
    variants = [b.replace(input=None)] if b.input is not None else []
    if b.output is not None:
        variants.append(b.replace(output=None))
    for group in b.properties:
        variants.append(b.replace(properties={k: v for k, v in b.properties.items() if k != group}))
    return variants


def _show(b: Behavior) -> str:
    parts = [f"{b.agent_key}/{b.task_id} {b.status.value:9} {b.step_type.value}"]
    for name in ("verb", "step_name"):
        if getattr(b, name) is not None:
            parts.append(f"{name}={getattr(b, name)!s}")
    for name in ("properties", "input", "output"):
        if getattr(b, name):
            parts.append(f"{name}={getattr(b, name)!r}")
    parts.append(f"t={b.timestamp:g}")
    return " ".join(parts)


def _check_equivalence(case: Case) -> None:
    if _first_mismatch(case) is None:
        return
    small, m = _minimise(case)
    lines = ["the engine and the reference disagree; minimal reproduction:"]
    lines.append(f"agent registration: {small.registration}")
    lines.append(f"history_limit: {small.history_limit}")
    for policy in small.policy_set.policies:
        lines.append(f"policy {policy.model_dump(mode='json', exclude_defaults=True)}")
    for i, b in enumerate(small.path[:-1]):
        lines.append(f"  recorded #{i}: {_show(b)}")
    lines.append(f"  evaluated: {_show(m.intended)}")
    lines.append(f"engine    (action, enforced, shadow, evaluated): {m.engine}")
    lines.append(f"reference (action, enforced, shadow, evaluated): {m.reference}")
    lines.append(m.explanation)
    raise AssertionError("\n".join(lines))


# The retained history window must never change a decision.
history_limits = st.sampled_from([1000, 0, 3])

_SETTINGS = settings(
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)


@settings(_SETTINGS, max_examples=200)
@given(policies=policy_sets(), path=paths(), reg=registrations, limit=history_limits)
def test_engine_decides_like_the_reference_on_one_task(
    policies: PolicySet, path: list[Behavior], reg: AgentRegistration | None, limit: int
) -> None:
    _check_equivalence(Case(policies, path, reg, limit))


@settings(_SETTINGS, max_examples=100)
@given(policies=policy_sets(), path=paths(tasks=3), reg=registrations, limit=history_limits)
def test_engine_decides_like_the_reference_on_interleaved_tasks_of_one_agent(
    policies: PolicySet, path: list[Behavior], reg: AgentRegistration | None, limit: int
) -> None:
    _check_equivalence(Case(policies, path, reg, limit))


@settings(_SETTINGS, max_examples=100)
@given(
    policies=policy_sets(),
    path=paths(tasks=3, agents=2, backwards=True),
    reg=registrations,
    limit=history_limits,
)
def test_engine_decides_like_the_reference_across_agents_with_unordered_clocks(
    policies: PolicySet, path: list[Behavior], reg: AgentRegistration | None, limit: int
) -> None:
    _check_equivalence(Case(policies, path, reg, limit))


def test_every_history_rule_has_a_reference_and_takes_part_in_the_random_runs() -> None:
    """A new built-in path, counting or logic rule needs a reference and a params strategy."""
    generated = set(PATH_RULES + COUNTING_RULES + FIELD_RULES + LOGIC_RULES)
    assert generated <= set(REFERENCE_RULES)
    for name in rule_names():
        if get_rule(name).__module__.rsplit(".", 1)[-1] in ("path", "counting", "logic"):
            assert name in generated, f"{name} is missing from the random policy sets"
