"""Policy documents: load from YAML, JSON or dicts, validate all-or-nothing, fingerprint.

Loading collects every problem in the document (unknown keys and rule names with did-you-mean
hints, bad params, invalid step types, duplicate ids, ...) and raises one PolicyLoadError
listing them all, each with its file, line, policy id and field. Nothing is loaded when
anything is wrong.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pathguard.decisions import Effect, Mode, Severity
from pathguard.errors import PolicyLoadError, PolicyProblem
from pathguard.matching import STEP_TYPES, StepFilter, StepMatcher
from pathguard.rules._base import CompileContext, Rule, compile_rule, get_rule, rule_names
from pathguard.vocabulary import RiskClass

__all__ = ["Policy", "PolicySet", "load_policies"]

PolicyScopeName = Literal["step_execution", "agent_registration"]


class Policy(BaseModel):
    """One rule applied to the steps (or registrations) it targets, with what to do on violation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")
    description: str = ""
    scope: PolicyScopeName = "step_execution"
    when: StepFilter | None = None
    rule: str
    params: dict[str, Any] = Field(default_factory=dict)
    effect: Effect = Effect.block
    severity: Severity = Severity.medium
    mode: Mode = Mode.enforce
    agents: list[str] | None = None
    risk_classification: list[RiskClass] | None = None
    enabled: bool = True

    def target(self) -> StepMatcher:
        """The compiled `when` filter; without one, every `step.*` behaviour."""
        return StepMatcher(self.when, default_types=STEP_TYPES)

    def build_rule(self) -> Rule:
        """Compile this policy's rule (params validated against the rule's model)."""
        ctx = CompileContext(policy_id=self.id, scope=self.scope, target=self.target())
        return compile_rule(self.rule, self.params, ctx)


