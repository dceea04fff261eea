"""The `pathguard` command line: check and test policies, list rules, verify traces, try it out.

Exit codes: 0 success; 1 the thing checked failed (policy problems, a broken trace, a step
reaching `--fail-on`); 2 the command could not run (a missing file, a policy file that does
not load, a trace that does not verify when replaying).
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python
from rich.console import Console
from rich.text import Text

from pathguard.decisions import Action, Decision, Violation
from pathguard.engine import PolicyEngine
from pathguard.errors import PolicyLoadError, TraceIntegrityError
from pathguard.policies import PolicySet
from pathguard.rules._base import all_rules, get_rule
from pathguard.trace import TraceRecord, read_jsonl, verify_jsonl
from pathguard.vocabulary import Behavior, Status, StepType, Verb

__all__ = ["app", "main"]

app = typer.Typer(
    name="pathguard",
    help="Runtime governance for AI agents: check policies, replay traces, verify audit trails.",
    no_args_is_help=True,
    add_completion=False,
)
policy_app = typer.Typer(help="Validate, test and compare policy files.", no_args_is_help=True)
audit_app = typer.Typer(help="Check recorded traces.", no_args_is_help=True)
db_app = typer.Typer(help="Set up the platform's database.", no_args_is_help=True)
keys_app = typer.Typer(help="Create API keys for the platform.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")


def _out() -> Console:
    # Built per command so that output goes to whatever sys.stdout is at the time (tests
    # swap it); soft_wrap keeps long lines whole instead of folding them at 80 columns.
    return Console(soft_wrap=True, highlight=False)


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def _fail(message: str, code: int = 2) -> NoReturn:
    _err().print(Text(f"Error: {message}", style="red"))
    raise typer.Exit(code)


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        _fail(f"The {what} {str(path)!r} does not exist.")
    if not path.is_file():
        _fail(f"The {what} {str(path)!r} is not a file.")


def _load_policies(path: Path) -> PolicySet:
    """Load a policy file for replay; print its problems and exit 2 when it does not load."""
    _require_file(path, "policy file")
    try:
        return PolicySet.load(path)
    except PolicyLoadError as exc:
        err = _err()
        err.print(Text(f"Error: the policy file {str(path)!r} does not load:", style="red"))
        for problem in exc.problems:
            err.print(Text(f"  {problem}"))
        raise typer.Exit(2) from None


def _load_trace(path: Path, verify: bool) -> list[TraceRecord]:
    _require_file(path, "trace file")
    try:
        return read_jsonl(path, verify=verify)
    except TraceIntegrityError as exc:
        hint = " Run `pathguard audit verify` to inspect it, or pass --no-verify to replay it."
        _fail(f"{exc}{hint if verify else ''}")


def _describe(step_type: str, verb: str | None, step_name: str | None) -> str:
    """`step.resource GET read_ticket`: the step tuple and its name, when it has its own."""
    parts = [step_type]
    if verb:
        parts.append(verb)
    if step_name and step_name != step_type:
        parts.append(step_name)
    return " ".join(parts)


def _label(record: TraceRecord) -> str:
    return _describe(record.step_type, record.verb, record.step_name)


def _task_label(record: TraceRecord) -> str:
    agent = f" (agent {record.agent_key})" if record.agent_key else ""
    return f"task {record.task_id}{agent}"


def _violation_line(v: Violation, sign: str = "✗") -> Text:
    tag = "shadow" if v.mode.value == "shadow" else v.effect.value
    return Text(
        f"{sign} {v.policy_id} [{tag}, {v.severity.value}]: {v.reason}",
        style="red" if tag == "block" else "yellow",
    )


_ACTION_STYLE = {
    Action.allow: "green",
    Action.warn: "yellow",
    Action.approve: "cyan",
    Action.block: "bold red",
}


# -- policy check -----------------------------------------------------------------------------


@policy_app.command("check")
def policy_check(
    files: Annotated[list[Path], typer.Argument(help="Policy files (YAML or JSON).")],
) -> None:
    """Validate policy files; print every problem with file, line, policy id and field."""
    out = _out()
    failed = missing = False
    for path in files:
        if not path.is_file():
            what = "does not exist" if not path.exists() else "is not a file"
            _err().print(Text(f"Error: the policy file {str(path)!r} {what}.", style="red"))
            missing = True
            continue
        try:
            policy_set = PolicySet.load(path)
            PolicyEngine(policy_set)
        except PolicyLoadError as exc:
            failed = True
            count = len(exc.problems)
            out.print(
                Text(
                    f"{path}: {count} problem{'s' if count != 1 else ''}, not loaded",
                    style="bold red",
                )
            )
            for problem in exc.problems:
                out.print(Text(f"  {_problem_line(problem, path)}"))
            continue
        out.print(Text(f"{path}: ok, {_policy_summary(policy_set)}", style="green"))
    if missing:
        raise typer.Exit(2)
    if failed:
        raise typer.Exit(1)


def _problem_line(problem: Any, path: Path) -> str:
    # Problems raised by PolicyEngine (not the loader) carry no source; name the file anyway.
    if problem.source is None:
        problem = dataclasses.replace(problem, source=str(path))
    return str(problem)


def _policy_summary(policy_set: PolicySet) -> str:
    policies = policy_set.policies
    count = len(policies)
    shadow = sum(1 for p in policies if p.mode.value == "shadow")
    disabled = sum(1 for p in policies if not p.enabled)
    extras = []
    if shadow:
        extras.append(f"{shadow} in shadow mode")
    if disabled:
        extras.append(f"{disabled} disabled")
    tail = f" ({', '.join(extras)})" if extras else ""
    return f"{count} polic{'ies' if count != 1 else 'y'} in {policy_set.name!r}{tail}"


# -- replay -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Replayed:
    record: TraceRecord
    before: Decision
    after: Decision | None

    @property
    def action(self) -> Action:
        if self.after is not None and self.after.action.strength > self.before.action.strength:
            return self.after.action
        return self.before.action

    @property
    def violations(self) -> tuple[Violation, ...]:
        extra = self.after.violations if self.after is not None else ()
        return self.before.violations + extra

    @property
    def shadow(self) -> tuple[Violation, ...]:
        extra = self.after.shadow if self.after is not None else ()
        return self.before.shadow + extra


_TASK_CLOSERS = frozenset({StepType.task_end, StepType.task_error})


def _replay(engine: PolicyEngine, records: Sequence[TraceRecord]) -> list[_Replayed]:
    """Decide on every recorded step as the Guard would have, then record what happened.

    Records are replayed in file order (so per-agent limits see tasks interleaved as they
    were). Each step is evaluated as intended (no output yet); a completed step is then
    checked by the output-reading policies, as the Guard does after the function returns.
    """
    results = []
    for record in records:
        recorded = record.to_behavior()
        before = engine.evaluate(recorded.replace(status=Status.intended, output=None))
        after = None
        if recorded.status is Status.completed and engine.has_output_policies(recorded):
            after = engine.evaluate_output(recorded)
        engine.record(recorded)
        if recorded.step_type in _TASK_CLOSERS:
            engine.end_task(recorded.task_id)
        results.append(_Replayed(record=record, before=before, after=after))
    return results


def _by_task(results: Sequence[_Replayed]) -> Iterator[tuple[str, list[_Replayed]]]:
    groups: dict[tuple[str | None, str | None], list[_Replayed]] = {}
    for r in results:
        groups.setdefault((r.record.agent_key, r.record.task_id), []).append(r)
    for steps in groups.values():
        yield _task_label(steps[0].record), steps


class FailOn(StrEnum):
    """The weakest action that makes `policy test` exit 1."""

    block = "block"
    approve = "approve"
    warn = "warn"


@policy_app.command("test")
def policy_test(
    file: Annotated[Path, typer.Argument(help="The policy file to test.")],
    trace: Annotated[Path, typer.Option("--trace", "-t", help="A JSONL trace to replay.")],
    fail_on: Annotated[
        FailOn | None,
        typer.Option(help="Exit 1 when any step reaches this action or a stronger one."),
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check the trace's hash chain first.")
    ] = True,
) -> None:
    """Replay a recorded trace through a policy file and print every step's decision."""
    policy_set = _load_policies(file)
    records = _load_trace(trace, verify)
    results = _replay(PolicyEngine(policy_set), records)
    out = _out()
    out.print(
        Text(f"Replaying {trace} against {file} ({_policy_summary(policy_set)})", style="bold")
    )
    counts = dict.fromkeys(Action, 0)
    for label, steps in _by_task(results):
        out.print()
        out.print(Text(label, style="bold"))
        for r in steps:
            counts[r.action] += 1
            _print_step(out, r)
    out.print()
    tasks = len({(r.record.agent_key, r.record.task_id) for r in results})
    tally = ", ".join(f"{counts[a]} {a.value}" for a in Action)
    out.print(
        Text(
            f"{len(results)} step{'s' if len(results) != 1 else ''} in {tasks} "
            f"task{'s' if tasks != 1 else ''}: {tally}."
        )
    )
    if fail_on is not None:
        threshold = Action(fail_on.value).strength
        reached = sum(n for a, n in counts.items() if a.strength >= threshold)
        if reached:
            out.print(
                Text(
                    f"{reached} step{'s' if reached != 1 else ''} reached "
                    f"{fail_on.value} or stronger (--fail-on {fail_on.value}).",
                    style="bold red",
                )
            )
            raise typer.Exit(1)


