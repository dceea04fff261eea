"""The rule protocol, the registry, and the `@rule` decorator for custom rules.

A rule is a small object configured once (from its validated params) that decides, for one
step, whether its policy is violated. Rules that read the task's history are *monitors*:
the engine keeps one state per task (or per agent) for each, updates it with `observe` when
a behaviour is recorded, and hands it to `check`. A monitor's state is O(1) or bounded by
its params, so the cost of a check never grows with the length of the history.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict

from pathguard.canonical import canonical_hash
from pathguard.matching import StepMatcher
from pathguard.vocabulary import AgentRegistration, Behavior, Status, StepType

__all__ = [
    "REGISTRATION",
    "STEP_EXECUTION",
    "CompileContext",
    "EvalContext",
    "Fail",
    "NoParams",
    "Rule",
    "canonical_hash",
    "compile_rule",
    "get_rule",
    "is_satisfying",
    "register",
    "rule",
    "rule_names",
]

STEP_EXECUTION: Final = "step_execution"
REGISTRATION: Final = "agent_registration"
PolicyScope = Literal["step_execution", "agent_registration"]


class NoParams(BaseModel):
    """Parameters of a rule that takes none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Fail:
    """A rule's verdict that its policy is violated: a one-line reason and optional details.

    `reason` may be given as a function returning the text: it is called only when the
    reason is read, which saves formatting a sentence that a combinator (`not`, `any_of`)
    throws away.
    """

    __slots__ = ("_reason", "details")

    def __init__(
        self, reason: str | Callable[[], str], details: Mapping[str, Any] | None = None
    ) -> None:
        self._reason = reason
        self.details: Mapping[str, Any] = details or {}

    @property
    def reason(self) -> str:
        reason = self._reason
        if not isinstance(reason, str):
            reason = self._reason = reason()
        return reason

    def __repr__(self) -> str:
        return f"Fail({self.reason!r})"


class CompileContext:
    """What a rule may know about its policy when it is built."""

    __slots__ = ("policy_id", "scope", "target")

    def __init__(self, *, policy_id: str, scope: PolicyScope, target: StepMatcher) -> None:
        self.policy_id = policy_id
        self.scope = scope
        self.target = target


class EvalContext:
    """What a rule may know when it checks one step, besides its own monitor state.

    `position` is the number of entries already in the task's history (so the current step
    would be entry `position`); `now` is the step's own timestamp (the engine reads no clock).
    """

    __slots__ = (
        "_input_hash",
        "agent",
        "behavior",
        "history",
        "now",
        "position",
        "task_started_at",
    )

    def __init__(
        self,
        *,
        behavior: Behavior,
        position: int,
        task_started_at: float | None,
        agent: AgentRegistration | None,
        history: tuple[Behavior, ...] | Callable[[], tuple[Behavior, ...]] = (),
    ) -> None:
        self.behavior = behavior
        self.position = position
        self.now = behavior.timestamp
        self.task_started_at = task_started_at
        self.agent = agent
        self.history = history
        self._input_hash: str | None = None

    @property
    def input_hash(self) -> str:
        """The canonical hash of the current step's input (computed once, on demand)."""
        if self._input_hash is None:
            self._input_hash = canonical_hash(self.behavior.input)
        return self._input_hash

    def retained_history(self) -> tuple[Behavior, ...]:
        """The retained (bounded) history of the task, oldest first."""
        h = self.history
        return h() if callable(h) else h


def is_satisfying(entry: Behavior, count_attempts: bool = False) -> bool:
    """Whether a history entry counts: `completed`, or any recorded status with count_attempts."""
    return count_attempts or entry.status is Status.completed


