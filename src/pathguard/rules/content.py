"""Content rules: personal data, secrets and prompt-injection markers inside payloads.

The detectors are deterministic (patterns plus checksums, see `_detectors`): no model is
downloaded or called, and the same payload always gives the same decision. Every string
inside the scanned fields is examined, however deeply it sits in dicts and lists (up to a
bounded depth). A violation names the kinds found and where; it never repeats the value.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pathguard.matching import check_field_path
from pathguard.rules._base import CompileContext, EvalContext, Fail, Rule, register
from pathguard.rules._detectors import (
    DETECTORS,
    INJECTION_KINDS,
    PII_KINDS,
    SECRET_KINDS,
    Finding,
    Scanner,
    scanner_for,
)
from pathguard.rules.fields import reads_output
from pathguard.vocabulary import ABSENT, Behavior, field_getter

__all__ = [
    "MAX_FINDINGS",
    "PiiInRequest",
    "PiiInResponse",
    "PromptInjectionMarker",
    "SecretInPayload",
]

MAX_FINDINGS: Final = 20
"""How many findings one violation lists in its details (the scan stops there)."""

_ORDER: Final = {kind: i for i, kind in enumerate(DETECTORS)}


def _check_kinds(value: list[str] | None, known: tuple[str, ...], what: str) -> list[str] | None:
    if value is None:
        return None
    if not value:
        raise ValueError(f"kinds is empty; omit it to use every {what} detector.")
    for kind in value:
        if kind not in known:
            close = difflib.get_close_matches(kind, known, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{kind!r} is not a {what} detector.{hint} Known kinds: {', '.join(known)}."
            )
    return value


def _check_fields(value: list[str]) -> list[str]:
    for path in value:
        check_field_path(path)
    return list(dict.fromkeys(value))


class PiiParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: list[str] | None = Field(
        default=None,
        description="which detectors to run: " + ", ".join(PII_KINDS) + " (default: all)",
    )

    @field_validator("kinds")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        return _check_kinds(value, PII_KINDS, "pii")


class SecretParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: list[str] = Field(
        default=["input"], min_length=1, description="dot paths to scan (e.g. `input`, `meta`)"
    )
    kinds: list[str] | None = Field(
        default=None, description="which secret detectors to run (default: all)"
    )

    @field_validator("fields")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        return _check_fields(value)

    @field_validator("kinds")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        return _check_kinds(value, SECRET_KINDS, "secret")


class InjectionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: list[str] = Field(
        default=["input"],
        min_length=1,
        description="dot paths to scan: where text from outside entered the task",
    )
    kinds: list[str] | None = Field(
        default=None,
        description="which marker families to look for: "
        + ", ".join(INJECTION_KINDS)
        + " (default: all)",
    )

    @field_validator("fields")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        return _check_fields(value)

    @field_validator("kinds")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        return _check_kinds(value, INJECTION_KINDS, "prompt-injection")


class _ScanRule(Rule):
    """Scan some fields of the step with a set of detectors; violate on any finding."""

    noun: ClassVar[str] = ""
    family: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, params: BaseModel, ctx: CompileContext, fields: list[str], kinds: list[str] | None
    ) -> None:
        super().__init__(params, ctx)
        chosen = sorted(set(kinds), key=_ORDER.__getitem__) if kinds else self.family
        self.scanner: Scanner = scanner_for(tuple(chosen))
        self.targets: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(
            (path, field_getter(path)) for path in fields
        )
        if any(reads_output(path) for path in fields):
            self.phase = "after"

    def check(self, subject: Behavior, state: Any, ctx: EvalContext | None) -> Fail | None:
        findings: list[Finding] = []
        truncated = False
        for path, get in self.targets:
            value = get(subject)
            if value is ABSENT or value is None:
                continue
            found, cut = self.scanner.scan(value, path, MAX_FINDINGS - len(findings))
            findings.extend(found)
            if cut or len(findings) >= MAX_FINDINGS:
                truncated = True
                break
        if not findings:
            return None
        places = list(dict.fromkeys(f"{f.kind} at {f.path}" for f in findings))
        reason = f"{self.noun} found: {', '.join(places[:3])}"
        if len(places) > 3:
            reason += f" (+{len(places) - 3} more)"
        kinds = sorted({f.kind for f in findings}, key=_ORDER.__getitem__)
        return Fail(
            reason,
            {
                "kinds": kinds,
                "findings": [f.to_dict() for f in findings],
                "truncated": truncated,
            },
        )


@register
class PiiInRequest(_ScanRule):
    """No personal data (email, phone, card, IBAN, US SSN, IPv4) in the step's input."""

    name = "pii_in_request"
    Params = PiiParams
    summary = "the step's input holds no personal data (email, phone, card, IBAN, SSN, IPv4)"
    noun = "personal data"
    family = PII_KINDS

    def __init__(self, params: PiiParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx, ["input"], params.kinds)


@register
class PiiInResponse(_ScanRule):
    """No personal data in the step's output (checked after the step ran)."""

    name = "pii_in_response"
    Params = PiiParams
    summary = "the step's output holds no personal data (checked after the step ran)"
    noun = "personal data"
    family = PII_KINDS

    def __init__(self, params: PiiParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx, ["output"], params.kinds)


@register
class SecretInPayload(_ScanRule):
    """No secret (cloud keys, private keys, JWTs, API tokens) in the given fields."""

    name = "secret_in_payload"
    Params = SecretParams
    summary = "no secret (cloud key, private key, JWT, API token) in the scanned fields"
    noun = "secret"
    family = SECRET_KINDS

    def __init__(self, params: SecretParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx, params.fields, params.kinds)


@register
class PromptInjectionMarker(_ScanRule):
    """No instruction-override phrase, role marker or hidden instruction in the given fields."""

    name = "prompt_injection_marker"
    Params = InjectionParams
    summary = "no prompt-injection marker in text that entered the task"
    noun = "prompt-injection marker"
    family = INJECTION_KINDS

    def __init__(self, params: InjectionParams, ctx: CompileContext) -> None:
        super().__init__(params, ctx, params.fields, params.kinds)
