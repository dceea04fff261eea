"""What the engine returns: an action, the violations behind it, and a printable explanation."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

__all__ = ["Action", "Decision", "Effect", "Mode", "Severity", "Violation"]


class Action(StrEnum):
    """What happens to a step, weakest first: allow < warn < approve < block."""

    allow = "allow"
    warn = "warn"
    approve = "approve"
    block = "block"

    @property
    def strength(self) -> int:
        return _STRENGTH[self]


_STRENGTH: Final = {Action.allow: 0, Action.warn: 1, Action.approve: 2, Action.block: 3}


class Effect(StrEnum):
    """What a violated policy asks for."""

    block = "block"
    approve = "approve"
    warn = "warn"


class Severity(StrEnum):
    """How bad a violation is; the weight feeds `Decision.risk_score`."""

    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"

    @property
    def weight(self) -> float:
        return _WEIGHT[self]


_WEIGHT: Final = {
    Severity.low: 0.25,
    Severity.medium: 0.5,
    Severity.high: 0.75,
    Severity.critical: 1.0,
}


class Mode(StrEnum):
    """`enforce` acts on violations; `shadow` only reports them."""

    enforce = "enforce"
    shadow = "shadow"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Violation:
    """One policy that a step violates, and why."""

    policy_id: str
    rule: str
    severity: Severity
    effect: Effect
    mode: Mode
    reason: str
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy_id": self.policy_id,
            "rule": self.rule,
            "severity": self.severity.value,
            "effect": self.effect.value,
            "mode": self.mode.value,
            "reason": self.reason,
            "details": dict(self.details),
        }


_EFFECT_ACTION: Final = {
    Effect.warn: Action.warn,
    Effect.approve: Action.approve,
    Effect.block: Action.block,
}


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """The engine's verdict on one intended step.

    `action` is the strongest effect among enforced violations (block > approve > warn >
    allow); shadow-mode violations are listed in `shadow` and never change it. `evaluated`
    names, in order, every policy that targeted the step.
    """

    action: Action
    violations: tuple[Violation, ...] = ()
    shadow: tuple[Violation, ...] = ()
    evaluated: tuple[str, ...] = ()
    risk_score: float = 0.0

    @classmethod
    def from_violations(cls, violations: list[Violation], evaluated: tuple[str, ...]) -> Decision:
        """Fold violations into a decision (the one place the action rule lives)."""
        if not violations:
            return cls(action=Action.allow, evaluated=evaluated)
        enforced = []
        shadow = []
        action = Action.allow
        risk = 0.0
        for v in violations:
            if v.mode is Mode.shadow:
                shadow.append(v)
                continue
            enforced.append(v)
            candidate = _EFFECT_ACTION[v.effect]
            if _STRENGTH[candidate] > _STRENGTH[action]:
                action = candidate
            weight = _WEIGHT[v.severity]
            if weight > risk:
                risk = weight
        return cls(
            action=action,
            violations=tuple(enforced),
            shadow=tuple(shadow),
            evaluated=evaluated,
            risk_score=risk,
        )

    @property
    def allowed(self) -> bool:
        """True when the step may run without asking anyone (allow or warn)."""
        return self.action is Action.allow or self.action is Action.warn

    def explain(self) -> str:
        """One line per evaluated policy: ✓ when it passed, ✗ with the reason when not."""
        failed = {v.policy_id: v for v in self.violations}
        shadowed = {v.policy_id: v for v in self.shadow}
        lines = [f"decision: {self.action.value} (risk {self.risk_score:.2f})"]
        for policy_id in self.evaluated:
            if policy_id in failed:
                v = failed[policy_id]
                lines.append(f"  ✗ {policy_id} [{v.effect.value}, {v.severity.value}]: {v.reason}")
            elif policy_id in shadowed:
                v = shadowed[policy_id]
                lines.append(f"  ✗ {policy_id} [shadow, {v.severity.value}]: {v.reason}")
            else:
                lines.append(f"  ✓ {policy_id}")
        if not self.evaluated:
            lines.append("  (no policy targets this step)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "risk_score": self.risk_score,
            "violations": [v.to_dict() for v in self.violations],
            "shadow": [v.to_dict() for v in self.shadow],
            "evaluated": list(self.evaluated),
        }