def _print_step(out: Console, r: _Replayed) -> None:
    line = Text(f"  seq {r.record.seq:>3}  {_label(r.record)}  [{r.record.status}]  → ")
    line.append(r.action.value, style=_ACTION_STYLE[r.action])
    recorded = (r.record.decision or {}).get("action")
    if recorded is not None and recorded != r.action.value:
        line.append(f"  (recorded: {recorded})", style="dim")
    out.print(line)
    for v in (*r.violations, *r.shadow):
        out.print(Text("        ").append_text(_violation_line(v)))


# -- policy diff ------------------------------------------------------------------------------


@policy_app.command("diff")
def policy_diff(
    old: Annotated[Path, typer.Argument(help="The current policy file.")],
    new: Annotated[Path, typer.Argument(help="The proposed policy file.")],
    trace: Annotated[Path, typer.Option("--trace", "-t", help="A JSONL trace to replay.")],
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check the trace's hash chain first.")
    ] = True,
) -> None:
    """Replay a trace through two policy files and show the steps whose decision changes."""
    old_set = _load_policies(old)
    new_set = _load_policies(new)
    records = _load_trace(trace, verify)
    before = _replay(PolicyEngine(old_set), records)
    after = _replay(PolicyEngine(new_set), records)
    out = _out()
    out.print(Text(f"Replaying {trace}: {old} → {new}", style="bold"))
    stricter = looser = reworded = 0
    current_task = None
    for a, b in zip(before, after, strict=True):
        old_ids = {v.policy_id for v in a.violations}
        new_ids = {v.policy_id for v in b.violations}
        if a.action is b.action and old_ids == new_ids:
            continue
        if b.action.strength > a.action.strength:
            stricter += 1
        elif b.action.strength < a.action.strength:
            looser += 1
        else:
            reworded += 1
        label = _task_label(a.record)
        if label != current_task:
            current_task = label
            out.print()
            out.print(Text(label, style="bold"))
        line = Text(f"  seq {a.record.seq:>3}  {_label(a.record)}: ")
        line.append(a.action.value, style=_ACTION_STYLE[a.action])
        line.append(" → ")
        line.append(b.action.value, style=_ACTION_STYLE[b.action])
        out.print(line)
        for v in a.violations:
            if v.policy_id not in new_ids:
                out.print(Text("        - ").append_text(_violation_line(v)))
        for v in b.violations:
            out.print(
                Text("        + " if v.policy_id not in old_ids else "          ").append_text(
                    _violation_line(v)
                )
            )
    changed = stricter + looser + reworded
    out.print()
    out.print(
        Text(
            f"{len(records)} step{'s' if len(records) != 1 else ''}: {changed} changed "
            f"({stricter} stricter, {looser} looser, {reworded} same action with other "
            f"policies), {len(records) - changed} unchanged."
        )
    )


