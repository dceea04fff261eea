"""Policy sets: their versions, and which agents they apply to."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from pathguard.platform.models import Assignment, PolicySetRow, PolicySetVersion, utcnow
from pathguard.platform.store._common import NotFoundError
from pathguard.policies import PolicySet

__all__ = [
    "PolicySetView",
    "assign_policy_sets",
    "create_policy_set",
    "delete_policy_set",
    "get_policy_set",
    "list_policy_sets",
    "policy_set_history",
    "policy_sets_for_agent",
    "unassign_policy_set",
    "update_policy_set",
]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PolicySetView:
    """A policy set at one version."""

    id: int
    name: str
    version: int
    document: dict[str, Any]
    digest: str
    created_at: dt.datetime
    created_by: str | None
    deleted_at: dt.datetime | None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["created_at"] = self.created_at.isoformat()
        d["deleted_at"] = None if self.deleted_at is None else self.deleted_at.isoformat()
        return d


def _view(row: PolicySetRow, version: PolicySetVersion) -> PolicySetView:
    return PolicySetView(
        id=row.id,
        name=row.name,
        version=version.version,
        document=version.document,
        digest=version.digest,
        created_at=version.created_at,
        created_by=version.created_by,
        deleted_at=row.deleted_at,
    )


def _validated(document: Mapping[str, Any]) -> PolicySet:
    """The document as a PolicySet; PolicyLoadError listing every problem otherwise."""
    return PolicySet.from_dict(document, source="<policy set>")


def create_policy_set(
    session: Session, document: Mapping[str, Any], *, created_by: str | None = None
) -> PolicySetView:
    """Store a validated policy document as version 1 of a new set (named by the document)."""
    policy_set = _validated(document)
    now = utcnow()
    row = PolicySetRow(name=policy_set.name, current_version=1, created_at=now)
    session.add(row)
    session.flush()
    version = PolicySetVersion(
        policy_set_id=row.id,
        version=1,
        document=policy_set.to_dict(),
        digest=policy_set.digest,
        created_at=now,
        created_by=created_by,
    )
    session.add(version)
    session.flush()
    return _view(row, version)


def _live_row(session: Session, set_id: int) -> PolicySetRow:
    row = session.get(PolicySetRow, set_id)
    if row is None or row.deleted_at is not None:
        raise NotFoundError(f"There is no policy set {set_id}; list them with GET /v1/policy-sets.")
    return row


def update_policy_set(
    session: Session, set_id: int, document: Mapping[str, Any], *, created_by: str | None = None
) -> PolicySetView:
    """Store a new version of a policy set (the old versions are kept)."""
    policy_set = _validated(document)
    row = _live_row(session, set_id)
    row.current_version += 1
    row.name = policy_set.name
    version = PolicySetVersion(
        policy_set_id=row.id,
        version=row.current_version,
        document=policy_set.to_dict(),
        digest=policy_set.digest,
        created_at=utcnow(),
        created_by=created_by,
    )
    session.add(version)
    session.flush()
    return _view(row, version)


def delete_policy_set(session: Session, set_id: int) -> None:
    """Soft-delete a policy set: it stops applying to agents, its versions are kept."""
    row = _live_row(session, set_id)
    row.deleted_at = utcnow()
    session.flush()


def get_policy_set(
    session: Session, set_id: int, *, version: int | None = None, include_deleted: bool = False
) -> PolicySetView | None:
    """A policy set at its current version (or at `version`), or None."""
    row = session.get(PolicySetRow, set_id)
    if row is None or (row.deleted_at is not None and not include_deleted):
        return None
    stored = session.get(PolicySetVersion, (set_id, version or row.current_version))
    return None if stored is None else _view(row, stored)


def list_policy_sets(session: Session, *, include_deleted: bool = False) -> list[PolicySetView]:
    """Every policy set at its current version, by id."""
    query = (
        select(PolicySetRow, PolicySetVersion)
        .join(
            PolicySetVersion,
            and_(
                PolicySetVersion.policy_set_id == PolicySetRow.id,
                PolicySetVersion.version == PolicySetRow.current_version,
            ),
        )
        .order_by(PolicySetRow.id)
    )
    if not include_deleted:
        query = query.where(PolicySetRow.deleted_at.is_(None))
    return [_view(row, version) for row, version in session.execute(query)]


def policy_set_history(session: Session, set_id: int) -> list[PolicySetView]:
    """Every version of a policy set, oldest first."""
    row = session.get(PolicySetRow, set_id)
    if row is None:
        return []
    versions = session.scalars(
        select(PolicySetVersion)
        .where(PolicySetVersion.policy_set_id == set_id)
        .order_by(PolicySetVersion.version)
    )
    return [_view(row, v) for v in versions]


# -- assignments ------------------------------------------------------------------------------


def assign_policy_sets(
    session: Session,
    agent_key: str,
    set_ids: Iterable[int],
    *,
    replace: bool = False,
    created_by: str | None = None,
) -> list[int]:
    """Apply policy sets to an agent (`replace=True` drops the others); returns its set ids."""
    wanted = list(dict.fromkeys(set_ids))
    for set_id in wanted:
        _live_row(session, set_id)
    current = set(
        session.scalars(select(Assignment.policy_set_id).where(Assignment.agent_key == agent_key))
    )
    if replace:
        for set_id in current - set(wanted):
            unassign_policy_set(session, agent_key, set_id)
        current &= set(wanted)
    now = utcnow()
    for set_id in wanted:
        if set_id not in current:
            session.add(
                Assignment(
                    agent_key=agent_key, policy_set_id=set_id, created_at=now, created_by=created_by
                )
            )
    session.flush()
    return [v.id for v in policy_sets_for_agent(session, agent_key)]


def unassign_policy_set(session: Session, agent_key: str, set_id: int) -> bool:
    """Stop applying a policy set to an agent; False when it was not applied."""
    row = session.get(Assignment, (agent_key, set_id))
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def policy_sets_for_agent(session: Session, agent_key: str) -> list[PolicySetView]:
    """The live policy sets applied to an agent, at their current versions, by id."""
    query = (
        select(PolicySetRow, PolicySetVersion)
        .join(Assignment, Assignment.policy_set_id == PolicySetRow.id)
        .join(
            PolicySetVersion,
            and_(
                PolicySetVersion.policy_set_id == PolicySetRow.id,
                PolicySetVersion.version == PolicySetRow.current_version,
            ),
        )
        .where(Assignment.agent_key == agent_key, PolicySetRow.deleted_at.is_(None))
        .order_by(PolicySetRow.id)
    )
    return [_view(row, version) for row, version in session.execute(query)]
