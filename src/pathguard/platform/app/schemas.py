"""Request and response bodies of the HTTP API (pydantic v2); also what /openapi.json shows."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from pathguard.platform.models import Agent, Incident, Task
from pathguard.vocabulary import RiskClass

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_RECORDS",
    "AgentOut",
    "AssignmentIn",
    "AssignmentOut",
    "ErrorOut",
    "HealthOut",
    "IncidentOut",
    "IncidentPatch",
    "PolicyProblemOut",
    "PolicySetOut",
    "RegistrationIn",
    "RegistrationOut",
    "TaskDetailOut",
    "TaskOut",
    "TaskTailOut",
    "TraceBatchIn",
    "TraceBatchOut",
]

MAX_BATCH_RECORDS: Final = 1000
MAX_BATCH_BYTES: Final = 5 * 1024 * 1024

# Keys and names end up in database text columns: PostgreSQL refuses NUL, and both databases
# index these columns, so they are bounded the same way as in the store.
Key = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00]*$")]
Text = Annotated[str, StringConstraints(max_length=10_000, pattern=r"^[^\x00]*$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00]*$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    """Every error: a sentence saying what went wrong and what to change."""

    detail: str


class PolicyProblemOut(BaseModel):
    """One problem of a policy document that was refused."""

    message: str
    line: int | None = None
    policy_id: str | None = None
    field: str | None = None


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]


# -- agents -----------------------------------------------------------------------------------


class RegistrationIn(_In):
    """What an agent declares about itself. An agent key may leave out `agent_key`."""

    agent_key: Key | None = None
    name: Name
    purpose: Text
    owner: Name | None = None
    tools: list[Name] = Field(default_factory=list, max_length=1000)
    risk_classification: RiskClass = RiskClass.minimal
    environment: Name | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class AgentOut(BaseModel):
    key: str
    name: str
    purpose: str
    owner: str | None
    tools: list[str]
    risk_classification: str
    environment: str | None
    metadata: dict[str, Any]
    decision: dict[str, Any] | None
    registered_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, agent: Agent) -> AgentOut:
        return cls(
            key=agent.key,
            name=agent.name,
            purpose=agent.purpose,
            owner=agent.owner,
            tools=[str(t) for t in agent.tools],
            risk_classification=agent.risk_classification,
            environment=agent.environment,
            metadata=agent.meta,
            decision=agent.decision,
            registered_at=agent.registered_at,
            updated_at=agent.updated_at,
        )


class RegistrationOut(BaseModel):
    """The stored agent, whether it is new, and the registration decision."""

    agent: AgentOut
    created: bool
    decision: dict[str, Any]


class AssignmentIn(_In):
    policy_set_ids: list[int] = Field(max_length=1000)
    replace: bool = False


class AssignmentOut(BaseModel):
    agent_key: str
    policy_set_ids: list[int]


# -- policy sets ------------------------------------------------------------------------------


class PolicySetOut(BaseModel):
    id: int
    name: str
    version: int
    document: dict[str, Any]
    digest: str
    created_at: dt.datetime
    created_by: str | None
    deleted_at: dt.datetime | None


# -- traces and tasks -------------------------------------------------------------------------


class TraceBatchIn(_In):
    """A batch of trace records of one agent (spec/core.md §6), at most 1,000 and 5 MiB."""

    records: list[dict[str, Any]]


class TaskTailOut(BaseModel):
    task_id: str
    next_seq: int
    head_hash: str
    stored: int
    duplicates: int


class TraceBatchOut(BaseModel):
    stored: int
    duplicates: int
    tasks: list[TaskTailOut]


class TaskOut(BaseModel):
    agent_key: str
    task_id: str
    status: str
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    step_count: int
    head_hash: str
    chain_ok: bool
    updated_at: dt.datetime

    @classmethod
    def of(cls, task: Task) -> TaskOut:
        return cls(
            agent_key=task.agent_key,
            task_id=task.task_id,
            status=task.status,
            started_at=task.started_at,
            ended_at=task.ended_at,
            step_count=task.step_count,
            head_hash=task.head_hash,
            chain_ok=task.chain_ok,
            updated_at=task.updated_at,
        )


class TaskDetailOut(TaskOut):
    """A task with its stored records in seq order; each carries its `decision`."""

    steps: list[dict[str, Any]]


# -- incidents --------------------------------------------------------------------------------


class IncidentOut(BaseModel):
    id: int
    agent_key: str
    task_id: str | None
    policy_id: str
    severity: str
    action: str
    reason: str
    status: str
    count: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    seq: int | None
    last_seq: int | None
    acted_by: str | None
    acted_at: dt.datetime | None

    @classmethod
    def of(cls, incident: Incident) -> IncidentOut:
        return cls.model_validate(incident, from_attributes=True)


class IncidentPatch(_In):
    status: Literal["open", "acknowledged", "resolved", "ignored"]