# -- rules ------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    """A short readable name for a param's type (`StepType | list[StepType]`)."""
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Union or origin is types.UnionType:
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (list, tuple, set, frozenset) or (
        isinstance(origin, type) and issubclass(origin, Sequence)
    ):
        inner = [a for a in args if a is not Ellipsis]
        return f"list[{_type_name(inner[0])}]" if inner else "list"
    if origin is dict or (isinstance(origin, type) and origin.__name__ == "Mapping"):
        return f"dict[{', '.join(_type_name(a) for a in args)}]" if args else "dict"
    if isinstance(tp, type):
        return {bool: "bool", int: "int", float: "float", str: "str"}.get(tp, tp.__name__)
    return str(tp)


def _catalogue() -> list[dict[str, Any]]:
    entries = []
    for name, cls in all_rules().items():
        params = []
        model: type[BaseModel] = cls.Params
        for field_name, info in model.model_fields.items():
            required = info.is_required()
            default = None
            if not required:
                raw = info.get_default(call_default_factory=True)
                default = None if raw is PydanticUndefined else to_jsonable_python(raw)
            params.append(
                {
                    "name": info.alias or field_name,
                    "type": _type_name(info.annotation),
                    "required": required,
                    "default": default,
                    "description": info.description or "",
                }
            )
        entries.append(
            {
                "name": name,
                "summary": cls.summary,
                "scopes": sorted(cls.scopes),
                "params": params,
            }
        )
    return entries


