"""Agents: registering them and reading their declarations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pathguard.platform.models import Agent, utcnow

__all__ = [
    "get_agent",
    "list_agents",
    "upsert_agent",
]


def upsert_agent(
    session: Session,
    *,
    key: str,
    name: str,
    purpose: str,
    owner: str | None = None,
    tools: Sequence[str] = (),
    risk_classification: str = "minimal",
    environment: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    decision: Mapping[str, Any] | None = None,
) -> tuple[Agent, bool]:
    """Register an agent or update its declaration; returns it and whether it is new."""
    now = utcnow()
    agent = session.get(Agent, key)
    created = agent is None
    if agent is None:
        agent = Agent(key=key, registered_at=now, name=name, purpose=purpose)
        session.add(agent)
    agent.name = name
    agent.purpose = purpose
    agent.owner = owner
    agent.tools = list(tools)
    agent.risk_classification = risk_classification
    agent.environment = environment
    agent.meta = dict(metadata or {})
    agent.decision = None if decision is None else dict(decision)
    agent.updated_at = now
    session.flush()
    return agent, created


def get_agent(session: Session, key: str) -> Agent | None:
    """A registered agent, or None."""
    return session.get(Agent, key)


def list_agents(session: Session) -> list[Agent]:
    """Every registered agent, by key."""
    return list(session.scalars(select(Agent).order_by(Agent.key)))
