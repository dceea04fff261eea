"""Deterministic detectors for personal data, secrets and prompt-injection markers.

Each detector is an RE2 pattern (linear time, compiled at import) plus, where a pattern alone
would be too loose, a check of the candidate: the Luhn digit of a card number, the mod-97
checksum of an IBAN, the reserved ranges of a US SSN, the octets of an IPv4 address. Text is
scanned as UTF-8 bytes, so a string is encoded once however many detectors look at it.

A `Scanner` walks the strings (and integers) inside a nested payload and reports each finding
by kind and dot path, with a redacted preview: the matched value itself never leaves here.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import re2

__all__ = [
    "DETECTORS",
    "INJECTION_KINDS",
    "MAX_DEPTH",
    "PII_KINDS",
    "SECRET_KINDS",
    "Detector",
    "Finding",
    "Scanner",
    "find",
    "redact",
    "scanner_for",
]

MAX_DEPTH: Final = 32
"""Containers nested deeper than this are not scanned."""
MAX_CANDIDATES: Final = 10_000
"""Per detector and string: how many candidate matches are examined before giving up."""

Validator = Callable[[bytes, int, int], int | None]

_DIGITS: Final = frozenset(b"0123456789")
_LETTERS: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ALNUM: Final = _DIGITS | _LETTERS


@dataclasses.dataclass(frozen=True, slots=True)
class Detector:
    """One kind of finding: a pattern and an optional check of each candidate.

    `validate(data, start, end)` returns the end of the accepted finding (it may be shorter
    than the candidate) or None to reject it. `retry_inside` says whether a rejected
    candidate's text may still hold a finding that starts later inside it.
    """

    kind: str
    family: str
    pattern: str
    validate: Validator | None = None
    retry_inside: bool = False
    # A fallback reports only what no more specific detector already found at that place.
    fallback: bool = False
    regex: Any = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re2.compile(self.pattern))

    def spans(self, data: bytes, limit: int) -> list[tuple[int, int]]:
        """Up to `limit` accepted (start, end) byte spans in `data`."""
        found: list[tuple[int, int]] = []
        pos = 0
        size = len(data)
        for _ in range(MAX_CANDIDATES):
            if pos > size:
                break
            m = self.regex.search(data, pos)
            if m is None:
                break
            start, end = m.span()
            accepted = end if self.validate is None else self.validate(data, start, end)
            if accepted is not None:
                found.append((start, accepted))
                if len(found) >= limit:
                    break
                pos = max(accepted, start + 1)
            elif self.retry_inside:
                # Every retrying detector rejects a candidate glued to a letter or digit on
                # its left, so a later start inside the same word cannot succeed: skip it.
                pos = start + 1
                if data[start] in _ALNUM:
                    pos = _WORD_RUN.match(data, pos).end()
                pos = _next_char(data, pos)
            else:
                pos = max(end, start + 1)
        return found


_WORD_RUN: Final = re2.compile(r"[A-Za-z0-9]*")


def _next_char(data: bytes, pos: int) -> int:
    """The first position at or after `pos` that starts a UTF-8 character."""
    while pos < len(data) and data[pos] & 0xC0 == 0x80:
        pos += 1
    return pos


def _before(data: bytes, start: int) -> int:
    return data[start - 1] if start > 0 else 0x20


def _after(data: bytes, end: int) -> int:
    return data[end] if end < len(data) else 0x20


def _free_number(data: bytes, start: int, end: int) -> bool:
    """The number at data[start:end] is not part of a longer token or number.

    It is not touching a letter or digit, and not continuing a number through a separator
    (`1.2.3.4.5`, `12-555-123-4567`).
    """
    prev = _before(data, start)
    if prev in _ALNUM or prev in b"+_":
        return False
    if prev in b".-/" and _before(data, start - 1) in _DIGITS:
        return False
    nxt = _after(data, end)
    if nxt in _ALNUM or nxt == ord("_"):
        return False
    return not (nxt in b".-/" and _after(data, end + 1) in _DIGITS)


# -- personal data ------------------------------------------------------------------------

_EMAIL: Final = (
    r"[A-Za-z0-9._%+\-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)

# International numbers start with `+`; national ones are recognised in the North American
# 3-3-4 layout with separators. A bare run of digits is never read as a phone number.
_PHONE: Final = (
    r"\+[1-9]\d{0,3}(?:[ .\-]?(?:\(\d{1,4}\)|\d{1,5})){1,6}"
    r"|(?:1[ .\-])?(?:\(\d{3}\)[ .\-]?|\d{3}[ .\-])\d{3}[ .\-]\d{4}"
)


def _phone(data: bytes, start: int, end: int) -> int | None:
    if not _free_number(data, start, end):
        return None
    text = data[start:end]
    digits = sum(1 for b in text if b in _DIGITS)
    if text.startswith(b"+"):
        return end if 8 <= digits <= 15 else None
    area = text[2:] if text[:1] == b"1" and text[1:2] in (b" ", b".", b"-") else text
    area = area.lstrip(b"(")
    return end if area[:1] in (b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9") else None


_CARD: Final = r"\d(?:[ \-]?\d){12,18}"


def luhn_valid(digits: str) -> bool:
    """The Luhn check digit of a card number is right."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _continues_code(data: bytes, start: int) -> bool:
    """The digits at `start` continue a grouped code that began with letters and digits,
    like the `DE89 3704 0044 ...` of an IBAN (looked at over at most 40 bytes)."""
    pos = start - 1
    stop = max(0, start - 40)
    while pos >= stop and (data[pos] in _DIGITS or data[pos] in b" -"):
        pos -= 1
    return pos >= stop and data[pos] in _LETTERS and _after(data, pos + 1) in _DIGITS


