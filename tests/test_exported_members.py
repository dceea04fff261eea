"""The public surface: `pathguard.__all__` is sorted and is exactly what the package exports."""

from __future__ import annotations

import types

import pytest

import pathguard

INCLUDED_DUNDERS = {"__version__"}

# Every name spec/core.md says users import from `pathguard` itself.
SPEC_NAMES = [
    "ApprovalDeniedError",
    "ApprovalRequest",
    "Behavior",
    "BlockedError",
    "Decision",
    "Guard",
    "InvalidBehaviorError",
    "NoActiveTaskError",
    "PathguardError",
    "PolicyEngine",
    "PolicyLoadError",
    "PolicySet",
    "PolicyWarning",
    "Scope",
    "Status",
    "StepType",
    "Verb",
    "rule",
]


def public_names() -> list[str]:
    return [
        name
        for name, value in vars(pathguard).items()
        if (not name.startswith("_") or name in INCLUDED_DUNDERS)
        and not isinstance(value, types.ModuleType)
    ]


def test_all_is_sorted() -> None:
    assert pathguard.__all__ == sorted(pathguard.__all__)


def test_all_is_exactly_the_public_names() -> None:
    assert sorted(pathguard.__all__) == sorted(public_names())


def test_every_name_in_all_exists() -> None:
    missing = [name for name in pathguard.__all__ if not hasattr(pathguard, name)]
    assert missing == []


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_spec_names_are_importable_from_the_package(name: str) -> None:
    assert name in pathguard.__all__
    assert getattr(pathguard, name) is not None


@pytest.mark.parametrize(
    ("error", "bases"),
    [
        ("InvalidBehaviorError", (ValueError,)),
        ("PolicyLoadError", (ValueError,)),
        ("NoActiveTaskError", (RuntimeError,)),
        ("BlockedError", ()),
        ("ApprovalDeniedError", ("BlockedError",)),
    ],
)
def test_errors_share_one_root_and_the_builtin_a_user_would_catch(
    error: str, bases: tuple[type | str, ...]
) -> None:
    cls = getattr(pathguard, error)
    assert issubclass(cls, pathguard.PathguardError)
    for base in bases:
        assert issubclass(cls, getattr(pathguard, base) if isinstance(base, str) else base)


def test_the_version_is_a_string() -> None:
    assert isinstance(pathguard.__version__, str)
    assert pathguard.__version__.count(".") >= 2