class PolicySet(BaseModel):
    """A named, versioned document of policies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    name: str = Field(min_length=1)
    description: str = ""
    policies: tuple[Policy, ...] = ()

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> PolicySet:
        """Validate a parsed document; raise PolicyLoadError listing every problem."""
        return _validate_document(data, source=source, lines={})

    @classmethod
    def from_yaml(cls, text: str, *, source: str | None = None) -> PolicySet:
        """Parse and validate YAML (JSON is YAML too)."""
        data, lines = _parse(text, source)
        return _validate_document(data, source=source, lines=lines)

    @classmethod
    def from_json(cls, text: str, *, source: str | None = None) -> PolicySet:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyLoadError(
                [
                    PolicyProblem(
                        message=f"not valid JSON: {exc.msg}.", source=source, line=exc.lineno
                    )
                ]
            ) from None
        _, lines = _parse(text, source)
        return _validate_document(data, source=source, lines=lines)

    @classmethod
    def load(cls, path: str | Path) -> PolicySet:
        """Read a `.yaml`, `.yml` or `.json` file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyLoadError(
                [PolicyProblem(message=f"cannot read the file ({exc.strerror}).", source=str(path))]
            ) from None
        if path.suffix.lower() == ".json":
            return cls.from_json(text, source=str(path))
        return cls.from_yaml(text, source=str(path))

    # -- views --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The document as plain data (defaults omitted), suitable for YAML or JSON."""
        return self.model_dump(mode="json", exclude_defaults=True, exclude_none=True) | {
            "version": self.version,
            "name": self.name,
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @property
    def digest(self) -> str:
        """A content fingerprint: the canonical hash of the document."""
        from pathguard.rules._base import canonical_hash

        return canonical_hash(self.model_dump(mode="json"))

    def get(self, policy_id: str) -> Policy:
        for policy in self.policies:
            if policy.id == policy_id:
                return policy
        raise KeyError(policy_id)

    def merged_with(self, *others: PolicySet, name: str | None = None) -> PolicySet:
        """One set holding this set's policies and then the others' (ids must stay unique)."""
        policies = [p.model_dump(mode="json") for s in (self, *others) for p in s.policies]
        return PolicySet.from_dict({"version": 1, "name": name or self.name, "policies": policies})


def load_policies(source: str | Path | Mapping[str, Any] | PolicySet | None) -> PolicySet:
    """Accept a path, a YAML/JSON string, a dict or a PolicySet; None gives an empty set."""
    if source is None:
        return PolicySet(name="empty")
    if isinstance(source, PolicySet):
        return source
    if isinstance(source, Mapping):
        return PolicySet.from_dict(source)
    if isinstance(source, Path):
        return PolicySet.load(source)
    text = str(source)
    if "\n" in text or text.lstrip().startswith(("{", "version:", "name:", "policies:")):
        return PolicySet.from_yaml(text)
    return PolicySet.load(text)


# -- parsing and validation ---------------------------------------------------------------

Loc = tuple[str | int, ...]


def _parse(text: str, source: str | None) -> tuple[Any, dict[Loc, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyLoadError(
            [
                PolicyProblem(
                    message=f"not valid YAML: {problem}.",
                    source=source,
                    line=mark.line + 1 if mark else None,
                )
            ]
        ) from None
    lines: dict[Loc, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return data, lines


def _index_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*loc, str(key.value))
            lines[sub] = key.start_mark.line + 1
            _index_lines(value, sub, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*loc, i), lines)


def _line_for(loc: Loc, lines: dict[Loc, int]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


_POLICY_KEYS = list(Policy.model_fields)
_SET_KEYS = list(PolicySet.model_fields)
_FILTER_KEYS = list(StepFilter.model_fields)


def _hint(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _message(error: Mapping[str, Any], choices: Sequence[str] = ()) -> str:
    kind = error["type"]
    loc = error["loc"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        return f"unknown key {key!r}.{_hint(key, choices)}"
    if kind == "missing":
        return "this field is required."
    if kind == "enum":
        expected = error.get("ctx", {}).get("expected", "")
        options = [o.strip(" '") for o in expected.replace(" or ", ",").split(",") if o.strip()]
        given = str(error.get("input"))
        return f"{given!r} is not allowed.{_hint(given, options)} Use {expected}."
    msg = str(error["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg if msg.endswith(".") else msg + "."


def _choices_for(loc: Loc) -> Sequence[str]:
    """Which keys were valid where an unknown key was found."""
    parent = loc[:-1]
    if parent and parent[-1] == "when":
        return _FILTER_KEYS
    return _POLICY_KEYS


def _validate_document(data: Any, *, source: str | None, lines: dict[Loc, int]) -> PolicySet:
    problems: list[PolicyProblem] = []

    def add(message: str, loc: Loc, policy_id: str | None = None, field: str | None = None) -> None:
        problems.append(
            PolicyProblem(
                message=message,
                source=source,
                policy_id=policy_id,
                field=field,
                line=_line_for(loc, lines),
            )
        )

    if not isinstance(data, Mapping):
        add("the document must be a mapping with `version`, `name` and `policies`.", ())
        raise PolicyLoadError(problems)

    for key in data:
        if key not in _SET_KEYS:
            add(
                f"unknown top-level key {key!r}.{_hint(str(key), _SET_KEYS)}",
                (str(key),),
                field=str(key),
            )
    version = data.get("version", 1)
    if version != 1:
        add(
            f"unsupported version {version!r}; this pathguard reads version 1.",
            ("version",),
            field="version",
        )
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        add("the document needs a non-empty `name`.", ("name",), field="name")
    raw_policies = data.get("policies", [])
    if not isinstance(raw_policies, list):
        add("`policies` must be a list.", ("policies",), field="policies")
        raw_policies = []

    policies: list[Policy] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_policies):
        loc: Loc = ("policies", index)
        if not isinstance(raw, Mapping):
            add(f"policy #{index + 1} must be a mapping.", loc)
            continue
        pid = raw.get("id") if isinstance(raw.get("id"), str) else None
        label = pid or f"#{index + 1}"
        # Checked before validation so a duplicate is reported even when either copy has
        # other problems too.
        if pid is not None and pid in seen:
            add(
                f"duplicate policy id {pid!r} (first used by policy #{seen[pid] + 1}); ids must "
                "be unique in a document.",
                (*loc, "id"),
                pid,
                "id",
            )
        elif pid is not None:
            seen[pid] = index
        try:
            policy = Policy.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                err_loc = tuple(err["loc"])
                field = ".".join(str(p) for p in err_loc) or None
                add(_message(err, _choices_for(err_loc)), (*loc, *err_loc), label, field)
            if _check_rule_name(raw.get("rule"), loc, label, add) and isinstance(
                raw.get("params", {}), Mapping
            ):
                _check_params(str(raw["rule"]), raw.get("params") or {}, loc, label, add)
            continue
        if policy.scope == "agent_registration" and policy.when is not None:
            add(
                "`when` filters steps, but an agent_registration policy has no step; remove "
                "`when` (use `agents` or `risk_classification` to target).",
                (*loc, "when"),
                policy.id,
                "when",
            )
        if not _check_rule_name(policy.rule, loc, label, add):
            continue
        if not _check_params(policy.rule, policy.params, loc, policy.id, add):
            continue
        try:
            policy.build_rule()
        except (ValueError, TypeError, KeyError) as exc:
            add(str(exc).strip('"'), (*loc, "params"), policy.id, "params")
        else:
            policies.append(policy)

    if problems:
        raise PolicyLoadError(problems)
    return PolicySet(
        version=1,
        name=str(name),
        description=str(data.get("description", "")),
        policies=tuple(policies),
    )


def _check_rule_name(rule: Any, loc: Loc, label: str, add: Any) -> bool:
    if not isinstance(rule, str):
        return False
    try:
        get_rule(rule)
    except KeyError:
        add(
            f"unknown rule {rule!r}.{_hint(rule, rule_names())} Run `pathguard rules` to list "
            "them.",
            (*loc, "rule"),
            label,
            "rule",
        )
        return False
    return True


def _check_params(rule: str, params: Mapping[str, Any], loc: Loc, label: str, add: Any) -> bool:
    model = get_rule(rule).Params
    try:
        model.model_validate(params)
    except ValidationError as exc:
        for err in exc.errors():
            err_loc = ("params", *err["loc"])
            add(
                _message(err, list(model.model_fields)),
                (*loc, *err_loc),
                label,
                ".".join(str(p) for p in err_loc),
            )
        return False
    return True
