"""`GET /metrics`: the app's Prometheus metrics (see `pathguard.platform.app.metrics`), no auth.

Like /healthz it needs no key, so a Prometheus server can scrape it; it shows counts only,
never keys, agents' names or payloads. Keep the port off the public internet, or put the
scrape behind the proxy's own access control.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pathguard.platform.app.metrics import Metrics

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format.", "content": {"text/plain": {}}}},
)
def metrics(request: Request) -> Response:
    """The app's metrics in the Prometheus text format."""
    registry: Metrics = request.app.state.metrics
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
