"""Guard: the SDK that governs an agent's steps in-process.

`Guard` wraps a PolicyEngine with what an application needs: agent registration, task
lifecycle (the active task lives in a ContextVar, so threads and asyncio tasks never share
one), the `@guard.step` decorator for sync and async functions, approvals, warnings,
templates, payload capture with size caps, and a hash-chained trace.

On every governed call: template → Behavior → evaluate →
  block:   record the attempt as blocked, raise BlockedError, do not call the function;
  approve: ask the approval handler, record its `step.gate`, evaluate again;
  warn:    emit a PolicyWarning and go on;
→ run → record completed (or failed, re-raising the function's own exception).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, ParamSpec, TypeVar, cast

from pathguard.approvals import (
    ApprovalHandler,
    ApprovalRequest,
    PolicyWarning,
    ask_async,
    ask_sync,
)
from pathguard.canonical import canonical_hash
from pathguard.capture import CaptureLimits, to_jsonable
from pathguard.config import (
    UNSET,
    Unset,
    default_cache_dir,
    env,
    env_int,
    limits_from_env,
    policy_source,
)
from pathguard.decisions import Action, Decision, Effect, Mode, Severity, Violation
from pathguard.engine import PolicyEngine
from pathguard.errors import (
    ApprovalDeniedError,
    BlockedError,
    CaptureError,
    ConfigurationError,
    NoActiveTaskError,
)
from pathguard.policies import PolicySet
from pathguard.steps import PropertiesArg, StepSpec, bind_arguments, build_spec
from pathguard.templates import (
    Classification,
    Template,
    check_classification,
    deep_merge,
    load_template,
)
from pathguard.trace import HashChain, JsonlSink, TraceSink
from pathguard.vocabulary import (
    AgentRegistration,
    Behavior,
    RiskClass,
    Status,
    StepType,
    Verb,
)

if TYPE_CHECKING:
    from pathguard.remote.spool import TraceSpool
    from pathguard.remote.sync import PolicySync, TraceShipper

__all__ = ["ApprovalRequest", "Guard", "PolicyWarning"]

logger = logging.getLogger("pathguard")

P = ParamSpec("P")
R = TypeVar("R")


_WITHHELD: Final = {"$withheld": "the output was withheld by policy"}


class _TaskHandle:
    __slots__ = ("chain", "engine", "parent", "task_id")

    def __init__(
        self,
        task_id: str,
        parent: _TaskHandle | None,
        chain: HashChain | None,
        engine: PolicyEngine,
    ) -> None:
        self.task_id = task_id
        self.parent = parent
        self.chain = chain
        # The engine in force when the task started: a policy update applies to new tasks,
        # so an open task's path history is never cut in two.
        self.engine = engine


class Guard:
    """Governs one agent: checks each step against path policies before it runs.

    Every option can also be set with a `PATHGUARD_*` environment variable (an explicit
    argument wins): PATHGUARD_AGENT_KEY, PATHGUARD_POLICIES (a file), PATHGUARD_TEMPLATE,
    PATHGUARD_FAIL_MODE, PATHGUARD_TRACE_PATH, PATHGUARD_HISTORY_LIMIT, PATHGUARD_MAX_STRING,
    PATHGUARD_MAX_ITEMS, PATHGUARD_MAX_DEPTH, PATHGUARD_API_URL, PATHGUARD_API_KEY,
    PATHGUARD_CACHE_DIR, PATHGUARD_POLICY_TTL.

    With `api_url`, policies come from the platform (`guard.policy_sync`, verified with
    PATHGUARD_POLICY_HMAC_SECRET / PATHGUARD_POLICY_ED25519_PUBLIC_KEY) and the trace goes to
    an on-disk spool in `cache_dir` that `guard.trace_shipper` ships in the background. A
    policy update applies to tasks started after it; open tasks finish under the set they
    started with. With fail_mode "closed", every `step.*` is blocked while no verified
    policy set was ever loaded (violation `pathguard.no-policies`).
    """

    def __init__(
        self,
        agent_key: str | None = None,
        *,
        policies: PolicySet | Mapping[str, Any] | str | Path | Unset | None = UNSET,
        api_url: str | Unset | None = UNSET,
        api_key: str | Unset | None = UNSET,
        template: Template | Mapping[str, Any] | str | Path | Unset | None = UNSET,
        fail_mode: Literal["closed", "open"] | Unset = UNSET,
        approval_handler: ApprovalHandler | None = None,
        trace_path: str | Path | Unset | None = UNSET,
        sinks: tuple[TraceSink, ...] | list[TraceSink] = (),
        history_limit: int | Unset = UNSET,
        capture_limits: CaptureLimits | None = None,
        json_default: Callable[[Any], Any] | None = None,
        clock: Callable[[], float] = time.time,
        cache_dir: str | Path | Unset | None = UNSET,
        policy_ttl: float | Unset = UNSET,
    ) -> None:
        key = agent_key or env("AGENT_KEY")
        if not key:
            raise ConfigurationError(
                "Guard needs an agent key: pass Guard(agent_key='my-agent') or set "
                "PATHGUARD_AGENT_KEY."
            )
        self.agent_key: str = key
        url = env("API_URL") if isinstance(api_url, Unset) else api_url
        self.api_url: str | None = url or None
        self.api_key = env("API_KEY") if isinstance(api_key, Unset) else api_key
        if self.api_url and not self.api_key:
            raise ConfigurationError(
                "Guard(api_url=...) needs the agent's API key: pass api_key=... or set "
                "PATHGUARD_API_KEY (create one with `pathguard keys create`)."
            )
        mode = env("FAIL_MODE") if isinstance(fail_mode, Unset) else fail_mode
        mode = mode or "closed"
        if mode not in ("closed", "open"):
            raise ConfigurationError(f"fail_mode must be 'closed' or 'open', not {mode!r}.")
        self.fail_mode: Literal["closed", "open"] = cast(Literal["closed", "open"], mode)
        source = env("POLICIES") if isinstance(policies, Unset) else policies
        if self.api_url and source is not None:
            raise ConfigurationError(
                "Guard got both policies= (or PATHGUARD_POLICIES) and api_url=; with api_url "
                "the policies come from the platform, so remove one of them."
            )
        limit = env_int("HISTORY_LIMIT") if isinstance(history_limit, Unset) else history_limit
        if limit is not None and limit < 0:
            raise ConfigurationError(
                f"history_limit (PATHGUARD_HISTORY_LIMIT) must be 0 or more, not {limit}."
            )
        self.engine = PolicyEngine(
            None if source is None else policy_source(source),
            history_limit=1000 if limit is None else limit,
        )
        tpl = env("TEMPLATE") if isinstance(template, Unset) else template
        self.template = load_template(tpl)
        self.approval_handler = approval_handler
        self.capture_limits = capture_limits or limits_from_env()
        self.json_default = json_default
        self.clock = clock
        path = env("TRACE_PATH") if isinstance(trace_path, Unset) else trace_path
        self._sinks: list[TraceSink] = list(sinks)
        if path:
            self._sinks.append(JsonlSink(path))
        self._lock = threading.Lock()  # guards the engine; never taken twice by one call
        self._current: contextvars.ContextVar[_TaskHandle | None] = contextvars.ContextVar(
            f"pathguard_task_{id(self):x}", default=None
        )
        self._overrides: contextvars.ContextVar[tuple[Mapping[str, Any], Mapping[str, Any]]] = (
            contextvars.ContextVar(f"pathguard_overrides_{id(self):x}", default=({}, {}))
        )
        self.registration: AgentRegistration | None = None
        self._initial_engine = self.engine
        self.policy_sync: PolicySync | None = None
        self.trace_shipper: TraceShipper | None = None
        self._spool: TraceSpool | None = None
        self._waited_for_policies = False
        if self.api_url:
            self._connect(self.api_url, self.api_key or "", cache_dir, policy_ttl)

    def _connect(
        self,
        api_url: str,
        api_key: str,
        cache_dir: str | Path | Unset | None,
        policy_ttl: float | Unset,
    ) -> None:
        try:
            from pathguard.remote.bundle import VerificationKeys
            from pathguard.remote.spool import TraceSpool
            from pathguard.remote.sync import PolicySync, TraceShipper
        except ImportError as exc:
            raise ConfigurationError(
                f"Guard(api_url=...) needs the platform client: {exc}"
            ) from None
        directory = env("CACHE_DIR") if isinstance(cache_dir, Unset) else cache_dir
        root = Path(directory) if directory else default_cache_dir(self.agent_key)
        ttl = env_int("POLICY_TTL") if isinstance(policy_ttl, Unset) else policy_ttl
        if ttl is not None and ttl <= 0:
            raise ConfigurationError(
                f"policy_ttl (PATHGUARD_POLICY_TTL) must be more than 0 seconds, not {ttl}."
            )
        self._spool = TraceSpool(root / "spool")
        self._sinks.append(self._spool)
        self.trace_shipper = TraceShipper(api_url, api_key, self._spool).start()
        self.policy_sync = PolicySync(
            api_url,
            api_key,
            self.agent_key,
            cache_dir=root / "policies",
            keys=VerificationKeys.from_env(),
            ttl=300.0 if ttl is None else float(ttl),
            on_update=self._policies_updated,
        ).start()

    def _policies_updated(self, policy_set: PolicySet) -> None:
        """PolicySync's callback: a new engine for tasks started from now on."""
        engine = PolicyEngine(policy_set, history_limit=self.engine.history_limit)
        with self._lock:
            if self.registration is not None:
                engine.register(self.registration)
            self.engine = engine

    def _no_policies(self, behavior: Behavior) -> Decision | None:
        """With platform sync and fail_mode "closed": block a step while no set ever loaded."""
        sync = self.policy_sync
        if sync is None or self.fail_mode == "open" or self.engine is not self._initial_engine:
            return None
        if not self._waited_for_policies:
            # The first evaluation waits, at most the sync timeout, for the first bundle
            # (on_update swaps the engine before wait_first returns).
            self._waited_for_policies = True
            sync.wait_first(sync.timeout)
            if self.engine is not self._initial_engine:
                return None
        if not behavior.step_type.value.startswith("step."):
            return None
        violation = Violation(
            policy_id="pathguard.no-policies",
            rule="fail_mode",
            severity=Severity.critical,
            effect=Effect.block,
            mode=Mode.enforce,
            reason="no verified policy set was loaded from the platform yet "
            f"({sync.status()['last_error'] or 'the first fetch is under way'}) and fail_mode "
            "is 'closed'",
        )
        return Decision.from_violations([violation], ())

    def status(self) -> dict[str, Any]:
        """The platform sync state: `state` is "enforcing", "stale", "unavailable" or "local"."""
        if self.policy_sync is None or self.trace_shipper is None:
            return {"state": "local", "fail_mode": self.fail_mode}
        policies = self.policy_sync.status()
        return {
            "state": policies["state"],
            "fail_mode": self.fail_mode,
            "policies": policies,
            "traces": self.trace_shipper.status(),
        }

    def __repr__(self) -> str:
        n = len(self.engine.policy_set.policies)
        return f"Guard(agent_key={self.agent_key!r}, policies={n}, fail_mode={self.fail_mode!r})"

    # -- registration ---------------------------------------------------------------------
    def register_agent(
        self,
        name: str,
        purpose: str,
        *,
        owner: str | None = None,
        tools: tuple[str, ...] | list[str] = (),
        risk_classification: RiskClass | str = "minimal",
        environment: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Declare the agent; `agent_registration` policies decide whether it may run."""
        registration = AgentRegistration(
            agent_key=self.agent_key,
            name=name,
            purpose=purpose,
            owner=owner,
            tools=tuple(tools),
            risk_classification=RiskClass(risk_classification)
            if risk_classification in {r.value for r in RiskClass}
            else cast(RiskClass, risk_classification),
            environment=environment,
            metadata=dict(metadata or {}),
        )
        decision = self.engine.evaluate_registration(registration)
        if decision.action is Action.approve:
            request = ApprovalRequest(
                behavior=None,
                decision=decision,
                agent_key=self.agent_key,
                task_id=None,
                input_hash=canonical_hash(registration.to_dict()),
                phase="registration",
            )
            if not ask_sync(self.approval_handler, request):
                raise ApprovalDeniedError(
                    decision,
                    None,
                    f"The registration of agent {self.agent_key!r} needed an approval that was "
                    f"not given ({'; '.join(request.reasons)}).",
                )
        elif decision.action is Action.block:
            raise BlockedError(decision, None)
        elif decision.action is Action.warn:
            self._warn(decision, None)
        with self._lock:
            self.engine.register(registration)
        self.registration = registration
        return decision

    # -- task lifecycle -------------------------------------------------------------------
    def start_task(
        self,
        task_id: str | None = None,
        *,
        context: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Open a task in the current context (thread or asyncio task); returns its id."""
        task_id = task_id or uuid.uuid4().hex
        parent = self._current.get()
        with self._lock:
            engine = self.engine
            engine.start_task(task_id, agent_key=self.agent_key)
        chain = HashChain(sinks=self._sinks) if self._sinks else None
        handle = _TaskHandle(task_id, parent, chain, engine)
        start = self._marker(
            StepType.task_start,
            task_id,
            properties,
            meta,
            input=self._capture(dict(context), "context") if context else None,
        )
        try:
            self._take_marker(handle, start)
        except BlockedError:
            with self._lock:
                engine.end_task(task_id)
            raise
        self._current.set(handle)
        return task_id

    def end_task(
        self,
        output: Any = None,
        *,
        properties: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """End the current task normally. A policy that targets `task.end` may refuse it."""
        handle = self._require_task("end_task")
        end = self._marker(
            StepType.task_end,
            handle.task_id,
            properties,
            meta,
            output=None if output is None else self._capture(output, "output"),
        )
        self._take_marker(handle, end)
        with self._lock:
            handle.engine.end_task(handle.task_id)
        self._current.set(handle.parent)
        if self.trace_shipper is not None:
            self.trace_shipper.wake()

    def error_task(
        self,
        error: BaseException | str | None = None,
        *,
        properties: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """End the current task with an error. Policies are evaluated but cannot refuse it."""
        handle = self._require_task("error_task")
        detail = None
        if isinstance(error, BaseException):
            detail = {"type": type(error).__name__, "message": str(error)[:1000]}
        elif error is not None:
            detail = {"message": str(error)[:1000]}
        end = self._marker(StepType.task_error, handle.task_id, properties, meta, output=detail)
        self._close(handle, end._evolve(status=Status.completed), self._decide(handle, end))

    def idle_task(self, *, meta: Mapping[str, Any] | None = None) -> Decision:
        """Record a heartbeat; policies targeting `task.idle` (e.g. a duration cap) may block."""
        handle = self._require_task("idle_task")
        return self._take_marker(
            handle, self._marker(StepType.task_idle, handle.task_id, None, meta)
        )

    def task(
        self,
        task_id: str | None = None,
        *,
        context: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> _TaskScope:
        """A context manager (`with` or `async with`) around one task; errors end it as
        `task.error` and propagate."""
        return _TaskScope(self, task_id, context, properties, meta)

    @property
    def current_task_id(self) -> str | None:
        """The id of the task active in this context, if any."""
        handle = self._current.get()
        return None if handle is None else handle.task_id

    @contextmanager
    def overrides(
        self,
        *,
        properties: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Iterator[None]:
        """Call-site overrides: steps inside this block get these properties and meta merged
        on top of the template's and the decorator's."""
        old_props, old_meta = self._overrides.get()
        token = self._overrides.set(
            (deep_merge(old_props, properties or {}), deep_merge(old_meta, meta or {}))
        )
        try:
            yield
        finally:
            self._overrides.reset(token)

    # -- the step decorator ----------------------------------------------------------------
    def step(
        self,
        step_type: StepType | str | None = None,
        verb: Verb | str | None = None,
        *,
        step_name: str | None = None,
        properties: PropertiesArg = None,
        meta: Mapping[str, Any] | None = None,
        capture_input: bool = True,
        capture_output: bool = True,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Govern a function as one step. Works on sync and async functions; the wrapper
        keeps the function's signature and type. Without `step_type`, the template
        classifies the step from its name (and arguments)."""
        declared = None if step_type is None else StepType.parse(step_type)
        declared_verb = None if verb is None else Verb.parse(verb)
        if declared is not None:
            check_classification(declared, declared_verb)
        if (
            properties is not None
            and not callable(properties)
            and not isinstance(properties, Mapping)
        ):
            raise TypeError("properties= takes a mapping or a function of the arguments.")

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
                raise TypeError(
                    f"@guard.step cannot govern the generator {func.__qualname__}: the step "
                    "would end before the generator runs. Govern the function that consumes it."
                )
            spec = build_spec(
                self.template,
                func,
                declared,
                declared_verb,
                step_name,
                properties,
                meta,
                capture_input,
                capture_output,
            )
            if inspect.iscoroutinefunction(func):
                return cast(Callable[P, R], self._async_wrapper(func, spec))
            return self._sync_wrapper(func, spec)

        return decorate

    def _sync_wrapper(self, func: Callable[P, R], spec: StepSpec) -> Callable[P, R]:
        @functools.wraps(func)
        def governed(*args: P.args, **kwargs: P.kwargs) -> R:
            handle, intended = self._begin(spec, args, kwargs)
            decision = self._decide(handle, intended)
            if decision.action is Action.approve:
                request = self._request(handle, intended, decision, "before")
                decision = self._answered(
                    handle, intended, request, ask_sync(self.approval_handler, request)
                )
            self._enforce(handle, intended, decision)
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                self._failed(handle, spec, intended, decision, exc)
                raise
            completed, after = self._output_check(handle, spec, intended, decision, result)
            if after is not None and after.action is Action.approve:
                request = self._request(handle, completed, after, "after")
                after = self._answered(
                    handle, completed, request, ask_sync(self.approval_handler, request)
                )
            self._completed(handle, completed, decision, after)
            return result

        return governed

    def _async_wrapper(
        self, func: Callable[P, Awaitable[Any]], spec: StepSpec
    ) -> Callable[P, Awaitable[Any]]:
        @functools.wraps(func)
        async def governed(*args: P.args, **kwargs: P.kwargs) -> Any:
            handle, intended = self._begin(spec, args, kwargs)
            decision = self._decide(handle, intended)
            if decision.action is Action.approve:
                request = self._request(handle, intended, decision, "before")
                answer = await ask_async(self.approval_handler, request)
                decision = self._answered(handle, intended, request, answer)
            self._enforce(handle, intended, decision)
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                self._failed(handle, spec, intended, decision, exc)
                raise
            completed, after = self._output_check(handle, spec, intended, decision, result)
            if after is not None and after.action is Action.approve:
                request = self._request(handle, completed, after, "after")
                answer = await ask_async(self.approval_handler, request)
                after = self._answered(handle, completed, request, answer)
            self._completed(handle, completed, decision, after)
            return result

        return governed

    # -- shared step logic (sync and async differ only in how they wait) --------------------
    def _begin(
        self, spec: StepSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> tuple[_TaskHandle, Behavior]:
        handle = self._current.get()
        if handle is None:
            raise NoActiveTaskError(
                f"The step {spec.name!r} ran outside a task. Open one around it with "
                "`with guard.task():` (or `async with guard.task():`), or call "
                "guard.start_task() first."
            )
        arguments = bind_arguments(spec, args, kwargs)
        classification = spec.classify
        props = spec.properties
        if spec.dynamic_properties is not None:
            props = deep_merge(props, spec.dynamic_properties(arguments))
        call_props, call_meta = self._overrides.get()
        if call_props:
            props = deep_merge(props, call_props)
        meta = deep_merge(spec.meta, call_meta) if call_meta else spec.meta
        captured = self._capture(arguments, "input") if spec.capture_input else None
        if spec.resolved is not None:
            # Type and verb were resolved and validated at decoration: skip validating again.
            step_type, verb = spec.resolved
            return handle, Behavior._trusted(
                step_type,
                verb,
                spec.name,
                props,
                captured,
                meta,
                self.agent_key,
                handle.task_id,
                self.clock(),
            )
        # A template rule that reads the arguments: classify this call.
        classify = cast(Callable[[Mapping[str, Any]], Classification], classification)
        classification = classify(arguments)
        step_type = spec.step_type or classification.step_type or StepType.step_unknown
        verb = spec.verb
        if classification.step_type in (None, step_type):
            props = deep_merge(classification.properties, props)
            if verb is None:
                verb = classification.verb
        intended = Behavior(
            step_type=step_type,
            verb=verb,
            step_name=spec.name,
            properties=props,
            input=captured,
            meta=meta,
            agent_key=self.agent_key,
            task_id=handle.task_id,
            timestamp=self.clock(),
        )
        return handle, intended

    def _capture(self, value: Any, where: str) -> Any:
        return to_jsonable(value, self.capture_limits, json_default=self.json_default, where=where)

    def _decide(self, handle: _TaskHandle, behavior: Behavior) -> Decision:
        blocked = self._no_policies(behavior)
        if blocked is not None:
            return blocked
        if handle.engine is self._initial_engine and self.engine is not handle.engine:
            # Started before the first platform set arrived: move to the set now in force.
            with self._lock:
                handle.engine.end_task(handle.task_id)
                handle.engine = self.engine
        try:
            with self._lock:
                return handle.engine.evaluate(behavior)
        except Exception as exc:  # the engine itself failed: fail_mode decides
            # ... except for the end of a task: an engine failure must not hold it open.
            closing = behavior.step_type in (StepType.task_end, StepType.task_error)
            return self._engine_failure(exc, fail_open=closing)

    def _engine_failure(self, exc: Exception, *, fail_open: bool = False) -> Decision:
        logger.error("pathguard could not evaluate a step: %r", exc, exc_info=exc)
        if fail_open or self.fail_mode == "open":
            return Decision(action=Action.allow)
        violation = Violation(
            policy_id="pathguard.fail-closed",
            rule="fail_mode",
            severity=Severity.critical,
            effect=Effect.block,
            mode=Mode.enforce,
            reason=f"the step could not be evaluated ({type(exc).__name__}: {exc}) and "
            "fail_mode is 'closed'",
        )
        return Decision.from_violations([violation], ())

    def _request(
        self,
        handle: _TaskHandle,
        behavior: Behavior,
        decision: Decision,
        phase: Literal["before", "after"],
    ) -> ApprovalRequest:
        return ApprovalRequest(
            behavior=behavior,
            decision=decision,
            input_hash=canonical_hash(behavior.input),
            agent_key=self.agent_key,
            task_id=handle.task_id,
            phase=phase,
        )

    def _answered(
        self, handle: _TaskHandle, behavior: Behavior, request: ApprovalRequest, approved: bool
    ) -> Decision:
        """Record the approval as a `step.gate`, then decide again in its light."""
        gate = Behavior(
            step_type=StepType.step_gate,
            step_name=f"approval:{behavior.step_name or behavior.step_type.value}",
            properties={
                "guard": {
                    "gate_type": "human_approval",
                    "decision": "approved" if approved else "denied",
                    "approved_input_hash": request.input_hash if approved else None,
                }
            },
            input={"step": behavior.step_name, "phase": request.phase, "reasons": request.reasons},
            agent_key=self.agent_key,
            task_id=handle.task_id,
            status=Status.completed,
            timestamp=self.clock(),
        )
        self._record(handle, gate, None)
        if not approved:
            why = (
                "no approval_handler is configured"
                if self.approval_handler is None
                else "the approval handler refused it"
            )
            refused = behavior._evolve(
                status=Status.blocked, output=None if request.phase == "before" else _WITHHELD
            )
            self._record(handle, refused, request.decision)
            name = behavior.step_name or behavior.step_type.value
            raise ApprovalDeniedError(
                request.decision,
                behavior,
                f"Step {name!r} needed an approval and {why} ({'; '.join(request.reasons)}).",
            )
        if request.phase == "after":
            decision = self._decide_output(handle, behavior)
        else:
            decision = self._decide(handle, behavior)
        # An approve verdict that survives the approval was just granted by a human.
        return decision

    def _enforce(self, handle: _TaskHandle, intended: Behavior, decision: Decision) -> None:
        if decision.action is Action.block:
            self._record(handle, intended._evolve(status=Status.blocked), decision)
            raise BlockedError(decision, intended)
        if decision.action is Action.warn:
            self._warn(decision, intended)

    def _decide_output(self, handle: _TaskHandle, completed: Behavior) -> Decision:
        try:
            with self._lock:
                return handle.engine.evaluate_output(completed)
        except Exception as exc:
            return self._engine_failure(exc)

    def _output_check(
        self,
        handle: _TaskHandle,
        spec: StepSpec,
        intended: Behavior,
        decision: Decision,
        result: Any,
    ) -> tuple[Behavior, Decision | None]:
        try:
            output = self._capture(result, "output") if spec.capture_output else None
        except CaptureError as exc:
            # The function already ran: keep its step in the trace, then tell the developer.
            failed = {"$capture_error": str(exc)}
            self._record(handle, intended._evolve(status=Status.completed, output=failed), decision)
            raise
        changes: dict[str, Any] = {"status": Status.completed, "output": output}
        if intended.step_type is StepType.step_gate:
            verdict = "denied" if result is False else "approved"
            changes["properties"] = deep_merge(
                intended.properties, {"guard": {"decision": verdict}}
            )
        completed = intended._evolve(**changes)
        if not handle.engine.has_output_policies(completed):
            return completed, None
        return completed, self._decide_output(handle, completed)

    def _completed(
        self,
        handle: _TaskHandle,
        completed: Behavior,
        decision: Decision,
        after: Decision | None,
    ) -> None:
        if after is not None and after.action is Action.block:
            self._record(handle, completed._evolve(status=Status.blocked, output=_WITHHELD), after)
            raise BlockedError(after, completed)
        self._record(handle, completed, decision if after is None else _merge(decision, after))
        if after is not None and after.action is Action.warn:
            self._warn(after, completed)

    def _failed(
        self,
        handle: _TaskHandle,
        spec: StepSpec,
        intended: Behavior,
        decision: Decision,
        exc: BaseException,
    ) -> None:
        changes: dict[str, Any] = {
            "status": Status.failed,
            "output": {"error": type(exc).__name__, "message": str(exc)[:1000]},
        }
        if intended.step_type is StepType.step_gate:
            changes["properties"] = deep_merge(
                intended.properties, {"guard": {"decision": "denied"}}
            )
        self._record(handle, intended._evolve(**changes), decision)

    def _warn(self, decision: Decision, behavior: Behavior | None) -> None:
        what = (
            "agent registration"
            if behavior is None
            else (f"step {behavior.step_name or behavior.step_type.value!r}")
        )
        reasons = "; ".join(f"{v.policy_id}: {v.reason}" for v in decision.violations)
        warnings.warn(
            PolicyWarning(
                f"The {what} violates a warn policy: {reasons}.",
                decision=decision,
                behavior=behavior,
            ),
            stacklevel=4,
        )

    # -- recording ------------------------------------------------------------------------
    def _marker(
        self,
        step_type: StepType,
        task_id: str,
        properties: Mapping[str, Any] | None,
        meta: Mapping[str, Any] | None,
        *,
        input: Any = None,
        output: Any = None,
    ) -> Behavior:
        return Behavior(
            step_type=step_type,
            step_name=step_type.value,
            properties=dict(properties or {}),
            meta=dict(meta or {}),
            input=input,
            output=output,
            agent_key=self.agent_key,
            task_id=task_id,
            timestamp=self.clock(),
        )

    def _take_marker(self, handle: _TaskHandle, marker: Behavior) -> Decision:
        """Decide on a task marker a policy may refuse (start, end, idle) and record it:
        blocked (raising BlockedError; a marker has no one to ask for approval) or completed
        (warning if asked to)."""
        decision = self._decide(handle, marker)
        if decision.action is Action.block or decision.action is Action.approve:
            self._record(handle, marker._evolve(status=Status.blocked), decision)
            raise BlockedError(decision, marker)
        self._record(handle, marker._evolve(status=Status.completed), decision)
        if decision.action is Action.warn:
            self._warn(decision, marker)
        return decision

    def _record(self, handle: _TaskHandle, behavior: Behavior, decision: Decision | None) -> None:
        try:
            with self._lock:
                handle.engine.record(behavior)
        except Exception as exc:  # never lose the trace because a monitor broke
            logger.error("pathguard could not update its monitors: %r", exc, exc_info=exc)
        if handle.chain is not None:
            # The chain writes to the sinks under its own lock, so lines stay in seq order.
            handle.chain.append(behavior, decision)

    def _close(self, handle: _TaskHandle, final: Behavior, decision: Decision) -> None:
        self._record(handle, final, decision)
        with self._lock:
            handle.engine.end_task(handle.task_id)
        self._current.set(handle.parent)

    def _require_task(self, what: str) -> _TaskHandle:
        handle = self._current.get()
        if handle is None:
            raise NoActiveTaskError(
                f"guard.{what}() was called with no task open in this context; open one with "
                "guard.start_task() or `with guard.task():`."
            )
        return handle

    # -- resources ------------------------------------------------------------------------
    def add_sink(self, sink: TraceSink) -> None:
        """Send trace records to another sink (for tasks started from now on)."""
        self._sinks.append(sink)

    def remove_sink(self, sink: TraceSink) -> None:
        """Stop sending trace records to a sink (it is flushed, not closed)."""
        self._sinks.remove(sink)
        sink.flush()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every trace record handed to a sink is written; with api_url, also
        until the platform has it (at most `timeout` seconds). True when all arrived."""
        for sink in self._sinks:
            sink.flush()
        if self.trace_shipper is None:
            return True
        return self.trace_shipper.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush and close the trace sinks; with api_url, try a last shipment (at most
        `timeout` seconds; what does not arrive stays in the spool) and stop the threads."""
        if self.trace_shipper is not None:
            self.trace_shipper.flush(timeout)
            self.trace_shipper.close()
        if self.policy_sync is not None:
            self.policy_sync.stop()
        for sink in self._sinks:
            sink.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _merge(before: Decision, after: Decision) -> Decision:
    if not after.violations and not after.shadow:
        return before
    return Decision.from_violations(
        [*before.violations, *before.shadow, *after.violations, *after.shadow],
        before.evaluated + after.evaluated,
    )


class _TaskScope:
    """`with guard.task():` / `async with guard.task():`."""

    __slots__ = ("_args", "_guard", "task_id")

    def __init__(
        self,
        guard: Guard,
        task_id: str | None,
        context: Mapping[str, Any] | None,
        properties: Mapping[str, Any] | None,
        meta: Mapping[str, Any] | None,
    ) -> None:
        self._guard = guard
        self._args = (task_id, context, properties, meta)
        self.task_id: str | None = None

    def __enter__(self) -> str:
        task_id, context, properties, meta = self._args
        self.task_id = self._guard.start_task(
            task_id, context=context, properties=properties, meta=meta
        )
        return self.task_id

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._guard.error_task(exc)
            return
        try:
            self._guard.end_task()
        except BlockedError as blocked:
            # The end was refused by a policy that targets task.end: close the task as an
            # error so that it does not stay open, and tell the caller.
            self._guard.error_task(blocked)
            raise

    async def __aenter__(self) -> str:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
