"""The platform's HTTP API (FastAPI): `create_app()` builds it, `pathguard serve` runs it.

```python
app = create_app("sqlite:///pathguard.db")   # or create_app(engine=an_engine)
uvicorn.run(app, host="127.0.0.1", port=8400)
```

Bundles of `GET /v1/agents/{key}/policies` are signed with the keys in
`PATHGUARD_POLICY_HMAC_SECRET` and `PATHGUARD_POLICY_ED25519_PRIVATE_KEY` (PEM), read when
`create_app` runs (see `routes.bundle`). `GET /metrics` serves Prometheus metrics from a
registry of the app's own (see `metrics`).

`create_app` does not migrate the database (`pathguard serve` and `pathguard db upgrade` do).
The app keeps no state between requests beyond its engine, so several workers can serve one
PostgreSQL database. Every error is JSON with a `detail` sentence; refused policy documents
add `problems`, refused trace batches add where the first bad record is.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

import pathguard
from pathguard.errors import PolicyLoadError
from pathguard.platform.app.lifespan import lifespan
from pathguard.platform.app.metrics import Metrics, MetricsMiddleware
from pathguard.platform.app.routes import ROUTERS
from pathguard.platform.app.routes.bundle import SigningKeys
from pathguard.platform.database import create_engine, session_factory
from pathguard.platform.store import IngestError, InvalidTransitionError, NotFoundError

__all__ = ["create_app"]

_INGEST_STATUS = {
    "invalid": status.HTTP_400_BAD_REQUEST,
    "forbidden": status.HTTP_403_FORBIDDEN,
    "chain": status.HTTP_409_CONFLICT,
    "conflict": status.HTTP_409_CONFLICT,
}


def create_app(database_url: str | URL | None = None, *, engine: Engine | None = None) -> FastAPI:
    """The API on `engine`, or on a new engine for `database_url` (see `database.resolve_url`).

    Raises ConfigurationError when a bundle signing key in the environment is unusable.
    """
    if engine is not None and database_url is not None:
        raise ValueError("Pass a database_url or an engine, not both.")
    if engine is None:
        engine = create_engine(database_url)
    app = FastAPI(
        title="pathguard platform",
        version=getattr(pathguard, "__version__", "0"),
        description="Policies, traces, incidents and audits of governed AI agents.",
        lifespan=lifespan,  # starts and stops the webhook dispatcher with the server
    )
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.bundle_keys = SigningKeys.from_env()
    app.state.metrics = metrics = Metrics()
    metrics.watch(app.state.sessions)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    for router in ROUTERS:
        app.include_router(router)
    _add_error_handlers(app)
    return app


def _error(code: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=code)


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"] or ["body"]
    return ".".join(parts)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == status.HTTP_404_NOT_FOUND and detail == "Not Found":
            detail = f"There is no endpoint {request.url.path}; see /openapi.json for the API."
        elif exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            detail = f"{request.url.path} does not accept {request.method}; see /openapi.json."
        response = _error(exc.status_code, detail)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"location": _location(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"location": "body", "message": "invalid"}
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        return _error(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"The request is not valid: {first['location']}: {first['message']}{more}. "
            "Fix it and send it again.",
            problems=problems,
        )

    @app.exception_handler(PolicyLoadError)
    async def bad_policy(request: Request, exc: PolicyLoadError) -> JSONResponse:
        count = len(exc.problems)
        return _error(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"The policy document has {count} problem{'s' if count != 1 else ''} and was not "
            "stored; fix each one listed in `problems`.",
            problems=[
                {"message": p.message, "line": p.line, "policy_id": p.policy_id, "field": p.field}
                for p in exc.problems
            ],
        )

    @app.exception_handler(IngestError)
    async def bad_batch(request: Request, exc: IngestError) -> JSONResponse:
        return _error(
            _INGEST_STATUS[exc.kind],
            str(exc),
            kind=exc.kind,
            index=exc.index,
            task_id=exc.task_id,
            seq=exc.seq,
        )

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return _error(status.HTTP_404_NOT_FOUND, str(exc))

    @app.exception_handler(InvalidTransitionError)
    async def bad_transition(request: Request, exc: InvalidTransitionError) -> JSONResponse:
        return _error(status.HTTP_409_CONFLICT, str(exc))

    @app.exception_handler(OperationalError)
    async def database_busy(request: Request, exc: OperationalError) -> JSONResponse:
        # SQLite serialises writers; past its busy timeout it reports "database is locked".
        # That is load, not a fault: tell the client to send the same request again.
        if "locked" not in str(exc.orig).lower():
            raise exc
        response = _error(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "The database is busy with other writes; nothing was stored. Send the same request "
            "again shortly.",
        )
        response.headers["Retry-After"] = "1"
        return response
