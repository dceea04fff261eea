"""The engine service's state: a task's `PolicyEngine`, rebuilt from what is stored.

The server keeps no state between requests, so the engine that decides on a step of a task
is rebuilt from the database: the agent's effective policy set and registration, then the
task's stored records replayed in seq order. Each process keeps the engines it built in an
LRU (`EngineCache`) and catches a cached one up with the records stored since, after
checking that they continue the chain it saw; the stored chain, not the cache, is the truth.

Monitors kept per agent (`rate_limit` with `per: agent`, and combinators of such rules) also
see the agent's other tasks, as they do in one in-process engine that records every task of
the agent. Replaying the agent's whole history for each request would cost more with every
step, so the server reads only what those monitors can still count (`agent_window`): for
each, the other tasks' stored records of the step types it watches, completed ones unless
it counts attempts, stamped within its `window_seconds` before the step's own timestamp.
Records from `POST /v1/record` and from SDK batches on `POST /v1/traces` count alike. An
entry older than a rate limit's window cannot change its decision, so the decision is the
one an engine that had recorded all of the agent's history would make.

A cached engine keeps the keys (task, seq) of the other tasks' records it has observed: a
later request reads the keys in the windows again but fetches and observes only the records
it has not seen, so each record counts once; a key is forgotten two windows after its
record's time. A step stamped further back than that
(more than the shortest window before the latest step served) rebuilds the engine. A
per-agent rule whose window the server cannot tell (a custom rule) reads the agent's whole
stored history.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import math
import threading
from typing import Final

from sqlalchemy.orm import Session

from pathguard.canonical import canonical_hash
from pathguard.engine import PolicyEngine
from pathguard.errors import InvalidBehaviorError, PathguardError, TraceIntegrityError
from pathguard.platform.models import Agent
from pathguard.platform.store import (
    RecordSlice,
    agent_record_keys,
    agent_records,
    get_task,
    task_records,
)
from pathguard.policies import PolicySet
from pathguard.rules import Rule
from pathguard.rules.counting import RateLimit
from pathguard.rules.logic import AllOf, AnyOf, NotRule
from pathguard.trace import GENESIS, TraceRecord
from pathguard.vocabulary import AgentRegistration, Status

__all__ = [
    "AgentWindow",
    "CacheKey",
    "EngineCache",
    "Reach",
    "ReplayedTask",
    "UnreplayableError",
    "agent_window",
    "registration_of",
    "task_engine",
]

_PAGE: Final = 10_000
_KEYS_PER_QUERY: Final = 500
# Stored times are rounded to the microsecond: read a little more than the window, then
# compare the records' own float timestamps.
_MARGIN: Final = 1.0

CacheKey = tuple[str, str, str, str]  # agent, task, policy set digest, registration digest
_RecordKey = tuple[str, int]  # task id, seq


class UnreplayableError(PathguardError, ValueError):
    """Stored records cannot be replayed through the engine (a broken or unreadable chain)."""

    def __init__(self, task_id: str, why: str) -> None:
        super().__init__(
            f"The stored records of task {task_id!r} cannot be replayed ({why}); check the "
            "chain with GET /v1/audit/verify."
        )


# -- what per-agent monitors need -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Reach:
    """The stored records one per-agent monitor can still count at a time `now`: those of
    `step_types` (None: every type) stamped after `now - seconds` (None: ever), and only
    completed ones unless `attempts`."""

    step_types: frozenset[str] | None
    seconds: float | None
    attempts: bool

    def bound(self, now: float) -> float:
        return -math.inf if self.seconds is None else now - self.seconds

    def matches(self, record: TraceRecord) -> bool:
        """Whether the monitor counts the record at some time (its type and status)."""
        return (self.step_types is None or record.step_type in self.step_types) and (
            self.attempts or record.status == _COMPLETED
        )


@dataclasses.dataclass(frozen=True, slots=True)
class AgentWindow:
    """What the per-agent monitors of a policy set need from an agent's other tasks."""

    reaches: tuple[Reach, ...]

    @property
    def shortest(self) -> float:
        """The shortest bounded window, in seconds (infinite when none is bounded)."""
        return min((r.seconds for r in self.reaches if r.seconds is not None), default=math.inf)

    def wants(self, record: TraceRecord, now: float) -> bool:
        """Whether some monitor can count the record in a decision at `now`."""
        return any(r.matches(record) and record.timestamp > r.bound(now) for r in self.reaches)

    def expiry(self, record: TraceRecord) -> float:
        """When the record may be forgotten: two windows after its time, for every monitor
        that counts it."""
        return max(
            (
                math.inf if r.seconds is None else record.timestamp + 2 * r.seconds
                for r in self.reaches
                if r.matches(record)
            ),
            default=-math.inf,
        )

    def slices(self, now: float) -> list[RecordSlice]:
        """The stored records to read for a decision at `now`, as database conditions."""
        return [
            RecordSlice(
                step_types=r.step_types,
                after=_stored_time(r.bound(now)),
                statuses=None if r.attempts else (_COMPLETED,),
            )
            for r in self.reaches
        ]


