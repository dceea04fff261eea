"""Adapter for the peer engine, `kyvvu-engine` (PyPI), used only by `benchmarks/engine.py`.

It turns the benchmark's neutral policy specs and steps into the peer's own policy dicts
and `Behavior` objects, and exposes the same small surface as the pathguard side:
`load`, `open_task`, `close_task`, `behavior`, `evaluate`, `record`, `violated`,
`evaluated`. The peer is used strictly as a library through its public API.

The peer is licensed under the Business Source License 1.1, which allows use for
testing and evaluation: it is installed only for the benchmark (`pip install
'.[bench]'`) and is never a dependency of pathguard.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

try:
    import kyvvu_engine as _peer
except ImportError:  # the benchmark runs pathguard alone and says so
    _peer = None

AVAILABLE = _peer is not None
VERSION: str = getattr(_peer, "__version__", "") if _peer is not None else ""

Params = dict[str, Any]


def _targeting(args: Mapping[str, Any], target: str | None, verb: str | None) -> Params:
    """The peer scopes a rule with `target_kinds` / `target_verb` inside its params."""
    out: Params = {}
    if target is not None:
        out["target_kinds"] = [target]
    if verb is not None:
        out["target_verb"] = verb
    return out


def _history_contains(step_type: str) -> Params:
    return {"kind": step_type, "count_attempts": False}


# Each neutral kind -> (peer rule_type, params). `a` is the spec's args, `t`/`v` its target
# step type and verb (None when the spec targets every step).
_Translate = Callable[[Mapping[str, Any], str | None, str | None], tuple[str, Params]]

_TRANSLATIONS: dict[str, _Translate] = {
    "field_not_empty": lambda a, t, v: ("field_not_empty", {"field": a["field"]}),
    "field_matches_regex": lambda a, t, v: (
        "field_matches_regex",
        {"field": a["field"], "pattern": a["pattern"]},
    ),
    "field_in_list": lambda a, t, v: (
        "field_in_list",
        {"field": a["field"], "values": list(a["values"])},
    ),
    "sequence_forbidden": lambda a, t, v: (
        "sequence_forbidden",
        {"forbidden_sequence": list(a["sequence"])},
    ),
    "conditional_successor": lambda a, t, v: (
        "conditional_successor_required",
        {
            "trigger_kinds": [a["trigger"]],
            "trigger_condition": {
                "field": "properties.target.trust",
                "op": "equals",
                "value": a["trust"],
            },
            "forbidden_kinds": [a["forbidden"]],
        },
    ),
    "not_history_contains": lambda a, t, v: (
        "not",
        {
            "condition": {
                "rule_type": "history_contains",
                "params": _history_contains(a["step_type"]),
            }
        },
    ),
    "any_of_current_or_history": lambda a, t, v: (
        "any_of",
        {
            "conditions": [
                {"rule_type": "current_is", "params": {"kind": a["current"]}},
                {"rule_type": "history_contains", "params": _history_contains(a["history"])},
            ]
        },
    ),
    "history_contains": lambda a, t, v: ("history_contains", _history_contains(a["step_type"])),
    "working_hours": lambda a, t, v: (
        "working_hours_only",
        {"start_hour": a["start_hour"], "end_hour": a["end_hour"], "timezone": a["timezone"]},
    ),
    "domain_allowlist": lambda a, t, v: (
        "domain_allowlist",
        {"allowed_domains": list(a["domains"]), "target_kinds": [t]},
    ),
    "requires_prior": lambda a, t, v: (
        "step_requires_predecessor",
        {"required_kind": a["required"], **_targeting(a, t, v)},
    ),
    "requires_gate": lambda a, t, v: (
        "step_requires_gate",
        {
            "gate_kind": "human",
            "gate_decision": "pass",
            **({"max_steps_since_gate": a["within"]} if a.get("within") else {}),
            **_targeting(a, t, v),
        },
    ),
    "not_after": lambda a, t, v: (
        "step_not_after",
        {"forbidden_predecessor_kinds": [a["forbidden"]], **_targeting(a, t, v)},
    ),
    "taint": lambda a, t, v: (
        "tainted_path_block",
        {
            "taint_kind": a["source"],
            **({"taint_property_filter": {"target.trust": a["trust"]}} if a.get("trust") else {}),
            **_targeting(a, t, v),
        },
    ),
    "directly_preceded_by": lambda a, t, v: (
        "step_directly_preceded_by",
        {"required_kind": a["required"], **_targeting(a, t, v)},
    ),
    "requires_prior_without_intervening": lambda a, t, v: (
        "step_preceded_by_without_intervening",
        {
            "required_kind": a["required"],
            "forbidden_intervening": [a["forbidden"]],
            **_targeting(a, t, v),
        },
    ),
    "requires_dedicated_prior": lambda a, t, v: (
        "step_requires_dedicated_predecessor",
        {"required_kind": a["required"], **_targeting(a, t, v)},
    ),
    "step_name_allowlist": lambda a, t, v: (
        "step_name_in_allowlist",
        {"agent_field": "declared_tools", **_targeting(a, t, v)},
    ),
    "max_steps": lambda a, t, v: (
        "execution_max_steps",
        {"kind": a["step_type"], "max_steps": a["max"]},
    ),
    "max_consecutive": lambda a, t, v: (
        "max_consecutive_same_type",
        {"kind": a["step_type"], "max_consecutive": a["max"]},
    ),
    "budget": lambda a, t, v: (
        "usage_budget",
        {"kind": a["step_type"], "property_path": a["property"], "budget": a["max"]},
    ),
    "path_within_root": lambda a, t, v: (
        "path_within_root",
        {"field": "properties.target.path", **_targeting(a, t, v)},
    ),
}

KINDS = frozenset(_TRANSLATIONS)


class PeerSide:
    """The peer engine behind the benchmark's engine-neutral surface."""

    label = "kyvvu-engine"

    def __init__(self, *, agent_key: str, tools: Sequence[str], now: datetime) -> None:
        if _peer is None:
            raise RuntimeError("kyvvu-engine is not installed; run: pip install kyvvu-engine")
        self.agent_key = agent_key
        self.tools = list(tools)
        self.now = now
        self.root: str | None = None
        self.engine: Any = None
        self._contexts: dict[str, Any] = {}

    def load(self, specs: Sequence[Any]) -> None:
        """A fresh peer engine holding the equivalent of `specs` (neutral policy specs)."""
        policies = []
        for number, spec in enumerate(specs, start=1):
            rule_type, params = _TRANSLATIONS[spec.kind](spec.args, spec.target, spec.verb)
            if spec.kind == "path_within_root":
                # The peer takes the root from the evaluation context, not from params.
                self.root = spec.args["root"]
            policies.append(
                {
                    "id": number,  # an integer id lets the peer use its pre-compiled regexes
                    "name": spec.id,
                    "enforcement_point": "step_execution",
                    "rule_type": rule_type,
                    "params": params,
                    "severity": "high",
                }
            )
        self.engine = _peer.PolicyEngine()
        self.engine.load_policies(policies)
        self._contexts.clear()

    def open_task(self, task_id: str) -> None:
        """The peer opens a task on its first recorded step; nothing to do here."""

    def close_task(self, task_id: str) -> None:
        self.engine.end_task(task_id)
        self._contexts.pop(task_id, None)

    def context(self, task_id: str) -> Any:
        """The peer's per-evaluation context (agent identity, tools, root, clock)."""
        context = self._contexts.get(task_id)
        if context is None:
            context = self._contexts[task_id] = _peer.EvalContext(
                agent_id=self.agent_key,
                task_id=task_id,
                agent_allowed_tools=self.tools,
                project_root=self.root,
                now=self.now,
            )
        return context

    def behavior(self, step: Any, task_id: str, *, completed: bool) -> Any:
        """The peer's `Behavior` for a neutral step (intended, or completed with output)."""
        properties: Params = {}
        target = {
            key: value
            for key, value in (("host", step.domain), ("trust", step.trust), ("path", step.path))
            if value is not None
        }
        if target:
            properties["target"] = target
        if step.cost is not None:
            properties["usage"] = {"cost_usd": step.cost}
        if step.channel is not None:
            properties["message"] = {"channel": step.channel}
        output: Params | None = None
        if step.gate:
            properties["kind"] = "human"
            output = {"decision": "pass"}
        elif completed:
            output = {"status": "ok"}
        is_task_marker = step.step_type.startswith("task.")
        kind = _peer.ActionKind(step.step_type)
        verb = None if step.verb is None else _peer.Verb(step.verb)
        if (kind, verb) not in _peer.VALID_COMBINATIONS:
            verb = None  # the peer's step.model takes no verb where pathguard's takes POST
        return _peer.Behavior(
            agent_id=self.agent_key,
            task_id=task_id,
            kind=kind,
            verb=verb,
            step_name=step.name,
            input=None if is_task_marker else {"text": step.text},
            output=output if completed and not is_task_marker else None,
            properties=properties,
            timestamp=self.now,
        )

    def evaluate(self, behavior: Any) -> Any:
        return self.engine.evaluate(behavior, self.context(behavior.task_id))

    def evaluator(self, task_id: str) -> Callable[[Any], Any]:
        """`evaluate` for one task, with its context bound (no lookup in the timed call)."""
        evaluate, context = self.engine.evaluate, self.context(task_id)
        return lambda behavior: evaluate(behavior, context)

    def record(self, behavior: Any) -> Any:
        return self.engine.record(behavior)

    def recorder(self) -> Callable[[Any], Any]:
        return self.engine.record  # type: ignore[no-any-return]

    @staticmethod
    def violated(result: Any) -> frozenset[str]:
        return frozenset(p.name for p in result.policies if p.violated)

    @staticmethod
    def evaluated(result: Any) -> int:
        return len(result.policies)
