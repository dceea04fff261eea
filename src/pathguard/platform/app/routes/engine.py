"""The engine as a service (spec/platform.md §3), for agents not written in Python.

- `POST /v1/evaluate`: decide on an intended step (or, with `status: completed`, on a step's
  output) from the task's path so far. Changes nothing.
- `POST /v1/record`: append a completed, failed or blocked step to the task. The server
  decides on it as it would have before the step ran, builds the trace record itself (next
  seq, linked to the stored head) and stores it through the trace ingest path, so the chain
  stays verifiable and its decision raises incidents like an SDK batch would.
- `POST /v1/tasks/{id}/end`: record `task.end` (or `task.error` with `error`). A policy that
  targets `task.end` may refuse it: the marker is then recorded as blocked and the task stays
  open.

The server keeps no state between requests: each decision is made by an engine rebuilt from
what is stored (`pathguard.platform.engine_service`), the task's records replayed in order,
with a per-process cache that is caught up from the database and never trusted over it.
Policies kept per agent (`rate_limit` with `per: agent`) count the agent's other tasks too,
whether their records came through `/v1/record` or through SDK batches on `/v1/traces`: the
engine observes the stored records each such policy can still count (its step types, within
its `window_seconds` before the step's timestamp), so the service decides as one in-process
engine that had recorded all of the agent's tasks would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.orm import Session, sessionmaker

from pathguard.decisions import Action, Decision
from pathguard.engine import PolicyEngine
from pathguard.errors import InvalidBehaviorError
from pathguard.platform.app.auth import Credentials, require_principal
from pathguard.platform.app.routes._common import AUTH_ERRORS, Sessions
from pathguard.platform.app.routes.bundle import BundleConflictError, effective_policy_set
from pathguard.platform.app.schemas import ErrorOut
from pathguard.platform.engine_service import (
    CacheKey,
    EngineCache,
    ReplayedTask,
    UnreplayableError,
    registration_of,
    task_engine,
)
from pathguard.platform.store import (
    IngestError,
    NotFoundError,
    get_agent,
    get_task,
    ingest_traces,
    policy_sets_for_agent,
)
from pathguard.trace import TraceRecord
from pathguard.vocabulary import Behavior, Status, StepType

__all__ = [
    "EvaluateIn",
    "RecordIn",
    "RecordOut",
    "TaskEndIn",
    "router",
]

router = APIRouter(tags=["engine"], responses=AUTH_ERRORS)

# A record lost to a concurrent writer of the same task is decided and linked again.
_ATTEMPTS: Final = 5
_LATEST_TIMESTAMP: Final = 253_402_300_799.0  # 9999-12-31T23:59:59Z

_Key = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00]*$")]
_Name = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00]*$")]
_Timestamp = Annotated[
    float | None,
    Field(
        default=None,
        ge=0,
        le=_LATEST_TIMESTAMP,
        allow_inf_nan=False,
        description="Seconds since 1970 (UTC); the server's clock when left out.",
    ),
]


# -- bodies -----------------------------------------------------------------------------------


class _BehaviorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_key: _Key | None = Field(
        default=None, description="The agent; an agent key may leave it out, an admin key not."
    )
    task_id: _Key
    step_type: _Name = Field(description="`step.exec`, `step.resource`, `task.start`, ...")
    verb: _Name | None = None
    step_name: _Name | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    input: Any = None
    output: Any = None
    meta: dict[str, Any] = Field(default_factory=dict)
    timestamp: _Timestamp = None


class EvaluateIn(_BehaviorIn):
    """An intended step; `status: completed` asks the policies that read a step's output."""

    status: Literal["intended", "completed"] = "intended"


class RecordIn(_BehaviorIn):
    """A step that ran (`completed`, `failed`) or was refused (`blocked`)."""

    status: Literal["completed", "failed", "blocked"] = "completed"


class TaskEndIn(BaseModel):
    """How a task ended: normally, or with `error` (recorded as `task.error`)."""

    model_config = ConfigDict(extra="forbid")

    agent_key: _Key | None = None
    output: Any = None
    error: Annotated[str, StringConstraints(max_length=1000)] | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)
    timestamp: _Timestamp = None


class EvaluateOut(BaseModel):
    """A decision (`Decision.to_dict()`) with its explanation, one line per policy."""

    action: Literal["allow", "warn", "approve", "block"]
    risk_score: float
    violations: list[dict[str, Any]]
    shadow: list[dict[str, Any]]
    evaluated: list[str]
    explain: str


