"""The platform repository, on SQLite and PostgreSQL: trace ingestion, incidents, stored-chain
verification, agents, policy sets, assignments and webhooks."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from pathguard.decisions import Decision, Effect, Mode, Severity, Violation
from pathguard.errors import PolicyLoadError
from pathguard.platform import store
from pathguard.platform.models import Incident, Task, TraceRecordRow
from pathguard.trace import GENESIS, HashChain, record_hash, verify_records
from pathguard.vocabulary import Behavior, Status, StepType, Verb

AGENT = "support-bot"
SQL = "x'); DROP TABLE trace_records; --"


def violation(policy_id: str, effect: str = "warn", *, severity: str = "medium") -> Violation:
    return Violation(
        policy_id=policy_id,
        rule="requires_prior",
        severity=Severity(severity),
        effect=Effect(effect),
        mode=Mode.enforce,
        reason=f"{policy_id} was violated",
    )


def decide(*violations: Violation) -> Decision:
    return Decision.from_violations(list(violations), tuple(v.policy_id for v in violations))


Step = tuple[StepType, Status, Decision | None]
_VERBS = {
    StepType.step_resource: Verb.GET,
    StepType.step_message: Verb.POST,
    StepType.step_model: Verb.POST,
}


def trace(task_id: str, steps: list[Step] | int = 3, *, agent: str = AGENT) -> list[dict[str, Any]]:
    """A task's records as dicts: task.start, the steps, task.end (or n plain steps)."""
    if isinstance(steps, int):
        plain: list[Step] = [(StepType.step_exec, Status.completed, None)] * steps
        steps = [(StepType.task_start, Status.completed, None), *plain]
    chain = HashChain()
    out = []
    for i, (step_type, status, decision) in enumerate(steps):
        verb = _VERBS.get(step_type)
        behavior = Behavior(
            step_type=step_type,
            verb=verb,
            step_name=f"step-{i}",
            agent_key=agent,
            task_id=task_id,
            status=status,
            timestamp=1_700_000_000.25 + i,
            input={"i": i},
        )
        out.append(chain.append(behavior, decision).to_dict())
    return out


def ingest(
    sessions: sessionmaker[Session], records: list[dict[str, Any]], agent: str = AGENT
) -> store.IngestResult:
    with sessions.begin() as session:
        return store.ingest_traces(session, agent, records)


def stored_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(TraceRecordRow)) or 0


