"""Approvals and warnings: what an approval handler is asked, and how it is asked."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pathguard.decisions import Decision
from pathguard.errors import ConfigurationError
from pathguard.vocabulary import Behavior

__all__ = ["ApprovalHandler", "ApprovalRequest", "PolicyWarning", "ask_async", "ask_sync"]

logger = logging.getLogger("pathguard")


class PolicyWarning(UserWarning):
    """A step violated a policy whose effect is `warn`; it ran anyway."""

    def __init__(self, message: str, *, decision: Decision, behavior: Behavior | None) -> None:
        super().__init__(message)
        self.decision = decision
        self.behavior = behavior


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalRequest:
    """What an approval handler is asked about.

    `behavior` is the intended step (None for an agent registration), `decision` the
    engine's verdict asking for approval, and `input_hash` the canonical hash of the step's
    input that an approval is bound to.
    """

    behavior: Behavior | None
    decision: Decision
    input_hash: str
    agent_key: str
    task_id: str | None
    phase: Literal["before", "after", "registration"] = "before"

    @property
    def reasons(self) -> list[str]:
        """`policy id: reason` for every policy asking for approval."""
        return [f"{v.policy_id}: {v.reason}" for v in self.decision.violations]


ApprovalHandler = Callable[[ApprovalRequest], bool | Awaitable[bool]]


def ask_sync(handler: ApprovalHandler | None, request: ApprovalRequest) -> bool:
    """Ask a sync or async handler from sync code; a handler that raises denies."""
    if handler is None:
        return False
    try:
        answer = handler(request)
        if inspect.isawaitable(answer):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return bool(asyncio.run(_awaited(answer)))
            _close_awaitable(answer)
            raise ConfigurationError(
                "The approval_handler is async, but a sync step called it from inside a "
                "running event loop; make the step async or give a sync handler."
            )
        return bool(answer)
    except ConfigurationError:
        raise
    except Exception as exc:
        logger.error("the approval handler raised %r; treating it as a denial", exc)
        return False


async def ask_async(handler: ApprovalHandler | None, request: ApprovalRequest) -> bool:
    """Ask a sync or async handler from async code; a handler that raises denies."""
    if handler is None:
        return False
    try:
        answer = handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return bool(answer)
    except Exception as exc:
        logger.error("the approval handler raised %r; treating it as a denial", exc)
        return False


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _close_awaitable(awaitable: Awaitable[Any]) -> None:
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()
