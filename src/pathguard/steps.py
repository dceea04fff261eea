"""How a decorated function becomes a step: the work `@guard.step` does once, at decoration.

The decorator inspects the signature, resolves the template for the step's name, validates the
(step type, verb) pair and merges the static properties; each call then only binds its
arguments to parameter names and builds the behaviour.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from pathguard.templates import Classification, Template, check_classification, deep_merge
from pathguard.vocabulary import StepType, Verb, valid_verbs

__all__ = ["PropertiesArg", "StepSpec", "bind_arguments", "build_spec"]

PropertiesArg = Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]] | None


@dataclasses.dataclass(frozen=True, slots=True)
class StepSpec:
    """Everything the decorator worked out once, at decoration time."""

    name: str
    step_type: StepType | None
    verb: Verb | None
    classify: Classification | Callable[[Mapping[str, Any]], Classification]
    properties: Mapping[str, Any]
    dynamic_properties: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None
    meta: Mapping[str, Any]
    names: tuple[str, ...]
    named: frozenset[str]
    resolved: tuple[StepType, Verb | None] | None
    varargs: str | None
    varkw: str | None
    defaults: Mapping[str, Any]
    skip_first: bool
    capture_input: bool
    capture_output: bool


def build_spec(
    template: Template,
    func: Callable[..., Any],
    declared: StepType | None,
    declared_verb: Verb | None,
    step_name: str | None,
    properties: PropertiesArg,
    meta: Mapping[str, Any] | None,
    capture_input: bool,
    capture_output: bool,
) -> StepSpec:
    """Work out, once, everything a governed call needs: name, classification, properties,
    and how to map positional and keyword arguments to parameter names."""
    name: str = step_name or getattr(func, "__name__", None) or "step"
    classify = template.resolver(name, declared)
    static_props: Mapping[str, Any] = {}
    resolved = None
    if isinstance(classify, Classification):
        final_type = declared or classify.step_type or StepType.step_unknown
        agrees = classify.step_type in (None, final_type)
        final_verb = declared_verb
        if final_verb is None and agrees:
            final_verb = classify.verb
        check_classification(final_type, final_verb, needs_verb=True, name=name)
        if final_verb is None and len(valid_verbs(final_type)) == 1:
            final_verb = valid_verbs(final_type)[0]
        resolved = (final_type, final_verb)
        if agrees:
            static_props = classify.properties
    dynamic = None
    if callable(properties):
        dynamic = properties
    elif properties:
        static_props = deep_merge(static_props, properties)
    if declared is StepType.step_gate or (
        isinstance(classify, Classification) and classify.step_type is StepType.step_gate
    ):
        static_props = deep_merge({"guard": {"gate_type": "human_approval"}}, static_props)
    signature = inspect.signature(func)
    names: list[str] = []
    named: set[str] = set()
    varargs = varkw = None
    defaults: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            varargs = param.name
        elif param.kind is param.VAR_KEYWORD:
            varkw = param.name
        else:
            named.add(param.name)
            if param.kind is not param.KEYWORD_ONLY:
                names.append(param.name)
            if param.default is not param.empty:
                defaults[param.name] = param.default
    skip_first = bool(names) and names[0] in ("self", "cls")
    return StepSpec(
        name=name,
        step_type=declared,
        verb=declared_verb,
        classify=classify,
        properties=static_props,
        dynamic_properties=dynamic,
        meta=dict(meta or {}),
        names=tuple(names),
        named=frozenset(named),
        resolved=resolved,
        varargs=varargs,
        varkw=varkw,
        defaults=defaults,
        skip_first=skip_first,
        capture_input=capture_input,
        capture_output=capture_output,
    )


def bind_arguments(
    spec: StepSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The call's arguments by parameter name, defaults included (`self`/`cls` left out)."""
    arguments = dict(spec.defaults) if spec.defaults else {}
    names = spec.names
    n = len(names)
    for i, value in enumerate(args):
        if i < n:
            arguments[names[i]] = value
        elif spec.varargs is not None:
            arguments.setdefault(spec.varargs, []).append(value)
    if spec.skip_first and args:
        arguments.pop(names[0], None)
    if kwargs:
        if spec.varkw is None:
            arguments.update(kwargs)
        else:
            for key, value in kwargs.items():
                if key in spec.named:
                    arguments[key] = value
                else:
                    arguments.setdefault(spec.varkw, {})[key] = value
    return arguments
