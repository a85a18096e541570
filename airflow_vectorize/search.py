"""Vector and hybrid search queries over a project, built so that PostgreSQL can use the project's indexes.

Unlike pg_vectorize, the vector part orders by the distance operator against a bound query vector with a
LIMIT, which is the shape pgvector's HNSW index serves; ``similarity_score`` is computed only for the rows
returned. Filters are typed and bound (no raw SQL), and hybrid search's full-text part uses exactly the
expression of the project's ``<job>_fts_idx`` GIN index. A chunked project ranks each row by its nearest
chunk: among the chunks its half-precision HNSW index finds (read at any ``ef_search``: INDEX_PATH_SETTINGS),
or, while its chunk table is small (``EXACT_SCAN_MAX_PAGES``), among all of them; and in hybrid search's
full-text part by its best-ranked chunk, from the documents stored and indexed in the chunk table.

``similarity_score`` (higher is better) per ``index_dist_type``:

- ``pgv_hnsw_cosine``: ``1 - cosine distance`` (the cosine similarity, as pg_vectorize);
- ``pgv_hnsw_l2``: ``1 / (1 + euclidean distance)``, in (0, 1], 1 for an identical vector;
- ``pgv_hnsw_ip``: the inner product, ``-(a <#> b)`` (pgvector's ``<#>`` is the negative inner product);
  equal to the cosine similarity for normalised embeddings such as all-MiniLM-L6-v2's.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg import Cursor, sql
from psycopg.adapt import Loader, PyFormat
from psycopg.types.datetime import DateLoader, TimestampLoader, TimestamptzLoader
from psycopg.types.numeric import Oid

from airflow_vectorize import catalog, expressions, validation
from airflow_vectorize.catalog import Project
from airflow_vectorize.exceptions import DimensionMismatchError, InvalidInputError
from airflow_vectorize.naming import CHUNK_FTS_COLUMN, DOCUMENT_COLUMN, quoted

if TYPE_CHECKING:
    import numpy as np

RRF_K = 60
# A hook looks a project's entry up again after this long (unchanged: it keeps its built searches), so that a
# long-lived hook (the api-server's) follows what changed without a new project: an ef_search tune_search set.
RECHECK_SECONDS = 10.0
MAX_BUILT_QUERIES = 256  # searches kept built per project entry (SearchTarget.queries)
DEFAULT_CANDIDATES = 40  # pgvector's default hnsw.ef_search
ITERATIVE_SCAN = "hnsw.iterative_scan"  # pgvector >= 0.8
# A chunked search on the index path (a chunk table past EXACT_SCAN_MAX_PAGES) reads the index at any
# ef_search: from ef_search ~120 PostgreSQL's cost model scans a mid-size chunk table instead, computing the
# index's half-precision distance (two casts and a distance) for every chunk. On 1,822 man-page chunks (456
# pages), at ef_search 120 / 160 / 320: 4.3 ms that way, 1.5 / 1.7 / 2.1 ms through the index, the same exact
# rows (and 2.1 ms comparing every chunk). Searches with filters are left to the planner.
INDEX_PATH_SETTINGS = {"enable_seqscan": "off"}
MAX_FULL_TEXT_QUERY_BYTES = 16384  # websearch_to_tsquery runs out of stack at ~100 kB (~16k terms)
# Keys every result row carries besides its columns: a source column of one of these names would be
# overwritten by it.
RESULT_KEYS = validation.RESULT_KEYS
VECTOR_TYPES = {"vector", "halfvec", "sparsevec"}

FILTER_OPERATORS: dict[str, str] = {
    "eq": "=",
    "ne": "IS DISTINCT FROM",  # rows whose value is NULL count as "not equal"
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
    "in": "= ANY",
}

SIMILARITY: dict[str, str] = {
    "pgv_hnsw_cosine": "1 - ({})",
    "pgv_hnsw_l2": "1 / (1 + ({}))",
    "pgv_hnsw_ip": "-({})",
}


@dataclass(slots=True)  # not frozen: made per search, and a frozen dataclass is slower to make
class SearchQuery:
    """A statement with its bound parameters and the settings it runs with.

    ``single_pass``: it scans the HNSW index without iterative scans (see ``vector_search_query``): fewer
    rows than its LIMIT mean that it must run again with them. ``exact``: a chunked project's search that
    compares every chunk (None: an unchunked project's); its statement's last column, which ``run`` keeps
    out of the rows, tells whether the chunk table is small now (``small_table``; None when no row came), and
    the one before it whether the nearest chunks it read covered fewer rows than it asked for (a search's
    ``num_results``, hybrid search's vector ``candidates``): ``short``; and if so whether the index scan
    filled its LIMIT (``more``: further chunks may hold further rows, read them) or ended before it (an
    HNSW scan also ends at ``hnsw.max_scan_tuples`` or its memory bound, with chunks left unread: only
    comparing every chunk tells whether there are more rows). See ``VectorizeHook._read_more_chunks``.
    """

    statement: str
    params: dict[str, Any]
    settings: dict[str, str] = field(default_factory=dict)
    single_pass: bool = False
    exact: bool | None = None
    small_table: bool | None = None
    short: bool = False
    more: bool = False


@dataclass
class SearchTarget:
    """A project as searches see it, looked up once and reused by a hook.

    ``columns``: the source columns a search may return or filter on. ``storage`` and ``storage_oid``: the
    name and OID of the project's queue table, which is created and dropped with the project; every
    statement is guarded by them. ``exact``: a chunked project's searches compare every chunk, its chunk
    table being small (``EXACT_SCAN_MAX_PAGES``) when last seen, at the lookup or by the last search
    (``follow``). ``documents``: the project stores its full-text documents — a documents table, or a
    chunked project's chunk table column (a project created before they were stored does not: hybrid search
    then parses its rows' texts, as it did then, until its next generation run stores them). ``queries``: the searches without filters already
    built from this entry, by their arguments (statement, settings and every parameter but the query
    vector), so that a repeated search only checks and binds its vector; it goes with the entry when the
    hook looks the project up again. ``removed``: the project has ``vectorize._removed_<job>``
    (``source_row_exists``). ``looked_up``: when (``time.monotonic``), for ``stale``.
    """

    project: Project
    columns: list[str]
    storage: str
    storage_oid: Oid | None
    exact: bool = False
    documents: bool = True
    removed: bool = True
    queries: dict[tuple, SearchQuery] = field(default_factory=dict, compare=False, repr=False)
    looked_up: float = field(default_factory=time.monotonic, compare=False, repr=False)

    @property
    def stale(self) -> bool:
        """Looked up more than RECHECK_SECONDS ago: settings changed elsewhere (a tuned ef_search) may apply."""
        return time.monotonic() - self.looked_up > RECHECK_SECONDS

    def follow(self, search: SearchQuery) -> None:
        """Take the path the chunk table's size, as ``search`` saw it, calls for."""
        if search.small_table is not None:
            self.exact = search.small_table


def search_target(cur: Cursor, project: Project) -> SearchTarget:
    """``project`` with its searchable columns, the identity of its storage and its search path, read once."""
    storage = project.names.queue.as_string(cur)
    small = sql.SQL("false")
    documents = sql.SQL("to_regclass({}) IS NOT NULL").format(sql.Literal(quoted(project.names.documents_name)))
    if project.is_chunked:
        small = _small_table(project)
        documents = sql.SQL("EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass({})"
                            " AND attname = {} AND NOT attisdropped)").format(
            sql.Literal(project.names.target.as_string(cur)), sql.Literal(CHUNK_FTS_COLUMN))
    oid, exact, stored, removed = cur.execute(
        sql.SQL("SELECT to_regclass(%s)::oid, {}, {}, to_regclass(%s) IS NOT NULL").format(small, documents),
        [storage, quoted(project.names.removed_name)]).fetchone()
    return SearchTarget(project, searchable_columns(cur, project), storage, None if oid is None else Oid(oid),
                        bool(exact), bool(stored), bool(removed))


# -- input checks ----------------------------------------------------------------------------------------
def searchable_columns(cur: Cursor, project: Project) -> list[str]:
    """Source columns that search may return or filter on: no vectors, no append projects' storage."""
    table = validation.require_table(cur, project.schema, project.relation, kinds="rp", role="source")
    storage = {
        column
        for other in catalog.list_projects(cur)
        if not other.is_join and (other.schema, other.relation) == (project.schema, project.relation)
        for column in (other.names.embeddings_column, other.names.updated_at_column, other.names.text_md5_column)
    }
    return [c.name for c in table.columns.values() if c.name not in storage and c.typname not in VECTOR_TYPES]


def check_columns(project: Project, allowed: list[str], return_columns: Sequence[str] | None) -> list[str]:
    if return_columns is None or list(return_columns) == ["*"]:
        return [c for c in allowed if c not in RESULT_KEYS]
    if isinstance(return_columns, str) or not all(isinstance(c, str) for c in return_columns):
        raise InvalidInputError(f"return_columns must be a list of column names, got {return_columns!r}")
    unknown = [c for c in return_columns if c not in allowed]
    if unknown or not return_columns or len(set(return_columns)) != len(return_columns):
        raise InvalidInputError(
            f"return_columns {list(return_columns)!r} of project {project.name!r} are invalid"
            f" ({'unknown: ' + ', '.join(unknown) if unknown else 'empty or repeated'});"
            f" choose distinct columns of {project.schema}.{project.relation}: {', '.join(allowed)}"
        )
    clashing = [c for c in return_columns if c in RESULT_KEYS]
    if clashing:
        raise InvalidInputError(
            f"return_columns {clashing!r} have the names of keys that search results add"
            f" ({', '.join(RESULT_KEYS)}); rename the column(s) of {project.schema}.{project.relation}"
        )
    return list(return_columns)


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


Filter = tuple[str, str, bool]  # (column, operator, value is None): what the statement's text depends on


def parse_filters(
    project: Project, allowed: list[str], filters: Mapping[str, Any] | None
) -> tuple[tuple[Filter, ...], dict[str, Any]]:
    """``{column: value}`` (equality) or ``{column: {op: value}}`` as the filters' shape and their values.

    Values become bound parameters ``f0``, ``f1``, ...; ``None`` with eq/ne means IS NULL / IS NOT NULL.
    """
    if not filters:
        return (), {}
    if not isinstance(filters, Mapping):
        raise InvalidInputError(
            f"filters must be a dict of column -> value or {{operator: value}}, got {filters!r}"
        )
    shape: list[Filter] = []
    values: dict[str, Any] = {}
    for column, spec in filters.items():
        if column not in allowed:
            raise InvalidInputError(
                f"filter column {column!r} does not exist in {project.schema}.{project.relation} of project"
                f" {project.name!r} (or cannot be filtered on); allowed columns: {', '.join(allowed)}"
            )
        tests = spec if isinstance(spec, Mapping) else {"eq": spec}
        if not tests:
            raise InvalidInputError(f"filter on column {column!r} has no operator")
        for op, value in tests.items():
            if op not in FILTER_OPERATORS:
                raise InvalidInputError(
                    f"filter operator {op!r} on column {column!r} is unknown; allowed operators:"
                    f" {', '.join(FILTER_OPERATORS)}"
                )
            null_test = value is None and op in ("eq", "ne")
            if op == "in":
                if not isinstance(value, (list, tuple, set, frozenset)):
                    raise InvalidInputError(
                        f"filter 'in' on column {column!r} takes a list of values, got {value!r}"
                    )
                value = list(value)
            for item in value if op == "in" else [value]:
                if isinstance(item, Mapping):
                    raise InvalidInputError(
                        f"filter value {item!r} on column {column!r} is a mapping: nested filters are not"
                        " supported; write {column: value} or {column: {operator: value}}"
                    )
                if isinstance(item, str):
                    validation.check_text(item, f"filter value on column {column!r}")
                _check_adaptable(item, column)
            if not null_test:
                values[f"f{len(shape)}"] = value
            shape.append((column, op, null_test))
    return tuple(shape), values


def _check_adaptable(value: Any, column: str) -> None:
    """Refuse a filter value psycopg cannot send (an ``object()``, a class of the caller's), naming the column:
    it failed at execute with a raw ProgrammingError; a list's items are checked too."""
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, (list, tuple)):
            _check_adaptable(item, column)
            continue
        try:
            psycopg.adapters.get_dumper(type(item), PyFormat.AUTO)
        except psycopg.ProgrammingError:
            raise InvalidInputError(
                f"filter value {item!r} on column {column!r} is a {type(item).__name__}, which cannot be sent to"
                " PostgreSQL; give a str, int, float, bool, Decimal, date, time, datetime, UUID, a list of them or None"
            ) from None


def _conditions(shape: tuple[Filter, ...]) -> list[sql.Composable]:
    """The filters as SQL conditions on alias ``s``, with placeholders named as ``parse_filters`` binds."""
    conditions: list[sql.Composable] = []
    for position, (column, op, null_test) in enumerate(shape):
        target = sql.Identifier("s", column)
        if null_test:
            conditions.append(sql.SQL("{} IS NOT NULL" if op == "ne" else "{} IS NULL").format(target))
        else:
            template = "{} = ANY({})" if op == "in" else "{} " + FILTER_OPERATORS[op] + " {}"
            conditions.append(sql.SQL(template).format(target, sql.Placeholder(f"f{position}")))
    return conditions


def query_vector(project: Project, query: Any, embed: Callable[[str], Any] | None) -> np.ndarray:
    """The query as a float32 vector: a text embedded by ``embed`` (the project's model), or a given vector."""
    if type(query).__name__ == "ndarray" and getattr(query, "dtype", None) == "float32":
        # Already what np.asarray(query, dtype=np.float32) returns (the array itself): a repeated search's
        # usual input skips the numpy call, the costliest step of such a search on the client.
        vector = query
    else:
        import numpy as np  # here, not at import: DAG files import the hook, and through it this module
        if isinstance(query, str):
            if not query.strip():
                raise InvalidInputError("query is empty: give a text or a vector")
            validation.check_text(query, "query")
            if embed is None:
                raise InvalidInputError("a text query needs the project's model to embed it: pass embed")
            return np.asarray(embed(query), dtype=np.float32)
        try:
            vector = np.asarray(query, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise InvalidInputError(
                f"query must be a text or a list of floats, got {type(query).__name__}"
            ) from error
    if vector.ndim != 1 or vector.shape[0] != project.dimensions:
        raise DimensionMismatchError(
            f"project {project.name!r} expects a query vector of {project.dimensions} dimensions,"
            f" got shape {list(vector.shape)}"
        )
    # The sum of float32 values as Python floats cannot overflow, and is finite only when every value is
    # (a NaN or an infinity makes it NaN or infinite); cheaper per search than numpy's ufuncs here.
    values = memoryview(vector)
    if not math.isfinite(sum(values)):
        raise InvalidInputError("query vector contains NaN or infinite values")
    cosine = project.index_dist_type == "pgv_hnsw_cosine"
    if project.half_index or cosine:
        low, high = min(values), max(values)
        if project.half_index and not -validation.HALFVEC_MAX <= low <= high <= validation.HALFVEC_MAX:
            raise InvalidInputError(f"query vector has values beyond the range of halfvec (|x| >"
                                    f" {validation.HALFVEC_MAX:g}), in which project {project.name!r} is indexed")
        tiny = validation.HALFVEC_ZERO_MAX if project.half_index else 0.0
        if cosine and -tiny <= low and high <= tiny:
            held = (f" as halfvec, in which project {project.name!r} is indexed (every |x| <= {tiny:.3g})"
                    if project.half_index else "")
            raise InvalidInputError(f"query vector is zero{held}: it has no cosine distance to any vector (project"
                                    f" {project.name!r} searches by cosine); give a non-zero vector")
        if cosine and not project.half_index:  # (halfvec's range keeps its sums finite and non-zero)
            _check_single_precision_norm(project, values, max(-low, high))
    return vector


SQUARE_UNDERFLOW_MAX = 2.0 ** -75  # a real of at most this size squares to 0 in single precision


def _check_single_precision_norm(project: Project, values: memoryview, largest: float) -> None:
    """Refuse a query vector whose sum of squares pgvector's single-precision arithmetic makes 0 (every value
    underflowing) or infinite: its cosine distance to any vector is NaN, 0 or 1, whatever the rows."""
    if largest <= SQUARE_UNDERFLOW_MAX:
        found = f"every |x| <= {SQUARE_UNDERFLOW_MAX:.2g}: its sum of squares is 0"
    elif largest * largest * len(values) > validation.REAL_MAX and sum(x * x for x in values) > validation.REAL_MAX:
        found = f"its sum of squares is beyond {validation.REAL_MAX:.3g}"
    else:
        return
    raise InvalidInputError(
        f"query vector has no cosine distance as pgvector computes it in single precision ({found}); project"
        f" {project.name!r} searches by cosine: give a vector of ordinary magnitude (e.g. normalised to length 1)"
    )


def scan_settings(ef_search: int | None, index_path: bool = False) -> dict[str, str]:
    """A search's session settings: ``ef_search``, and for ``index_path`` (a chunked search on its HNSW index,
    without filters) INDEX_PATH_SETTINGS."""
    settings = dict(INDEX_PATH_SETTINGS) if index_path else {}
    if ef_search is None:
        return settings
    if isinstance(ef_search, bool) or not isinstance(ef_search, int) or not 1 <= ef_search <= 1000:
        raise InvalidInputError(f"ef_search must be an integer from 1 to 1000, got {ef_search!r}")
    return {"hnsw.ef_search": str(ef_search), **settings}


# -- statements --------------------------------------------------------------------------------------------
# A statement's text depends only on the project, the returned columns, the filters' shape and the result
# counts; it is composed once and reused, so psycopg prepares it after a few calls and PostgreSQL can keep
# a generic plan. The counts are checked integers written as literals (sql.Literal): with ``LIMIT $n``
# the planner prices a generic plan for an unknown limit and re-plans every call. All other values are bound.
def _parts(project: Project) -> dict[str, sql.Composable]:
    """Embedding column (alias ``e`` for join, ``s`` for append), its FROM clause and distance expression."""
    key = project.key
    if project.is_join:
        emb = sql.Identifier("e", project.names.embeddings_column)
        source = sql.SQL("{t} e JOIN {s} s ON {joined}").format(
            t=project.names.target, s=project.names.source, joined=key.equals("s", "e"))
        outer = sql.SQL("LEFT JOIN {t} e ON {joined}").format(t=project.names.target, joined=key.equals("e", "s"))
    else:
        emb = sql.Identifier("s", project.names.embeddings_column)
        source = sql.SQL("{s} s").format(s=project.names.source)
        outer = sql.SQL("")
    distance = sql.SQL("{} {} %(vector)s").format(emb, sql.SQL(project.distance.operator))
    order = distance
    if project.half_index:  # the distance its half-precision index serves; rows are scored by ``distance``
        order = sql.SQL("{} {} %(vector)s::halfvec({})").format(
            catalog.index_expression(project, "e" if project.is_join else "s"), sql.SQL(project.distance.operator),
            sql.Literal(project.dimensions))
    return {
        "emb": emb,
        "order": order,
        "vector_from": source,
        "embeddings_join": outer,
        "distance": distance,
        "similarity": sql.SQL(SIMILARITY[project.index_dist_type]).format(distance),
    }


# True only while the project's storage is the one the statement was built for (a one-time filter: a
# statement built from a cached entry of a since dropped or re-created project returns no rows). A name
# lookup in the server's catalog cache: cheaper than reading vectorize.job in every statement.
STORAGE_GUARD = sql.SQL("to_regclass(%(guard_relation)s)::oid IS NOT DISTINCT FROM %(guard_oid)s")


def _guard_params(target: SearchTarget) -> dict[str, Any]:
    return {"guard_relation": target.storage, "guard_oid": target.storage_oid}


def _written_guard(storage: str, storage_oid: Oid | None) -> sql.Composable:
    """STORAGE_GUARD with the entry's name and OID written into the statement instead of bound: two
    parameters fewer to convert and send per search. The statement is then one entry's (it is built once
    per entry and search shape, see ``SearchTarget.queries``); the guard is still evaluated at every
    execution (``to_regclass`` is stable, never folded into a cached plan)."""
    return sql.SQL("to_regclass({})::oid IS NOT DISTINCT FROM {}::oid").format(
        sql.Literal(storage), sql.Literal(storage_oid))


def _where(shape: tuple[Filter, ...]) -> sql.Composable:
    return sql.SQL(" AND ").join([*_conditions(shape), STORAGE_GUARD])


def _column_list(columns: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier("s", c) for c in columns)


# A chunked project's search reads this many nearest chunks per requested row (4 × 10 = pgvector's default
# ef_search), then keeps each row's best; when they cover too few rows, the hook asks again with more.
CHUNKS_PER_ROW = 4
# ... but its first ask reads the index's first pass alone (no iterative scan) when that holds at least this
# many chunks per asked row: usually enough (the nearest 40 of 37,812 README-section chunks covered ~15 rows).
FIRST_PASS_CHUNKS_PER_ROW = 2
MAX_CHUNKS_PER_ROW = 256
# ... and at most this many chunks in all (hnsw.max_scan_tuples, 20,000 by default, bounds an iterative scan:
# the LIMIT stays well within it). A search whose nearest chunks still cover too few rows at either bound
# compares every chunk instead (``exact_path``): one row owning thousands of the nearest chunks.
MAX_INDEX_CHUNKS = 10_000
# A search of a project with a half-precision index (``halfvec_index``) reads this many candidates per asked
# row in the index's order, and ranks them by the full vectors: the half-precision order alone misses near
# ties (100k clustered vectors at ef_search 100: recall@10 0.975 vs 0.987 with the full index).
HALF_RERANK = 4
# While a chunk table has at most this many pages (8 kB; ~4 chunks of 200 tokens with 384-dim vectors a page)
# its searches compare every chunk instead of asking the HNSW index: the exact rows at any ef_search, in one
# statement (on a small table the index's nearest chunks often cover too few rows and are asked for again).
# `python -m bench.exact_threshold` (through the hook, interleaved, on man-page chunk tables; the index at the
# lowest ef_search giving 99.5 % of the exact rows), exact vs index: 111 pages 0.45 vs 1.16 ms, 247 pages 0.53
# vs 0.87, 456 pages 0.75 vs 0.86 (1.27 vs 1.03 in a run before), 613 pages 1.57 vs 1.28, 1,135 pages 3.17 vs
# 1.76: the index is the faster path from ~450 pages (the exact scan's cost per page jumps past ~4 MB).
EXACT_SCAN_MAX_PAGES = 256


def chunk_order(project: Project) -> sql.Composable:
    """The distance a chunked project's HNSW index serves: between the chunk vectors (alias ``e``) and the
    query (``%(vector)s``) at half precision (``catalog.index_expression``). Rows are then ranked and scored
    by the full vectors' distance among the chunks it finds."""
    return sql.SQL("{} {} %(vector)s::halfvec({})").format(
        catalog.index_expression(project, "e"), sql.SQL(project.distance.operator), sql.Literal(project.dimensions))


def _best_chunk(project: Project, row: str) -> sql.Composable:
    """A LATERAL subquery: the nearest chunk (``best.chunk``) of the source row ``row`` and its distance
    (``best.d``)."""
    return sql.SQL(
        "LATERAL (SELECT e.chunk, {distance} AS d FROM {target} e WHERE {same_key}"
        " ORDER BY {distance}, e.chunk_no LIMIT 1) best"
    ).format(distance=_parts(project)["distance"], target=project.names.target,
             same_key=project.key.equals("e", row))


def _rows_by_best_chunk(project: Project, shape: tuple[Filter, ...], rows: int,
                        chunks: int | None = None, removed: bool = True) -> sql.Composable:
    """The ``rows`` rows nearest by their best chunk, nearest first: their keys (``k``, or ``k0``, ``k1``,
    ...: ``Key.aliases``), best distance ``d``, that chunk's ``chunk_no`` and ``filled``; among the ``chunks``
    nearest chunks the HNSW index serves (``chunk_order``), or (``chunks`` None: the exact path) among every
    chunk. ``filled``: the index gave all ``chunks`` (the same on every row; false on the exact path), so
    chunks beyond them may belong to rows not found (``shortfall``)."""
    key, names = project.key, project.key.aliases()
    nearest, filled = sql.SQL(""), sql.SQL("false")
    if chunks is not None:
        nearest = sql.SQL(" ORDER BY {} LIMIT {}").format(chunk_order(project), sql.Literal(chunks))
        filled = sql.SQL("count(*) OVER () >= {}").format(sql.Literal(chunks))
    return sql.SQL(
        "SELECT {names}, d, chunk_no, filled FROM (SELECT DISTINCT ON ({names}) {names}, d, chunk_no,"
        " {filled} AS filled FROM ("
        "SELECT {keys}, {distance} AS d, e.chunk_no FROM {target} e{source_join} WHERE {where}{nearest}) c"
        " ORDER BY {names}, d, chunk_no) b ORDER BY d, {names} LIMIT {rows}"
    ).format(names=names.names(), keys=key.select_as("e", names), distance=_parts(project)["distance"],
             target=project.names.target, source_join=_chunk_source_join(project, shape), where=_chunk_where(project, shape, removed),
             nearest=nearest, filled=filled, rows=sql.Literal(rows))


def shortfall(wanted: int, filled: str) -> sql.Composable:
    """A chunked statement's second-to-last column (a window over its rows, ``filled`` from
    ``_rows_by_best_chunk``): 0 when they are ``wanted`` rows, else 1 when the index scan filled its LIMIT,
    2 when it did not (``SearchQuery.short`` and ``more``)."""
    return sql.SQL("CASE WHEN count(*) OVER () >= {} THEN 0 WHEN {} THEN 1 ELSE 2 END AS shortfall").format(
        sql.Literal(wanted), sql.SQL(filled))


def _small_table(project: Project) -> sql.Composable:
    """True while the project's chunk table has at most EXACT_SCAN_MAX_PAGES pages (NULL once it is gone): the
    last column of a chunked search's statement (an InitPlan, evaluated at each execution), which tells the
    hook which path the next search takes (``SearchQuery.small_table``)."""
    return sql.SQL("(SELECT pg_relation_size(to_regclass({})) <= {})").format(
        sql.Literal(project.names.target.as_string()), sql.Literal(EXACT_SCAN_MAX_PAGES * 8192))


def source_row_exists(project: Project, removed: bool, alias: str = "e") -> sql.Composable:
    """True when the source row of the embedding row ``alias`` may be read, else NULL. A row removed from the
    source keeps its vectors until the next generation run (``airflow_vectorize.removal``), which settles
    what ``vectorize._removed_<job>`` holds; while that table is empty and the project's removal triggers are on
    the source (not after a swap, until it is attached) no vector lacks its row (a removal commits its entry
    with it: a snapshot that cannot see the entry cannot see the removal either), and one check of both per
    search (an InitPlan) spares the per-row probe (never for a partitioned source: rows may leave it without a
    trace). Otherwise the source's key is probed for
    each row read: a scalar subquery, never turned into a join, so the planner keeps reading the HNSW index in
    distance order. ``removed``: the project has the table (one created before it has pg_vectorize's foreign
    key instead, which guarantees the row: no check at all)."""
    if not removed:
        return sql.SQL("true")
    names = project.names
    settled = sql.SQL(  # nothing removed waits, and the triggers that record removals are on this table, which
        # is not partitioned (a partition's TRUNCATE, DETACH or DROP fires none of them)
        "(SELECT NOT EXISTS (SELECT FROM {removed}) AND EXISTS (SELECT FROM pg_catalog.pg_trigger t"
        " JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
        " WHERE t.tgrelid = to_regclass({source_name}) AND t.tgname = {trigger} AND c.relkind = 'r'))"
    ).format(removed=names.removed, source_name=sql.Literal(names.source.as_string()),
             trigger=sql.Literal(names.delete_trigger))
    return sql.SQL("({settled} OR (SELECT true FROM {source} x WHERE {same}))").format(
        settled=settled, source=names.source, same=project.key.equals("x", alias))


def _chunk_where(project: Project, shape: tuple[Filter, ...], removed: bool) -> sql.Composable:
    """The condition on a chunk (``e``): the filters (on the joined source: ``_chunk_source_join``), or without
    them that its source row exists."""
    return _where(shape) if shape else sql.SQL("{} AND {}").format(source_row_exists(project, removed), _where(shape))


def _chunk_source_join(project: Project, shape: tuple[Filter, ...]) -> sql.Composable:
    """The source joined to the chunks (``e``) when filters need its columns (which also leaves out the chunks
    of rows removed from the source)."""
    if not shape:
        return sql.SQL("")
    return sql.SQL(" JOIN {s} s ON {joined}").format(s=project.names.source, joined=project.key.equals("s", "e"))


def _chunked_vector_statement(project: Project, columns: tuple[str, ...], shape: tuple[Filter, ...],
                              limit: int, chunks: int | None, removed: bool = True) -> str:
    """The ``limit`` rows nearest by their best chunk (``_rows_by_best_chunk``: among the ``chunks`` nearest
    the index serves, or every chunk), with that chunk's text; ``shortfall`` (of ``limit`` rows) and
    ``_small_table`` last.

    The rows are chosen among the chunks whose source row exists (``_chunk_source_join``); the source is
    joined again for the returned columns only when they are more than the key."""
    key, names = project.key, project.key.aliases()
    similarity = sql.SQL(SIMILARITY[project.index_dist_type]).format(sql.SQL("n.d"))
    if columns == key.columns:
        select, source = names.select_as("n", key), sql.SQL("")
    else:
        select = _column_list(columns)
        source = sql.SQL(" JOIN {source} s ON {joined}").format(source=project.names.source,
                                                                joined=key.equals("s", "n", names))
    return sql.SQL(
        "SELECT {select}, {similarity} AS similarity_score, t.chunk, {shortfall}, {small} FROM ({nearest}) n"
        " JOIN {target} t ON {same_row} AND t.chunk_no = n.chunk_no{source} ORDER BY n.d, {order}"
    ).format(select=select, similarity=similarity, shortfall=shortfall(limit, "n.filled"), small=_small_table(project),
             nearest=_rows_by_best_chunk(project, shape, limit, chunks, removed), target=project.names.target,
             same_row=key.equals("t", "n", names), source=source, order=names.names("n")).as_string()


@lru_cache(maxsize=256)
def _vector_statement(
    project: Project, columns: tuple[str, ...], shape: tuple[Filter, ...], limit: int,
    chunks: int | None = None, storage: str = "", storage_oid: Oid | None = None, removed: bool = True,
) -> str:
    """A chunked project's statement reads the ``chunks`` nearest chunks, or every chunk (None), and binds
    the guard (``_guard_params``); an unchunked one's has it written in (``_written_guard`` of ``storage``
    and ``storage_oid``)."""
    if project.is_chunked:
        return _chunked_vector_statement(project, columns, shape, limit, chunks, removed)
    parts = _parts(project)
    if project.is_join and not shape and columns == project.key.columns:
        # Only the key, which the embeddings table holds: the source is only probed (``source_row_exists``).
        parts["vector_from"] = sql.SQL("{} e").format(project.names.target)
        select, exists = project.key.names("e"), [source_row_exists(project, removed)]
    else:
        select, exists = _column_list(columns), []
    where = sql.SQL(" AND ").join([*_conditions(shape), *exists, _written_guard(storage, storage_oid)])
    if project.half_index:
        # The index's half-precision order picks HALF_RERANK × limit candidates; the full vectors rank them. The
        # subquery's columns are named by position (n(c0, c1, …, d)): none can meet a source column's name.
        renamed = [sql.Identifier(f"c{i}") for i in range(len(columns))]
        return sql.SQL(
            "SELECT {outer}, {similarity} AS similarity_score FROM (SELECT {select}, {distance}"
            " FROM {vector_from} WHERE {emb} IS NOT NULL AND {where} ORDER BY {order} LIMIT {candidates})"
            " n({renamed}, d) ORDER BY n.d LIMIT {limit}"
        ).format(outer=sql.SQL(", ").join(sql.SQL("n.{} AS {}").format(r, sql.Identifier(c))
                                           for r, c in zip(renamed, columns)),
                 renamed=sql.SQL(", ").join(renamed), select=select, where=where,
                 candidates=sql.Literal(limit * HALF_RERANK), limit=sql.Literal(limit),
                 similarity=sql.SQL(SIMILARITY[project.index_dist_type]).format(sql.SQL("n.d")),
                 **{k: v for k, v in parts.items() if k != "similarity"}).as_string()
    return sql.SQL(
        "SELECT {select}, {similarity} AS similarity_score FROM {vector_from}"
        " WHERE {emb} IS NOT NULL AND {where} ORDER BY {order} LIMIT {limit}"
    ).format(select=select, where=where, limit=sql.Literal(limit), **parts).as_string()


def _full_text_matches(project: Project, shape: tuple[Filter, ...], candidates: int,
                       documents: bool = True, removed: bool = True) -> sql.Composable:
    """The ``candidates`` rows best ranked by ``ts_rank`` for the query ``%(text)s``, best first: their keys
    (``Key.aliases``) and rank ``r``. A row is ranked by its document (``expressions.fts_document``, found
    through the source's ``<job>_fts_idx``), a chunked project's row by its best chunk's stored document
    (``chunk_fts``, indexed in the chunk table): ranking a match then reads its document instead of parsing
    its text again. A project created before they were stored ranks a row by its text's document until its
    next generation run (or writing call) stores them."""
    key, names = project.key, project.key.aliases()
    if not project.is_chunked and documents:
        return sql.SQL(
            "SELECT {keys}, ts_rank(e.{doc}, q) AS r FROM {documents} e{source_join},"
            " websearch_to_tsquery('english', %(text)s) q"
            " WHERE e.{doc} @@ q AND {where} ORDER BY r DESC, {names} LIMIT {candidates}"
        ).format(keys=key.select_as("e", names), doc=sql.Identifier(DOCUMENT_COLUMN),
                 documents=project.names.documents, source_join=_chunk_source_join(project, shape),
                 where=_chunk_where(project, shape, removed), names=names.names(), candidates=sql.Literal(candidates))
    if not documents:  # created before documents were stored: parse each match's text, as it was then
        return sql.SQL(
            "SELECT {keys}, ts_rank({doc}, q) AS r FROM {source} s, websearch_to_tsquery('english', %(text)s) q"
            " WHERE {doc} @@ q AND {where} ORDER BY r DESC, {names} LIMIT {candidates}"
        ).format(keys=key.select_as("s", names), doc=expressions.fts_document(project, "s"),
                 source=project.names.source, where=_where(shape), names=names.names(),
                 candidates=sql.Literal(candidates))
    return sql.SQL(
        "SELECT {keys}, max(ts_rank(e.{fts}, q)) AS r FROM {target} e{source_join},"
        " websearch_to_tsquery('english', %(text)s) q WHERE e.{fts} @@ q AND {where}"
        " GROUP BY {group} ORDER BY r DESC, {names} LIMIT {candidates}"
    ).format(keys=key.select_as("e", names), fts=sql.Identifier(CHUNK_FTS_COLUMN), target=project.names.target,
             source_join=_chunk_source_join(project, shape), where=_chunk_where(project, shape, removed), group=key.names("e"),
             names=names.names(), candidates=sql.Literal(candidates))


@lru_cache(maxsize=256)
def _hybrid_statement(
    project: Project, columns: tuple[str, ...], shape: tuple[Filter, ...], limit: int, candidates: int,
    exact: bool = False, documents: bool = True, removed: bool = True, chunks_per_row: int = CHUNKS_PER_ROW,
) -> str:
    """A chunked project's semantic candidates are the rows nearest by their best chunk among the index's
    ``candidates × chunks_per_row`` nearest chunks, or (``exact``) among every chunk; its statement's last
    columns are ``shortfall`` (of those ``candidates`` rows; 2 when there are none) and ``_small_table``."""
    parts = _parts(project)
    key, names = project.key, project.key.aliases()
    keys, where = key.select_as("s", names), _where(shape)
    if project.is_join and not shape:  # the keys alone, from the embeddings table (see _vector_statement)
        keys, where = key.select_as("e", names), sql.SQL("{} AND {}").format(source_row_exists(project, removed), where)
        parts = {**parts, "vector_from": sql.SQL("{} e").format(project.names.target)}
    semantic = sql.SQL(
        "SELECT {keys}, {distance} AS d FROM {vector_from}"
        " WHERE {emb} IS NOT NULL AND {where} ORDER BY {order} LIMIT {candidates}"
    ).format(keys=keys, where=where, candidates=sql.Literal(candidates), **parts)
    best, chunk, semantic_shortfall, fused_shortfall = parts["embeddings_join"], sql.SQL(""), sql.SQL(""), sql.SQL("")
    if project.is_chunked:  # each row's nearest chunk, for every fused row (full-text-only ones too)
        chunks = None if exact else candidates * chunks_per_row
        semantic = _rows_by_best_chunk(project, shape, candidates, chunks, removed)
        best = sql.SQL("LEFT JOIN {} ON true").format(_best_chunk(project, "s"))
        parts["similarity"] = sql.SQL(SIMILARITY[project.index_dist_type]).format(sql.SQL("best.d"))
        # Each CTE read once (inlined, the plan as without them): the flag goes along the rows, any row's.
        semantic_shortfall = sql.SQL(", {}").format(shortfall(candidates, "filled"))
        fused_shortfall = sql.SQL(", coalesce(max(v.shortfall) OVER (), 2) AS shortfall")
        chunk = sql.SQL(", best.chunk, f.shortfall, {}").format(_small_table(project))
    return sql.SQL(
        "WITH semantic AS ("
        "  SELECT {names}, row_number() OVER (ORDER BY d, {names}) AS rank{semantic_shortfall} FROM ({semantic}) v),"
        " full_text AS ("
        "  SELECT {names}, row_number() OVER (ORDER BY r DESC, {names}) AS rank FROM ({matches}) t),"
        " fused AS ("
        "  SELECT {either}, v.rank AS semantic_rank, t.rank AS full_text_rank,"
        "   coalesce(%(semantic_weight)s / (%(rrf_k)s + v.rank), 0)"
        "   + coalesce(%(full_text_weight)s / (%(rrf_k)s + t.rank), 0) AS rrf_score{fused_shortfall}"
        "  FROM semantic v FULL JOIN full_text t ON {same})"
        " SELECT {columns}, f.rrf_score, f.semantic_rank, f.full_text_rank, {similarity} AS similarity_score{chunk}"
        " FROM fused f JOIN {source} s ON {fused} {best}"
        " ORDER BY f.rrf_score DESC, f.semantic_rank NULLS LAST, f.full_text_rank NULLS LAST"
        " LIMIT {limit}"
    ).format(
        semantic=semantic,
        matches=_full_text_matches(project, shape, candidates, documents, removed),
        columns=_column_list(columns),
        source=project.names.source,
        limit=sql.Literal(limit),
        best=best,
        chunk=chunk,
        semantic_shortfall=semantic_shortfall,
        fused_shortfall=fused_shortfall,
        names=names.names(),
        either=sql.SQL(", ").join(sql.SQL("coalesce(v.{n}, t.{n}) AS {n}").format(n=sql.Identifier(n))
                                  for n in names.columns),
        same=names.equals("t", "v"),
        fused=key.equals("s", "f", names),
        similarity=parts["similarity"],
    ).as_string()


def vector_search_query(
    target: SearchTarget,
    query: Any,
    return_columns: Sequence[str] | None = None,
    num_results: int = 10,
    filters: Mapping[str, Any] | None = None,
    ef_search: int | None = None,
    embed: Callable[[str], Any] | None = None,
    chunks_per_row: int = CHUNKS_PER_ROW,
    single_pass: bool = False,
) -> SearchQuery:
    """Check the input, embed the query (a text, with ``embed``), and build the nearest-neighbour statement.
    ``ef_search`` None: the project's own (``Project.ef_search``, set by ``tune_search``), else pgvector's.

    ``chunks_per_row``: for a chunked project, the nearest ``num_results × chunks_per_row`` chunks are read,
    or every chunk while the target says so (``SearchTarget.exact``). A search without filters whose other
    arguments equal an earlier one's on the same ``target`` reuses what was checked and built then
    (``SearchTarget.queries``): only the query vector is checked.

    ``single_pass`` (pgvector >= 0.8): a search without filters that reads at most ef_search rows (a chunked
    project: its first ask, FIRST_PASS_CHUNKS_PER_ROW chunks a row; a later ask, all the chunks it asks for)
    scans the index without iterative scans (``SearchQuery.single_pass``). An iterative scan
    returns the candidates of the index's first pass (ef_search of them) first, in the same order, before it
    looks further; only it records, on that first pass, every candidate it leaves aside (pgvector's
    ``discarded`` heap), which costs ~5 % of such a statement's time. So when the single pass returns
    ``num_results`` rows they are the rows of the iterative scan; when it returns fewer (rows of that first
    pass no longer visible, or too few rows), the caller runs the search again without ``single_pass``
    (a chunked one: with more chunks per row, ``chunks_per_row``)."""
    project = target.project
    ef_search = project.ef_search if ef_search is None else ef_search
    chunks_per_row = chunks_per_row if project.is_chunked else 0
    exact = target.exact if project.is_chunked else None
    key = None
    if not filters and (return_columns is None or type(return_columns) in (list, tuple)):
        # The types are part of the key: True == 1 and 10.0 == 10, but neither is a valid count.
        key = (type(return_columns), None if return_columns is None else tuple(return_columns),
               type(num_results), num_results, type(ef_search), ef_search, chunks_per_row, single_pass,
               exact)
        try:
            built = target.queries.get(key)
        except TypeError:  # an unhashable column name: refused below
            key = built = None
        if built is not None:
            vector = query_vector(project, query, embed)
            return SearchQuery(built.statement, {**built.params, "vector": vector} if built.params else
                               {"vector": vector}, built.settings, built.single_pass, exact)
    check_count("num_results", num_results)
    columns = check_columns(project, target.columns, return_columns)
    shape, params = parse_filters(project, target.columns, filters)
    settings = scan_settings(ef_search, index_path=exact is False and not shape)
    first_pass = DEFAULT_CANDIDATES if ef_search is None else ef_search
    # A chunked search's first ask (CHUNKS_PER_ROW) may read fewer chunks than it asks for: when the first
    # pass's chunks cover num_results rows, those are the rows the longer scan would rank first.
    per_row = FIRST_PASS_CHUNKS_PER_ROW if chunks_per_row == CHUNKS_PER_ROW else (chunks_per_row or 1)
    single_pass = single_pass and not shape and not exact and num_results * per_row <= first_pass
    if single_pass:
        settings[ITERATIVE_SCAN] = "off"
    if project.is_chunked:
        params.update(_guard_params(target))
    chunks = None if exact is not False else num_results * chunks_per_row
    statement = _vector_statement(project, tuple(columns), shape, num_results, chunks, target.storage,
                                  target.storage_oid, target.removed)
    vector = query_vector(project, query, embed)
    if key is not None:
        if len(target.queries) >= MAX_BUILT_QUERIES:
            target.queries.clear()
        target.queries[key] = SearchQuery(statement, params, settings, single_pass, exact)
    return SearchQuery(statement, {**params, "vector": vector}, settings, single_pass, exact)


# Settings under which a search reads no index in distance order: every vector is compared (the exact answer
# an HNSW search approximates; ``tuning``). A chunked project's exact path needs no setting (``exact_query``).
EXACT_SETTINGS = {"enable_indexscan": "off"}


def exact_query(target: SearchTarget, vector: Any, return_columns: Sequence[str] | None, num_results: int,
                filters: Mapping[str, Any] | None = None) -> SearchQuery:
    """The search ``vector_search_query`` builds, answered exactly: a chunked project's on its exact path
    (every chunk compared at full precision), an unchunked one's with index scans off (a sequential scan and
    a sort by the full vectors, also with a half-precision index). Built on a copy of ``target``, so nothing
    is kept in its built searches; a statement of its own."""
    full = replace(target.project, halfvec_index=False)  # ordered by the full vectors, not the index's halves
    exact = replace(target, project=full, exact=full.is_chunked, queries={})
    search = vector_search_query(exact, vector, return_columns, num_results, filters, ef_search=None)
    search.settings = {**search.settings, **EXACT_SETTINGS}
    # Its own text: a plan prepared for the same statement with index scans on (psycopg prepares a statement
    # run often; a setting changed since does not re-plan it) would read the index.
    search.statement += " /* exact */"
    return search


def exact_path(target: SearchTarget) -> SearchTarget:
    """A chunked project's ``target`` as its exact path sees it (every chunk compared, full precision), for
    one search whose index path found too few rows (``VectorizeHook._read_more_chunks``); a copy, so nothing
    it builds is kept in the entry's built searches."""
    return replace(target, exact=True, queries={})


# Two or more '-' in a row (spaced or not: a Markdown rule, "- - -") are NOT operators to websearch_to_tsquery,
# and a long run of them overflows its parser's stack ("tsquery stack too small", a README's "-----" line).
NEGATION_RUN = re.compile(r"(?:-\s*){2,}")


def full_text_query(query: str) -> str:
    """The query as the full-text side reads it: runs of '-' (no words to exclude) become a space."""
    return NEGATION_RUN.sub(" ", query)


def hybrid_search_query(
    target: SearchTarget,
    query: str,
    return_columns: Sequence[str] | None = None,
    num_results: int = 10,
    filters: Mapping[str, Any] | None = None,
    semantic_weight: float = 1.0,
    full_text_weight: float = 1.0,
    candidates: int | None = None,
    ef_search: int | None = None,
    embed: Callable[[str], Any] | None = None,
    rrf_k: float = RRF_K,
    chunks_per_row: int = CHUNKS_PER_ROW,
) -> SearchQuery:
    """Check the input, embed the query, and build the hybrid statement.

    The top ``candidates`` rows by vector distance and by ts_rank are fused by reciprocal rank (``rrf_k``).
    A chunked project's vector part reads the nearest ``candidates × chunks_per_row`` chunks on the index
    path (``SearchQuery.short``: too few rows among them), or every chunk (``SearchTarget.exact``).
    """
    project = target.project
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError(f"hybrid_search needs a non-empty text query, got {query!r}")
    if "\x00" in query:
        raise InvalidInputError("hybrid_search query contains a NUL character (\\x00), which PostgreSQL text"
                                " cannot hold")
    validation.check_text(query, "hybrid_search query")
    if len(query.encode()) > MAX_FULL_TEXT_QUERY_BYTES:
        raise InvalidInputError(
            f"hybrid_search query is {len(query.encode())} bytes; its full-text part takes at most"
            f" {MAX_FULL_TEXT_QUERY_BYTES} bytes (PostgreSQL's tsquery parser fails on longer ones). A vector"
            " search (search(); mode=vector over HTTP) takes long texts: the model reads their beginning"
        )
    check_count("num_results", num_results)
    candidates = max(num_results, DEFAULT_CANDIDATES) if candidates is None else candidates
    check_count("candidates", candidates)  # fewer than num_results: at most 2 × candidates rows (pg_vectorize's)
    weights = (semantic_weight, full_text_weight)
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
               for w in weights) or not any(weights):
        raise InvalidInputError(
            f"semantic_weight and full_text_weight must be finite numbers >= 0, not both 0; got {weights}"
        )
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, (int, float)) or not math.isfinite(rrf_k) or rrf_k < 0:
        raise InvalidInputError(f"rrf_k must be a finite number >= 0, got {rrf_k!r}")
    columns = check_columns(project, target.columns, return_columns)
    shape, params = parse_filters(project, target.columns, filters)
    exact = target.exact if project.is_chunked else None
    settings = scan_settings(project.ef_search if ef_search is None else ef_search,
                             index_path=exact is False and not shape)
    params.update(
        _guard_params(target), vector=query_vector(project, query, embed), text=full_text_query(query),
        semantic_weight=float(semantic_weight), full_text_weight=float(full_text_weight), rrf_k=float(rrf_k),
    )
    statement = _hybrid_statement(project, tuple(columns), shape, num_results, candidates, bool(exact),
                                  target.documents, target.removed, chunks_per_row)
    return SearchQuery(statement, params, settings, exact=exact)


