"""Checks of user input against pg_catalog and the data, raising precise errors before anything is written."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import Cursor, sql
from psycopg.rows import dict_row

from airflow_vectorize.catalog import (
    INDEX_DIST_TYPES,
    MAX_JOB_NAME_BYTES,
    SCHEDULES,
    TABLE_METHODS,
    Project,
    key_columns,
)
from airflow_vectorize.exceptions import (
    DatabasePermissionError,
    DimensionMismatchError,
    InvalidInputError,
    ProjectConflictError,
    SourceNotFoundError,
)
from airflow_vectorize.keys import Key
from airflow_vectorize.naming import CHUNK_FTS_COLUMN, DOCUMENT_COLUMN, SCHEMA, quoted

JOB_NAME_PATTERN = re.compile(r"[A-Za-z0-9_]+")
SAMPLE_SIZE = 5
INTEGER_TYPES = {"smallint", "integer", "bigint"}
TIMESTAMP_TYPES = {"timestamp", "timestamptz"}
VECTOR_TYPES = {"vector", "halfvec"}
FLOAT_ELEMENT_TYPES = {"float4", "float8"}
MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL silently cuts longer names to this many bytes
REAL_MAX = 3.4028234663852886e38  # the largest finite real (float4); pgvector stores vectors as real
# pgvector's HNSW index takes vectors of at most this many dimensions, by the type the index holds
INDEX_MAX_DIMENSIONS = {"vector": 2000, "halfvec": 4000}
HALFVEC_MAX = 65504.0  # the largest finite halfvec value: a chunked project's index holds its vectors as halfvec
HALFVEC_ZERO_MAX = 2.0 ** -25  # values of at most this size are 0 as halfvec (half its smallest subnormal, 2^-24)

# Columns that a project's tables put next to a copy of the source's key: the embeddings table (join), the
# removed rows' table (append: removal.create_removed_table), the queue, the errors table and generation's
# staging table (catalog.create_storage, create_errors_table, generation.BatchWriter). A key of one of these
# names would collide with them.
KEY_NEIGHBOUR_COLUMNS = ("embeddings", "text_md5", "enqueued_at", "error", "attempts", "first_seen", "last_seen",
                         "updated_at")
DOCUMENTS_COLUMNS = (DOCUMENT_COLUMN,)  # an unchunked project's documents table (catalog.create_documents_table)
CHUNK_COLUMNS = ("chunk_no", "start_offset", "end_offset", "chunk", CHUNK_FTS_COLUMN)  # a chunked one's chunk table
# The keys search results add to a row's columns (``search``): a key or embedded column of one of these names
# could not be returned (and RAG returns both).
RESULT_KEYS = ("similarity_score", "rrf_score", "semantic_rank", "full_text_rank", "chunk")
# Columns that the view vectorize.<job>_view of a join project adds to the source's own (s.*).
VIEW_COLUMNS = ("embeddings", "embeddings_updated_at")
CHUNKED_VIEW_COLUMNS = ("chunk_no", "chunk", *VIEW_COLUMNS)


@dataclass(frozen=True)
class Column:
    """A table column as pg_catalog describes it."""

    name: str
    type_sql: str  # format_type(), e.g. "vector(384)"
    data_type: str  # format_type() without modifier, e.g. "integer" (pg_vectorize's pkey_type)
    typname: str  # e.g. "int4", "vector", "_float4"
    category: str  # pg_type.typcategory: "S" string, "A" array, ...
    typmod: int
    not_null: bool
    element: str | None  # element typname for arrays
    unique: bool  # a primary key or non-partial unique index on this column alone
    collation: str | None = None  # a collation other than the database default (quoted, as regcollation)


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    kind: str  # pg_class.relkind
    columns: dict[str, Column]

    @property
    def label(self) -> str:
        return quoted((self.schema, self.name))

    def column(self, name: str, role: str, missing: type[InvalidInputError] = InvalidInputError) -> Column:
        if name not in self.columns:
            raise missing(
                f"{role} column {name!r} does not exist in table {self.label};"
                f" its columns are: {', '.join(self.columns)}"
            )
        return self.columns[name]


_DESCRIBE = """
SELECT c.relkind, a.attname, format_type(a.atttypid, a.atttypmod) AS type_sql,
       format_type(a.atttypid, NULL) AS data_type, t.typname, t.typcategory, a.atttypmod, a.attnotnull,
       et.typname AS element,
       CASE WHEN a.attcollation NOT IN (0, 100) THEN a.attcollation::regcollation::text END AS collation,
       EXISTS (SELECT 1 FROM pg_index i
                WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum
                  AND i.indpred IS NULL AND i.indexprs IS NULL) AS is_unique
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
 WHERE n.nspname = %s AND c.relname = %s
 ORDER BY a.attnum