@app.command("rules")
def rules(
    name: Annotated[str | None, typer.Argument(help="Show only this rule.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the catalogue as JSON.")] = False,
) -> None:
    """List the registered rules with their parameters."""
    entries = _catalogue()
    if name is not None:
        try:
            get_rule(name)
        except KeyError as exc:
            _fail(f"{exc.args[0]} Run `pathguard rules` to list them.")
        entries = [e for e in entries if e["name"] == name]
    out = _out()
    if as_json:
        payload = entries if name is None else entries[0]
        out.print(Text(json.dumps(payload, indent=2, ensure_ascii=False)))
        return
    for i, entry in enumerate(entries):
        if i:
            out.print()
        out.print(
            Text(entry["name"], style="bold cyan").append(f"  {entry['summary']}", style="default")
        )
        if entry["scopes"] != ["step_execution"]:
            out.print(Text(f"  scopes: {', '.join(entry['scopes'])}", style="dim"))
        if not entry["params"]:
            out.print(Text("  (no params)", style="dim"))
        for p in entry["params"]:
            need = "required" if p["required"] else f"default {json.dumps(p['default'])}"
            line = Text(f"  {p['name']}: ", style="bold").append(
                f"{p['type']} ({need})", style="default"
            )
            if p["description"]:
                line.append(f" - {p['description']}", style="default")
            out.print(line)


# -- audit verify -----------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify(
    files: Annotated[list[Path], typer.Argument(help="JSONL trace files.")],
) -> None:
    """Check the hash chains of trace files; name the first bad record of a broken one."""
    out = _out()
    broken = False
    for path in files:
        _require_file(path, "trace file")
        result = verify_jsonl(path)
        if result.ok:
            out.print(Text(f"{path}: {result.summary()}", style="green"))
        else:
            broken = True
            out.print(Text(f"{path}: chain broken at {result.first_error}", style="bold red"))
    if broken:
        raise typer.Exit(1)


# -- try --------------------------------------------------------------------------------------

TRY_POLICIES = """\
version: 1
name: try-demo
policies:
  - id: exec-needs-approval
    description: Running code needs a human approval earlier in the task
    when: {step_type: step.exec}
    rule: requires_gate
    params: {gate_type: human_approval}
    effect: block
    severity: critical
  - id: no-email-after-pii
    description: Once customer PII has been read, nothing leaves by email
    when: {step_type: step.message, verb: POST, properties: {message.channel: email}}
    rule: not_after
    params: {step_type: step.resource, verb: GET, properties: {data.classification: pii}}
    effect: block
    severity: high
  - id: read-ticket-first
    description: The model should see the ticket before it is asked anything
    when: {step_type: step.model}
    rule: requires_prior
    params: {step_type: step.resource, verb: GET, properties: {target.domain: tickets}}
    effect: warn
    severity: low
"""


def _try_steps() -> list[tuple[str, Behavior]]:
    def step(step_type: str, verb: str | None, name: str, **props: Any) -> Behavior:
        return Behavior(
            step_type=StepType.parse(step_type),
            verb=None if verb is None else Verb.parse(verb),
            step_name=name,
            properties=props,
            agent_key="demo-agent",
            task_id="demo-task",
        )

    return [
        ("The task starts.", step("task.start", None, "task.start")),
        (
            "The agent asks the model before reading the ticket.",
            step("step.model", "POST", "chat", model={"provider": "scripted"}),
        ),
        (
            "It reads the ticket.",
            step("step.resource", "GET", "read_ticket", target={"domain": "tickets"}),
        ),
        (
            "It wants to run a script, with no approval yet.",
            step("step.exec", None, "run_script", exec={"runtime": "python"}),
        ),
        (
            "A human approves.",
            step(
                "step.gate",
                None,
                "approve",
                guard={"gate_type": "human_approval", "decision": "approved"},
            ),
        ),
        (
            "It runs the script again, now approved.",
            step("step.exec", None, "run_script", exec={"runtime": "python"}),
        ),
        (
            "It reads the customer's record, which holds PII.",
            step(
                "step.resource",
                "GET",
                "read_customer",
                target={"domain": "crm"},
                data={"classification": "pii"},
            ),
        ),
        (
            "It tries to email the customer's details.",
            step("step.message", "POST", "send_email", message={"channel": "email"}),
        ),
        ("The task ends.", step("task.end", None, "task.end")),
    ]


