"""Request bodies and answers of the API, as pydantic models (they make the OpenAPI document).

Bounds are the API's (a hook call takes more): they keep one request's cost bounded — at most
``MAX_LIMIT`` rows, ``MAX_WINDOW`` candidates per side of a hybrid search, ``MAX_QUERY_CHARS`` characters of
query. Unknown fields are refused (a typo is not silently ignored).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from airflow_vectorize.catalog import DEFAULT_TRANSFORMER

MAX_LIMIT = 1000
MAX_WINDOW = 10_000
MAX_QUERY_CHARS = 16_384
MAX_CONTEXT = 100
DEFAULT_WINDOW = 50  # pg_vectorize's server: 5 x its default limit

Mode = Literal["hybrid", "vector"]
DEFAULT_CONN_ID = "postgres_default"
CONN_ID_DESCRIPTION = "the Airflow connection of the database"
MAX_CONN_ID = 250  # Airflow's conn_id column


def encodable(value: Any) -> Any:
    """``value`` (a text, or texts nested in lists and objects) if all of it can be UTF-8: JSON's ``\\ud800``
    escapes make lone surrogates, which neither the model nor PostgreSQL takes."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"text with a lone surrogate (\\u{ord(value[error.start]):04x}) is not valid Unicode")
    elif isinstance(value, dict):
        for key, item in value.items():
            encodable(key)
            encodable(item)
    elif isinstance(value, list):
        for item in value:
            encodable(item)
    return value


FILTERS_DESCRIPTION = (
    "Filters on source columns: {column: value} (equality), {column: {op: value}} with op eq, ne, gt, gte, lt,"
    " lte, in (a list), or pg_vectorize's \"op.value\" strings (eq, gt, gte, lt, lte). Values are bound"
    " parameters, never SQL.")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _encodable(cls, value: Any) -> Any:
        return encodable(value)


class SearchParameters(BaseModel):
    """What both searches take: pg_vectorize's parameters, plus ``mode`` and ``ef_search``."""

    job_name: str = Field(max_length=255)
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    limit: int = Field(10, ge=1, le=MAX_LIMIT, description="rows returned")
    window_size: int | None = Field(None, ge=1, le=MAX_WINDOW, description=(
        "hybrid: rows taken from each side before fusing (default 50, or limit when more); below limit,"
        " at most 2 x window_size rows come back, as pg_vectorize's"))
    rrf_k: float = Field(60.0, ge=0, le=1e6, description="hybrid: the k of reciprocal rank fusion")
    semantic_wt: float = Field(1.0, ge=0, le=1e6, description="hybrid: weight of the vector ranking")
    fts_wt: float = Field(1.0, ge=0, le=1e6, description="hybrid: weight of the full-text ranking")
    mode: Mode = Field("hybrid", description="hybrid (pg_vectorize's server) or vector")
    ef_search: int | None = Field(None, ge=1, le=1000, description="hnsw.ef_search for this search")


class SearchQuery(SearchParameters):
    """``GET /api/v1/search``'s query parameters, validated as one model (a parameter each costs FastAPI
    several times as much per request); every other parameter is a filter."""

    return_columns: str | None = Field(None, max_length=MAX_QUERY_CHARS, description="comma-separated source columns")
    conn_id: str = Field(DEFAULT_CONN_ID, max_length=MAX_CONN_ID, description=CONN_ID_DESCRIPTION)


class SearchBody(SearchParameters, Strict):
    """``POST /api/v1/search``: pg_vectorize's body, plus ``mode``, ``return_columns`` and ``ef_search``."""

    return_columns: list[str] | None = Field(None, max_length=200, description="default: every source column")
    filters: dict[str, Any] | None = Field(None, max_length=100, description=FILTERS_DESCRIPTION)


