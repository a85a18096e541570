"""The routes: pg_vectorize's server API (``/api/v1/table``, ``/api/v1/search``) and ours (``/api/v1/rag``,
``/api/v1/projects``, ``/health``), each a thin layer over one ``VectorizeHook`` method.

A route parses the request, asks the app's ``Auth`` whether the caller may use the connection, borrows a
hook from the pool and calls it; the project's exceptions become status codes in ``errors``. Routes are
plain functions: FastAPI runs them in its thread pool, so a query's embedding never blocks the event loop
(and concurrent ones are batched, see ``airflow_vectorize.models.batching``).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import logging
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from airflow_vectorize import models, validation
from airflow_vectorize.api import filters as filter_grammar
from airflow_vectorize.api.auth import Access, Auth
from airflow_vectorize.api.errors import unavailable
from airflow_vectorize.api.pool import Hooks
from airflow_vectorize.api.schemas import (
    CONN_ID_DESCRIPTION,
    DEFAULT_CONN_ID,
    DEFAULT_WINDOW,
    ERRORS,
    MAX_CONN_ID,
    AlterBody,
    RagAnswer,
    RagBody,
    SearchBody,
    SearchQuery,
    SearchRow,
    TableBody,
)
from airflow_vectorize.api.warm_up import WarmUp
from airflow_vectorize.exceptions import (
    DatabaseConnectionError,
    DatabasePermissionError,
    InvalidInputError,
    ProjectConflictError,
    VectorizeError,
)
from airflow_vectorize.hooks.vectorize import KEEP, VectorizeHook
from airflow_vectorize.models import batching

log = logging.getLogger(__name__)

CONN_ID = Query(DEFAULT_CONN_ID, max_length=MAX_CONN_ID, description=CONN_ID_DESCRIPTION)
# Query parameters of GET /api/v1/search that are not filters (a column of one of these names can be
# filtered on through POST).
SEARCH_PARAMETERS = tuple(SearchQuery.model_fields)
HYBRID_RANK = "fts_rank"  # what the API calls the hook's full_text_rank, as pg_vectorize's server


@dataclass
class Service:
    """What the routes share: the authentication, the hooks, the start time, the warm-up."""

    auth: Auth
    hooks: Hooks
    started: float = field(default_factory=time.monotonic)
    warm_up: WarmUp = field(default_factory=WarmUp)

    def authorize(self, request: Request, conn_id: str, access: Access) -> None:
        """The caller may use ``conn_id`` for ``access``."""
        self.auth.authorize(request.state.principal, conn_id, access)


def service(request: Request) -> Service:
    return request.app.state.vectorize


def hook_for(request: Request, conn_id: str, access: Access, job_name: str | None = None) -> VectorizeHook:
    """This thread's hook of ``conn_id``, once the caller may use it for ``access`` and ``job_name`` (if
    given) is a possible job name."""
    api = service(request)
    api.authorize(request, conn_id, access)
    if job_name is not None:
        validation.check_job_name(job_name)
    return api.hooks.get(conn_id)


def authorize_model(request: Request, model_conn_id: str | None) -> None:
    """The caller may read the model connection a request uses — the one it names, or the provider's default
    it would use otherwise (``openai_default``...): the same check either way. None: a model computed here."""
    if model_conn_id is not None:
        service(request).authorize(request, model_conn_id, "read")


router = APIRouter(responses=ERRORS)


# -- search ------------------------------------------------------------------------------------------------
@router.get("/api/v1/search", response_model=list[SearchRow], tags=["search"],
            summary="Search a project (pg_vectorize's GET: every other query parameter is a filter)")
def search_get(request: Request, parameters: Annotated[SearchQuery, Query()]) -> Response:
    """Hybrid search by default, as pg_vectorize's server; ``mode=vector`` for the vector search alone.
    Filters: ``column=op.value`` with op ``eq gt gte lt lte`` (``column=value``: eq)."""
    p = parameters
    filters = filter_grammar.from_query(request.query_params.multi_items(), SEARCH_PARAMETERS)
    columns = [c.strip() for c in p.return_columns.split(",")] if p.return_columns is not None else None
    return _search(request, p.conn_id, p.job_name, p.query, p.mode, p.limit, p.window_size, p.rrf_k,
                   p.semantic_wt, p.fts_wt, columns, p.ef_search, filters)


@router.post("/api/v1/search", response_model=list[SearchRow], tags=["search"],
             summary="Search a project (JSON body; filters as an object)")
def search_post(request: Request, body: SearchBody, conn_id: str = CONN_ID) -> Response:
    return _search(request, conn_id, body.job_name, body.query, body.mode, body.limit, body.window_size,
                   body.rrf_k, body.semantic_wt, body.fts_wt, body.return_columns, body.ef_search,
                   filter_grammar.from_body(body.filters))


def _search(request: Request, conn_id: str, job_name: str, query: str, mode: str, limit: int,
            window_size: int | None, rrf_k: float, semantic_wt: float, fts_wt: float,
            return_columns: Sequence[str] | None, ef_search: int | None, filters: dict[str, Any] | None,
            ) -> Response:
    hook = hook_for(request, conn_id, "read", job_name)
    started = time.perf_counter()
    with filter_errors(hook, job_name, filters):
        rows = _rows(hook, job_name, query, mode, limit, window_size, rrf_k, semantic_wt, fts_wt, return_columns,
                     ef_search, filters)
    response = json_response(rows)
    # The time inside the hook (query embedding and statement), for clients and the bench to tell it from HTTP's
    response.headers["Server-Timing"] = f"search;dur={(time.perf_counter() - started) * 1000:.2f}"
    return response


def _rows(hook: VectorizeHook, job_name: str, query: str, mode: str, limit: int, window_size: int | None,
          rrf_k: float, semantic_wt: float, fts_wt: float, return_columns: Sequence[str] | None,
          ef_search: int | None, filters: dict[str, Any] | None) -> list[dict[str, Any]]:
    if mode == "vector":
        rows = hook.search(job_name, query, return_columns=return_columns, num_results=limit,
                           filters=filters, ef_search=ef_search)
    else:
        if return_columns is not None and HYBRID_RANK in return_columns:
            raise InvalidInputError(
                f"return_columns: {HYBRID_RANK!r} is the name of a key that hybrid search answers add (rrf_score,"
                f" semantic_rank, {HYBRID_RANK}, similarity_score); rename that column of the source, or search"
                " with mode=vector")
        # pg_vectorize takes window_size rows per side and cuts the fused list at limit (a window_size below
        # limit gives at most 2 × window_size rows); left out: DEFAULT_WINDOW, or limit when that is more.
        rows = hook.hybrid_search(
            job_name, query, return_columns=return_columns, num_results=limit, filters=filters,
            semantic_weight=semantic_wt, full_text_weight=fts_wt, ef_search=ef_search, rrf_k=rrf_k,
            candidates=max(limit, DEFAULT_WINDOW) if window_size is None else window_size)
        for row in rows:  # pg_vectorize's server names it fts_rank (a source column of that name is left out)
            row[HYBRID_RANK] = row.pop("full_text_rank")
    return rows


@contextmanager
def filter_errors(hook: VectorizeHook, job_name: str, filters: dict[str, Any] | None) -> Iterator[None]:
    """A filter value PostgreSQL could not compare with its column (``invalid input syntax for type integer``,
    ``operator does not exist: text > integer``, out of range) is refused naming the column, its type and the
    value, with PostgreSQL's first line only: the hook's message carries PostgreSQL's whole text (the
    statement's ``LINE 1:`` and a ``HINT``)."""
    try:
        yield
    except InvalidInputError as error:
        cause = error.__cause__
        if not (filters and str(error).startswith(MISMATCH) and isinstance(cause, psycopg.Error)
                and cause.diag.message_primary):
            raise
        raise InvalidInputError(_filter_mismatch(hook, job_name, filters, cause.diag.message_primary)) from error


