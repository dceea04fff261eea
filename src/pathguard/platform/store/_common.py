"""What the store modules share: their errors and the bounds on stored text."""

from __future__ import annotations

import datetime as dt
from typing import Final

from pathguard.errors import PathguardError

__all__ = [
    "MAX_ID_LENGTH",
    "InvalidTransitionError",
    "NotFoundError",
]

MAX_ID_LENGTH: Final = 256


class NotFoundError(PathguardError, LookupError):
    """The agent, policy set, task, incident or webhook asked for does not exist."""


class InvalidTransitionError(PathguardError, ValueError):
    """An incident cannot move from its current status to the one asked for."""


def _when(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)
