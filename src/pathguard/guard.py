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
    connect,
    env,
    fail_mode_option,
    history_limit_option,
    incident_webhook_option,
    limits_from_env,
    platform_options,
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
    from pathguard.remote.link import PlatformLink
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
        # so an open task's path history is never cut in two (a task started before the
        # first platform set arrived moves to it with its history: see Guard._move_task).
        self.engine = engine


class Guard:
    """Governs one agent: checks each step against path policies before it runs.

    Every option can also be set with a `PATHGUARD_<OPTION>` environment variable (an
    explicit argument wins); docs/reference/guard.md lists them.

    With `api_url`, policies come from the platform (`guard.policy_sync`) and the trace goes
    to an on-disk spool that `guard.trace_shipper` ships in the background (see
    `pathguard.remote.link`). The agent's thread then only queues each step for the trace: a
    background thread builds the hash-chained records. A process killed without warning loses
    what is still queued (at most `trace_queue_size` records); `flush()` and `close()` make it
    durable. Without `api_url`, records reach the sinks before the step returns.

    With `incident_webhook`, every warn, block and denied approval is also POSTed there, from
    a background thread (`pathguard.remote.webhook`).
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
        trace_queue_size: int | Unset = UNSET,
        incident_webhook: str | Unset | None = UNSET,
        incident_webhook_secret: str | Unset | None = UNSET,
    ) -> None:
        key = agent_key or env("AGENT_KEY")
        if not key:
            raise ConfigurationError(
                "Guard needs an agent key: pass Guard(agent_key='my-agent') or set "
                "PATHGUARD_AGENT_KEY."
            )
        self.agent_key: str = key
        self.api_url, self.api_key, source = platform_options(api_url, api_key, policies)
        self.fail_mode = fail_mode_option(fail_mode)
        self.engine = PolicyEngine(
            None if source is None else policy_source(source),
            history_limit=history_limit_option(history_limit),
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
        self._incidents = incident_webhook_option(
            self.agent_key, incident_webhook, incident_webhook_secret
        )
        # How a step reaches the trace: written now, or queued for the link's writer thread.
        self._write: Callable[[HashChain, Behavior, Decision | None], None] = self._write_now
        self._link: PlatformLink | None = None
        if self.api_url:
            self._link = connect(
                self,
                cache_dir=cache_dir,
                policy_ttl=policy_ttl,
                queue_size=trace_queue_size,
                after_write=None if self._incidents is None else self._report,
            )
            if self._link.writer is not None:
                self._write = self._link.writer.put

    @property
    def policy_sync(self) -> PolicySync | None:
        """The platform policy sync (with `api_url`), else None."""
        return None if self._link is None else self._link.policy_sync

    @property
    def trace_shipper(self) -> TraceShipper | None:
        """The platform trace shipper (with `api_url`), else None."""
        return None if self._link is None else self._link.trace_shipper

    def status(self) -> dict[str, Any]:
        """The platform sync state: `state` is "enforcing", "stale", "unavailable" or "local";
        with an incident webhook, `incidents` counts its deliveries."""
        if self._link is None:
            status: dict[str, Any] = {"state": "local", "fail_mode": self.fail_mode}
        else:
            status = self._link.status()
        if self._incidents is not None:
            status["incidents"] = self._incidents.status()
        return status

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
                if self._incidents is not None:
                    self._incidents.report(None, decision, denied=True)
                raise ApprovalDeniedError(
                    decision,
                    None,
                    f"The registration of agent {self.agent_key!r} needed an approval that was "
                    f"not given ({'; '.join(request.reasons)}).",
                )
        elif decision.action is Action.block or decision.action is Action.warn:
            if self._incidents is not None:
                self._incidents.report(None, decision)
            if decision.action is Action.block:
                raise BlockedError(decision, None)
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
        chain = None
        if self._sinks:
            # With a trace writer, records reach the sinks through it, not through the chain.
            queued = self._link is not None and self._link.writer is not None
            chain = HashChain(sinks=() if queued else self._sinks)
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
                handle.engine.end_task(task_id)  # the task may have moved to a new engine
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
        if self._link is not None:
            self._link.trace_shipper.wake()  # its thread drains the queue before shipping

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
        link = self._link
        if link is not None:
            if not link.loaded:
                blocked = link.no_policies(behavior)
                if blocked is not None:
                    return blocked
            if handle.engine is link.initial_engine and self.engine is not handle.engine:
                self._move_task(handle, link.initial_engine)
        try:
            with self._lock:
                return handle.engine.evaluate(behavior)
        except Exception as exc:  # the engine itself failed: fail_mode decides
            # ... except for the end of a task: an engine failure must not hold it open.
            closing = behavior.step_type in (StepType.task_end, StepType.task_error)
            return self._engine_failure(exc, fail_open=closing)

    def _move_task(self, handle: _TaskHandle, initial: PolicyEngine) -> None:
        """Move a task started before the first platform set arrived onto the engine now in
        force, replaying its path so far (the last `history_limit` entries), so that path
        rules see its earlier steps: it must not run on with no policies at all."""
        with self._lock:
            if handle.engine is not initial:
                return  # another thread of the task moved it
            engine = self.engine
            held = initial.end_task(handle.task_id)
            engine.start_task(handle.task_id, agent_key=self.agent_key)
            try:
                for behavior in () if held is None else held.history:
                    engine.record(behavior)
            except Exception as exc:  # as in _record: a broken monitor must not stop the task
                logger.error("pathguard could not update its monitors: %r", exc, exc_info=exc)
            handle.engine = engine

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
        chain = handle.chain
        if chain is not None:
            self._write(chain, behavior, decision)
        elif self._incidents is not None and decision is not None:
            self._incidents.report(behavior, decision)

    def _write_now(self, chain: HashChain, behavior: Behavior, decision: Decision | None) -> None:
        # The chain writes to the sinks under its own lock, so lines stay in seq order.
        record = chain.append(behavior, decision)
        if self._incidents is not None and decision is not None:
            self._incidents.report(behavior, decision, record.seq)

    def _report(self, behavior: Behavior, decision: Decision | None, seq: int) -> None:
        """The trace writer's hook: report an incident once its record has a seq."""
        if self._incidents is not None and decision is not None:
            self._incidents.report(behavior, decision, seq)

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
        """Stop sending trace records to a sink (it is flushed, not closed); with api_url,
        the records queued so far are written first."""
        if self._link is not None:
            self._link.drain()
        self._sinks.remove(sink)
        sink.flush()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every trace record is written to the sinks; with api_url, also until
        the platform has it, and with an incident webhook until the incidents were sent (at
        most `timeout` seconds for each). True when all arrived."""
        if self._link is not None:
            self._link.drain()
        for sink in self._sinks:
            sink.flush()
        arrived = True
        if self._link is not None:
            arrived = self._link.flush(timeout)
        if self._incidents is not None:
            arrived = self._incidents.flush(timeout) and arrived
        return arrived

    def close(self, timeout: float = 5.0) -> None:
        """Flush and close the trace sinks; with api_url, write the queued records, try a
        last shipment (at most `timeout` seconds; what does not arrive stays in the spool)
        and stop the threads; send the incidents still queued (at most `timeout` seconds)."""
        if self._link is not None:
            self._link.close(timeout)
        if self._incidents is not None:
            self._incidents.close(timeout)
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
