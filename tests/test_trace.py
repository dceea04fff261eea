"""The trace: records, the per-task hash chain, the sinks, and verification."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from pathguard.decisions import Action
from pathguard.engine import PolicyEngine
from pathguard.errors import TraceIntegrityError
from pathguard.policies import PolicySet
from pathguard.trace import (
    GENESIS,
    HashChain,
    JsonlSink,
    MemorySink,
    TraceRecord,
    TraceSink,
    read_jsonl,
    record_hash,
    verify_jsonl,
    verify_records,
)
from pathguard.vocabulary import Behavior, Status, StepType, Verb


def task_behaviors(task_id: str = "t1", agent_key: str = "bot") -> list[Behavior]:
    """A short task: start, a model call, a ticket read, an exec, end."""
    common: dict[str, Any] = {
        "agent_key": agent_key,
        "task_id": task_id,
        "status": Status.completed,
    }
    return [
        Behavior(step_type=StepType.task_start, step_name="task.start", timestamp=100.0, **common),
        Behavior(
            step_type=StepType.step_model,
            step_name="chat",
            input={"prompt": "hello"},
            output="hi there",
            properties={"usage": {"cost_usd": 0.0025}},
            timestamp=100.5,
            **common,
        ),
        Behavior(
            step_type=StepType.step_resource,
            verb=Verb.GET,
            step_name="read_ticket",
            input={"ticket_id": 7},
            output={"subject": "refund ü"},
            properties={"target": {"domain": "tickets"}},
            timestamp=101.0,
            **common,
        ),
        Behavior(
            step_type=StepType.step_exec,
            step_name="run",
            input={"code": "print(1)"},
            timestamp=102.0,
            meta={"trace_id": "abc"},
            **common,
        ),
        Behavior(step_type=StepType.task_end, step_name="task.end", timestamp=103.0, **common),
    ]


def chain_of(behaviors: list[Behavior]) -> list[TraceRecord]:
    chain = HashChain()
    return [chain.append(b) for b in behaviors]


def write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    """Two interleaved tasks written through a JsonlSink."""
    path = tmp_path / "trace.jsonl"
    first, second = chain_of(task_behaviors("t1")), chain_of(task_behaviors("t2"))
    with JsonlSink(path) as sink:
        for a, b in zip(first, second, strict=True):
            sink.write(a)
            sink.write(b)
    return path


# -- records ----------------------------------------------------------------------------------


def test_the_first_record_links_to_genesis_and_each_next_one_to_its_predecessor() -> None:
    records = chain_of(task_behaviors())

    assert [r.seq for r in records] == [0, 1, 2, 3, 4]
    assert records[0].prev_hash == GENESIS
    for previous, record in itertools.pairwise(records):
        assert record.prev_hash == previous.hash
    assert all(r.hash.startswith("sha256:") and len(r.hash) == 71 for r in records)


def test_the_hash_is_sha256_of_prev_hash_and_the_canonical_body() -> None:
    import hashlib

    import rfc8785

    record = chain_of(task_behaviors())[2]
    body = {k: v for k, v in record.to_dict().items() if k != "hash"}
    expected = hashlib.sha256(record.prev_hash.encode() + rfc8785.dumps(body)).hexdigest()

    assert record.hash == "sha256:" + expected == record_hash(record.prev_hash, body)
    assert record.verify_hash()


@pytest.mark.parametrize(
    "content",
    [
        {"text": "refund ü", "emoji": "😀", "quote": 'a "b" \\ c\n'},
        {"floats": [0.1, 1e-7, 1e21, 2.0, -0.0], "big": 2**53 - 1, "none": None, "yes": True},
        {"nested": {"z": 1, "a": [{"b": {}}, []], "é": "x", "😀": 1}},
    ],
    ids=["strings", "numbers", "nested"],
)
def test_a_records_line_is_its_canonical_json_and_hashes_like_its_body(
    content: dict[str, Any],
) -> None:
    import rfc8785

    behavior = task_behaviors()[1].replace(input=content, output=content, meta=content)
    decided = HashChain().append(behavior, PolicyEngine().evaluate(behavior))
    for record in (decided, HashChain().append(behavior)):
        assert record.canonical_line() == rfc8785.dumps(record.to_dict()) + b"\n"
        assert record.verify_hash()
        again = TraceRecord.from_dict(json.loads(record.canonical_line()))
        assert again == record
        assert again.canonical_line() == record.canonical_line()  # encoded again, the same


def test_a_record_round_trips_through_its_dict_and_json() -> None:
    for record in chain_of(task_behaviors()):
        again = TraceRecord.from_dict(json.loads(json.dumps(record.to_dict())))
        assert again == record
        assert again.verify_hash()


def test_a_record_gives_back_the_behaviour_it_was_made_from() -> None:
    behavior = task_behaviors()[2]
    record = HashChain().append(behavior)

    assert record.to_behavior() == behavior.replace(seq=0)
    assert record.step_type == "step.resource" and record.verb == "GET"
    assert record.scope == "step" and record.status == "completed"


def test_a_record_keeps_the_decision_that_let_the_step_run() -> None:
    engine = PolicyEngine(
        PolicySet.from_dict(
            {
                "version": 1,
                "name": "p",
                "policies": [
                    {"id": "gate-exec", "when": {"step_type": "step.exec"}, "rule": "requires_gate"}
                ],
            }
        )
    )
    intended = task_behaviors()[3].replace(status=Status.intended)
    decision = engine.evaluate(intended)

    record = HashChain().append(intended.replace(status=Status.blocked), decision)

    assert decision.action is Action.block
    assert record.decision == json.loads(json.dumps(decision.to_dict()))
    assert record.decision is not None
    assert record.decision["violations"][0]["policy_id"] == "gate-exec"
    assert record.status == "blocked"


def test_later_changes_to_the_callers_dicts_do_not_change_a_record() -> None:
    props: dict[str, Any] = {"target": {"domain": "tickets"}}
    behavior = Behavior(
        step_type=StepType.step_resource,
        verb=Verb.GET,
        properties=props,
        task_id="t",
        status=Status.completed,
    )
    record = HashChain().append(behavior)

    props["target"]["domain"] = "evil"

    assert record.properties == {"target": {"domain": "tickets"}}
    assert record.verify_hash()


def test_from_dict_rejects_what_is_not_a_trace_record() -> None:
    good = chain_of(task_behaviors())[0].to_dict()

    with pytest.raises(TraceIntegrityError, match="has no 'hash' field"):
        TraceRecord.from_dict({k: v for k, v in good.items() if k != "hash"})
    with pytest.raises(TraceIntegrityError, match="version 2"):
        TraceRecord.from_dict(good | {"v": 2})
    with pytest.raises(TraceIntegrityError, match="unexpected fields: 'extra'"):
        TraceRecord.from_dict(good | {"extra": 1})


def test_a_chain_holds_one_task() -> None:
    chain = HashChain()
    chain.append(task_behaviors("t1")[0])

    with pytest.raises(ValueError, match="one chain per task"):
        chain.append(task_behaviors("t2")[0])


def test_a_chain_can_resume_from_a_known_head() -> None:
    records = chain_of(task_behaviors())
    resumed = HashChain(next_seq=3, prev_hash=records[2].hash)

    assert resumed.append(task_behaviors()[3]) == records[3]
    assert resumed.next_seq == 4 and resumed.head == records[3].hash


def test_a_chain_hands_each_record_to_its_sinks() -> None:
    sink = MemorySink()
    chain = HashChain(sinks=[sink])
    records = [chain.append(b) for b in task_behaviors()]

    assert sink.records == records
    assert isinstance(sink, TraceSink)


# -- verification -----------------------------------------------------------------------------


def test_an_untouched_trace_verifies(trace_file: Path) -> None:
    result = verify_jsonl(trace_file)

    assert result.ok and result.first_error is None
    assert (result.records, result.tasks) == (10, 2)
    assert result.summary() == "10 records in 2 tasks, chain intact"


def test_verify_records_accepts_dicts_and_records() -> None:
    records = chain_of(task_behaviors())

    assert verify_records(records).ok
    assert verify_records(r.to_dict() for r in records).ok


def test_editing_one_field_of_one_line_names_that_line(trace_file: Path) -> None:
    lines = trace_file.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[5])  # task t2, seq 2
    record["output"] = {"subject": "nothing to see"}
    lines[5] = json.dumps(record)
    trace_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = verify_jsonl(trace_file)

    assert not result.ok
    problem = result.first_error
    assert problem is not None
    assert (problem.line, problem.task_id, problem.seq) == (6, "t2", 2)
    assert "does not match its hash" in problem.reason
    assert str(problem).startswith("line 6, task 't2' of agent 'bot', seq 2: ")


def test_an_edit_with_a_recomputed_hash_is_caught_at_the_next_record() -> None:
    records = [r.to_dict() for r in chain_of(task_behaviors())]
    forged = records[1] | {"input": {"prompt": "something else"}}
    forged["hash"] = record_hash(
        forged["prev_hash"], {k: v for k, v in forged.items() if k != "hash"}
    )
    records[1] = forged

    problem = verify_records(records).first_error

    assert problem is not None
    assert (problem.line, problem.seq) == (3, 2)
    assert "prev_hash does not match" in problem.reason and "line 2" in problem.reason


def test_deleting_a_line_names_the_gap(trace_file: Path) -> None:
    lines = trace_file.read_text(encoding="utf-8").splitlines()
    del lines[4]  # task t1, seq 2
    trace_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    problem = verify_jsonl(trace_file).first_error

    assert problem is not None
    assert (problem.line, problem.task_id, problem.seq) == (6, "t1", 3)
    assert problem.reason == (
        "Seq 2 of this task is missing: the record before this one has seq 1, so a record "
        "was deleted."
    )


def test_deleting_the_first_record_of_a_task_is_caught() -> None:
    records = [r.to_dict() for r in chain_of(task_behaviors())][1:]

    problem = verify_records(records).first_error

    assert problem is not None and problem.line == 1
    assert "first record has seq 1" in problem.reason


def test_reordered_lines_are_reported_as_out_of_order(trace_file: Path) -> None:
    lines = trace_file.read_text(encoding="utf-8").splitlines()
    lines[2], lines[4] = lines[4], lines[2]  # task t1: seq 2 now comes before seq 1
    trace_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    problem = verify_jsonl(trace_file).first_error

    assert problem is not None
    assert (problem.line, problem.seq) == (3, 2)
    assert problem.reason == (
        "The records are out of order: seq 2 comes before seq 1, which is on line 5."
    )


def test_a_duplicated_record_is_named() -> None:
    records = [r.to_dict() for r in chain_of(task_behaviors())]
    records.insert(3, records[1])

    problem = verify_records(records).first_error

    assert problem is not None and problem.line == 4
    assert "Seq 1 of this task appears a second time (first on line 2)" in problem.reason


def test_a_malformed_json_line_is_an_error(trace_file: Path) -> None:
    lines = trace_file.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3][:40]  # a record cut short, as by a crash mid-write
    trace_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = verify_jsonl(trace_file)

    assert not result.ok and result.first_error is not None
    assert result.first_error.line == 4
    assert result.first_error.reason.startswith("The line is not valid JSON")
    assert result.records == 3


def test_a_line_with_a_key_twice_is_an_error(tmp_path: Path) -> None:
    record = chain_of(task_behaviors())[0]
    line = json.dumps(record.to_dict())
    path = tmp_path / "t.jsonl"
    path.write_text(line[:-1] + ', "status": "completed"}\n', encoding="utf-8")

    problem = verify_jsonl(path).first_error

    assert problem is not None and "'status' appears twice" in problem.reason


def test_a_line_that_is_not_a_record_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("[1, 2, 3]\n", encoding="utf-8")

    problem = verify_jsonl(path).first_error

    assert problem is not None and problem.line == 1
    assert problem.reason == "The line holds a JSON list, not a trace record object."


def test_tasks_with_the_same_id_but_different_agents_are_separate_chains() -> None:
    first = chain_of(task_behaviors("t", agent_key="a"))
    second = chain_of(task_behaviors("t", agent_key="b"))

    result = verify_records([*first, *second])

    assert result.ok and result.tasks == 2


# -- reading ----------------------------------------------------------------------------------


def test_read_jsonl_returns_the_records_in_file_order(trace_file: Path) -> None:
    records = read_jsonl(trace_file)

    assert [(r.task_id, r.seq) for r in records][:4] == [("t1", 0), ("t2", 0), ("t1", 1), ("t2", 1)]
    assert records[2].input == {"prompt": "hello"}


def test_read_jsonl_refuses_a_broken_chain_unless_told_not_to_verify(trace_file: Path) -> None:
    lines = trace_file.read_text(encoding="utf-8").splitlines()
    del lines[2]
    trace_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    with pytest.raises(TraceIntegrityError, match="Seq 1 of this task is missing") as info:
        read_jsonl(trace_file)
    assert info.value.line == 4

    assert len(read_jsonl(trace_file, verify=False)) == 9


# -- sinks ------------------------------------------------------------------------------------


def test_jsonl_sink_writes_one_canonical_line_per_record(tmp_path: Path) -> None:
    from pathguard.canonical import canonical_json

    path = tmp_path / "nested" / "trace.jsonl"
    records = chain_of(task_behaviors())
    sink = JsonlSink(path)
    for record in records:
        sink.write(record)
    sink.flush()

    lines = path.read_bytes().splitlines()
    assert lines == [canonical_json(r.to_dict()) for r in records]
    sink.close()


def test_jsonl_sink_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    records = chain_of(task_behaviors())
    with JsonlSink(path) as sink:
        for record in records[:2]:
            sink.write(record)
    with JsonlSink(path) as sink:
        for record in records[2:]:
            sink.write(record)

    assert read_jsonl(path) == records


def test_a_partial_last_line_stays_on_its_own_line_when_appending(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"v": 1, "agent_', encoding="utf-8")
    with JsonlSink(path) as sink:
        sink.write(chain_of(task_behaviors())[0])

    result = verify_jsonl(path)

    assert result.first_error is not None and result.first_error.line == 1
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2


def test_jsonl_sink_loses_and_duplicates_nothing_under_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    sink = JsonlSink(path, max_queue=8)  # a small queue makes writers wait for room
    steps_per_task = 60

    def run_task(n: int) -> None:
        chain = HashChain(sinks=[sink])
        for i in range(steps_per_task):
            chain.append(
                Behavior(
                    step_type=StepType.step_self,
                    verb=Verb.POST,
                    step_name=f"note-{i}",
                    input={"i": i},
                    agent_key="bot",
                    task_id=f"task-{n}",
                    status=Status.completed,
                    timestamp=float(i),
                )
            )

    threads = [threading.Thread(target=run_task, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.flush()

    records = read_jsonl(path)
    assert len(records) == 8 * steps_per_task
    assert len({(r.task_id, r.seq) for r in records}) == 8 * steps_per_task
    assert verify_jsonl(path).tasks == 8
    sink.close()


def test_a_closed_sink_refuses_new_records(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "trace.jsonl")
    sink.close()
    sink.close()  # closing twice is harmless

    with pytest.raises(RuntimeError, match="is closed"):
        sink.write(chain_of(task_behaviors())[0])


def test_memory_sink_keeps_records_for_verification() -> None:
    sink = MemorySink()
    for record in chain_of(task_behaviors()):
        sink.write(record)

    assert verify_records(sink.dicts()).summary() == "5 records in 1 task, chain intact"