MISMATCH = "a filter value does not fit its column"  # the hook's message, PostgreSQL's text after it
OPERATOR_SIGNS = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "in": "="}


def _filter_mismatch(hook: VectorizeHook, job_name: str, filters: dict[str, Any], problem: str) -> str:
    """The message for ``problem`` (PostgreSQL's first line): the filters it can be about, each with its
    column's type and its value (those whose value or operator and type it names, else every filter)."""
    given = [(column, op, value) for column, spec in filters.items()
             for op, value in (spec.items() if isinstance(spec, dict) else [("eq", spec)])]
    try:
        params = hook.get_project(job_name)["params"]
        with hook.transaction() as cur:
            table = validation.describe_table(cur, params["schema"], params["relation"])
        columns = table.columns if table else {}
    except Exception:  # noqa: BLE001 - the types are a help; without them the message names the filters
        columns = {}

    def about(column: str, op: str, value: Any) -> bool:
        values = value if isinstance(value, list) else [value]
        if any(f'"{item}"' in problem for item in values if not isinstance(item, bool)):
            return True  # invalid input syntax for type integer: "abc"; value "100000" is out of range
        # operator does not exist: character varying > integer
        return column in columns and f": {columns[column].data_type} {OPERATOR_SIGNS.get(op, op)} " in problem

    suspects = [f for f in given if about(*f)] or given
    described = "; ".join(
        f"column {column!r} ({columns[column].type_sql if column in columns else 'type unknown'}) {op} {value!r}"
        for column, op, value in suspects)
    return f"{MISMATCH}: {described}: {problem}"