_COMPLETED: Final = Status.completed.value


def _stored_time(bound: float) -> dt.datetime | None:
    """The stored-time lower bound for records stamped after `bound`, or None for none."""
    earliest = bound - _MARGIN
    return dt.datetime.fromtimestamp(earliest, dt.UTC) if earliest > 0 else None


def _seconds(rule: Rule) -> float | None:
    """How far back a per-agent monitor looks, in seconds; None when that is unknown."""
    if isinstance(rule, RateLimit):
        return rule.window
    if isinstance(rule, AllOf | AnyOf | NotRule):
        spans = [_seconds(child) for child in rule.children if child.stateful]
        if any(span is None for span in spans):
            return None
        return max((span for span in spans if span is not None), default=0.0)
    return None


def _attempts(rule: Rule) -> bool:
    """Whether a per-agent monitor may count entries that did not complete."""
    if isinstance(rule, RateLimit):
        return rule.count_attempts
    if isinstance(rule, AllOf | AnyOf | NotRule):
        return any(_attempts(child) for child in rule.children if child.stateful)
    return True


def agent_window(policy_set: PolicySet) -> AgentWindow | None:
    """What the per-agent monitors of `policy_set` need, or None when it has none."""
    reaches: set[Reach] = set()
    for policy in policy_set.policies:
        if not policy.enabled or policy.scope == "agent_registration":
            continue
        rule = policy.build_rule()
        if rule.stateful and rule.state_per == "agent":
            watched = rule.watches()
            reaches.add(
                Reach(
                    step_types=None if watched is None else frozenset(t.value for t in watched),
                    seconds=_seconds(rule),
                    attempts=_attempts(rule),
                )
            )
    if not reaches:
        return None
    return AgentWindow(reaches=tuple(sorted(reaches, key=repr)))


# -- the per-process cache --------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class ReplayedTask:
    """An engine that has recorded a task's records up to `next_seq - 1`, ending at `head`.

    With per-agent monitors (`window`), it has also observed the other tasks' records listed
    in `seen`, each until its expiry; the list was last pruned at `pruned_at`, so the engine
    serves steps stamped no earlier than the shortest window before that.
    """

    engine: PolicyEngine
    next_seq: int
    head: str
    window: AgentWindow | None = None
    seen: dict[_RecordKey, float] = dataclasses.field(default_factory=dict)
    pruned_at: float = -math.inf


class EngineCache:
    """A bounded LRU of replayed engines. A request takes an engine out (so no two requests
    share one) and puts it back only when what it did was committed."""

    def __init__(self, maxsize: int = 256) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1.")
        self.maxsize = maxsize
        self._entries: collections.OrderedDict[CacheKey, ReplayedTask] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, key: CacheKey) -> ReplayedTask | None:
        with self._lock:
            return self._entries.pop(key, None)

    def put(self, key: CacheKey, replayed: ReplayedTask) -> None:
        with self._lock:
            current = self._entries.get(key)
            if current is not None and current.next_seq > replayed.next_seq:
                return  # another request got further along this task's chain
            self._entries[key] = replayed
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)


# -- rebuilding -------------------------------------------------------------------------------


def registration_of(agent: Agent | None) -> AgentRegistration | None:
    """The stored registration of an agent as the engine takes it."""
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


def _parsed(task_id: str, dicts: list[dict[str, object]]) -> list[TraceRecord]:
    try:
        return [TraceRecord.from_dict(d) for d in dicts]
    except TraceIntegrityError as exc:
        raise UnreplayableError(task_id, str(exc)) from None


def _stored(session: Session, agent_key: str, task_id: str, after_seq: int) -> list[TraceRecord]:
    """The task's stored records after `after_seq`, in seq order, page by page."""
    out: list[TraceRecord] = []
    while True:
        page = task_records(session, agent_key, task_id, after_seq=after_seq, limit=_PAGE)
        out.extend(_parsed(task_id, page))
        if len(page) < _PAGE:
            return out
        after_seq = out[-1].seq


