"""The app's background work: the webhook dispatcher, started and stopped with the app.

`create_app` does not start it yet; pass `lifespan` to FastAPI, or call `start_dispatcher(app)`
once the app is built and `stop_dispatcher(app)` when it shuts down:

```python
app = create_app(url)
app.router.lifespan_context = lifespan   # or start_dispatcher(app) by hand
```
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from pathguard.platform.webhooks import WebhookDispatcher

__all__ = ["lifespan", "start_dispatcher", "stop_dispatcher"]


def start_dispatcher(app: FastAPI, *, interval: float = 2.0) -> WebhookDispatcher:
    """Start a webhook dispatcher on the app's sessions; kept as `app.state.webhook_dispatcher`."""
    existing: WebhookDispatcher | None = getattr(app.state, "webhook_dispatcher", None)
    if existing is not None:
        return existing
    dispatcher = WebhookDispatcher(app.state.sessions, interval=interval)
    dispatcher.start()
    app.state.webhook_dispatcher = dispatcher
    return dispatcher


def stop_dispatcher(app: FastAPI) -> None:
    """Stop the app's webhook dispatcher, if one runs."""
    dispatcher: WebhookDispatcher | None = getattr(app.state, "webhook_dispatcher", None)
    if dispatcher is not None:
        dispatcher.stop()
        app.state.webhook_dispatcher = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """A FastAPI lifespan that runs the webhook dispatcher while the app serves."""
    start_dispatcher(app)
    try:
        yield
    finally:
        stop_dispatcher(app)
