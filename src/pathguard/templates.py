"""Templates: ordered rules that classify a step from its name, type and arguments.

A template says "a tool called `send_*` is `step.message` POST with `message.channel: email`",
so steps can be governed without every decorator spelling out its behaviour. The first rule
that matches wins. Properties are deep-merged: template first, then the decorator, then
call-site overrides. A step the template cannot classify and the decorator did not type
becomes `step.unknown`. pathguard ships `templates/default.yaml`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pathguard.errors import InvalidBehaviorError, TemplateError
from pathguard.matching import FieldConditions, compile_globs, compile_regex
from pathguard.vocabulary import StepType, Verb, valid_verbs

__all__ = ["Classification", "Template", "TemplateRule", "deep_merge", "load_template"]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: `override` on top of `base`, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(old, value)
        else:
            merged[key] = value
    return merged


class _Match(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    step_name: str | list[str] | None = Field(default=None, description="glob(s), full match")
    step_name_regex: str | None = Field(default=None, description="RE2 regex, searched")
    step_type: StepType | list[StepType] | None = None
    arguments: dict[str, Any] | None = Field(
        default=None, description="conditions on argument paths (`to`, `options.mode`)"
    )

    @field_validator("step_type", mode="before")
    @classmethod
    def _types(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [StepType.parse(v) for v in value]
        return None if value is None else StepType.parse(value)

    @field_validator("step_name_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            compile_regex(value)
        return value


class _Set(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    step_type: StepType | None = None
    verb: Verb | None = None
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("step_type", mode="before")
    @classmethod
    def _type(cls, value: Any) -> Any:
        return None if value is None else StepType.parse(value)

    @field_validator("verb", mode="before")
    @classmethod
    def _verb(cls, value: Any) -> Any:
        return None if value is None else Verb.parse(value)


class TemplateRule(BaseModel):
    """One classification rule: when `match` holds, apply `set`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: _Match
    set: _Set


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    name: str
    rules: list[TemplateRule] = Field(default_factory=list)