def _replay(replayed: ReplayedTask, records: list[TraceRecord], task_id: str) -> None:
    for record in records:
        if record.seq != replayed.next_seq or record.prev_hash != replayed.head:
            raise UnreplayableError(task_id, f"the record at seq {record.seq} breaks the chain")
        try:
            behavior = record.to_behavior()
        except (InvalidBehaviorError, ValueError) as exc:
            raise UnreplayableError(task_id, str(exc)) from None
        replayed.engine.record(behavior)
        replayed.next_seq += 1
        replayed.head = record.hash


def _observe_other_tasks(
    session: Session, replayed: ReplayedTask, agent_key: str, task_id: str, now: float
) -> None:
    """Have the per-agent monitors observe the agent's other tasks' records that can still
    count at `now` and that this engine has not observed yet."""
    window = replayed.window
    if window is None:
        return
    keys = agent_record_keys(session, agent_key, window.slices(now), exclude_task_id=task_id)
    seen = replayed.seen
    missing = [key for key in keys if key not in seen]
    records: list[TraceRecord] = []
    for start in range(0, len(missing), _KEYS_PER_QUERY):
        for d in agent_records(session, agent_key, missing[start : start + _KEYS_PER_QUERY]):
            [record] = _parsed(str(d.get("task_id")), [d])
            if window.wants(record, now):
                records.append(record)
    # In time order, as one engine recording the agent's tasks as they ran would see them.
    records.sort(key=lambda r: (r.timestamp, r.task_id or "", r.seq))
    engine = replayed.engine
    opened: set[str | None] = set()
    for record in records:
        try:
            behavior = record.to_behavior()
        except (InvalidBehaviorError, ValueError) as exc:
            raise UnreplayableError(record.task_id or "", str(exc)) from None
        # Recording it also opens the other task in this engine; only the per-agent state
        # is wanted, so that task is dropped again below.
        engine.record(behavior)
        opened.add(record.task_id)
        seen[(record.task_id or "", record.seq)] = window.expiry(record)
    for other_task in opened:
        engine.end_task(other_task)
    if now > replayed.pruned_at:
        # Forget observed records once no step stamped within the shortest window of `now`
        # could count them (see `_caught_up`), so the list stays as long as the windows.
        replayed.pruned_at = now
        replayed.seen = {key: expiry for key, expiry in seen.items() if expiry > now}


def _caught_up(
    session: Session,
    cached: ReplayedTask,
    agent_key: str,
    task_id: str,
    stored: tuple[int, str],
    now: float,
) -> bool:
    """Bring a cached engine up to the stored chain; False when it must be rebuilt."""
    if cached.window is not None and now < cached.pruned_at - cached.window.shortest:
        # Records this engine observed may have been forgotten while they could still
        # count at `now`: observing them again would count them twice.
        return False
    stored_next, stored_head = stored
    if cached.next_seq == stored_next and cached.head == stored_head:
        return True
    if cached.next_seq < stored_next:
        newer = _stored(session, agent_key, task_id, cached.next_seq - 1)
        if newer and newer[0].prev_hash == cached.head:
            _replay(cached, newer, task_id)
            return True
    return False


def task_engine(
    session: Session,
    cache: EngineCache,
    policy_set: PolicySet,
    registration: AgentRegistration | None,
    agent_key: str,
    task_id: str,
    now: float,
) -> tuple[CacheKey, ReplayedTask]:
    """The engine of a task, ready to decide on a step stamped `now`: from the cache caught
    up with the stored records, or built afresh. Raises UnreplayableError."""
    fingerprint = "" if registration is None else canonical_hash(registration.to_dict())
    key = (agent_key, task_id, policy_set.digest, fingerprint)
    task = get_task(session, agent_key, task_id)
    stored = (0, GENESIS) if task is None else (task.step_count, task.head_hash)
    replayed = cache.take(key)
    if replayed is None or not _caught_up(session, replayed, agent_key, task_id, stored, now):
        engine = PolicyEngine(policy_set)
        if registration is not None:
            engine.register(registration)
        engine.start_task(task_id, agent_key=agent_key)
        replayed = ReplayedTask(
            engine=engine, next_seq=0, head=GENESIS, window=agent_window(policy_set)
        )
        _replay(replayed, _stored(session, agent_key, task_id, -1), task_id)
    _observe_other_tasks(session, replayed, agent_key, task_id, now)
    return key, replayed