def edited(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A record with fields changed and its hash recomputed (a well-formed forgery)."""
    body = {k: v for k, v in record.items() if k != "hash"} | changes
    return body | {"hash": record_hash(body["prev_hash"], body)}


# -- ingestion --------------------------------------------------------------------------------


def test_a_new_task_is_stored_and_read_back_unchanged(sessions: sessionmaker[Session]) -> None:
    records = trace("t1", 4)
    result = ingest(sessions, records)
    assert result.to_dict() == {
        "stored": 5,
        "duplicates": 0,
        "tasks": [
            {
                "task_id": "t1",
                "next_seq": 5,
                "head_hash": records[-1]["hash"],
                "stored": 5,
                "duplicates": 0,
            }
        ],
    }
    with sessions() as session:
        assert store.task_records(session, AGENT, "t1") == records
        task = store.get_task(session, AGENT, "t1")
        assert task is not None
        assert (task.step_count, task.head_hash, task.status) == (5, records[-1]["hash"], "running")
        assert task.started_at == dt.datetime.fromtimestamp(1_700_000_000.25, dt.UTC)
    assert verify_records(records).ok


def test_a_task_end_record_closes_the_task(sessions: sessionmaker[Session]) -> None:
    records = trace(
        "t1",
        [
            (StepType.task_start, Status.completed, None),
            (StepType.task_end, Status.completed, None),
        ],
    )
    ingest(sessions, records)
    with sessions() as session:
        task = store.get_task(session, AGENT, "t1")
        assert task is not None
        assert task.status == "completed"
        assert task.ended_at == dt.datetime.fromtimestamp(records[1]["timestamp"], dt.UTC)


def test_a_chain_continues_across_batches(sessions: sessionmaker[Session]) -> None:
    records = trace("t1", 6)
    first = ingest(sessions, records[:3])
    second = ingest(sessions, records[3:])
    assert (first.tasks[0].next_seq, second.tasks[0].next_seq) == (3, 7)
    assert second.tasks[0].head_hash == records[-1]["hash"]
    with sessions() as session:
        assert store.task_records(session, AGENT, "t1") == records


def test_records_of_several_tasks_may_be_interleaved_and_unordered(
    sessions: sessionmaker[Session],
) -> None:
    a, b = trace("a", 3), trace("b", 2)
    batch = [a[2], b[1], a[0], b[0], a[3], a[1], b[2]]
    result = ingest(sessions, batch)
    assert {t.task_id: (t.stored, t.next_seq) for t in result.tasks} == {
        "a": (4, 4),
        "b": (3, 3),
    }


def test_a_resent_batch_is_accepted_and_not_stored_twice(sessions: sessionmaker[Session]) -> None:
    records = trace("t1", 3)
    ingest(sessions, records)
    again = ingest(sessions, records)
    assert (again.stored, again.duplicates) == (0, 4)
    assert again.tasks[0].next_seq == 4
    assert stored_count(sessions) == 4


def test_a_batch_overlapping_the_stored_chain_stores_only_the_new_records(
    sessions: sessionmaker[Session],
) -> None:
    records = trace("t1", 5)
    ingest(sessions, records[:3])
    result = ingest(sessions, records[1:5])
    assert (result.stored, result.duplicates) == (2, 2)
    assert stored_count(sessions) == 5


def test_a_record_repeated_within_a_batch_counts_once(sessions: sessionmaker[Session]) -> None:
    records = trace("t1", 2)
    result = ingest(sessions, [*records, records[1]])
    assert (result.stored, result.duplicates) == (3, 1)


def test_the_same_seq_with_another_hash_is_a_conflict(sessions: sessionmaker[Session]) -> None:
    ingest(sessions, trace("t1", 2))
    fork = edited(trace("t1", 2)[1], step_name="forked")
    with pytest.raises(store.IngestError) as caught:
        ingest(sessions, [fork])
    assert caught.value.kind == "conflict"
    assert (caught.value.task_id, caught.value.seq) == ("t1", 1)
    assert "different hash" in str(caught.value)
    assert stored_count(sessions) == 3


def test_a_gap_is_refused_and_nothing_of_the_batch_is_stored(
    sessions: sessionmaker[Session],
) -> None:
    records = trace("t1", 5)
    ingest(sessions, records[:2])
    other_task = trace("t2", 2)
    with pytest.raises(store.IngestError) as caught:
        ingest(sessions, [*other_task, *records[3:]])
    error = caught.value
    assert (error.kind, error.task_id, error.seq, error.index) == ("chain", "t1", 3, 3)
    assert "must have seq 2, not seq 3" in str(error)
    assert stored_count(sessions) == 2
    with sessions() as session:
        assert store.get_task(session, AGENT, "t2") is None


def test_a_new_task_must_start_at_seq_0(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(store.IngestError) as caught:
        ingest(sessions, trace("t1", 3)[1:])
    assert (caught.value.kind, caught.value.seq) == ("chain", 1)
    assert "must start at seq 0" in str(caught.value)


def test_a_record_that_links_to_the_wrong_hash_is_refused(
    sessions: sessionmaker[Session],
) -> None:
    records = trace("t1", 3)
    ingest(sessions, records[:2])
    relinked = edited(records[2], prev_hash=GENESIS)
    with pytest.raises(store.IngestError) as caught:
        ingest(sessions, [relinked])
    assert (caught.value.kind, caught.value.seq) == ("chain", 2)
    assert "prev_hash does not match the hash of seq 1" in str(caught.value)


def test_an_edited_record_is_refused_naming_it(sessions: sessionmaker[Session]) -> None:
    records = trace("t1", 3)
    records[2] = records[2] | {"status": "blocked"}  # changed without recomputing the hash
    with pytest.raises(store.IngestError) as caught:
        ingest(sessions, [*trace("t0", 1), *records])
    error = caught.value
    assert (error.kind, error.index, error.task_id, error.seq) == ("invalid", 4, "t1", 2)
    assert "does not match its hash" in str(error)
    assert stored_count(sessions) == 0


def test_the_first_bad_record_of_the_batch_is_named(sessions: sessionmaker[Session]) -> None:
    late, early = trace("late", 3), trace("early", 3)
    batch = [*early[:1], *late[:2], *early[2:], *late[3:]]  # both tasks have a gap
    with pytest.raises(store.IngestError) as caught:
        ingest(sessions, batch)
    assert (caught.value.task_id, caught.value.index) == ("early", 3)


def test_a_record_of_another_agent_is_forbidden(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(store.IngestError) as caught:
        ingest(sessions, trace("t1", 1, agent="intruder"))
    assert caught.value.kind == "forbidden"
    assert "'intruder', not 'support-bot'" in str(caught.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"v": 2}, "version 1"),
        ({"seq": -1}, "whole number"),
        ({"extra": 1}, "unexpected fields"),
        ({"timestamp": 1e300}, "not a time"),
    ],
)
def test_a_malformed_record_is_invalid(
    sessions: sessionmaker[Session], change: dict[str, Any], expected: str
) -> None:
    record = edited(trace("t1", 0)[0], **change)
    with pytest.raises(store.IngestError) as caught:
        ingest(sessions, [record])
    assert caught.value.kind == "invalid"
    assert expected in str(caught.value)


def test_a_task_id_with_a_nul_character_is_invalid_on_every_database(
    sessions: sessionmaker[Session],
) -> None:
    with pytest.raises(store.IngestError) as caught:
        ingest(sessions, trace("t\x001", 1))
    assert caught.value.kind == "invalid"
    assert "NUL" in str(caught.value)


def test_sql_looking_and_unusual_text_is_stored_verbatim(sessions: sessionmaker[Session]) -> None:
    chain = HashChain()
    payload = {
        "sql": SQL,
        "nul": "a\x00b",
        "emoji": "✓ 🚀",
        "big": 2**52,
        "float": 0.1,
        "quote": "'\"\\",
    }
    records = [
        chain.append(
            Behavior(
                step_type=StepType.step_resource,
                verb=Verb.GET,
                step_name=SQL,
                agent_key=SQL,
                task_id=SQL,
                status=Status.completed,
                timestamp=1.5,
                input=payload,
                properties={"target": {"domain": SQL}},
            ),
            decide(violation(SQL)),
        ).to_dict()
    ]
    ingest(sessions, records, agent=SQL)
    with sessions() as session:
        assert store.task_records(session, SQL, SQL) == records
        assert [t.task_id for t in store.list_tasks(session, agent_key=SQL)] == [SQL]
        [incident] = store.list_incidents(session, agent_key=SQL)
        assert (incident.policy_id, incident.task_id) == (SQL, SQL)
        assert store.verify_stored(session, SQL, SQL).ok
    assert stored_count(sessions) == 1


def test_a_large_batch_is_stored_in_one_go(sessions: sessionmaker[Session]) -> None:
    records = [r for i in range(20) for r in trace(f"task-{i}", 99)]
    result = ingest(sessions, records)
    assert (result.stored, len(result.tasks)) == (2000, 20)
    with sessions() as session:
        assert store.verify_stored(session).records == 2000


# -- incidents from decisions -----------------------------------------------------------------


def test_warn_and_block_decisions_open_one_incident_per_task_and_policy(
    sessions: sessionmaker[Session],
) -> None:
    warn = decide(violation("tickets-first", "warn", severity="low"))
    block = decide(violation("no-pii-email", "block", severity="critical"))
    records = trace(
        "t1",
        [
            (StepType.task_start, Status.completed, None),
            (StepType.step_model, Status.completed, warn),
            (StepType.step_model, Status.completed, warn),
            (StepType.step_message, Status.blocked, block),
        ],
    )
    result = ingest(sessions, records)
    assert sorted((c.policy_id, c.created) for c in result.incidents) == [
        ("no-pii-email", True),
        ("tickets-first", True),
    ]
    with sessions() as session:
        incidents = {i.policy_id: i for i in store.list_incidents(session)}
    warned = incidents["tickets-first"]
    assert (warned.action, warned.severity, warned.count, warned.status) == (
        "warn",
        "low",
        2,
        "open",
    )
    assert (warned.seq, warned.last_seq) == (1, 2)
    blocked = incidents["no-pii-email"]
    assert (blocked.action, blocked.severity, blocked.count, blocked.seq) == (
        "block",
        "critical",
        1,
        3,
    )
    assert blocked.reason == "no-pii-email was violated"


def test_repeats_in_a_later_batch_add_to_the_count(sessions: sessionmaker[Session]) -> None:
    warn = decide(violation("tickets-first"))
    step = (StepType.step_model, Status.completed, warn)
    records = trace("t1", [(StepType.task_start, Status.completed, None), step, step, step])
    ingest(sessions, records[:2])
    result = ingest(sessions, records[2:])
    assert [c.created for c in result.incidents] == [False]
    with sessions() as session:
        [incident] = store.list_incidents(session)
    assert (incident.count, incident.seq, incident.last_seq) == (3, 1, 3)
    assert incident.last_seen == dt.datetime.fromtimestamp(records[3]["timestamp"], dt.UTC)


def test_the_same_policy_in_two_tasks_is_two_incidents(sessions: sessionmaker[Session]) -> None:
    warn = decide(violation("tickets-first"))
    steps: list[Step] = [
        (StepType.task_start, Status.completed, None),
        (StepType.step_model, Status.completed, warn),
    ]
    ingest(sessions, [*trace("t1", steps), *trace("t2", steps)])
    with sessions() as session:
        assert sorted(i.task_id or "" for i in store.list_incidents(session)) == ["t1", "t2"]


def test_a_denied_approval_is_an_incident_and_a_granted_one_is_not(
    sessions: sessionmaker[Session],
) -> None:
    approve = decide(violation("exec-needs-approval", "approve", severity="high"))
    records = trace(
        "t1",
        [
            (StepType.task_start, Status.completed, None),
            (StepType.step_exec, Status.completed, approve),  # approved: it ran
            (StepType.step_exec, Status.blocked, approve),  # denied
        ],
    )
    ingest(sessions, records)
    with sessions() as session:
        [incident] = store.list_incidents(session)
    assert (incident.action, incident.count, incident.seq) == ("approval_denied", 1, 2)


def test_shadow_violations_and_duplicates_raise_no_incident(
    sessions: sessionmaker[Session],
) -> None:
    shadow = Violation(
        policy_id="trial",
        rule="max_steps",
        severity=Severity.high,
        effect=Effect.block,
        mode=Mode.shadow,
        reason="would block",
    )
    warn = decide(violation("tickets-first"))
    records = trace(
        "t1",
        [
            (StepType.task_start, Status.completed, decide(shadow)),
            (StepType.step_model, Status.completed, warn),
        ],
    )
    ingest(sessions, records)
    again = ingest(sessions, records)
    assert again.incidents == ()
    with sessions() as session:
        [incident] = store.list_incidents(session)
    assert (incident.policy_id, incident.count) == ("tickets-first", 1)


def test_a_repeat_reopens_a_resolved_incident_but_not_an_ignored_one(
    sessions: sessionmaker[Session],
) -> None:
    a, b = decide(violation("a")), decide(violation("b"))
    steps: list[Step] = [(StepType.task_start, Status.completed, None)]
    steps += [
        (StepType.step_model, Status.completed, a),
        (StepType.step_model, Status.completed, b),
    ]
    records = trace("t1", steps * 2)
    ingest(sessions, records[:3])
    with sessions.begin() as session:
        by_policy = {i.policy_id: i.id for i in store.list_incidents(session)}
        store.update_incident(session, by_policy["a"], status="resolved", acted_by="alice")
        store.update_incident(session, by_policy["b"], status="ignored", acted_by="alice")
    ingest(sessions, records[3:])
    with sessions() as session:
        status = {i.policy_id: (i.status, i.count) for i in store.list_incidents(session)}
    assert status == {"a": ("open", 2), "b": ("ignored", 2)}


def test_incidents_move_through_their_statuses_with_who_and_when(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        change = store.record_incident(
            session,
            agent_key=AGENT,
            task_id=None,
            policy_id="registration-needs-owner",
            severity="high",
            action="block",
            reason="no owner",
        )
        assert change.created
        again = store.record_incident(
            session,
            agent_key=AGENT,
            task_id=None,
            policy_id="registration-needs-owner",
            severity="high",
            action="block",
            reason="no owner",
        )
        assert (again.id, again.created) == (change.id, False)
        incident = store.update_incident(session, change.id, status="acknowledged", acted_by="bob")
        assert (incident.status, incident.acted_by, incident.count) == ("acknowledged", "bob", 2)
        assert incident.acted_at is not None and incident.acted_at.tzinfo is not None
        store.update_incident(session, change.id, status="resolved", acted_by="bob")
        with pytest.raises(store.InvalidTransitionError, match="cannot become acknowledged"):
            store.update_incident(session, change.id, status="acknowledged", acted_by="bob")
        with pytest.raises(store.InvalidTransitionError, match="not an incident status"):
            store.update_incident(session, change.id, status="closed", acted_by="bob")
        with pytest.raises(store.NotFoundError):
            store.update_incident(session, change.id + 100, status="open", acted_by="bob")


# -- verifying what is stored -----------------------------------------------------------------


def tamper(sessions: sessionmaker[Session], sql: str, **params: Any) -> None:
    with sessions.begin() as session:
        session.execute(text(sql), params)


def test_stored_chains_verify_when_untouched(sessions: sessionmaker[Session]) -> None:
    ingest(sessions, [*trace("t1", 3), *trace("t2", 2)])
    with sessions.begin() as session:
        result = store.verify_stored(session)
    assert (result.ok, result.tasks, result.records) == (True, 2, 7)
    assert result.to_dict()["first_error"] is None


def test_a_record_edited_in_the_database_is_found(sessions: sessionmaker[Session]) -> None:
    ingest(sessions, [*trace("t1", 3), *trace("t2", 3)])
    tamper(
        sessions,
        "UPDATE trace_records SET record = REPLACE(record, '\"completed\"', '\"blocked\"') "
        "WHERE task_id = :task AND seq = 2",
        task="t2",
    )
    with sessions.begin() as session:
        result = store.verify_stored(session)
        assert not result.ok
        assert result.first_error == store.ChainProblem(
            agent_key=AGENT,
            task_id="t2",
            seq=2,
            reason="The record's content does not match its hash: it was changed after it was "
            "stored.",
        )
        assert store.verify_stored(session, AGENT, "t1").ok
    with sessions() as session:
        flags = {t.task_id: t.chain_ok for t in session.scalars(select(Task))}
    assert flags == {"t1": True, "t2": False}


def test_an_edited_query_column_is_found(sessions: sessionmaker[Session]) -> None:
    ingest(sessions, trace("t1", 3))
    tamper(sessions, "UPDATE trace_records SET status = 'blocked' WHERE seq = 1")
    with sessions() as session:
        problem = store.verify_stored(session, update_status=False).first_error
    assert problem is not None and problem.seq == 1
    assert problem.reason.startswith("The status column ('blocked') differs from the record")


def test_a_record_deleted_in_the_middle_is_found(sessions: sessionmaker[Session]) -> None:
    ingest(sessions, trace("t1", 4))
    tamper(sessions, "DELETE FROM trace_records WHERE seq = 2")
    with sessions() as session:
        problem = store.verify_stored(session).first_error
    assert problem is not None and problem.seq == 3
    assert "Seq 2 of this task is missing" in problem.reason


def test_records_deleted_from_the_end_are_found(sessions: sessionmaker[Session]) -> None:
    ingest(sessions, trace("t1", 4))
    tamper(sessions, "DELETE FROM trace_records WHERE seq >= 3")
    with sessions() as session:
        problem = store.verify_stored(session).first_error
    assert problem is not None and problem.seq == 3
    assert "records were deleted from the end" in problem.reason


def test_a_rewritten_record_breaks_the_link_of_the_next_one(
    sessions: sessionmaker[Session],
) -> None:
    records = trace("t1", 3)
    ingest(sessions, records)
    forged = edited(records[1], step_name="forged")
    body = {k: v for k, v in forged.items() if k != "hash"}
    from pathguard.canonical import canonical_json

    tamper(
        sessions,
        "UPDATE trace_records SET record = :record, hash = :hash, step_name = 'forged' "
        "WHERE seq = 1",
        record=canonical_json(body).decode(),
        hash=forged["hash"],
    )
    with sessions() as session:
        problem = store.verify_stored(session).first_error
    assert problem is not None and problem.seq == 2
    assert "prev_hash does not match the hash of seq 1" in problem.reason


# -- agents, policy sets, assignments ---------------------------------------------------------

POLICIES = {
    "version": 1,
    "name": "basics",
    "policies": [
        {"id": "exec-needs-approval", "when": {"step_type": "step.exec"}, "rule": "requires_gate"}
    ],
}


def test_agents_are_registered_and_updated(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        agent, created = store.upsert_agent(
            session,
            key=AGENT,
            name="Support Bot",
            purpose=SQL,
            tools=["read_ticket"],
            metadata={"team": SQL},
            decision={"action": "allow"},
        )
        assert created and agent.registered_at.tzinfo is not None
    with sessions.begin() as session:
        agent, created = store.upsert_agent(
            session, key=AGENT, name="Support Bot 2", purpose="triage", owner="ops@example.com"
        )
        assert not created
    with sessions() as session:
        [agent] = store.list_agents(session)
        assert (agent.name, agent.owner, agent.tools, agent.meta) == (
            "Support Bot 2",
            "ops@example.com",
            [],
            {},
        )
        assert store.get_agent(session, "nobody") is None


def test_every_policy_set_change_is_a_new_version_and_deletes_are_soft(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        created = store.create_policy_set(session, POLICIES, created_by="k1")
        changed = dict(POLICIES, name="basics-v2", description=SQL)
        updated = store.update_policy_set(session, created.id, changed, created_by="k2")
    assert (created.version, updated.version, updated.name) == (1, 2, "basics-v2")
    assert created.digest != updated.digest
    with sessions.begin() as session:
        current = store.get_policy_set(session, created.id)
        assert current is not None and current.document["description"] == SQL
        first = store.get_policy_set(session, created.id, version=1)
        assert first is not None and first.created_by == "k1"
        store.delete_policy_set(session, created.id)
    with sessions() as session:
        assert store.get_policy_set(session, created.id) is None
        assert store.list_policy_sets(session) == []
        [deleted] = store.list_policy_sets(session, include_deleted=True)
        assert deleted.deleted_at is not None
        assert [v.version for v in store.policy_set_history(session, created.id)] == [1, 2]
        with pytest.raises(store.NotFoundError):
            store.update_policy_set(session, created.id, POLICIES)


def test_an_invalid_policy_document_is_not_stored(sessions: sessionmaker[Session]) -> None:
    bad = {"version": 1, "name": "bad", "policies": [{"id": "x", "rule": "no_such_rule"}]}
    with sessions.begin() as session, pytest.raises(PolicyLoadError):
        store.create_policy_set(session, bad)
    with sessions() as session:
        assert store.list_policy_sets(session, include_deleted=True) == []


def test_assignments_give_an_agent_its_live_policy_sets(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        one = store.create_policy_set(session, POLICIES)
        two = store.create_policy_set(session, dict(POLICIES, name="two"))
        assert store.assign_policy_sets(session, AGENT, [one.id, two.id, one.id]) == [
            one.id,
            two.id,
        ]
        assert store.assign_policy_sets(session, AGENT, [two.id], replace=True) == [two.id]
        store.assign_policy_sets(session, AGENT, [one.id])
        store.delete_policy_set(session, one.id)
        assert [s.name for s in store.policy_sets_for_agent(session, AGENT)] == ["two"]
        with pytest.raises(store.NotFoundError):
            store.assign_policy_sets(session, AGENT, [one.id])
        assert store.unassign_policy_set(session, AGENT, two.id)
        assert not store.unassign_policy_set(session, AGENT, two.id)
        assert store.policy_sets_for_agent(session, AGENT) == []


# -- webhooks ---------------------------------------------------------------------------------


def test_webhook_deliveries_are_queued_retried_and_logged(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        hook = store.create_webhook(session, url="http://127.0.0.1:9/hook", secret="s")
        other = store.create_webhook(session, url="http://x", secret="s", events=["other"])
        ids = store.enqueue_event(session, "incident.created", {"id": 1, "note": SQL})
        assert len(ids) == 1
        [due] = store.due_deliveries(session)
        assert (due.webhook_id, due.payload) == (hook.id, {"id": 1, "note": SQL})
        later = store.record_delivery_attempt(
            session,
            due.id,
            ok=False,
            response_status=500,
            retry_at=due.next_attempt_at + dt.timedelta(hours=1),
        )
        assert (later.status, later.attempts) == ("pending", 1)
        assert store.due_deliveries(session) == []
        done = store.record_delivery_attempt(session, due.id, ok=True, response_status=200)
        assert (done.status, done.attempts, done.delivered_at is not None) == ("delivered", 2, True)
        store.delete_webhook(session, other.id)
        assert [h.id for h in store.list_webhooks(session)] == [hook.id]


def test_ping_answers_on_a_live_database(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        store.ping(session)
        assert store.count_rows(session, Incident) == 0
