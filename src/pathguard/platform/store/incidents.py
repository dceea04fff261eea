"""Incidents: raising them from a batch's decisions, counting their repeats, and moving them
through their statuses.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from pathguard.platform.models import INCIDENT_STATUSES, Incident, utcnow
from pathguard.platform.store._common import InvalidTransitionError, NotFoundError
from pathguard.trace import TraceRecord

if TYPE_CHECKING:
    from pathguard.platform.store.ingest import _TaskPlan

__all__ = [
    "IncidentChange",
    "get_incident",
    "list_incidents",
    "record_incident",
    "update_incident",
]

_SEVERITY_RANK: Final = {"low": 0, "medium": 1, "high": 2, "critical": 3}
_ACTION_RANK: Final = {"warn": 0, "approval_required": 1, "approval_denied": 2, "block": 3}
# Which status an incident may move to from each status (reopening is allowed).
_TRANSITIONS: Final = {
    "open": frozenset({"acknowledged", "resolved", "ignored"}),
    "acknowledged": frozenset({"resolved", "ignored", "open"}),
    "resolved": frozenset({"open"}),
    "ignored": frozenset({"open"}),
}


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class IncidentChange:
    """An incident a batch opened (`created`) or added repeats to."""

    id: int
    task_id: str | None
    policy_id: str
    created: bool


@dataclasses.dataclass(slots=True)
class _Seen:
    severity: str
    action: str
    reason: str
    count: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    seq: int
    last_seq: int


def _incident_action(record: TraceRecord, violation: Mapping[str, Any]) -> str | None:
    effect = violation.get("effect")
    if violation.get("mode") == "shadow":
        return None
    if effect == "warn" or effect == "block":
        return str(effect)
    if effect == "approve" and record.status == "blocked":
        return "approval_denied"  # an approval that was granted is not an incident
    return None


def _violations(plans: Iterable[_TaskPlan]) -> dict[tuple[str, str], _Seen]:
    found: dict[tuple[str, str], _Seen] = {}
    for plan in plans:
        for item in plan.new:
            r = item.record
            decision = r.decision
            if not isinstance(decision, dict):
                continue
            violations = decision.get("violations")
            if not isinstance(violations, list):
                continue
            for v in violations:
                if not isinstance(v, dict) or not isinstance(v.get("policy_id"), str):
                    continue
                action = _incident_action(r, v)
                if action is None:
                    continue
                severity = v.get("severity")
                severity = severity if severity in _SEVERITY_RANK else "medium"
                raw_reason = v.get("reason")
                reason = raw_reason if isinstance(raw_reason, str) else ""
                when = item.when
                key = (plan.task_id, v["policy_id"])
                seen = found.get(key)
                if seen is None:
                    found[key] = _Seen(severity, action, reason, 1, when, when, r.seq, r.seq)
                    continue
                seen.count += 1
                seen.last_seen, seen.last_seq, seen.reason = when, r.seq, reason or seen.reason
                seen.severity = _stronger(seen.severity, severity, _SEVERITY_RANK)
                seen.action = _stronger(seen.action, action, _ACTION_RANK)
    return found


def _stronger(a: str, b: str, rank: Mapping[str, int]) -> str:
    return b if rank.get(b, -1) > rank.get(a, -1) else a


def _raise_incidents(
    session: Session, agent_key: str, plans: dict[str, _TaskPlan]
) -> tuple[IncidentChange, ...]:
    found = _violations(plans.values())
    if not found:
        return ()
    existing = {
        (i.task_id or "", i.policy_id): i
        for i in session.scalars(
            select(Incident).where(
                Incident.agent_key == agent_key,
                Incident.task_id.in_({task for task, _ in found}),
                Incident.policy_id.in_({policy for _, policy in found}),
            )
        )
    }
    changes = []
    fresh = []
    for (task_id, policy_id), seen in found.items():
        incident = existing.get((task_id, policy_id))
        if incident is None:
            incident = Incident(
                agent_key=agent_key,
                task_id=task_id,
                policy_id=policy_id,
                severity=seen.severity,
                action=seen.action,
                reason=seen.reason,
                status="open",
                count=seen.count,
                first_seen=seen.first_seen,
                last_seen=seen.last_seen,
                seq=seen.seq,
                last_seq=seen.last_seq,
            )
            session.add(incident)
            fresh.append(incident)
            continue
        _repeat(incident, seen)
        changes.append(incident)
    session.flush()
    return tuple(
        IncidentChange(id=i.id, task_id=i.task_id, policy_id=i.policy_id, created=i in fresh)
        for i in (*fresh, *changes)
    )


def _repeat(incident: Incident, seen: _Seen) -> None:
    incident.count += seen.count
    incident.last_seen = max(incident.last_seen, seen.last_seen)
    incident.last_seq = seen.last_seq
    incident.reason = seen.reason or incident.reason
    incident.severity = _stronger(incident.severity, seen.severity, _SEVERITY_RANK)
    incident.action = _stronger(incident.action, seen.action, _ACTION_RANK)
    if incident.status == "resolved":
        # It was fixed and came back; an ignored incident stays ignored.
        incident.status = "open"


def record_incident(
    session: Session,
    *,
    agent_key: str,
    task_id: str | None,
    policy_id: str,
    severity: str,
    action: str,
    reason: str,
    seen_at: dt.datetime | None = None,
    seq: int | None = None,
) -> IncidentChange:
    """Open an incident, or count a repeat of it (e.g. from a registration decision)."""
    when = seen_at or utcnow()
    clause = Incident.task_id.is_(None) if task_id is None else Incident.task_id == task_id
    incident = session.scalars(
        select(Incident).where(
            Incident.agent_key == agent_key, clause, Incident.policy_id == policy_id
        )
    ).first()
    seen = _Seen(severity, action, reason, 1, when, when, seq or 0, seq or 0)
    if incident is not None:
        _repeat(incident, seen)
        if seq is None:
            incident.last_seq = None
        session.flush()
        return IncidentChange(id=incident.id, task_id=task_id, policy_id=policy_id, created=False)
    incident = Incident(
        agent_key=agent_key,
        task_id=task_id,
        policy_id=policy_id,
        severity=severity,
        action=action,
        reason=reason,
        status="open",
        count=1,
        first_seen=when,
        last_seen=when,
        seq=seq,
        last_seq=seq,
    )
    session.add(incident)
    session.flush()
    return IncidentChange(id=incident.id, task_id=task_id, policy_id=policy_id, created=True)


def get_incident(session: Session, incident_id: int) -> Incident | None:
    """An incident by id, or None."""
    return session.get(Incident, incident_id)


def list_incidents(
    session: Session,
    *,
    agent_key: str | None = None,
    task_id: str | None = None,
    status: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Incident]:
    """Incidents, most recently seen first."""
    query = select(Incident)
    if agent_key is not None:
        query = query.where(Incident.agent_key == agent_key)
    if task_id is not None:
        query = query.where(Incident.task_id == task_id)
    if status is not None:
        query = query.where(Incident.status == status)
    if since is not None:
        query = query.where(Incident.last_seen >= since)
    if until is not None:
        query = query.where(Incident.first_seen < until)
    query = query.order_by(Incident.last_seen.desc(), Incident.id.desc())
    return list(session.scalars(query.limit(limit).offset(offset)))


def update_incident(
    session: Session, incident_id: int, *, status: str, acted_by: str | None
) -> Incident:
    """Move an incident to `status` (open → acknowledged → resolved or ignored), noting who
    and when. NotFoundError or InvalidTransitionError when it cannot."""
    if status not in INCIDENT_STATUSES:
        raise InvalidTransitionError(
            f"{status!r} is not an incident status; use one of {', '.join(INCIDENT_STATUSES)}."
        )
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise NotFoundError(f"There is no incident {incident_id}.")
    if status != incident.status and status not in _TRANSITIONS[incident.status]:
        allowed = ", ".join(sorted(_TRANSITIONS[incident.status]))
        raise InvalidTransitionError(
            f"An incident that is {incident.status} cannot become {status}; it can become "
            f"{allowed}."
        )
    incident.status = status
    incident.acted_by = acted_by
    incident.acted_at = utcnow()
    session.flush()
    return incident
