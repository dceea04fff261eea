"""The API's routes, one module per resource; `ROUTERS` lists them in the order they mount."""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter

from pathguard.platform.app.routes import (
    agents,
    audit,
    bundle,
    engine,
    health,
    incidents,
    metrics,
    policy_sets,
    reports,
    tasks,
    traces,
    webhooks,
)

__all__ = ["ROUTERS"]

ROUTERS: Final[tuple[APIRouter, ...]] = (
    health.router,
    metrics.router,
    agents.router,
    bundle.router,
    policy_sets.router,
    traces.router,
    engine.router,
    tasks.router,
    incidents.router,
    audit.router,
    webhooks.router,
    reports.router,
)