class RecordOut(BaseModel):
    """The stored trace record (with its decision), the chain tail and the task's status."""

    record: dict[str, Any]
    explain: str
    next_seq: int
    head_hash: str
    task_status: str


# -- the task's engine -------------------------------------------------------------------------


_CACHE_LOCK: Final = threading.Lock()


def _cache(request: Request) -> EngineCache:
    state = request.app.state
    cache: EngineCache | None = getattr(state, "policy_engines", None)
    if cache is None:
        with _CACHE_LOCK:
            cache = getattr(state, "policy_engines", None)
            if cache is None:
                cache = state.policy_engines = EngineCache()
    return cache


def _engine_for(
    session: Session, cache: EngineCache, agent_key: str, task_id: str, now: float
) -> tuple[CacheKey, ReplayedTask]:
    """The task's engine, caught up with what is stored, for a step stamped `now`."""
    try:
        policy_set = effective_policy_set(agent_key, policy_sets_for_agent(session, agent_key))
    except BundleConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    registration = registration_of(get_agent(session, agent_key))
    try:
        return task_engine(session, cache, policy_set, registration, agent_key, task_id, now)
    except UnreplayableError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None


# -- requests -----------------------------------------------------------------------------------


def _acting_agent(
    session: Session, credentials: HTTPAuthorizationCredentials | None, named: str | None
) -> str:
    principal = require_principal(session, credentials)
    agent_key = named if named is not None else principal.agent_key
    if agent_key is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail="An admin key acts for any agent, so name it: add agent_key to the body.",
        )
    if not principal.may_act_for(agent_key):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=(
                f"This key belongs to agent {principal.agent_key!r} and may not act for agent "
                f"{agent_key!r}; use that agent's own key."
            ),
        )
    return agent_key


def _now(timestamp: float | None) -> float:
    """A step's time: the one it was sent with, else the server's clock."""
    return time.time() if timestamp is None else timestamp


def _behavior(body: _BehaviorIn, agent_key: str, status_: str, now: float) -> Behavior:
    try:
        return Behavior(
            step_type=StepType.parse(body.step_type),
            verb=body.verb,  # type: ignore[arg-type]  # parsed and checked by Behavior
            step_name=body.step_name,
            properties=body.properties,
            input=body.input,
            output=body.output,
            meta=body.meta,
            agent_key=agent_key,
            task_id=body.task_id,
            status=Status(status_),
            timestamp=now,
        )
    except InvalidBehaviorError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None


def _decide(engine: PolicyEngine, behavior: Behavior) -> Decision:
    """What the engine says of a step as it was about to run, and of its output if it ran."""
    before = engine.evaluate(behavior.replace(status=Status.intended))
    if behavior.status is not Status.completed or not engine.has_output_policies(behavior):
        return before
    after = engine.evaluate_output(behavior)
    if not after.violations and not after.shadow:
        return before
    return Decision.from_violations(
        [*before.violations, *before.shadow, *after.violations, *after.shadow],
        before.evaluated + after.evaluated,
    )


def _explained(decision: Decision) -> dict[str, Any]:
    return {**decision.to_dict(), "explain": decision.explain()}


@router.post(
    "/v1/evaluate",
    response_model=EvaluateOut,
    responses={
        409: {"model": ErrorOut, "description": "The policies or the stored chain are unusable."},
        422: {"model": ErrorOut, "description": "The behaviour is not a valid step."},
    },
)
def evaluate(
    body: EvaluateIn, request: Request, sessions: Sessions, credentials: Credentials
) -> dict[str, Any]:
    """Decide on an intended step from the task's recorded path; stores nothing."""
    cache = _cache(request)
    now = _now(body.timestamp)
    with sessions.begin() as session:
        agent_key = _acting_agent(session, credentials, body.agent_key)
        behavior = _behavior(body, agent_key, body.status, now)
        key, replayed = _engine_for(session, cache, agent_key, body.task_id, now)
    if behavior.status is Status.completed:
        decision = replayed.engine.evaluate_output(behavior)
    else:
        decision = replayed.engine.evaluate(behavior)
    cache.put(key, replayed)
    return _explained(decision)


_Build = Callable[[str, PolicyEngine], tuple[Behavior, Decision]]