"""


def describe_table(cur: Cursor, schema: str, name: str) -> Table | None:
    """The relation and its columns in one round trip; None when it does not exist."""
    with cur.connection.cursor(row_factory=dict_row) as dict_cur:
        rows = dict_cur.execute(_DESCRIBE, [schema, name]).fetchall()
    if not rows:
        return None
    columns = {
        r["attname"]: Column(
            name=r["attname"],
            type_sql=r["type_sql"],
            data_type=r["data_type"],
            typname=r["typname"],
            category=r["typcategory"],
            typmod=r["atttypmod"],
            not_null=r["attnotnull"],
            element=r["element"],
            unique=r["is_unique"],
            collation=r["collation"],
        )
        for r in rows
        if r["attname"] is not None
    }
    return Table(schema=schema, name=name, kind=rows[0]["relkind"], columns=columns)


def require_table(cur: Cursor, schema: str, name: str, *, kinds: str, role: str) -> Table:
    table = describe_table(cur, schema, name)
    if table is None:
        raise SourceNotFoundError(f'{role} table "{schema}"."{name}" does not exist')
    if table.kind not in kinds:
        raise InvalidInputError(f"{role} {table.label} is not a table (relkind {table.kind!r})")
    return table


def check_identifier(name: Any, role: str) -> str:
    """``name`` if PostgreSQL can hold it exactly; InvalidInputError otherwise.

    PostgreSQL cuts a name longer than 63 bytes to 63 without a word (also when comparing it with a
    catalog name), so a longer name would act on another object; a NUL cannot be sent at all.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"{role} must be a non-empty name, got {name!r}")
    if "\x00" in name:
        raise InvalidInputError(f"{role} {name!r} contains a NUL character (\\x00), which PostgreSQL names cannot hold")
    size = len(name.encode())
    if size > MAX_IDENTIFIER_BYTES:
        cut = name.encode()[:MAX_IDENTIFIER_BYTES].decode(errors="ignore")
        raise InvalidInputError(
            f"{role} {name!r} is {size} bytes long; PostgreSQL names have at most {MAX_IDENTIFIER_BYTES} bytes"
            f" and it would silently be cut to {cut!r}. Give the object's exact name."
        )
    return name


# -- create_project ------------------------------------------------------------------------------------
def check_job_name(job_name: Any) -> None:
    if not isinstance(job_name, str) or not JOB_NAME_PATTERN.fullmatch(job_name):
        raise InvalidInputError(
            f"job_name {job_name!r} is invalid: use only letters, digits and underscores ([A-Za-z0-9_]+)"
        )
    if len(job_name.encode()) > MAX_JOB_NAME_BYTES:
        raise InvalidInputError(
            f"job_name {job_name!r} is {len(job_name.encode())} bytes long; at most {MAX_JOB_NAME_BYTES}"
            " are allowed so that every derived name (e.g. vectorize_insert_trigger_<job>) fits PostgreSQL's"
            " 63-byte identifiers"
        )


def check_options(table_method: str, index_dist_type: str, schedule: str) -> None:
    if table_method not in TABLE_METHODS:
        raise InvalidInputError(f"table_method {table_method!r} is unknown; use one of {', '.join(TABLE_METHODS)}")
    if index_dist_type not in INDEX_DIST_TYPES:
        raise InvalidInputError(
            f"index_dist_type {index_dist_type!r} is unknown; use one of {', '.join(INDEX_DIST_TYPES)}"
        )
    if schedule not in SCHEDULES:
        raise InvalidInputError(
            f"schedule {schedule!r} is not supported: use 'realtime' (triggers queue changed rows) or 'manual'"
            " (no triggers). Embedding runs are driven by your DAG's own schedule, not by a cron string here."
        )