@app.command("try")
def try_demo(
    show_policies: Annotated[
        bool, typer.Option("--policies/--no-policies", help="Print the demo policy file first.")
    ] = True,
) -> None:
    """Run a short scripted agent task offline and explain every decision."""
    out = _out()
    engine = PolicyEngine(PolicySet.from_yaml(TRY_POLICIES, source="try-demo"))
    if show_policies:
        out.print(Text("The demo policies:", style="bold"))
        out.print(Text(TRY_POLICIES.rstrip()), style="dim")
        out.print()
    for number, (story, intended) in enumerate(_try_steps(), start=1):
        behavior = intended.replace(timestamp=float(number))
        decision = engine.evaluate(behavior)
        status = Status.completed if decision.allowed else Status.blocked
        engine.record(behavior.replace(status=status))
        verb = None if behavior.verb is None else behavior.verb.value
        what = _describe(behavior.step_type.value, verb, behavior.step_name)
        title = Text(f"{number}. {story}  ", style="bold").append(f"{what} → ", style="default")
        title.append(decision.action.value, style=_ACTION_STYLE[decision.action])
        out.print(title)
        out.print(Text("   " + decision.explain().replace("\n", "\n   ")))
        out.print()
    out.print(
        Text(
            "Blocked steps never run and never count as done; they are recorded for the "
            "audit. Check your own policies with `pathguard policy check FILE`."
        )
    )


# -- db upgrade, keys create (the platform; needs the server extra) ---------------------------

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL; default $PATHGUARD_DATABASE_URL, else ./.pathguard/pathguard.db.",
        show_default=False,
    ),
]


def _upgrade(database_url: str | None) -> str:
    """Migrate the database; exit 2 with the reason when the platform or database is unusable."""
    try:
        from pathguard.platform.database import resolve_url
        from pathguard.platform.migrations import upgrade
    except ImportError as exc:
        _fail(str(exc))
    from sqlalchemy.exc import SQLAlchemyError

    from pathguard.errors import ConfigurationError

    try:
        url = resolve_url(database_url)
        upgrade(url)
    except ConfigurationError as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        _fail(
            f"The database could not be set up ({type(exc).__name__}: {exc.args[0]}). "
            "Check --database-url or PATHGUARD_DATABASE_URL."
        )
    return url.render_as_string(hide_password=True)


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Create or migrate the platform's database to the newest schema (safe to run again)."""
    from pathguard.platform.migrations import head_revision

    where = _upgrade(database_url)
    _out().print(Text(f"{where}: schema at revision {head_revision()}", style="green"))


@keys_app.command("create")
def keys_create(
    agent: Annotated[
        str | None, typer.Option("--agent", help="Create a key for this agent only.")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Create an admin key.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API key and print it once; only a salted hash of it is stored."""
    if admin == (agent is not None):
        _fail("Pass either --admin or --agent KEY (one of them).")
    where = _upgrade(database_url)
    from pathguard.platform.database import create_engine, session_factory
    from pathguard.platform.keys import create_key

    engine = create_engine(database_url)
    try:
        with session_factory(engine).begin() as session:
            secret = create_key(session, admin=admin, agent_key=agent)
    except ValueError as exc:
        _fail(str(exc))
    finally:
        engine.dispose()
    role = "admin key" if admin else f"key for agent {agent!r}"
    out = _out()
    out.print(Text(f"Created an {role} in {where}:" if admin else f"Created a {role} in {where}:"))
    out.print(Text(secret, style="bold"))
    out.print(Text("Store it now: it will not be shown again."))


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option("--host", help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="The port.")] = 8400,
    database_url: DatabaseUrl = None,
) -> None:
    """Run the platform's HTTP API (migrating the database first)."""
    where = _upgrade(database_url)
    import uvicorn

    from pathguard.platform.app import create_app
    from pathguard.platform.database import create_engine, session_factory
    from pathguard.platform.keys import list_keys

    engine = create_engine(database_url)
    with session_factory(engine)() as session:
        has_admin = any(p.admin for p in list_keys(session))
    out = _out()
    out.print(Text(f"pathguard platform on {where}", style="green"))
    out.print(Text(f"API: http://{host}:{port}/v1   OpenAPI: http://{host}:{port}/openapi.json"))
    if not has_admin:
        # The URL itself is not repeated: it may hold a password.
        url_option = " --database-url <the same URL>" if database_url else ""
        out.print(
            Text(
                f"No admin key exists yet; create one with: pathguard keys create --admin"
                f"{url_option}",
                style="yellow",
            )
        )
    try:
        uvicorn.run(create_app(engine=engine), host=host, port=port)
    finally:
        engine.dispose()


def main() -> None:
    """The console entry point `pathguard`."""
    app()


if __name__ == "__main__":
    main()
