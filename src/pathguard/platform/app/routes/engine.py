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

The server keeps no state between requests, so a task's engine state is rebuilt from what is
stored: the agent's effective policy set, its stored registration and the task's records,
replayed through a fresh `PolicyEngine`. Each process keeps the engines it built in an LRU
(`EngineCache`) and catches a cached one up with the records stored since, after checking
that they continue the chain it saw; the stored chain, not the cache, is the truth.

Known limit: monitors kept per agent (`per: agent` counting rules) see only the records of
the task being evaluated, not the agent's other tasks.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.orm import Session, sessionmaker

from pathguard.canonical import canonical_hash
from pathguard.decisions import Action, Decision
from pathguard.engine import PolicyEngine
from pathguard.errors import InvalidBehaviorError, TraceIntegrityError
from pathguard.platform.app.auth import Credentials, require_principal
from pathguard.platform.app.routes._common import AUTH_ERRORS, Sessions
from pathguard.platform.app.routes.bundle import BundleConflictError, effective_policy_set
from pathguard.platform.app.schemas import ErrorOut
from pathguard.platform.models import Agent
from pathguard.platform.store import (
    IngestError,
    NotFoundError,
    get_agent,
    get_task,
    ingest_traces,
    policy_sets_for_agent,
    task_records,
)
from pathguard.trace import GENESIS, TraceRecord
from pathguard.vocabulary import AgentRegistration, Behavior, Status, StepType

__all__ = [
    "EngineCache",
    "EvaluateIn",
    "RecordIn",
    "RecordOut",
    "ReplayedTask",
    "TaskEndIn",
    "router",
]

router = APIRouter(tags=["engine"], responses=AUTH_ERRORS)

# A record lost to a concurrent writer of the same task is decided and linked again.
_ATTEMPTS: Final = 5
_PAGE: Final = 10_000
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


# -- per-process cache of replayed engines ------------------------------------------------------

_CacheKey = tuple[str, str, str, str]  # agent, task, policy set digest, registration digest


@dataclasses.dataclass(slots=True)
class ReplayedTask:
    """An engine that has recorded a task's records up to `next_seq - 1`, ending at `head`."""

    engine: PolicyEngine
    next_seq: int
    head: str


class EngineCache:
    """A bounded LRU of replayed engines. A request takes an engine out (so no two requests
    share one) and puts it back only when what it did was committed."""

    def __init__(self, maxsize: int = 256) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1.")
        self.maxsize = maxsize
        self._entries: collections.OrderedDict[_CacheKey, ReplayedTask] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, key: _CacheKey) -> ReplayedTask | None:
        with self._lock:
            return self._entries.pop(key, None)

    def put(self, key: _CacheKey, replayed: ReplayedTask) -> None:
        with self._lock:
            current = self._entries.get(key)
            if current is not None and current.next_seq > replayed.next_seq:
                return  # another request got further along this task's chain
            self._entries[key] = replayed
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)


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


# -- rebuilding a task's engine -----------------------------------------------------------------


def _registration(agent: Agent | None) -> AgentRegistration | None:
    if agent is None:
        return None
    return AgentRegistration(
        agent_key=agent.key,
        name=agent.name,
        purpose=agent.purpose,
        owner=agent.owner,
        tools=tuple(str(t) for t in agent.tools),
        risk_classification=agent.risk_classification,  # type: ignore[arg-type]
        environment=agent.environment,
        metadata=agent.meta,
    )


def _stored(session: Session, agent_key: str, task_id: str, after_seq: int) -> list[TraceRecord]:
    """The task's stored records after `after_seq`, in seq order, page by page."""
    out: list[TraceRecord] = []
    while True:
        page = task_records(session, agent_key, task_id, after_seq=after_seq, limit=_PAGE)
        try:
            out.extend(TraceRecord.from_dict(d) for d in page)
        except TraceIntegrityError as exc:
            raise _unreplayable(task_id, str(exc)) from None
        if len(page) < _PAGE:
            return out
        after_seq = out[-1].seq


def _unreplayable(task_id: str, why: str) -> HTTPException:
    return HTTPException(
        status.HTTP_409_CONFLICT,
        detail=(
            f"The stored records of task {task_id!r} cannot be replayed ({why}); check the "
            "chain with GET /v1/audit/verify."
        ),
    )


def _replay(replayed: ReplayedTask, records: list[TraceRecord], task_id: str) -> None:
    for record in records:
        if record.seq != replayed.next_seq or record.prev_hash != replayed.head:
            raise _unreplayable(task_id, f"the record at seq {record.seq} breaks the chain")
        try:
            behavior = record.to_behavior()
        except (InvalidBehaviorError, ValueError) as exc:
            raise _unreplayable(task_id, str(exc)) from None
        replayed.engine.record(behavior)
        replayed.next_seq += 1
        replayed.head = record.hash


def _engine_for(
    session: Session, cache: EngineCache, agent_key: str, task_id: str
) -> tuple[_CacheKey, ReplayedTask]:
    """The task's engine, from the cache caught up with the stored chain, or built afresh."""
    try:
        policy_set = effective_policy_set(agent_key, policy_sets_for_agent(session, agent_key))
    except BundleConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    registration = _registration(get_agent(session, agent_key))
    fingerprint = "" if registration is None else canonical_hash(registration.to_dict())
    key = (agent_key, task_id, policy_set.digest, fingerprint)
    task = get_task(session, agent_key, task_id)
    stored_next, stored_head = (0, GENESIS) if task is None else (task.step_count, task.head_hash)
    cached = cache.take(key)
    if cached is not None:
        if cached.next_seq == stored_next and cached.head == stored_head:
            return key, cached
        if cached.next_seq < stored_next:
            newer = _stored(session, agent_key, task_id, cached.next_seq - 1)
            if newer and newer[0].prev_hash == cached.head:
                _replay(cached, newer, task_id)
                return key, cached
    engine = PolicyEngine(policy_set)
    if registration is not None:
        engine.register(registration)
    engine.start_task(task_id, agent_key=agent_key)
    fresh = ReplayedTask(engine=engine, next_seq=0, head=GENESIS)
    _replay(fresh, _stored(session, agent_key, task_id, -1), task_id)
    return key, fresh


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


def _behavior(body: _BehaviorIn, agent_key: str, status_: str) -> Behavior:
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
            timestamp=time.time() if body.timestamp is None else body.timestamp,
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
    with sessions.begin() as session:
        agent_key = _acting_agent(session, credentials, body.agent_key)
        behavior = _behavior(body, agent_key, body.status)
        key, replayed = _engine_for(session, cache, agent_key, body.task_id)
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
    build: _Build,
) -> dict[str, Any]:
    """Decide on, link and store one behaviour; retried when another writer got there first.

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
                key, replayed = _engine_for(session, cache, agent_key, task_id)
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

    def build(agent_key: str, engine: PolicyEngine) -> tuple[Behavior, Decision]:
        behavior = _behavior(body, agent_key, body.status)
        return behavior, _decide(engine, behavior)

    return _append(sessions, _cache(request), credentials, body.agent_key, body.task_id, build)


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
            timestamp=time.time() if end.timestamp is None else end.timestamp,
        )
        decision = engine.evaluate(marker)
        refused = step_type is StepType.task_end and decision.action in (
            Action.block,
            Action.approve,
        )
        return marker.replace(status=Status.blocked if refused else Status.completed), decision

    return _append(sessions, _cache(request), credentials, end.agent_key, task_id, build)
