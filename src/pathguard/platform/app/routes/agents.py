"""Agents: `POST /v1/agents/register`, `GET /v1/agents`, `GET /v1/agents/{key}`, and
`POST /v1/agents/{key}/assignments` (which policy sets apply to an agent).

Registering checks what the agent declares against the `agent_registration` policies of the
policy sets assigned to it, stores the agent with that decision, and answers with it. Each
enforced violation also opens (or repeats) an incident, so a refused registration is seen:
action `block` or `warn` by the policy's effect, and `approval_required` for an `approve`
policy (the server asks no one; the incident queue is where a person takes it up).
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, HTTPException, status
from sqlalchemy.orm import Session

from pathguard.decisions import Decision, Effect, Violation
from pathguard.engine import PolicyEngine
from pathguard.platform.app.auth import (
    Credentials,
    require_admin,
    require_agent,
    require_principal,
)
from pathguard.platform.app.routes._common import AUTH_ERRORS, AgentKeyPath, Sessions
from pathguard.platform.app.schemas import (
    AgentOut,
    AssignmentIn,
    AssignmentOut,
    ErrorOut,
    RegistrationIn,
    RegistrationOut,
)
from pathguard.platform.store import (
    NotFoundError,
    assign_policy_sets,
    get_agent,
    list_agents,
    policy_sets_for_agent,
    record_incident,
    upsert_agent,
)
from pathguard.vocabulary import AgentRegistration

__all__ = ["evaluate_registration", "router"]

_REGISTRATION_ACTIONS: Final = {
    Effect.warn: "warn",
    Effect.approve: "approval_required",
    Effect.block: "block",
}

router = APIRouter(prefix="/v1/agents", tags=["agents"], responses=AUTH_ERRORS)


def evaluate_registration(session: Session, registration: AgentRegistration) -> Decision:
    """The decision of every assigned policy set's registration policies, folded into one."""
    violations: list[Violation] = []
    evaluated: list[str] = []
    for view in policy_sets_for_agent(session, registration.agent_key):
        decision = PolicyEngine(view.document).evaluate_registration(registration)
        violations.extend(decision.violations)
        violations.extend(decision.shadow)
        evaluated.extend(decision.evaluated)
    return Decision.from_violations(violations, tuple(evaluated))


@router.post("/register", response_model=RegistrationOut)
def register(body: RegistrationIn, sessions: Sessions, credentials: Credentials) -> RegistrationOut:
    """Register an agent or update its declaration; answer with the registration decision."""
    with sessions.begin() as session:
        agent_key = body.agent_key
        if agent_key is None:
            principal = require_principal(session, credentials)
            if principal.agent_key is None:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    detail="An admin key registers an agent named in the body; add 'agent_key'.",
                )
            agent_key = principal.agent_key
        else:
            require_agent(session, credentials, agent_key)
        registration = AgentRegistration(
            agent_key=agent_key,
            name=body.name,
            purpose=body.purpose,
            owner=body.owner,
            tools=tuple(body.tools),
            risk_classification=body.risk_classification,
            environment=body.environment,
            metadata=body.metadata,
        )
        decision = evaluate_registration(session, registration)
        agent, created = upsert_agent(
            session,
            key=agent_key,
            name=body.name,
            purpose=body.purpose,
            owner=body.owner,
            tools=body.tools,
            risk_classification=body.risk_classification.value,
            environment=body.environment,
            metadata=body.metadata,
            decision=decision.to_dict(),
        )
        for v in decision.violations:
            record_incident(
                session,
                agent_key=agent_key,
                task_id=None,
                policy_id=v.policy_id,
                severity=v.severity.value,
                action=_REGISTRATION_ACTIONS[v.effect],
                reason=v.reason,
            )
        return RegistrationOut(
            agent=AgentOut.of(agent), created=created, decision=decision.to_dict()
        )


@router.get("", response_model=list[AgentOut])
def agents(sessions: Sessions, credentials: Credentials) -> list[AgentOut]:
    """Every registered agent, by key (admin)."""
    with sessions.begin() as session:
        require_admin(session, credentials)
        return [AgentOut.of(a) for a in list_agents(session)]


@router.get("/{key}", response_model=AgentOut, responses={404: {"model": ErrorOut}})
def agent(key: AgentKeyPath, sessions: Sessions, credentials: Credentials) -> AgentOut:
    """One registered agent (admin)."""
    with sessions.begin() as session:
        require_admin(session, credentials)
        found = get_agent(session, key)
        if found is None:
            raise NotFoundError(
                f"There is no registered agent {key!r}; list them with GET /v1/agents."
            )
        return AgentOut.of(found)


@router.post(
    "/{key}/assignments", response_model=AssignmentOut, responses={404: {"model": ErrorOut}}
)
def assign(
    key: AgentKeyPath, body: AssignmentIn, sessions: Sessions, credentials: Credentials
) -> AssignmentOut:
    """Apply policy sets to an agent (`replace` drops the others); answers with all of them."""
    with sessions.begin() as session:
        principal = require_admin(session, credentials)
        ids = assign_policy_sets(
            session, key, body.policy_set_ids, replace=body.replace, created_by=principal.key_id
        )
        return AssignmentOut(agent_key=key, policy_set_ids=ids)