class TableBody(Strict):
    """``POST /api/v1/table``: pg_vectorize's body, plus the other arguments of ``create_project``."""

    job_name: str = Field(max_length=255)
    src_table: str = Field(max_length=255)
    src_schema: str = Field("public", max_length=255)
    src_columns: list[str] = Field(min_length=1, max_length=100)
    primary_key: str | list[str]
    update_time_col: str | None = None
    model: str = Field(DEFAULT_TRANSFORMER, max_length=1000,
                       description="provider/model, as pg_vectorize spells it (its transformer)")
    table_method: Literal["join", "append"] = "join"
    index_dist_type: str = "pgv_hnsw_cosine"
    schedule: str = "realtime"
    model_conn_id: str | None = Field(None, max_length=MAX_CONN_ID)
    dimensions: int | None = Field(None, ge=1, le=16_000)
    chunk_size: int | None = Field(None, ge=1, le=100_000)
    chunk_overlap: int = Field(0, ge=0, le=100_000)
    chunker: str = "recursive"
    document_prompt: str | None = Field(None, max_length=10_000)
    query_prompt: str | None = Field(None, max_length=10_000)
    input_types: dict[Literal["document", "query"], str | None] | None = None
    hnsw_m: int | None = Field(None, ge=2, le=100, description="the HNSW index's m (default 16)")
    hnsw_ef_construction: int | None = Field(None, ge=4, le=1000, description="its ef_construction (default 64)")
    halfvec_index: bool = Field(False, description="the index holds the vectors at half precision")


class AlterBody(Strict):
    """``PATCH /api/v1/table/{job_name}``: the arguments of ``alter_project``, named as in ``TableBody``; a field
    left out stays as it is (``update_time_col: null`` removes the update column)."""

    schedule: str | None = Field(None, max_length=255, description="realtime or manual")
    src_columns: list[str] | None = Field(None, max_length=100, description="the text columns to embed")
    update_time_col: str | None = Field(None, max_length=255)
    hnsw_m: int | None = Field(None, ge=2, le=100, description="the HNSW index's m (null: 16), built again")
    hnsw_ef_construction: int | None = Field(None, ge=4, le=1000, description="its ef_construction (null: the default)")
    halfvec_index: bool | None = Field(None, description="the index holds the vectors at half precision")


class RagBody(Strict):
    """``POST /api/v1/rag``: the arguments of ``VectorizeHook.rag``."""

    job_name: str = Field(max_length=255)
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    chat_model: str = Field(max_length=1000, description="openai/<model> or ollama/<model>")
    chat_conn_id: str | None = Field(None, max_length=MAX_CONN_ID)
    task: str = Field("question_answer", max_length=255, description="a prompt of vectorize.prompts")
    num_context: int = Field(2, ge=1, le=MAX_CONTEXT)
    force_trim: bool = Field(False, description="drop (and cut) the least relevant context until the prompt fits the"
                             " model's context window with room for the answer: max_tokens, else min(1024, a"
                             " quarter of the window)")
    filters: dict[str, Any] | None = Field(None, max_length=100, description=FILTERS_DESCRIPTION)
    hybrid: bool = False
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)


class ErrorAnswer(BaseModel):
    detail: str = Field(description="what went wrong, in the project's words")
    type: str = Field(description="the exception's name, e.g. InvalidInputError, ProjectNotFoundError")


class SearchRow(BaseModel):
    """A result row: the source columns (or ``return_columns``) and the scores."""

    model_config = ConfigDict(extra="allow")
    similarity_score: float | None = None
    rrf_score: float | None = Field(None, description="hybrid only")
    semantic_rank: int | None = Field(None, description="hybrid only; null when not among the vector candidates")
    fts_rank: int | None = Field(None, description="hybrid only; null when not among the full-text candidates")
    chunk: str | None = Field(None, description="a chunked project's best chunk of the row")


class ContextDocument(BaseModel):
    record_id: Any
    content: str
    token_ct: int
    similarity_score: float


class RagAnswer(BaseModel):
    query: str
    task: str
    chat_response: str
    finish_reason: str | None = Field(
        None, description="why the model stopped, as the chat server says: 'stop' (a complete answer), 'length'"
        " (cut at max_tokens or the context window), ...; null when the server does not say. An answer its"
        " content filter stopped, or cut before its first word, is an error (502, ModelResponseError)")
    context: list[ContextDocument]
    context_dropped: int
    model: str
    usage: dict[str, Any]


ERRORS = {status: {"model": ErrorAnswer} for status in (400, 401, 403, 404, 409, 502, 503, 504)}
