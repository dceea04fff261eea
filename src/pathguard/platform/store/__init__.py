"""The platform's repository: every read and write the API makes, as functions of a Session.

No function here commits: the caller owns the transaction (`sessions.begin()` in
`pathguard.platform.database`), so a request that fails half-way leaves nothing behind.

The heart is `ingest_traces` (in `ingest`): a batch of trace records is validated, checked
against the stored chain of each task (one SELECT of the task heads per batch), and written
with bulk inserts, together with the incidents its decisions raise. A batch either goes in
whole or not at all; `IngestError` names the first record that stopped it.
"""

# MAX_ID_LENGTH was importable from the single-module store without being in __all__; it stays so.
from pathguard.platform.store._common import MAX_ID_LENGTH as MAX_ID_LENGTH
from pathguard.platform.store._common import InvalidTransitionError, NotFoundError
from pathguard.platform.store.agents import get_agent, list_agents, upsert_agent
from pathguard.platform.store.health import count_rows, ping
from pathguard.platform.store.incidents import (
    IncidentChange,
    get_incident,
    list_incidents,
    record_incident,
    update_incident,
)
from pathguard.platform.store.ingest import IngestError, IngestResult, TaskTail, ingest_traces
from pathguard.platform.store.policy_sets import (
    PolicySetView,
    assign_policy_sets,
    create_policy_set,
    delete_policy_set,
    get_policy_set,
    list_policy_sets,
    policy_set_history,
    policy_sets_for_agent,
    unassign_policy_set,
    update_policy_set,
)
from pathguard.platform.store.tasks import (
    RecordSlice,
    agent_record_keys,
    agent_records,
    get_task,
    list_tasks,
    task_records,
)
from pathguard.platform.store.verify import ChainProblem, StoredVerifyResult, verify_stored
from pathguard.platform.store.webhooks import (
    create_webhook,
    delete_webhook,
    due_deliveries,
    enqueue_event,
    list_webhooks,
    record_delivery_attempt,
)

__all__ = [
    "ChainProblem",
    "IncidentChange",
    "IngestError",
    "IngestResult",
    "InvalidTransitionError",
    "NotFoundError",
    "PolicySetView",
    "RecordSlice",
    "StoredVerifyResult",
    "TaskTail",
    "agent_record_keys",
    "agent_records",
    "assign_policy_sets",
    "count_rows",
    "create_policy_set",
    "create_webhook",
    "delete_policy_set",
    "delete_webhook",
    "due_deliveries",
    "enqueue_event",
    "get_agent",
    "get_incident",
    "get_policy_set",
    "get_task",
    "ingest_traces",
    "list_agents",
    "list_incidents",
    "list_policy_sets",
    "list_tasks",
    "list_webhooks",
    "ping",
    "policy_set_history",
    "policy_sets_for_agent",
    "record_delivery_attempt",
    "record_incident",
    "task_records",
    "unassign_policy_set",
    "update_incident",
    "update_policy_set",
    "upsert_agent",
    "verify_stored",
]