# -- running ------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class SearchSession:
    """What goes with a hook's search connection ``conn`` (from ``prepare_connection``), so that a search
    costs one statement and little else besides:

    - the settings of its session: those ``prepare_connection`` gave it (``baseline``) and those it has now
      (``current``: the baseline, changed by searches' settings);
    - one cursor that runs the searches, one at a time (``lock``), its rows made into dicts with the names
      of each statement's result columns, read once (``names``).
    """

    conn: psycopg.Connection
    baseline: dict[str, str]
    current: dict[str, str] = field(init=False)
    cursor: Cursor = field(init=False, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    names: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    last: dict[str, str] | None = field(default=None, repr=False)  # the last search's settings

    def __post_init__(self) -> None:
        self.current = dict(self.baseline)
        self.cursor = self.conn.cursor()

    def apply(self, settings: dict[str, str]) -> None:
        """Give the session a search's ``settings``, and put back the others (the baseline's value, or the
        session's own: ``reset_val``, what RESET restores), in one round trip and only when they change.
        Outside a transaction (autocommit), so that nothing rolls them back."""
        if settings is self.last or settings == self.last:
            return
        wanted = {**self.baseline, **settings}
        changed = {name: value for name, value in wanted.items() if self.current.get(name) != value}
        reset = [name for name in self.current if name not in wanted]
        if changed or reset:
            self.cursor.execute(
                "SELECT set_config(name, value, false) FROM unnest(%s::text[], %s::text[]) AS s(name, value)"
                " UNION ALL"
                " SELECT set_config(name, reset_val, false) FROM pg_settings WHERE name = ANY(%s::text[])",
                [list(changed), list(changed.values()), reset],
            )
        self.current, self.last = wanted, settings

    def run(self, search: SearchQuery) -> list[dict[str, Any]]:
        with self.lock:
            if search.settings is not self.last:  # a repeated search's settings are the same dict
                self.apply(search.settings)
            return _fetch(self.cursor, search, self.names)


def _fetch(cur: Cursor, search: SearchQuery, names: dict[str, tuple[str, ...]] | None = None
           ) -> list[dict[str, Any]]:
    """Execute ``search`` on ``cur`` (a tuple cursor); its rows as dicts, a chunked search's last two columns
    kept out of them: ``shortfall`` (``search.short``, ``search.more``) and ``_small_table``
    (``search.small_table``). ``names``: the
    result columns' names by statement, read once."""
    try:
        rows = cur.execute(search.statement, search.params).fetchall()
    except (psycopg.errors.DataError, psycopg.errors.UndefinedFunction) as error:  # PostgreSQL's first line: not
        problem = error.diag.message_primary or str(error)  # the statement's text its LINE 1 quotes, nor a HINT
        raise InvalidInputError(f"a filter value does not fit its column: {problem}".strip()) from error
    columns = None if names is None else names.get(search.statement)
    if columns is None:
        columns = tuple(column.name for column in cur.description)[:None if search.exact is None else -2]
        if names is not None:
            if len(names) >= MAX_BUILT_QUERIES:
                names.clear()
            names[search.statement] = columns
    if search.exact is not None:
        search.small_table = rows[0][-1] if rows else None
        search.short = bool(rows and rows[0][-2])
        search.more = bool(rows and rows[0][-2] == 1)
    return [dict(zip(columns, row)) for row in rows]


def _as_text_beyond_python(loader: type[Loader]) -> type[Loader]:
    """``loader``, giving PostgreSQL's own text for a value Python's datetime cannot hold ('infinity',
    '-infinity', a year beyond 9999) instead of failing the whole search."""

    class Loading(loader):
        def load(self, data: Any) -> Any:
            try:
                return super().load(data)
            except psycopg.DataError:
                return bytes(data).decode()

    return Loading


def prepare_connection(conn: psycopg.Connection) -> SearchSession:
    """Once per search connection: pgvector's types, dates and times beyond Python's as text, and iterative
    HNSW scans (pgvector >= 0.8), which keep scanning until LIMIT rows pass the filters, in exact order."""
    register_vector(conn)
    for name, loader in (("date", DateLoader), ("timestamp", TimestampLoader), ("timestamptz", TimestamptzLoader)):
        conn.adapters.register_loader(name, _as_text_beyond_python(loader))
    iterative = conn.execute(
        "SELECT set_config('hnsw.iterative_scan', 'strict_order', false) FROM pg_extension"
        " WHERE extname = 'vector' AND string_to_array(extversion, '.')::int[] >= '{0,8}'"
    ).fetchall()
    return SearchSession(conn, {ITERATIVE_SCAN: "strict_order"} if iterative else {})


def _apply_settings(cur: Cursor, settings: dict[str, str]) -> None:
    """The query's transaction-local settings (``hnsw.ef_search``), in one round trip."""
    if settings:
        cur.execute(
            "SELECT set_config(name, value, true) FROM unnest(%s::text[], %s::text[]) AS s(name, value)",
            [list(settings), list(settings.values())],
        )


def run(conn: psycopg.Connection, search: SearchQuery, session: SearchSession | None = None
        ) -> list[dict[str, Any]]:
    """Execute the query; rows as dicts, best first.

    Its settings are local to a transaction it runs in; or, given ``session`` (``conn``'s, from
    ``prepare_connection``), they are given to the connection's session when they change, and the query runs
    alone: one round trip per search for as long as the settings stay the same (as for a raw statement on a
    session configured once)."""
    if session is not None:
        return session.run(search)
    with conn.transaction() if search.settings else nullcontext(), conn.cursor() as cur:
        _apply_settings(cur, search.settings)
        return _fetch(cur, search)


def explain(cur: Cursor, search: SearchQuery, analyze: bool = False) -> str:
    """The plan of exactly the statement ``run`` executes, with the same settings (inside a transaction)."""
    _apply_settings(cur, search.settings)
    prefix = "EXPLAIN (ANALYZE, COSTS OFF) " if analyze else "EXPLAIN (COSTS OFF) "
    return "\n".join(row[0] for row in cur.execute(prefix + search.statement, search.params).fetchall())