def _card(data: bytes, start: int, end: int) -> int | None:
    prev = _before(data, start)
    if prev in _ALNUM or (prev in b".-" and _before(data, start - 1) in _DIGITS):
        return None
    if _continues_code(data, start):
        return None
    # The pattern is greedy: "4111 1111 1111 1111 123" is a card and a CVV. Try the whole
    # candidate, then shorter ones cut at a separator (never inside a run of digits).
    digits: list[str] = []
    cuts: list[tuple[int, int]] = []
    for pos in range(start, end):
        b = data[pos]
        if b in _DIGITS:
            digits.append(chr(b))
        elif digits:
            cuts.append((len(digits), pos))
    cuts.append((len(digits), end))
    for count, cut in reversed(cuts):
        if not 13 <= count <= 19:
            continue
        if cut == end and (_after(data, end) in _ALNUM or _after(data, end) == ord("_")):
            continue
        number = "".join(digits[:count])
        # Issuer numbers start with 2-6 (Mastercard, Amex, Visa, Discover, UnionPay...).
        if number[0] in "23456" and luhn_valid(number):
            return cut
    return None


_IBAN: Final = r"[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]){11,30}"

# Length of the IBAN of each country in the IBAN registry.
IBAN_LENGTHS: Final[Mapping[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
}  # fmt: skip


def iban_valid(iban: str) -> bool:
    """The mod-97 check of an IBAN (compact, upper case) gives 1."""
    rearranged = iban[4:] + iban[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


def _iban(data: bytes, start: int, end: int) -> int | None:
    if _before(data, start) in _ALNUM:
        return None
    length = IBAN_LENGTHS.get(data[start : start + 2].decode("ascii").upper())
    if length is None:
        return None
    chars: list[str] = []
    pos = start
    while pos < end and len(chars) < length:
        b = data[pos]
        if b != 0x20:
            chars.append(chr(b).upper())
        pos += 1
    if len(chars) < length or _after(data, pos) in _ALNUM:
        return None
    return pos if iban_valid("".join(chars)) else None


_SSN: Final = r"\d{3}[ \-]\d{2}[ \-]\d{4}"


def _ssn(data: bytes, start: int, end: int) -> int | None:
    if not _free_number(data, start, end):
        return None
    text = data[start:end].decode("ascii")
    if text[3] != text[6]:
        return None
    area, group, serial = text[:3], text[4:6], text[7:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    return end


_IPV4: Final = r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"


def _ipv4(data: bytes, start: int, end: int) -> int | None:
    if not _free_number(data, start, end) or _before(data, start) == ord("."):
        return None
    for octet in data[start:end].split(b"."):
        if int(octet) > 255 or (len(octet) > 1 and octet[:1] == b"0"):
            return None
    return end


# -- secrets ------------------------------------------------------------------------------


def _has_classes(value: bytes, needed: int) -> bool:
    """The value mixes at least `needed` of: lower case, upper case, digits, other."""
    lower = any(0x61 <= b <= 0x7A for b in value)
    upper = any(0x41 <= b <= 0x5A for b in value)
    digit = any(b in _DIGITS for b in value)
    other = any(b not in _ALNUM for b in value)
    return lower + upper + digit + other >= needed


def _jwt(data: bytes, start: int, end: int) -> int | None:
    header = data[start:end].split(b".", 1)[0]
    if len(header) > 4096:
        return None  # real headers are a few dozen bytes
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + b"=" * (-len(header) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    return end if isinstance(decoded, dict) and ("alg" in decoded or "typ" in decoded) else None


def _openai(data: bytes, start: int, end: int) -> int | None:
    body = data[start + 3 : min(end, start + 259)]
    if body.startswith(b"ant-"):
        return None  # an Anthropic key, reported as such
    # Real keys are random base62; a slug such as `sk-my-long-project-name-2024` is not.
    lower = any(0x61 <= b <= 0x7A for b in body)
    upper = any(0x41 <= b <= 0x5A for b in body)
    digit = any(b in _DIGITS for b in body)
    return end if lower and upper and digit else None


_PLACEHOLDERS: Final = (
    b"****",
    b"xxxx",
    b"redacted",
    b"changeme",
    b"your_",
    b"your-",
    b"example",
    b"placeholder",
    b"dummy",
    b"${",
    b"{{",
    b"<",
    b"%s",
)


def _assignment(data: bytes, start: int, end: int) -> int | None:
    text = data[start:end]
    if text[:6].lower() == b"bearer":
        value = text[6:].strip()
    else:
        seps = [i for i in (text.find(b"="), text.find(b":")) if i >= 0]
        if not seps:
            return None
        value = text[min(seps) + 1 :].strip(b" \t\"'")
    value = value[:256]
    low_value = value.lower()
    if any(p in low_value for p in _PLACEHOLDERS) or len(set(value)) < 4:
        return None
    return end if _has_classes(value, 2) else None


_ASSIGNED_NAMES: Final = (
    r"api[_\-]?key|secret[_\-]?(?:access[_\-]?)?key|client[_\-]?secret|access[_\-]?token"
    r"|auth[_\-]?token|refresh[_\-]?token|private[_\-]?key|password|passwd|secret|token"
)
# A name may carry a prefix (`GITHUB_TOKEN`, `db_password`); the value must look random
# enough (two character classes) to leave `password: required` alone.
_GENERIC: Final = (
    rf"(?i:\b(?:[A-Za-z0-9]+[_\-])*(?:{_ASSIGNED_NAMES})\b"
    r"[\"']?[ \t]*[:=][ \t]*[\"']?[^\s\"'<>{},;]{8,})"
    r"|(?i:\bbearer[ \t]+[A-Za-z0-9\-._~+/]{20,}=*)"
)

# -- prompt injection ---------------------------------------------------------------------

# Whitespace, including the no-break and zero-width spaces used to break up phrases.
_WS: Final = r"(?:\s|\x{00A0}|[\x{2000}-\x{200B}]|\x{202F}|\x{3000})+"


def _phrase(pattern: str) -> str:
    """A case-insensitive pattern in which each space stands for any run of whitespace."""
    return "(?i:" + pattern.replace(" ", _WS) + ")"


_OVERRIDE: Final = (
    r"\b(?:"
    + "|".join(
        _phrase(p)
        for p in (
            r"ignore (?:(?:all|any|the|your|of|my) )*"
            r"(?:previous|prior|above|earlier|preceding|foregoing|original) "
            r"(?:instructions?|prompts?|directions?|directives?|rules|messages?|context|commands?)",
            r"disregard (?:(?:all|any|the|your|of|my) )*"
            r"(?:(?:previous|prior|above|earlier|preceding|original) )?"
            r"(?:instructions?|system prompt|prompts?|rules|guidelines|directions?|directives?)",
            r"forget (?:(?:all|everything|the|your|of) )*(?:(?:previous|prior|above|earlier) )?"
            r"(?:instructions?|rules|guidelines|you (?:were|have been) told)",
            r"(?:override|bypass) (?:(?:all|any|the|your) )*"
            r"(?:system prompt|instructions?|safety (?:rules|guidelines|filters)|guardrails?"
            r"|restrictions)",
            r"you are now (?:a|an|the|my|in|no longer|DAN|free|unrestricted|jailbroken)\b",
            r"new (?:system )?instructions?\s*:",
            r"(?:reveal|print|output|repeat|show) (?:me )?(?:your|the) "
            r"(?:system prompt|(?:initial|original|hidden) (?:instructions?|prompt))",
        )
    )
    + ")"
)

_ROLE: Final = (
    r"<\|(?:im_start|im_end|system|user|assistant|endoftext|begin_of_text|end_of_text"
    r"|start_header_id|end_header_id|eot_id)\|>"
    r"|\[/?INST\]|<</?SYS>>"
    r"|(?im:^[ \t]*#{2,}[ \t]*(?:system|assistant|instructions?)[ \t]*:)"
    r"|(?i:</?system>)"
)

_HIDDEN: Final = "|".join(
    (
        r"[\x{200B}\x{2060}-\x{2064}\x{FEFF}\x{202A}-\x{202E}\x{2066}-\x{2069}]",
        r"[\x{E0000}-\x{E007F}]+",
        "(?s:"
        + _phrase(
            r"<!--(?:[^-]|-[^-])*?(?:ignore|disregard|instructions?|system prompt|you are now)"
        )
        + ")",
        _phrase(
            r"\b(?:note|message|instructions?|attention) (?:to|for) (?:the )?"
            r"(?:ai|assistant|llm|language model|agent|chatbot|model)s?[\t\x20]*[:,]"
        ),
        _phrase(
            r"\bif you are (?:an? )?"
            r"(?:ai|llm|(?:large )?language model|ai (?:assistant|agent)|chatbot)\b"
        ),
    )
)

_BOM: Final = "\ufeff".encode()
_BLACK_FLAG: Final = "\U0001f3f4".encode()
_TAG: Final = b"\xf3\xa0"  # the first two UTF-8 bytes of every tag character
_CANCEL_TAG: Final = "\U000e007f".encode()


def _hidden(data: bytes, start: int, end: int) -> int | None:
    if start == 0 and data.startswith(_BOM):
        return None  # a byte-order mark at the very start is an encoding artefact
    if data[start : start + 2] == _TAG:
        # Up to seven tag characters closed by CANCEL TAG right after the black flag spell a
        # subdivision flag emoji (England, Scotland, Wales); anything else smuggles text.
        first = start
        while first >= 4 and data[first - 4 : first - 2] == _TAG:
            first -= 4
        run_end = start
        while data[run_end : run_end + 2] == _TAG:
            run_end += 4
        if (
            data[max(0, first - 4) : first] == _BLACK_FLAG
            and (run_end - first) // 4 <= 7
            and data[run_end - 4 : run_end] == _CANCEL_TAG
        ):
            return None
    return end


# -- the catalogue ------------------------------------------------------------------------

_ALL: Final = (
    Detector("email", "pii", _EMAIL),
    Detector("phone", "pii", _PHONE, _phone, retry_inside=True),
    Detector("credit_card", "pii", _CARD, _card, retry_inside=True),
    Detector("iban", "pii", _IBAN, _iban, retry_inside=True),
    Detector("us_ssn", "pii", _SSN, _ssn, retry_inside=True),
    Detector("ipv4", "pii", _IPV4, _ipv4, retry_inside=True),
    Detector("aws_access_key", "secret", r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b"),
    Detector("gcp_api_key", "secret", r"\bAIza[0-9A-Za-z_\-]{35}"),
    Detector("private_key", "secret", r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"),
    Detector(
        "jwt", "secret", r"\beyJ[A-Za-z0-9_\-]{2,}\.eyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*", _jwt
    ),
    Detector(
        "github_token",
        "secret",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b",
    ),
    Detector(
        "slack_token",
        "secret",
        r"\bxox[abposer]-[A-Za-z0-9\-]{10,}|\bxapp-\d-[A-Za-z0-9\-]{10,}"
        r"|https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,}",
    ),
    Detector("stripe_key", "secret", r"\b[rs]k_live_[0-9A-Za-z]{20,}\b"),
    Detector("anthropic_key", "secret", r"\bsk-ant-[a-z]+\d{2}-[A-Za-z0-9_\-]{20,}"),
    Detector("openai_key", "secret", r"\bsk-[A-Za-z0-9_\-]{32,}", _openai),
    Detector("generic_secret", "secret", _GENERIC, _assignment, fallback=True),
    Detector("instruction_override", "injection", _OVERRIDE),
    Detector("role_marker", "injection", _ROLE),
    Detector("hidden_instruction", "injection", _HIDDEN, _hidden, retry_inside=True),
)

DETECTORS: Final[Mapping[str, Detector]] = {d.kind: d for d in _ALL}
PII_KINDS: Final = tuple(d.kind for d in _ALL if d.family == "pii")
SECRET_KINDS: Final = tuple(d.kind for d in _ALL if d.family == "secret")
INJECTION_KINDS: Final = tuple(d.kind for d in _ALL if d.family == "injection")


# -- scanning -----------------------------------------------------------------------------


def redact(value: str) -> str:
    """A preview that cannot give the value away: its first two characters and an ellipsis."""
    head = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in value[:2])
    return head + "…"


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """A detector's hit: what kind, where (a dot path), and a redacted preview."""

    kind: str
    path: str
    preview: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path, "preview": self.preview}


Path = tuple[str, ...]


class Scanner:
    """Runs a fixed set of detectors over every string inside a payload."""

    __slots__ = ("detectors", "kinds", "prefilter")

    def __init__(self, kinds: Iterable[str]) -> None:
        self.detectors = tuple(DETECTORS[k] for k in kinds)
        self.kinds = tuple(d.kind for d in self.detectors)
        # If no detector's pattern matches anywhere in a text, neither does the alternation of
        # all of them: one pass clears a clean payload.
        options = re2.Options()
        options.max_mem = 64 << 20  # room for the DFA of the combined pattern
        self.prefilter = re2.compile("|".join(f"(?:{d.pattern})" for d in self.detectors), options)

    def scan_text(self, text: str, limit: int = 1_000) -> list[tuple[str, str]]:
        """(kind, matched text) pairs in one string, in detector order. For tests and tools."""
        data = text.encode("utf-8", "replace")
        if limit <= 0 or self.prefilter.search(data) is None:
            return []
        hits: list[tuple[str, str]] = []
        taken: list[tuple[int, int]] = []
        for det in self.detectors:
            for start, end in det.spans(data, limit - len(hits)):
                if det.fallback and any(s < end and start < e for s, e in taken):
                    continue
                taken.append((start, end))
                hits.append((det.kind, data[start:end].decode("utf-8", "replace")))
            if len(hits) >= limit:
                break
        return hits

    def scan(self, value: Any, root: str, limit: int) -> tuple[list[Finding], bool]:
        """Findings inside `value` (at most `limit`), and whether more may have been cut off."""
        items: list[tuple[Path, str, bool]] = []
        _collect(value, (root,), 0, items)
        if not items:
            return [], False
        # Lines keep `^` and `\b` true at the start of every string, so a match inside any
        # one string is a match in the joined text.
        joined = "\n".join(text for _, text, _ in items).encode("utf-8", "replace")
        if self.prefilter.search(joined) is None:
            return [], False
        found: list[tuple[Path, str, str]] = []
        secret_keys: set[Path] = set()
        for path, text, is_key in items:
            hits = self.scan_text(text, limit - len(found))
            if hits and is_key:
                secret_keys.add(path)
            found.extend((path, kind, match) for kind, match in hits)
            if len(found) >= limit:
                break
        findings = [
            Finding(kind, _show_path(path, secret_keys), redact(match))
            for path, kind, match in found
        ]
        return findings, len(findings) >= limit


def _collect(value: Any, path: Path, depth: int, out: list[tuple[Path, str, bool]]) -> None:
    """Gather (path, text, is_key) for every string and integer inside `value`."""
    if isinstance(value, str):
        out.append((path, value, False))
    elif isinstance(value, int) and not isinstance(value, bool):
        out.append((path, str(value), False))
    elif depth >= MAX_DEPTH:
        return
    elif isinstance(value, Mapping):
        for key, item in value.items():
            sub = (*path, str(key))
            if isinstance(key, str):
                out.append((sub, key, True))
            _collect(item, sub, depth + 1, out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _collect(item, (*path, str(index)), depth + 1, out)


def _show_path(path: Path, secret_keys: set[Path]) -> str:
    """A dot path for a finding; keys that themselves hold a finding are not spelled out."""
    parts = []
    for i, segment in enumerate(path):
        if i and path[: i + 1] in secret_keys:
            parts.append("<redacted key>")
        elif len(segment) > 40:
            parts.append(segment[:39] + "…")
        else:
            parts.append(segment)
    return ".".join(parts)


@functools.cache
def scanner_for(kinds: tuple[str, ...]) -> Scanner:
    """A shared scanner for a set of kinds (built once per distinct set)."""
    return Scanner(kinds)


def find(text: str, kinds: Iterable[str] | None = None) -> list[str]:
    """The kinds found in a piece of text, in detector order (every detector by default)."""
    scanner = scanner_for(tuple(kinds) if kinds is not None else tuple(DETECTORS))
    return [kind for kind, _ in scanner.scan_text(text)]


# Built at import so the first policy that uses the defaults pays nothing.
for _family in (PII_KINDS, SECRET_KINDS, INJECTION_KINDS):
    scanner_for(_family)