def _append(
    sessions: sessionmaker[Session],
    cache: EngineCache,
    credentials: HTTPAuthorizationCredentials | None,
    named: str | None,
    task_id: str,
    now: float,
    build: _Build,
) -> dict[str, Any]:
    """Decide on, link and store one behaviour stamped `now`; retried when another writer
    got there first.

    `build(agent_key, engine)` returns the behaviour to record, or raises HTTPException.
    """
    for attempt in range(_ATTEMPTS):
        try:
            with sessions.begin() as session:
                agent_key = _acting_agent(session, credentials, named)
                task = get_task(session, agent_key, task_id)
                if task is not None and task.status != "running":
                    raise HTTPException(
                        status.HTTP_409_CONFLICT,
                        detail=(
                            f"Task {task_id!r} has ended ({task.status}); record the steps of "
                            "new work under a new task_id."
                        ),
                    )
                key, replayed = _engine_for(session, cache, agent_key, task_id, now)
                behavior, decision = build(agent_key, replayed.engine)
                record = TraceRecord.from_behavior(
                    behavior, decision=decision, seq=replayed.next_seq, prev_hash=replayed.head
                )
                ingest_traces(session, agent_key, [record.to_dict()])
                replayed.engine.record(record.to_behavior())
                replayed.next_seq += 1
                replayed.head = record.hash
                session.flush()
                stored = get_task(session, agent_key, task_id)
                task_status = "running" if stored is None else stored.status
        except IngestError as exc:
            if exc.kind in ("chain", "conflict") and attempt < _ATTEMPTS - 1:
                continue
            raise
        if task_status == "running":
            cache.put(key, replayed)
        return {
            "record": record.to_dict(),
            "explain": decision.explain(),
            "next_seq": replayed.next_seq,
            "head_hash": replayed.head,
            "task_status": task_status,
        }
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


_WRITE_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    409: {
        "model": ErrorOut,
        "description": "The task has ended, or the policies or stored chain are unusable.",
    },
    422: {"model": ErrorOut, "description": "The behaviour is not a valid step."},
}


@router.post("/v1/record", response_model=RecordOut, responses=_WRITE_ERRORS)
def record(
    body: RecordIn, request: Request, sessions: Sessions, credentials: Credentials
) -> dict[str, Any]:
    """Append a completed, failed or blocked step to its task's stored chain."""

    now = _now(body.timestamp)

    def build(agent_key: str, engine: PolicyEngine) -> tuple[Behavior, Decision]:
        behavior = _behavior(body, agent_key, body.status, now)
        return behavior, _decide(engine, behavior)

    return _append(sessions, _cache(request), credentials, body.agent_key, body.task_id, now, build)


TaskIdPath = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^\x00]*$")]


@router.post(
    "/v1/tasks/{task_id}/end",
    response_model=RecordOut,
    tags=["tasks"],
    responses={**_WRITE_ERRORS, 404: {"model": ErrorOut, "description": "No such task."}},
)
def end_task(
    task_id: TaskIdPath,
    request: Request,
    sessions: Sessions,
    credentials: Credentials,
    body: TaskEndIn | None = None,
) -> dict[str, Any]:
    """Record the end of a task (`task.end`, or `task.error` when `error` is given).

    A policy targeting `task.end` may refuse it: the marker is recorded as blocked and the
    task stays open (`task_status: running`). `task.error` cannot be refused.
    """
    end = body if body is not None else TaskEndIn()
    now = _now(end.timestamp)

    def build(agent_key: str, engine: PolicyEngine) -> tuple[Behavior, Decision]:
        task = engine.task(task_id)
        if task is None or task.position == 0:
            raise NotFoundError(
                f"Agent {agent_key!r} has no task {task_id!r}; record its steps with "
                "POST /v1/record before ending it."
            )
        step_type = StepType.task_end if end.error is None else StepType.task_error
        marker = Behavior(
            step_type=step_type,
            step_name=step_type.value,
            properties=end.properties,
            meta=end.meta,
            output=end.output if end.error is None else {"message": end.error},
            agent_key=agent_key,
            task_id=task_id,
            timestamp=now,
        )
        decision = engine.evaluate(marker)
        refused = step_type is StepType.task_end and decision.action in (
            Action.block,
            Action.approve,
        )
        return marker.replace(status=Status.blocked if refused else Status.completed), decision

    return _append(sessions, _cache(request), credentials, end.agent_key, task_id, now, build)
