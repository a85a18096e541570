"""The project's exceptions as HTTP answers, in one place: ``{"detail": message, "type": exception name}``.

=============================================  ======
ProjectNotFoundError, an unknown connection,     404
SourceNotFoundError (a missing table, update col)
InvalidInputError (and DimensionMismatchError)   400
ProjectConflictError                             409
ModelConnectionError (unreachable, missing)      503
ModelRateLimitError (429 past the retries, or   503
a Retry-After beyond the connection's wait)
ModelTimeoutError                                504
every other ModelError (refused key, unknown     502
model, server errors past retries, bad answers)
DatabaseConnectionError, database unreachable    503
DatabasePermissionError (the connection's role   503
lacks a privilege: ``grant_search``)
a deadlock or lock timeout with a concurrent     409
request (``LockConflictError``, ``Retry-After``)
=============================================  ======

Messages are the project's own: they name the project, the connection and the model, never a key. A request
of the wrong shape is FastAPI's 422 (the fields and what was wrong, not the input echoed back). Anything else
is a defect: 500 with a generic message, the traceback in the server's log.
"""

from __future__ import annotations

import json
import logging

import psycopg
from airflow.exceptions import AirflowNotFoundException
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from airflow_vectorize.exceptions import (
    DatabaseConnectionError,
    DatabasePermissionError,
    InvalidInputError,
    ModelConnectionError,
    ModelError,
    ModelRateLimitError,
    ModelTimeoutError,
    ProjectConflictError,
    ProjectNotFoundError,
    SourceNotFoundError,
    VectorizeError,
)

log = logging.getLogger(__name__)

STATUS: list[tuple[type[BaseException], int]] = [  # the first match wins: subclasses first
    (ProjectNotFoundError, 404),
    (SourceNotFoundError, 404),
    (InvalidInputError, 400),
    (ProjectConflictError, 409),
    (ModelConnectionError, 503),
    (ModelRateLimitError, 503),  # the model server's limit, not the caller's: come back later
    (ModelTimeoutError, 504),
    (ModelError, 502),
    (DatabaseConnectionError, 503),
    (DatabasePermissionError, 503),
]


class ApiError(Exception):
    """An HTTP error of the API itself (authentication, authorization, a busy pool)."""

    def __init__(self, status: int, detail: str, kind: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.kind, self.headers = status, detail, kind, headers


def answer(status: int, detail: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "type": kind}, status_code=status, headers=headers)


LOCK_CONFLICTS = {"40P01": "a deadlock", "40001": "a serialization failure", "55P03": "a lock not available"}


def lock_conflict(error: psycopg.Error) -> str | None:
    """What conflict ``error`` is (a deadlock, a serialization failure, a lock timeout), None for any other:
    a conflict with a concurrent transaction, which the same request may win when sent again."""
    return LOCK_CONFLICTS.get(error.sqlstate or "")


# SQLSTATE classes of a database that cannot serve now: connection exception, insufficient resources,
# operator intervention (shutdown, cannot connect now), system error
UNAVAILABLE_CLASSES = ("08", "53", "57", "58")


def unavailable(error: psycopg.OperationalError) -> bool:
    """``error`` says the database cannot serve now (no SQLSTATE: connecting failed), not that a statement
    went past one of PostgreSQL's limits (``ProgramLimitExceeded``...)."""
    return error.sqlstate is None or error.sqlstate[:2] in UNAVAILABLE_CLASSES


def status_of(error: BaseException) -> int:
    for kind, status in STATUS:
        if isinstance(error, kind):
            return status
    return 500


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return answer(error.status, error.detail, error.kind, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        # FastAPI's 422, without echoing the input (a 1 MB query, text that is not valid Unicode)
        errors = [{k: v for k, v in e.items() if k != "input"} for e in error.errors()]
        body = {"detail": errors, "type": "RequestValidationError"}
        return Response(json.dumps(body, default=str), status_code=422, media_type="application/json")

    @app.exception_handler(VectorizeError)
    async def vectorize_error(request: Request, error: VectorizeError) -> JSONResponse:
        status = status_of(error)
        if status == 500:
            log.error("%s %s: %s", request.method, request.url.path, error, exc_info=error)
        return answer(status, str(error), type(error).__name__)

    @app.exception_handler(psycopg.OperationalError)
    async def database_unreachable(request: Request, error: psycopg.OperationalError) -> JSONResponse:
        if conflict := lock_conflict(error):
            # A deadlock or lock timeout with another request changing the same project (POST / DELETE
            # /api/v1/table while it is searched): PostgreSQL rolled this statement back; the request may be
            # sent again. PostgreSQL's text (the statement, processes, relations) stays in the log.
            log.warning("%s %s: database: %s", request.method, request.url.path, error)
            return answer(409, f"the request conflicted with another one changing the same project ({conflict},"
                               " PostgreSQL rolled this request's statement back); send it again",
                          "LockConflictError", {"Retry-After": "1"})
        if not unavailable(error):  # a limit or state of PostgreSQL's our checks should have met first
            return await defect(request, error)
        # Connecting failed (refused, authentication, no such database): the hook raises it as is.
        log.warning("%s %s: database: %s", request.method, request.url.path, error)
        return answer(503, f"the database is unavailable: {str(error).strip()}", "DatabaseConnectionError")

    @app.exception_handler(AirflowNotFoundException)
    async def unknown_connection(request: Request, error: AirflowNotFoundException) -> JSONResponse:
        return answer(404, str(error), "ConnectionNotFoundError")  # BaseHook.get_connection

    @app.exception_handler(Exception)
    async def defect(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return answer(500, "internal error; the server's log has the details", "InternalError")
