"""The error tree. Misuse errors subclass the builtin a user would already catch.

```
PathguardError
├── InvalidBehaviorError (ValueError)      a step tuple outside the vocabulary
├── PolicyLoadError (ValueError)           a policy document with problems (all listed)
├── TemplateError (ValueError)             a malformed template document
├── CaptureError (TypeError)               an argument that cannot become JSON
├── NoActiveTaskError (RuntimeError)       a step taken outside any task
├── ConfigurationError (ValueError)        a bad Guard option or environment variable
├── TraceIntegrityError (ValueError)       a trace whose hash chain does not verify
└── BlockedError                           a step refused by policy
    └── ApprovalDeniedError                a step whose approval was refused
```
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathguard.decisions import Decision
    from pathguard.vocabulary import Behavior

__all__ = [
    "ApprovalDeniedError",
    "BlockedError",
    "CaptureError",
    "ConfigurationError",
    "InvalidBehaviorError",
    "NoActiveTaskError",
    "PathguardError",
    "PolicyLoadError",
    "PolicyProblem",
    "TemplateError",
    "TraceIntegrityError",
]


class PathguardError(Exception):
    """The root of every error pathguard raises."""


class InvalidBehaviorError(PathguardError, ValueError):
    """A behaviour's `(step_type, scope, verb)` is outside the vocabulary table."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PolicyProblem:
    """One thing wrong with a policy document, located as precisely as possible."""

    message: str
    source: str | None = None
    policy_id: str | None = None
    field: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = [self.source or "<policies>"]
        if self.line is not None:
            where[0] += f":{self.line}"
        if self.policy_id:
            where.append(f"policy {self.policy_id!r}")
        if self.field:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}"


class PolicyLoadError(PathguardError, ValueError):
    """A policy document could not be loaded; `problems` lists everything that is wrong."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        head = (
            "The policy document has 1 problem and was not loaded:"
            if count == 1
            else f"The policy document has {count} problems and was not loaded:"
        )
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class TemplateError(PathguardError, ValueError):
    """A template document is malformed."""


class CaptureError(PathguardError, TypeError):
    """A step's argument or result cannot be turned into JSON for the trace."""


class NoActiveTaskError(PathguardError, RuntimeError):
    """A governed step ran outside any task."""


class ConfigurationError(PathguardError, ValueError):
    """A Guard option or `PATHGUARD_*` environment variable has a bad value."""


class TraceIntegrityError(PathguardError, ValueError):
    """A trace's hash chain does not verify; `line` and `reason` say where and why."""

    def __init__(self, message: str, *, line: int | None = None, seq: int | None = None) -> None:
        self.line = line
        self.seq = seq
        super().__init__(message)


class BlockedError(PathguardError):
    """A step was refused by policy. `decision` says why; `behavior` is what was refused
    (None when an agent registration was refused)."""

    def __init__(
        self, decision: Decision, behavior: Behavior | None, message: str | None = None
    ) -> None:
        self.decision = decision
        self.behavior = behavior
        super().__init__(message or self._describe(decision, behavior))

    @staticmethod
    def _describe(decision: Decision, behavior: Behavior | None) -> str:
        reasons = "; ".join(f"{v.policy_id}: {v.reason}" for v in decision.violations)
        if behavior is None:
            return f"The agent registration was blocked by policy. {reasons}."
        name = behavior.step_name or behavior.step_type.value
        return f"Step {name!r} ({behavior.step_type.value}) was blocked by policy. {reasons}."


class ApprovalDeniedError(BlockedError):
    """A step needed an approval and the approval handler refused (or there was none)."""
