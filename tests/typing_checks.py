"""Static checks that `@guard.step` keeps the decorated function's type (run by mypy).

`tests/test_guard.py::test_the_decorator_keeps_static_types` runs mypy on this file. It is
never executed: every line is a claim about types. A `type: ignore[...]` marks a call that
must be rejected; mypy's strict mode reports an ignore that is not needed, so the file fails
to check if the decorator ever starts accepting those calls.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, assert_type

from pathguard import Guard, StepType, Verb

guard = Guard("typing-checks")


@guard.step(StepType.step_model, Verb.POST)
def chat(x: int) -> str:
    return str(x)


@guard.step(StepType.step_resource, Verb.GET, properties={"target": {"domain": "tickets"}})
async def read_ticket(x: int) -> str:
    return str(x)


@guard.step(StepType.step_exec, properties=lambda args: {"exec": {"runtime": args["lang"]}})
def run(code: str, *, lang: str = "python", **options: bool) -> list[int]:
    return [len(code)]


sync_callable: Callable[[int], str] = chat
async_callable: Callable[[int], Coroutine[Any, Any, str]] = read_ticket

assert_type(chat(1), str)
assert_type(chat(x=1), str)
pending = read_ticket(1)
_ = assert_type(pending, Coroutine[Any, Any, str])
assert_type(run("print()", lang="sh", verbose=True), list[int])


async def awaits_the_async_step() -> str:
    result = await read_ticket(1)
    assert_type(result, str)
    return result


chat("one")  # type: ignore[arg-type]
chat(1, 2)  # type: ignore[call-arg]
chat(y=1)  # type: ignore[call-arg]
run("x", lang=3)  # type: ignore[arg-type]
wrong: Callable[[str], str] = chat  # type: ignore[assignment]
not_a_str: str = read_ticket(1)  # type: ignore[assignment]