# -- RAG ---------------------------------------------------------------------------------------------------
@router.post("/api/v1/rag", response_model=RagAnswer, tags=["rag"],
             summary="Answer a question from a project's rows (VectorizeHook.rag)")
def rag(request: Request, body: RagBody, conn_id: str = CONN_ID) -> Response:
    hook = hook_for(request, conn_id, "read", body.job_name)
    authorize_model(request, models.chat_conn_id(body.chat_model, body.chat_conn_id))
    filters = filter_grammar.from_body(body.filters)
    with filter_errors(hook, body.job_name, filters):
        answer = hook.rag(body.job_name, body.query, body.chat_model, chat_conn_id=body.chat_conn_id,
                          task=body.task, num_context=body.num_context, force_trim=body.force_trim,
                          filters=filters, hybrid=body.hybrid, max_tokens=body.max_tokens,
                          temperature=body.temperature)
    return json_response(answer)


# -- projects ----------------------------------------------------------------------------------------------
@router.post("/api/v1/table", tags=["projects"],
             summary="Create a project (pg_vectorize's POST /api/v1/table; idempotent)")
def create_table(request: Request, body: TableBody, conn_id: str = CONN_ID) -> Response:
    """The same body again answers 200 and changes nothing; another configuration under the same
    ``job_name`` answers 409 naming the fields that differ. Rows already in the table are embedded by the
    project's DAG (generation), not by this request."""
    hook = hook_for(request, conn_id, "write")
    authorize_model(request, models.model_conn_id(body.model, body.model_conn_id))
    summary = hook.create_project(
        body.job_name, body.src_table, body.primary_key, body.src_columns, transformer=body.model,
        schema=body.src_schema, table_method=body.table_method, index_dist_type=body.index_dist_type,
        schedule=body.schedule, update_col=body.update_time_col, model_conn_id=body.model_conn_id,
        dimensions=body.dimensions, chunk_size=body.chunk_size, chunk_overlap=body.chunk_overlap,
        chunker=body.chunker, document_prompt=body.document_prompt, query_prompt=body.query_prompt,
        input_types=body.input_types, hnsw_m=body.hnsw_m, hnsw_ef_construction=body.hnsw_ef_construction,
        halfvec_index=body.halfvec_index)
    summary = {"id": hook.get_project(body.job_name)["job_id"], **summary}
    return json_response(summary)


ALTER_FIELDS = {"columns": "src_columns", "update_col": "update_time_col"}  # the hook's names → the body's


@router.patch("/api/v1/table/{job_name}", tags=["projects"],
              summary="Alter a project in place, its vectors kept: schedule, text columns, update column")
def alter_table(request: Request, body: AlterBody, job_name: str = Path(max_length=255),
                conn_id: str = CONN_ID) -> Response:
    """``VectorizeHook.alter_project``: ``{"changed": {field: [before, after]}}``, fields named as in the body.
    Pause (``"schedule": "manual"``) and resume realtime queueing, embed other columns (the next run embeds
    only the rows whose text changed), follow columns renamed in the source, build the index again with other
    settings (the answer comes when it is built, with its figures under ``index``)."""
    hook = hook_for(request, conn_id, "write", job_name)

    def given(field: str) -> Any:  # a field left out stays as it is; null is a value for these
        return getattr(body, field) if field in body.model_fields_set else KEEP

    if (body.schedule is None and body.src_columns is None and body.halfvec_index is None
            and all(given(f) is KEEP for f in ("update_time_col", "hnsw_m", "hnsw_ef_construction"))):
        # the hook's message would name its arguments (columns, update_col)
        raise InvalidInputError("nothing to alter: give schedule, src_columns, update_time_col and/or the index's"
                                " hnsw_m, hnsw_ef_construction, halfvec_index")
    answer = hook.alter_project(
        job_name, schedule=body.schedule, columns=body.src_columns, update_col=given("update_time_col"),
        hnsw_m=given("hnsw_m"), hnsw_ef_construction=given("hnsw_ef_construction"),
        halfvec_index=KEEP if body.halfvec_index is None else body.halfvec_index)
    answer["changed"] = {ALTER_FIELDS.get(name, name): change for name, change in answer["changed"].items()}
    return json_response(answer)