class Classification:
    """What a template decided for a step: type, verb and properties (any may be unset)."""

    __slots__ = ("properties", "step_type", "verb")

    def __init__(
        self,
        step_type: StepType | None = None,
        verb: Verb | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        self.step_type = step_type
        self.verb = verb
        self.properties: Mapping[str, Any] = properties or {}

    def __repr__(self) -> str:
        return f"Classification({self.step_type}, {self.verb}, {dict(self.properties)})"


_NOTHING = Classification()


class _Compiled:
    __slots__ = ("arguments", "classification", "names", "regex", "types")

    def __init__(self, rule: TemplateRule) -> None:
        m = rule.match
        globs = [m.step_name] if isinstance(m.step_name, str) else m.step_name
        self.names = compile_globs(globs) if globs else None
        self.regex = compile_regex(m.step_name_regex) if m.step_name_regex else None
        types = m.step_type if isinstance(m.step_type, list) else [m.step_type]
        self.types = frozenset(t for t in types if t is not None) or None
        self.arguments = FieldConditions(m.arguments) if m.arguments else None
        s = rule.set
        self.classification = Classification(s.step_type, s.verb, s.properties)

    def static_match(self, name: str, step_type: StepType | None) -> bool:
        if self.names is not None and self.names.fullmatch(name) is None:
            return False
        if self.regex is not None and self.regex.search(name) is None:
            return False
        return self.types is None or step_type in self.types


class _Arguments:
    """Lets FieldConditions read argument paths (`to`, `options.mode`) from a dict."""

    __slots__ = ("_args",)

    def __init__(self, args: Mapping[str, Any]) -> None:
        self._args = args

    def __getattr__(self, name: str) -> Any:
        from pathguard.vocabulary import ABSENT

        try:
            return self._args[name]
        except KeyError:
            return ABSENT


class Template:
    """An ordered list of classification rules; the first match wins."""

    def __init__(self, name: str, rules: list[TemplateRule]) -> None:
        self.name = name
        self.rules = tuple(rules)
        self._compiled = tuple(_Compiled(r) for r in rules)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<template>") -> Template:
        try:
            doc = _Document.model_validate(data)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msg = str(err["msg"]).removeprefix("Value error, ")
                lines.append(f"  - {loc}: {msg}")
            raise TemplateError(
                f"The template {source} is not valid:\n" + "\n".join(lines)
            ) from None
        for i, rule in enumerate(doc.rules):
            s = rule.set
            if (
                s.verb is not None
                and s.step_type is not None
                and s.verb not in valid_verbs(s.step_type)
            ):
                raise TemplateError(
                    f"The template {source}, rule #{i + 1}, sets {s.step_type.value} with verb "
                    f"{s.verb.value}, which that step type does not take."
                )
        return cls(doc.name, doc.rules)

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<template>") -> Template:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TemplateError(f"The template {source} is not valid YAML: {exc}") from None
        if not isinstance(data, Mapping):
            raise TemplateError(f"The template {source} must be a mapping with `name` and `rules`.")
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | Path) -> Template:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TemplateError(f"Cannot read the template {path} ({exc.strerror}).") from None
        return cls.from_yaml(text, source=str(path))

    @classmethod
    def default(cls) -> Template:
        """The template pathguard ships (`pathguard/templates/default.yaml`)."""
        text = resources.files("pathguard").joinpath("templates/default.yaml").read_text("utf-8")
        return cls.from_yaml(text, source="default.yaml")

    def resolver(
        self, step_name: str, step_type: StepType | None
    ) -> Classification | Callable[[Mapping[str, Any]], Classification]:
        """Pre-resolve for one step: a fixed Classification when no candidate rule reads the
        arguments, otherwise a function of the call's arguments."""
        candidates = [c for c in self._compiled if c.static_match(step_name, step_type)]
        if not candidates:
            return _NOTHING
        if candidates[0].arguments is None:
            return candidates[0].classification
        first_static = next(
            (i for i, c in enumerate(candidates) if c.arguments is None), len(candidates)
        )
        dynamic = candidates[: first_static + 1]

        def classify(arguments: Mapping[str, Any]) -> Classification:
            view = _Arguments(arguments)
            for c in dynamic:
                if c.arguments is None or c.arguments(view):
                    return c.classification
            return _NOTHING

        return classify

    def classify(
        self,
        step_name: str,
        step_type: StepType | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> Classification:
        """Classify one step (the first matching rule's settings, or nothing)."""
        resolved = self.resolver(step_name, step_type)
        return resolved(arguments or {}) if callable(resolved) else resolved


def load_template(source: Template | str | Path | Mapping[str, Any] | None) -> Template:
    """Accept a Template, a path, a dict, or None for the shipped default."""
    if source is None:
        return Template.default()
    if isinstance(source, Template):
        return source
    if isinstance(source, Mapping):
        return Template.from_dict(source)
    return Template.load(source)


def check_classification(
    step_type: StepType, verb: Verb | None, *, needs_verb: bool = False, name: str = ""
) -> None:
    """Raise InvalidBehaviorError early (at decoration) for a tuple outside the table; with
    `needs_verb`, also when the step type needs a verb and none was given or derived."""
    allowed = valid_verbs(step_type)
    if verb is not None and verb not in allowed:
        expected = ", ".join(v.value for v in allowed) or "no verb"
        raise InvalidBehaviorError(
            f"{step_type.value} does not take the verb {verb.value}; it takes {expected}."
        )
    if needs_verb and verb is None and len(allowed) > 1:
        where = f"The step {name!r} is" if name else "This step is"
        raise InvalidBehaviorError(
            f"{where} {step_type.value}, which needs a verb, and neither the decorator nor the "
            f"template gives one; pass one of: {', '.join(v.value for v in allowed)}."
        )