class Rule:
    """Base class of every rule. Subclasses set `name`, `Params`, and override `check`.

    Stateless rules only override `check`. Monitors also set `stateful = True` and override
    `initial_state`, `observe` (which returns the new state) and `watches`.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    scopes: ClassVar[frozenset[str]] = frozenset({STEP_EXECUTION})
    summary: ClassVar[str] = ""

    stateful: bool = False
    # "task": one state per task; "agent": one state per agent key, shared by its tasks.
    state_per: Literal["task", "agent"] = "task"
    # "before": checked before the step runs; "after": reads the output, checked after.
    phase: Literal["before", "after"] = "before"
    # Identical monitors (same name and params) share one state unless their state depends
    # on the policy's target (`ctx.target`); such a rule sets this to True.
    state_uses_target: bool = False

    def __init__(self, params: BaseModel, ctx: CompileContext) -> None:
        self.params = params
        self.ctx = ctx

    # -- monitor protocol -------------------------------------------------------------
    def watches(self) -> frozenset[StepType] | None:
        """The step types whose recorded entries change the state; None means all."""
        return frozenset()

    def initial_state(self) -> Any:
        return None

    def observe(self, state: Any, entry: Behavior, position: int) -> Any:
        """Fold one recorded entry (at `position` in the history) into the state."""
        return state

    # -- decision ---------------------------------------------------------------------
    def check(self, subject: Any, state: Any, ctx: EvalContext | None) -> Fail | None:
        """Return None when the subject passes, a Fail with a reason when it violates."""
        raise TypeError(f"{type(self).__name__} must override check().")  # pragma: no cover

    def __repr__(self) -> str:
        params = self.params.model_dump(exclude_defaults=True, mode="json")
        inner = ", ".join(f"{k}={v!r}" for k, v in params.items())
        return f"{self.name}({inner})"


_REGISTRY: dict[str, type[Rule]] = {}


def register(cls: type[Rule]) -> type[Rule]:
    """Add a Rule subclass to the registry under `cls.name` (a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name` to be registered as a rule.")
    _REGISTRY[cls.name] = cls
    return cls


def get_rule(name: str) -> type[Rule]:
    """Look a rule up by name; KeyError with a did-you-mean hint when unknown."""
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"{name!r} is not a known rule.{hint}") from None


def rule_names() -> list[str]:
    """Every registered rule name, sorted."""
    _ensure_builtins()
    return sorted(_REGISTRY)


def all_rules() -> dict[str, type[Rule]]:
    _ensure_builtins()
    return dict(sorted(_REGISTRY.items()))


@functools.cache
def _ensure_builtins() -> None:
    # Imported lazily so that `_base` has no import cycle with the families it serves.
    from pathguard.rules import access, content, counting, fields, logic, path  # noqa: F401


def compile_rule(
    name: str, params: Mapping[str, Any] | BaseModel | None, ctx: CompileContext
) -> Rule:
    """Validate params against the rule's model and build the rule (used by policies and
    by combinators for nested `{rule, params}` specs)."""
    cls = get_rule(name)
    if ctx.scope not in cls.scopes:
        raise ValueError(
            f"the rule {name!r} cannot be used in an {ctx.scope} policy; it works in: "
            f"{', '.join(sorted(cls.scopes))}."
        )
    model = params if isinstance(params, BaseModel) else cls.Params.model_validate(params or {})
    return cls(model, ctx)


Verdict = bool | str | None
F = TypeVar("F", bound=Callable[..., Any])


def rule(
    name: str,
    *,
    params: type[BaseModel] = NoParams,
    scopes: tuple[PolicyScope, ...] = (STEP_EXECUTION,),
    summary: str | None = None,
) -> Callable[[F], F]:
    """Register a custom rule usable from policy files.

    Decorate a function `(subject, params, ctx) -> bool | str | None`: return True or None
    to pass, False or a reason string to violate. `subject` is the intended Behavior (or the
    AgentRegistration for `agent_registration` policies), `params` an instance of the given
    pydantic model, `ctx` an EvalContext (None for registrations). A Rule subclass may be
    decorated instead, for rules that keep monitor state.
    """

    def decorate(target: F) -> F:
        if inspect.isclass(target) and issubclass(target, Rule):
            target.name = name
            target.Params = params
            target.scopes = frozenset(scopes)
            if summary:
                target.summary = summary
            register(target)
            return target
        if not callable(target):
            raise TypeError("@rule decorates a function or a Rule subclass.")
        if inspect.iscoroutinefunction(target):
            raise TypeError(
                f"Rule {name!r} is async; rules run inside the engine's hot path and must be "
                "plain functions."
            )
        func = cast(Callable[..., Verdict], target)
        doc = summary or (inspect.getdoc(target) or "").split("\n", 1)[0]

        class FunctionRule(Rule):
            def check(self, subject: Any, state: Any, ctx: EvalContext | None) -> Fail | None:
                verdict = func(subject, self.params, ctx)
                if verdict is None or verdict is True:
                    return None
                if verdict is False:
                    return Fail(f"the custom rule {name!r} was not satisfied")
                return Fail(str(verdict))

        FunctionRule.name = name
        FunctionRule.Params = params
        FunctionRule.scopes = frozenset(scopes)
        FunctionRule.summary = doc
        FunctionRule.__qualname__ = FunctionRule.__name__ = f"Rule[{name}]"
        register(FunctionRule)
        return target

    return decorate