@router.delete("/api/v1/table/{job_name}", tags=["projects"],
               summary="Drop a project: everything it made, never the source table")
def drop_table(request: Request, job_name: str = Path(max_length=255), conn_id: str = CONN_ID) -> Response:
    summary = hook_for(request, conn_id, "write", job_name).drop_project(job_name)
    return json_response({"job_name": job_name, "message": f"project {job_name!r} dropped", **summary})


@router.get("/api/v1/projects", tags=["projects"],
            summary="Every project of the database: catalog entry, status and freshness")
def list_projects(request: Request, status: bool = Query(True, description="add status and freshness"),
                  conn_id: str = CONN_ID) -> Response:
    hook = hook_for(request, conn_id, "read")
    entries = hook.list_projects()
    if status:
        entries = [_with_status(hook, entry, listing=True) for entry in entries]
    return json_response(entries)


@router.get("/api/v1/projects/{job_name}", tags=["projects"],
            summary="One project: catalog entry, status (exact counts) and freshness")
def get_project(request: Request, job_name: str = Path(max_length=255), conn_id: str = CONN_ID) -> Response:
    hook = hook_for(request, conn_id, "read", job_name)
    return json_response(_with_status(hook, hook.get_project(job_name)))


def _with_status(hook: Any, entry: dict[str, Any], listing: bool = False) -> dict[str, Any]:
    """The entry with status and freshness; a project that cannot give them (its source table or columns gone,
    child tables attached, a role not granted it) has none, and says why: the others are still listed.
    ``listing`` (the project list): any other error of one project is listed with it too (a defect's details
    go to the server's log), so that one project never hides the others; only a database that cannot serve
    fails the list."""
    name = entry["name"]
    try:
        status, freshness = hook.get_status(name), hook.get_freshness(name)
    except (ProjectConflictError, DatabasePermissionError) as error:
        return {**entry, "status": None, "freshness": None, "error": str(error)}
    except Exception as error:
        if not listing or isinstance(error, DatabaseConnectionError) or (
                isinstance(error, psycopg.OperationalError) and unavailable(error)):
            raise
        if isinstance(error, VectorizeError):
            message = str(error)
        else:
            log.error("project %r: status and freshness failed", name, exc_info=error)
            message = f"internal error ({type(error).__name__}); the server's log has the details"
        return {**entry, "status": None, "freshness": None, "error": message}
    status.pop("job_name", None)
    freshness.pop("job_name", None)
    return {**entry, "status": status, "freshness": freshness}


# -- health ------------------------------------------------------------------------------------------------
@router.get("/health", tags=["health"], summary="Database reachable, models loaded, warm-up")
def health(request: Request, conn_id: str = CONN_ID) -> Response:
    api = service(request)
    hook = hook_for(request, conn_id, "read")
    started = time.perf_counter()
    database: dict[str, Any] = {"conn_id": conn_id}
    try:
        with hook.transaction() as cur:
            cur.execute("SELECT current_setting('server_version'),"
                        " (SELECT extversion FROM pg_extension WHERE extname = 'vector')")
            database["server_version"], database["pgvector"] = cur.fetchone()
        database.update(reachable=True, seconds=round(time.perf_counter() - started, 4))
    except Exception as error:  # noqa: BLE001 - the answer says what failed
        database.update(reachable=False, error=f"{type(error).__name__}: {str(error).strip()}")
    body = {"status": "ok" if database["reachable"] else "unavailable", "database": database,
            "models": batching.loaded(), "search_sessions": api.hooks.stats(), "auth": api.auth.mode,
            "warm_up": api.warm_up.as_dict(), "uptime_seconds": round(time.monotonic() - api.started, 1)}
    return json_response(body, status_code=200 if database["reachable"] else 503)


# -- answers -----------------------------------------------------------------------------------------------
def json_response(content: Any, status_code: int = 200) -> Response:
    """``content`` as JSON: what PostgreSQL's values become in pg_vectorize's answers (numbers for numerics,
    ISO 8601 for times, text for UUIDs, base64 for bytes); NaN and ±Infinity (float and numeric values may
    hold them) are null, as JSON has no such numbers."""
    try:
        text = json.dumps(content, default=_jsonable, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a non-finite number somewhere: rare, so looked for only then
        text = json.dumps(_finite(content), default=_jsonable, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False)
    return Response(text, status_code=status_code, media_type="application/json")


def _finite(value: Any) -> Any:
    """``value`` with every NaN and ±Infinity (also inside what ``_jsonable`` makes) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return _finite(_jsonable(value))


def _jsonable(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return str(value)