def check_index_options(m: Any, ef_construction: Any, default_ef: int = 64) -> None:
    """The HNSW index's ``m`` (2-100) and ``ef_construction`` (4-1000, at least 2 × m), as pgvector takes them;
    ``default_ef``: the ef_construction the index gets when None (pgvector's 64, a chunked project's 256)."""
    for name, value, low, high in (("hnsw_m", m, 2, 100), ("hnsw_ef_construction", ef_construction, 4, 1000)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            raise InvalidInputError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    ef = default_ef if ef_construction is None else ef_construction
    if ef < 2 * (m or 16):
        given = f"{ef}" if ef_construction is not None else f"{ef}, the default"
        raise InvalidInputError(f"hnsw_ef_construction ({given}) must be at least 2 × hnsw_m ({2 * (m or 16)})")


def check_index_dimensions(project: Project, whose: str) -> None:
    """``project``'s vectors fit its HNSW index (``INDEX_MAX_DIMENSIONS``); ``whose``: what made them, for the
    message."""
    held = "halfvec" if project.half_index else "vector"
    limit = INDEX_MAX_DIMENSIONS[held]
    if project.dimensions <= limit:
        return
    if held == "vector" and project.dimensions <= INDEX_MAX_DIMENSIONS["halfvec"]:
        remedy = ("pass halfvec_index=True (the index holds them at half precision, up to"
                  f" {INDEX_MAX_DIMENSIONS['halfvec']}; the table keeps them whole)")
    else:
        remedy = "ask for shorter vectors (dimensions=, for a model that can shorten them) or use another model"
    raise InvalidInputError(f"{whose} has {project.dimensions}-dimensional vectors, but pgvector's HNSW index of"
                            f" {held} takes at most {limit} dimensions: {remedy}")


def key_spelling(primary_key: Any, role: str = "primary_key") -> str | tuple[str, ...]:
    """A key as the catalog spells it: a column name, or a tuple of 2 or more for a composite key (a list of
    one is its column)."""
    columns = [primary_key] if isinstance(primary_key, str) else primary_key
    if not isinstance(columns, (list, tuple)) or not columns or not all(isinstance(c, str) for c in columns):
        raise InvalidInputError(f"{role} must be a column name or a list of column names, got {primary_key!r}")
    if len(set(columns)) != len(columns):
        raise InvalidInputError(f"{role} {list(columns)} names a column more than once")
    return columns[0] if len(columns) == 1 else tuple(columns)


# What a key column may be: a single value that psycopg reads and writes (a generation run COPYs keys in
# binary) and a btree compares. By pg_type.typcategory: boolean, date/time, enum, network address, numeric
# (not money), string, timespan; of the user-defined ones, uuid.
KEY_CATEGORIES = frozenset("BDEINST")


def key_type_supported(column: Column) -> bool:
    if column.category == "U":
        return column.typname == "uuid"
    return column.category in KEY_CATEGORIES and column.typname != "money"


def check_project_source(cur: Cursor, project: Project, attaching: bool = False) -> list[Column]:
    """Check the source table, key, text columns and update column; return the key's columns.

    ``attaching``: a table put in the source's place (``removal.attach``): an append project's columns
    may be there already (a copy of the old table's layout), and the key must have the project's types."""
    if not isinstance(project.columns, tuple) or not project.columns:
        raise InvalidInputError("columns must name at least one text column to embed")
    if len(set(project.columns)) != len(project.columns):
        raise InvalidInputError(f"columns {list(project.columns)} name a column more than once")
    check_identifier(project.schema, "schema")
    check_identifier(project.relation, "table")
    for name in project.key.columns:
        check_identifier(name, "primary_key")
    for name in project.columns:
        check_identifier(name, "column")
    if project.update_time_col is not None:
        check_identifier(project.update_time_col, "update_col")
    hidden = [c for c in (*project.key.columns, *project.columns) if c in RESULT_KEYS]
    if hidden and not attaching:
        raise InvalidInputError(
            f"column(s) {hidden} have the names of keys that search results add ({', '.join(RESULT_KEYS)}): no"
            " search or RAG call could return them; rename the column(s)"
        )
    if project.schema == SCHEMA:
        raise InvalidInputError(
            f"source table {project.relation!r} is in schema {SCHEMA!r}, which holds the projects' catalog and"
            " storage; make a project of a table in another schema"
        )
    table = require_table(cur, project.schema, project.relation, kinds="rp", role="source")
    if table.kind == "r":
        cur.execute("SELECT array_agg(inhrelid::regclass::text ORDER BY inhrelid) FROM pg_inherits"
                    " WHERE inhparent = to_regclass(%s)", [table.label])
        children = cur.fetchone()[0]
        if children:
            raise InvalidInputError(
                f"source {table.label} has child tables through INHERITS ({', '.join(children)}): their rows are"
                " read through it, but their writes fire none of its triggers, so the project would miss their"
                " inserts, changes and deletes. Make a project of each table, or use declarative partitioning"
                " (PARTITION BY), which projects support"
            )
    keys = [table.column(name, "primary_key") for name in project.key.columns]
    neighbours = KEY_NEIGHBOUR_COLUMNS + (CHUNK_COLUMNS if project.is_chunked else DOCUMENTS_COLUMNS)
    for key in keys:
        if key.name in neighbours:
            raise InvalidInputError(
                f"primary_key {key.name!r} of {table.label} has the name of a column that the project's tables"
                f" keep next to the key ({', '.join(neighbours)}); rename the key column"
            )
    if project.is_join:
        added = CHUNKED_VIEW_COLUMNS if project.is_chunked else VIEW_COLUMNS
        clashing = [c for c in table.columns if c in added]
        if clashing:
            raise InvalidInputError(
                f"table_method 'join' makes the view {SCHEMA}.{project.name}_view of the columns of {table.label}"
                f" and {', '.join(added)}, but {table.label} has column(s) {clashing}: rename them"
                + ("" if project.is_chunked else ", or use table_method='append'")
            )
    if len(keys) == 1 and not keys[0].unique:
        raise InvalidInputError(
            f"primary_key {project.primary_key!r} of {table.label} is not unique: it needs a primary key or a"
            " unique index on that column alone"
        )
    if len(keys) > 1 and not unique_together(cur, table, project.key.columns):
        raise InvalidInputError(
            f"primary_key {list(project.primary_key)} of {table.label} is not unique: it needs a primary key or"
            " a unique index on exactly these columns"
        )
    nullable = [k.name for k in keys if not k.not_null]
    if nullable:
        raise InvalidInputError(
            f"primary_key column(s) {nullable} of {table.label} allow NULL: a row with a NULL key cannot be told"
            " apart from another, nor kept in the project's tables, whose keys are NOT NULL (as pg_vectorize's)."
            f" Make them NOT NULL (ALTER TABLE {table.label} ALTER COLUMN {nullable[0]} SET NOT NULL; it fails"
            " while a row has a NULL key), or choose a primary key"
        )
    for key in keys:
        if not key_type_supported(key):
            raise InvalidInputError(
                f"primary_key {key.name!r} of {table.label} is {key.type_sql}: a key must be a single value of a"
                " plain type (integer, numeric, text, char, varchar, enum, uuid, date, timestamp, inet, ...), not"
                " an array, a document, a range, a composite, a geometric type or money"
            )
    for name in project.columns:
        column = table.column(name, "text")
        if column.category != "S":
            raise InvalidInputError(
                f"column {name!r} of {table.label} is {column.type_sql}; columns to embed must be text-like"
                " (text, varchar, char)"
            )
    if project.update_time_col is not None:
        column = table.column(project.update_time_col, "update_col", missing=SourceNotFoundError)
        if column.typname not in TIMESTAMP_TYPES:
            raise InvalidInputError(
                f"update_col {project.update_time_col!r} of {table.label} is {column.type_sql};"
                " it must be timestamp or timestamptz"
            )
    if attaching:
        types = [k.data_type for k in keys]
        if tuple(types) != tuple(project.key.flat(project.pkey_type)):
            raise InvalidInputError(
                f"the key of {table.label} is {types}, but project {project.name!r} keeps keys of type"
                f" {list(project.key.flat(project.pkey_type))}: the table cannot take the source's place")
    if not project.is_join and not attaching:
        taken = [c for c in (project.names.embeddings_column, project.names.updated_at_column, project.names.text_md5_column)
                 if c in table.columns]
        if taken:
            raise InvalidInputError(
                f"table_method 'append' adds columns {taken} to {table.label}, but they already exist"
            )
    return keys


# Whether a primary key or a non-partial unique index of the relation ``{rel}`` has exactly the columns bound as
# ``%(key)s`` (text[]) as its key columns, in any order: rows are then told apart by them.
UNIQUE_KEY = (
    "EXISTS (SELECT FROM pg_index i WHERE i.indrelid = {rel}"
    " AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL"
    " AND i.indnkeyatts = cardinality(%(key)s::text[])"
    " AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a"
    "      WHERE a.attrelid = i.indrelid AND a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1]))"
    "     = (SELECT array_agg(c ORDER BY c) FROM unnest(%(key)s::text[]) c))"
)


def unique_together(cur: Cursor, table: Table, columns: tuple[str, ...]) -> bool:
    """Whether a primary key or a valid non-partial unique index of ``table`` has exactly ``columns`` as its
    key columns (in any order): rows are then told apart by them (``UNIQUE_KEY``; an index a failed
    ``CREATE UNIQUE INDEX CONCURRENTLY`` left invalid does not say so)."""
    relation = "to_regclass(format('%%I.%%I', %(schema)s::text, %(name)s::text))"
    cur.execute("SELECT " + UNIQUE_KEY.format(rel=relation), {"schema": table.schema, "name": table.name,
                                                              "key": list(columns)})
    return bool(cur.fetchone()[0])


# -- a project's source, as each call finds it ---------------------------------------------------------------
@dataclass(frozen=True)
class SourceState:
    """What ``source_state`` found of a project's source table (each check of ``check_project_source`` that can
    stop holding after create_project, and the presence of its columns)."""

    gone: bool  # no table under the source's name
    missing: list[str]  # columns the call reads, absent
    replaced: list[str]  # an append project's own columns, absent (another table under its name)
    children: list[str]  # child tables through INHERITS
    unique: bool  # a primary key or unique index on exactly the key's columns
    key_types: list[list[str]]  # the key columns' [type, a domain's base type] (format_type without modifier)
    not_text: list[list[str]]  # [column, type] of embedded columns no longer text-like (not for a search)
    update_type: str | None  # the update column's type, when no longer a timestamp (not for a search)
    row_security: bool  # row-level security hides some of the table's rows from the role (``whole`` only)


_ABSENT = ("ARRAY(SELECT c FROM unnest({}::text[]) c WHERE NOT EXISTS (SELECT FROM pg_attribute"
           " WHERE attrelid = rel AND attname = c AND attnum > 0 AND NOT attisdropped))")
_COLUMN = ("pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
           " WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped")
# One round trip: every call that reads a project's source makes it, searches too (on each fresh lookup).
# ``whole`` also turns row security off for the rest of the transaction: a policy forced meanwhile then makes
# PostgreSQL refuse the transaction's statements on the table instead of filtering them.
SOURCE_STATE = (
    "SELECT rel IS NULL, " + _ABSENT.format("%(needed)s") + ", " + _ABSENT.format("%(own)s") + ","
    " ARRAY(SELECT inhrelid::regclass::text FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent"
    "  WHERE i.inhparent = rel AND p.relkind = 'r' AND NOT %(searching)s ORDER BY 1),"
    " " + UNIQUE_KEY.format(rel="rel") + ","
    " ARRAY(SELECT ARRAY[format_type(a.atttypid, NULL),"
    "                    format_type(coalesce(nullif(t.typbasetype, 0), t.oid), NULL)]"
    "  FROM unnest(%(key)s::text[]) WITH ORDINALITY k(c, o) JOIN pg_attribute a ON a.attrelid = rel"
    "  AND a.attname = k.c AND a.attnum > 0 AND NOT a.attisdropped JOIN pg_type t ON t.oid = a.atttypid"
    "  ORDER BY k.o),"
    " ARRAY(SELECT ARRAY[a.attname::text, format_type(a.atttypid, a.atttypmod)] FROM " + _COLUMN +
    "  AND a.attname = ANY(%(texts)s::text[]) AND t.typcategory <> 'S' ORDER BY a.attnum),"
    " (SELECT format_type(a.atttypid, a.atttypmod) FROM " + _COLUMN +
    "  AND a.attname = %(update)s AND t.typname <> ALL(%(timestamps)s::text[])),"
    " %(whole)s AND row_security_active(rel),"
    " CASE WHEN %(whole)s THEN set_config('row_security', 'off', true) END"
    " FROM to_regclass(%(source)s) rel"
)


def source_state(cur: Cursor, project: Project, needed: list[str], own: list[str], searching: bool,
                 whole: bool) -> SourceState:
    """The project's source as it is now (``SOURCE_STATE``); ``needed``: the columns the call reads, ``own``:
    an append project's columns it needs there; ``searching``: the key alone matters; ``whole``: the call must
    see every row (runs, import, attach_source), not what row-level security lets the role see (searches,
    RAG, status)."""
    cur.execute(SOURCE_STATE, {
        "needed": needed, "own": own, "searching": searching, "key": list(project.key.columns),
        "texts": [] if searching else list(project.columns),
        "update": None if searching else project.update_time_col, "timestamps": sorted(TIMESTAMP_TYPES),
        "whole": whole, "source": project.names.source.as_string(cur)})
    return SourceState(*cur.fetchone()[:-1])


def _same_type(kept: str, found: list[str]) -> bool:
    """Whether a key column of type ``found`` ([type, a domain's base type]) is of the type ``kept`` in the
    catalog: as create_project writes it (format_type), or as pg_vectorize did (information_schema's data_type:
    a domain's base type, an enum's USER-DEFINED)."""
    return kept in found or kept == "USER-DEFINED"


def check_source_state(project: Project, state: SourceState, searching: bool) -> None:
    """Refuse a source that no longer passes ``check_project_source``'s checks of its key (unique; a call that
    is not a search: the types the project keeps) and of its embedded and update columns' types; and a source
    that row-level security shows in part to a call that needs every row."""
    label = f"{project.schema}.{project.relation}"  # as the other errors of a project's source name it
    key = ", ".join(project.key.columns)
    if not state.unique:
        raise ProjectConflictError(
            f"the key ({key}) of project {project.name!r} is no longer unique in {label}: no primary key or unique"
            " index is on exactly these columns now (dropped, or replaced by a wider one). Rows sharing a key would"
            " share a vector, and runs would overwrite one's with the other's. A project's key cannot change: put"
            f" a primary key or unique index on ({key}) back (ALTER TABLE {label} ADD PRIMARY KEY ({key}); it fails"
            " while two rows share a key), or make another project of the table with its new key and drop this"
            f" one (drop_project({project.name!r}))."
        )
    if searching:  # a search compares the stored keys with the source's, whatever their types
        return
    _check_types(project, state, label)
    if state.row_security:
        raise DatabasePermissionError(
            f"row-level security on {label} hides some of its rows from this role: project {project.name!r} would"
            " count and embed only the rows it sees, and a run would delete the stored vectors of the others;"
            " nothing was written. Runs and import need a role that sees every row: one with BYPASSRLS"
            f" (ALTER ROLE <role> BYPASSRLS), or the table's owner without FORCE (ALTER TABLE {label} NO FORCE ROW"
            " LEVEL SECURITY). Searches, RAG and status answer as the role sees the table."
        )


def _check_types(project: Project, state: SourceState, label: str) -> None:
    """The key's types are those the project keeps; its embedded columns text-like, its update column a
    timestamp (``check_project_source``'s rules)."""
    kept = project.key.flat(project.pkey_type) if project.pkey_type else ()
    changed = [(column, k, found[0]) for column, k, found in zip(project.key.columns, kept, state.key_types)
               if not _same_type(k, found)]
    if changed:
        column, before, now = changed[0]
        raise ProjectConflictError(
            f"key column {column!r} of {label} is {now} now, but project {project.name!r} keeps its keys as"
            f" {before}: its tables and triggers cannot hold the new keys. Change the column back (ALTER TABLE"
            f" {label} ALTER COLUMN {column} TYPE {before}), or make another project of the table, import this"
            " one's vectors into it (import_embeddings, no model call) and drop this one"
            f" (drop_project({project.name!r})). README: \"A key's type\"."
        )
    if state.not_text:  # create_project's rule: text-like columns only
        column, now = state.not_text[0]
        raise ProjectConflictError(
            f"column {column!r} of {label}, embedded by project {project.name!r}, is {now} now: columns to embed"
            f" must be text-like (text, varchar, char). Change it back (ALTER TABLE {label} ALTER COLUMN {column}"
            f" TYPE text), or embed other columns (alter_project({project.name!r}, columns=[...]))."
        )
    if state.update_type is not None:
        column = project.update_time_col
        raise ProjectConflictError(
            f"update_col {column!r} of {label} (project {project.name!r}) is {state.update_type} now: it must be"
            f" timestamp or timestamptz. Change it back (ALTER TABLE {label} ALTER COLUMN {column} TYPE timestamptz"
            f" USING ...), or give the project another update column, or none (alter_project({project.name!r},"
            " update_col=...))."
        )


def check_storage_free(cur: Cursor, project: Project) -> None:
    """Refuse to create over objects left behind by another tool or an earlier version, or made by another
    project whose names meet this one's (``_bulk_x``'s view is ``x_view``'s bulk table)."""
    names = project.names
    relations = [names.queue_name, names.bulk_name, names.index_qualified_name, names.fts_index_qualified_name,
                 names.source_fts_index_qualified_name, names.removed_name, names.errors_name]
    functions = [names.trigger_function_name, names.removal_function_name]
    if not project.is_chunked:
        relations.append(names.documents_name)
    if project.is_join:
        relations += [names.target_name, names.view_name]
        functions.append(names.view_function_name)
    cur.execute(
        "SELECT s || '.' || n FROM unnest(%s::text[], %s::text[]) AS r(s, n)"
        " WHERE to_regclass(format('%%I.%%I', s, n)) IS NOT NULL"
        " UNION ALL SELECT s || '.' || n || '()' FROM unnest(%s::text[], %s::text[]) AS f(s, n)"
        " WHERE EXISTS (SELECT FROM pg_proc p JOIN pg_namespace ns ON ns.oid = p.pronamespace"
        "               WHERE ns.nspname = s AND p.proname = n)",
        [[s for s, _ in relations], [n for _, n in relations], [s for s, _ in functions], [n for _, n in functions]],
    )
    leftovers = [row[0] for row in cur.fetchall()]
    if leftovers:
        raise InvalidInputError(
            f"project {project.name!r} is not in the catalog, but objects with its names exist: "
            f"{', '.join(leftovers)}. Drop them, or choose another job_name."
        )


# -- import_embeddings -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportSource:
    """A validated source of pre-computed embeddings."""

    table: sql.Identifier
    key: Key  # the source's columns matching the project's key, in its order
    embeddings: str
    rows: int
    already_embedded: int | None  # append only: rows that had an embedding before
    chunk: str | None = None  # chunked projects: the chunk number column


def check_import_source(
    cur: Cursor, project: Project, src_schema: str, src_table: str, src_key: str | Sequence[str],
    src_embeddings: str, src_chunk: str | None = None,
) -> tuple[Table, list[Column], Column, Column | None]:
    """Check the source's catalog entries: table, key (one column per column of the project's key, in its
    order), chunk number and embedding column types, declared dimensions. A chunked project needs
    ``src_chunk`` (an integer column), an unchunked one refuses it."""
    if project.is_chunked and src_chunk is None:
        raise InvalidInputError(
            f"project {project.name!r} is chunked: give src_chunk_col, the column holding each embedding's"
            " chunk number (0, 1, ... within its row)"
        )
    if not project.is_chunked and src_chunk is not None:
        raise InvalidInputError(
            f"src_chunk_col {src_chunk!r} is for chunked projects; project {project.name!r} keeps one"
            " embedding per row"
        )
    src_keys = key_columns(key_spelling(src_key, "src_primary_key"))
    if len(src_keys) != len(project.key.columns):
        raise InvalidInputError(
            f"src_primary_key {src_key!r} must name {len(project.key.columns)} column(s), one for each column of"
            f" the key {list(project.key.columns)} of project {project.name!r}, in that order"
        )
    for name, role in ((src_schema, "src_schema"), (src_table, "src_table"), *((k, "src_primary_key") for k in src_keys),
                       (src_embeddings, "src_embeddings_col")):
        check_identifier(name, role)
    if src_chunk is not None:
        check_identifier(src_chunk, "src_chunk_col")
    table = require_table(cur, src_schema, src_table, kinds="rpvmf", role="src_table")
    keys = [table.column(name, "src_primary_key") for name in src_keys]
    emb = table.column(src_embeddings, "src_embeddings_col")
    chunk = None
    if src_chunk is not None:
        chunk = table.column(src_chunk, "src_chunk_col")
        if chunk.data_type not in INTEGER_TYPES:
            raise InvalidInputError(f"src_chunk_col {src_chunk!r} of {table.label} is {chunk.type_sql};"
                                    " expected an integer type")
    pkey_types = project.key.flat(project.pkey_type)
    for key, name, pkey_type in zip(keys, project.key.columns, pkey_types):
        if not (key.data_type == pkey_type or (key.data_type in INTEGER_TYPES and pkey_type in INTEGER_TYPES)):
            raise InvalidInputError(
                f"src_primary_key {key.name!r} of {table.label} is {key.type_sql}, but the key"
                f" {name!r} of project {project.name!r} is {pkey_type}"
            )
    _check_key_collations(cur, project, table, keys)
    is_vector = emb.typname in VECTOR_TYPES
    is_float_array = emb.category == "A" and emb.element in FLOAT_ELEMENT_TYPES
    if not (is_vector or is_float_array):
        raise InvalidInputError(
            f"src_embeddings_col {src_embeddings!r} of {table.label} is {emb.type_sql}; expected vector,"
            " halfvec, real[] or double precision[]"
        )
    if is_vector and emb.typmod > 0 and emb.typmod != project.dimensions:
        src = Key(src_keys)
        cur.execute(
            sql.SQL("SELECT {k} FROM {t} ORDER BY {order} LIMIT %s").format(
                k=src.as_text(None), order=src.names(), t=sql.Identifier(src_schema, src_table)
            ),
            [SAMPLE_SIZE],
        )
        keys = [r[0] for r in cur.fetchall()]
        raise DimensionMismatchError(
            f"project {project.name!r} expects {project.dimensions} dimensions, but column {src_embeddings!r}"
            f" of {table.label} is {emb.type_sql} (found {emb.typmod}); e.g. keys {keys}"
        )
    return table, keys, emb, chunk


def _check_key_collations(cur: Cursor, project: Project, table: Table, keys: list[Column]) -> None:
    """Refuse an import key of a collation other than the project's key: keys are matched under the project's
    (a column of the default collation takes it), and two different ones have none to compare by."""
    if all(key.collation is None for key in keys):
        return
    source = require_table(cur, project.schema, project.relation, kinds="rpvmf", role="source table")
    for key, name in zip(keys, project.key.columns):
        wanted = source.column(name, "key").collation
        if key.collation is not None and key.collation != wanted:
            raise InvalidInputError(
                f"src_primary_key {key.name!r} of {table.label} has collation {key.collation}, but the key {name!r}"
                f" of project {project.name!r} has {wanted or 'the database default'}: keys are matched by the"
                f" project's collation; import from a view selecting {quoted((key.name,))} COLLATE"
                f" {wanted or quoted(('default',))}"
            )


def check_import_rows(cur: Cursor, project: Project, table: Table, keys: list[Column], emb: Column,
                      chunk: Column | None = None) -> ImportSource:
    """One set-based pass over the source that finds every bad row; checks the catalog rules out are skipped.

    Raises on NULL keys or embeddings, wrong dimensions, NaN/infinite values, duplicate keys and keys that
    are not in the project's table, each with its count and a few offending keys.
    """
    src = sql.Identifier(table.schema, table.name)
    src_key = Key(tuple(c.name for c in keys))
    k = src_key.as_text("s")  # sample keys
    e = sql.Identifier("s", emb.name)
    is_array = emb.category == "A"
    checks: list[tuple[str, sql.Composable]] = [
        ("keys not found in the project's table", sql.SQL("NOT ({null}) AND r.{pk} IS NULL").format(
            null=src_key.any_null("s"), pk=sql.Identifier(project.key.columns[0]))),
    ]
    if not all(c.not_null for c in keys):
        checks.append(("NULL keys", src_key.any_null("s")))
    if not emb.not_null:
        checks.append(("NULL embeddings", sql.SQL("{} IS NULL").format(e)))
    if chunk is not None:
        checks.append(("NULL or negative chunk numbers", sql.SQL("{c} IS NULL OR {c} < 0").format(
            c=sql.Identifier("s", chunk.name))))
    if is_array:
        checks.append(("arrays of more than one dimension", sql.SQL("array_ndims({}) > 1").format(e)))
        checks.append(("NULL elements in embeddings", sql.SQL(  # array_position reads one dimension only
            "CASE WHEN array_ndims({e}) = 1 THEN array_position({e}, NULL) IS NOT NULL END").format(e=e)))
        checks.append(("NaN or infinite values", sql.SQL(
            "{}::float8[] && '{{NaN,Infinity,-Infinity}}'::float8[]").format(e)))
        if emb.element == "float8":  # finite, but infinite once stored as real (f: one unnest, read twice)
            checks.append((f"values beyond the range of real (|x| > {REAL_MAX:.8g})", sql.SQL("f.beyond_real")))
    if project.index_dist_type == "pgv_hnsw_cosine":  # no cosine distance: never found, yet counted as embedded
        checks.append(_zero_vectors(project, emb, e))
    if project.half_index and emb.typname != "halfvec":  # a half-precision index: catalog.index_expression
        # (a vector is unnested only when its norm, pgvector's vector_norm, allows such a value)
        beyond = ("" if is_array else "vector_norm({e}) > {m} AND ") + \
            "EXISTS (SELECT FROM unnest({e}{cast}) x WHERE abs(x) > {m} AND abs(x) < 'Infinity')"
        checks.append((f"values beyond the range of halfvec, which the project's index holds (|x| > {HALFVEC_MAX:g})",
                       sql.SQL(beyond).format(e=e, cast=sql.SQL("" if is_array else "::real[]"),
                                              m=sql.Literal(HALFVEC_MAX))))
    dims = sql.SQL("cardinality({})").format(e) if is_array else sql.SQL("vector_dims({})").format(e)
    if is_array or emb.typmod <= 0:  # (an array of more than one dimension has its own check above)
        checks.append(("dimension mismatch", sql.SQL("{d} <> {n}").format(d=dims, n=sql.Literal(project.dimensions))))

    items = [sql.SQL("count(*) AS total")]
    for i, (_, condition) in enumerate(checks):
        items.append(sql.SQL(
            "count(*) FILTER (WHERE {c}) AS {n}, (array_agg({k}) FILTER (WHERE {c}))[1:{s}] AS {ks}"
        ).format(c=condition, n=sql.Identifier(f"n{i}"), k=k, s=sql.Literal(SAMPLE_SIZE),
                 ks=sql.Identifier(f"k{i}")))
    if "dimension mismatch" in dict(checks):
        items.append(sql.SQL("array_agg(DISTINCT {d}) FILTER (WHERE {c}) AS found_dims").format(
            d=dims, c=dict(checks)["dimension mismatch"]))
    if not project.is_join:
        items.append(sql.SQL("count(*) FILTER (WHERE r.{} IS NOT NULL) AS already_embedded").format(
            sql.Identifier(project.names.embeddings_column)))
    # A chunked source repeats keys: (key, chunk) is unique.
    duplicates = len(keys) > 1 or not keys[0].unique or chunk is not None
    dup_columns = sql.SQL(", ").join(sql.Identifier("s", c.name) for c in (*keys, chunk) if c is not None)
    if duplicates:
        items.append(sql.SQL(
            "(SELECT count(*) FROM dup) AS ndup, (SELECT (array_agg(key))[1:{s}] FROM dup) AS kdup"
        ).format(s=sql.Literal(SAMPLE_SIZE)))
    query = sql.SQL(
        "{with_dup} SELECT {items} FROM {src} s LEFT JOIN {source} r ON {matched}{beyond}"
    ).format(
        beyond=sql.SQL(
            " CROSS JOIN LATERAL (SELECT bool_or(abs(x) > {m} AND abs(x) < 'Infinity') AS beyond_real"
            " FROM unnest({e}) x) f").format(e=e, m=sql.Literal(REAL_MAX)) if is_array and emb.element == "float8" else sql.SQL(""),
        with_dup=sql.SQL(
            "WITH dup AS (SELECT {key} AS key FROM {src} s WHERE NOT ({null}) GROUP BY {columns}"
            " HAVING count(*) > 1)"
        ).format(key=k, src=src, null=src_key.any_null("s"), columns=dup_columns) if duplicates else sql.SQL(""),
        items=sql.SQL(", ").join(items),
        src=src,
        source=project.names.source,
        matched=project.key.equals("r", "s", src_key),
    )
    with cur.connection.cursor(row_factory=dict_row) as dict_cur:
        result = dict_cur.execute(query).fetchone()

    problems = []
    for i, (label, _) in enumerate(checks):
        if result[f"n{i}"]:
            if label == "dimension mismatch":
                raise DimensionMismatchError(
                    f"project {project.name!r} expects {project.dimensions} dimensions, but"
                    f" {result[f'n{i}']} row(s) of {table.label}.{emb.name} have"
                    f" {sorted(d for d in result['found_dims'] if d is not None)}; e.g. keys {result[f'k{i}']}"
                )
            sample = f"; e.g. keys {result[f'k{i}']}" if label != "NULL keys" else ""
            problems.append(f"{result[f'n{i}']} row(s) with {label}{sample}")
    if duplicates and result["ndup"]:
        what = "(key, chunk number) pairs" if chunk is not None else "key value(s)"
        problems.append(f"{result['ndup']} duplicate {what}; e.g. keys {result['kdup']}")
    if problems:
        raise InvalidInputError(
            f"cannot import embeddings into project {project.name!r} from {table.label}"
            f" (key {_spelled(src_key)}, embeddings {emb.name!r}): " + "; ".join(problems) + ". Nothing was written."
        )
    return ImportSource(
        table=src,
        key=src_key,
        embeddings=emb.name,
        chunk=None if chunk is None else chunk.name,
        rows=result["total"],
        already_embedded=None if project.is_join else result["already_embedded"],
    )


def _zero_vectors(project: Project, emb: Column, e: sql.Identifier) -> tuple[str, sql.Composable]:
    """The import's check of vectors without a cosine distance: zero as the project's half-precision index
    holds them (every value within HALFVEC_ZERO_MAX), or else what pgvector computes of the vector as stored
    (real): its distance to itself, NaN when its single-precision sum of squares is 0 (zero, or every value
    underflowing) or infinite, 0 otherwise."""
    is_array = emb.category == "A"
    if not project.half_index or emb.typname == "halfvec":
        distance = sql.SQL("NOT (({e}::vector <=> {e}::vector) < 0.5)").format(e=e)
        if is_array:  # cast only what pgvector takes: the other checks count the rest
            beyond = " AND NOT f.beyond_real" if emb.element == "float8" else ""  # (check_import_rows' f)
            distance = sql.SQL(
                "CASE WHEN array_ndims({e}) = 1 AND cardinality({e}) = {n} AND array_position({e}, NULL) IS NULL"
                " AND NOT ({e}::float8[] && '{{NaN,Infinity,-Infinity}}'::float8[])" + beyond + " THEN {d} END"
            ).format(e=e, n=sql.Literal(project.dimensions), d=distance)
        label = ("zero vectors, or vectors whose sum of squares pgvector's single-precision arithmetic makes 0"
                 f" (every |x| <= 2.6e-23) or infinite (above {REAL_MAX:.3g}), which have no cosine distance")
        return label, distance
    # (a vector is unnested only when its norm allows every value to be that small)
    small = ("" if is_array else "vector_norm({e}) <= {bound} AND ") + \
        "NOT EXISTS (SELECT FROM unnest({e}{cast}) x WHERE abs(x) > {t} OR x IS NULL)"
    label = (f"zero vectors as the project's half-precision index holds them (every |x| <= {HALFVEC_ZERO_MAX:.3g}),"
             " which have no cosine distance")
    return (label,
            sql.SQL(small).format(e=e, cast=sql.SQL("" if is_array else "::real[]"), t=sql.Literal(HALFVEC_ZERO_MAX),
                                  bound=sql.Literal(HALFVEC_ZERO_MAX * project.dimensions ** 0.5 * 1.001)))


def _spelled(key: Key) -> str:
    return repr(key.columns[0]) if not key.composite else repr(list(key.columns))


def check_rebuild_index(value: object) -> None:
    """``rebuild_index`` of a write: True, False, or None (the measured rule)."""
    if value is not None and not isinstance(value, bool):
        raise InvalidInputError(f"rebuild_index must be True, False or None (rebuild when it is faster), got {value!r}")


def check_text(text: str, what: str) -> None:
    """A text that UTF-8 can write: not one holding a lone surrogate (``"\\ud800"``, which JSON and Python
    strings can carry, PostgreSQL and the model's tokenizer cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInputError(f"{what} is not valid Unicode: {error.reason} at position {error.start}"
                                f" ({text[error.start]!r})") from None


def check_seconds(name: str, value: Any, zero_ok: bool = False) -> float:
    """A wait in seconds of a trigger or sensor: a finite number > 0 (>= 0 when ``zero_ok``), as a float.
    A poll interval of 0 would query the database in a loop without pause."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not zero_ok):
        bound = "a number of seconds >= 0" if zero_ok else "a positive number of seconds"
        raise InvalidInputError(f"{name} must be {bound}, got {value!r}"
                                + ("" if zero_ok else ": 0 or less would poll the database in a loop without pause"))
    return float(value)
