"""The FastAPI app: pg_vectorize's server API and ours over ``VectorizeHook``, and the Vectorize page.

- ``airflow_app()``: mounted in Airflow's api-server by the provider's plugin under ``/vectorize``
  (``airflow_vectorize.plugins``), with Airflow's authentication and authorization;
- ``standalone_app()``: the same app on its own (``python -m airflow_vectorize.api``, or
  ``uvicorn --factory airflow_vectorize.api.app:standalone_app``), with bearer tokens from the environment;
  it refuses to start without them. As it starts, it warms up (``warm_up``: one search in each project of the
  connections it serves whose model it computes, so the model is loaded before the first request).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from airflow_vectorize import __version__
from airflow_vectorize.api import errors, page, warm_up
from airflow_vectorize.api.auth import AirflowAuth, Auth, Authenticate, TokenAuth
from airflow_vectorize.api.pool import Hooks
from airflow_vectorize.api.routes import Service, router
from airflow_vectorize.search_sessions import DEFAULT_SIZE

DESCRIPTION = """\
pg_vectorize's HTTP API (`POST /api/v1/table`, `GET|POST /api/v1/search`, `DELETE /api/v1/table/{job_name}`)
and more (`POST /api/v1/rag`, `GET /api/v1/projects`, `GET /health`) over airflow-vectorize's projects.
Every route takes `conn_id`, the Airflow connection of the database (default `postgres_default`), and needs
`Authorization: Bearer <token>`: Airflow's JWT when mounted in Airflow's api-server, a configured token when
standalone. Errors answer `{"detail": message, "type": exception}`."""


def create_app(auth: Auth, hooks: Hooks | None = None, warm: Iterable[str] = ()) -> FastAPI:
    """The app; ``warm``: the connections whose projects it warms up as it starts (``warm_up``)."""
    warm = list(warm)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Warm up as the server starts; close the idle search sessions as it stops (a mounted app's own
        lifespan never runs: its sessions end with the process)."""
        if warm:
            app.state.vectorize.warm_up.start(app.state.vectorize.hooks, warm)
        yield
        app.state.vectorize.hooks.close()

    app = FastAPI(title="airflow-vectorize API", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.vectorize = Service(auth, hooks or Hooks(pool_size()))
    errors.install(app)
    app.include_router(router)
    app.include_router(page.router)
    app.add_middleware(Authenticate, auth=auth, on_unauthenticated=page.on_unauthenticated)
    app.openapi = lambda: _openapi_with_bearer(app)  # type: ignore[method-assign]
    return app


def airflow_app() -> FastAPI:
    """The app as Airflow's api-server mounts it (see ``airflow_vectorize.plugins``)."""
    return create_app(AirflowAuth())


def standalone_app() -> FastAPI:
    """The app on its own; ``ValueError`` without tokens (see ``TokenAuth.from_environment``). It warms up the
    connections it serves unless ``VECTORIZE_API_WARM_UP=0``."""
    auth = TokenAuth.from_environment()
    return create_app(auth, warm=auth.conn_ids if warm_up.enabled() else ())


def pool_size() -> int:
    """Search sessions per connection and process: ``VECTORIZE_API_POOL_SIZE`` (default 8); ``ValueError``
    unless a whole number of at least 1."""
    value = os.environ.get("VECTORIZE_API_POOL_SIZE", str(DEFAULT_SIZE))
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"VECTORIZE_API_POOL_SIZE must be a whole number of at least 1, not {value!r}")
    return int(value)


def _openapi_with_bearer(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document, with the bearer authentication every route needs."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or token"}}
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema
