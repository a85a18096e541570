"""The ``vectorize`` schema: the job catalog (``vectorize.job``, ``Project``) and the DDL of a project's
storage, laid out as pg_vectorize lays it out (names in ``airflow_vectorize.naming``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import psycopg
from psycopg import Cursor, sql
from psycopg.rows import dict_row

from airflow_vectorize import expressions, grants, index_build, legacy_fts, removal
from airflow_vectorize.exceptions import ProjectConflictError, VectorizeError
from airflow_vectorize.keys import Key
from airflow_vectorize.models.encoding import Encoding
from airflow_vectorize.naming import (
    CHUNK_FTS_COLUMN,
    DOCUMENT_COLUMN,
    StorageNames,
    quoted,
    transaction_setting,
)
from airflow_vectorize.rag import ensure_prompts

log = logging.getLogger(__name__)

DEFAULT_TRANSFORMER = "sentence-transformers/all-MiniLM-L6-v2"
TABLE_METHODS = ("join", "append")
SCHEDULES = ("realtime", "manual")


@dataclass(frozen=True)
class DistanceKind:
    """One ``index_dist_type``: its index name suffix, operator class and distance operator."""

    index_suffix: str
    opclass: str
    operator: str

    @property
    def halfvec_opclass(self) -> str:
        """The operator class of the same distance over ``halfvec`` (a chunked project's index)."""
        return "halfvec_" + self.opclass.removeprefix("vector_")


INDEX_DIST_TYPES: dict[str, DistanceKind] = {
    "pgv_hnsw_cosine": DistanceKind("hnsw_cos_idx", "vector_cosine_ops", "<=>"),
    "pgv_hnsw_l2": DistanceKind("hnsw_l2_idx", "vector_l2_ops", "<->"),
    "pgv_hnsw_ip": DistanceKind("hnsw_ip_idx", "vector_ip_ops", "<#>"),
}

# The longest name derived from a job name is "vectorize_insert_trigger_<job>"; PostgreSQL truncates
# identifiers at 63 bytes, which would make two projects share objects.
MAX_JOB_NAME_BYTES = 63 - len("vectorize_insert_trigger_")

# The configuration that defines a project; a second create with other values is a conflict.
CONFIG_FIELDS = (
    "transformer",
    "index_dist_type",
    "schema",
    "relation",
    "primary_key",
    "columns",
    "table_method",
    "schedule",
    "update_time_col",
    "model_conn_id",
    "requested_dimensions",
    "chunk_size",
    "chunk_overlap",
    "chunker",
    "encoding",
    "hnsw_m",
    "hnsw_ef_construction",
    "halfvec_index",
)


@dataclass(frozen=True)
class Project:
    """A project's catalog entry: its configuration and the ``params`` pg_vectorize reads; the names of what
    it stores are ``names`` (``naming.StorageNames``), SQL over its rows is in ``expressions``."""

    name: str
    schema: str
    relation: str
    primary_key: str | tuple[str, ...]  # a column, or the columns of a composite key (``key``)
    columns: tuple[str, ...]
    transformer: str = DEFAULT_TRANSFORMER
    index_dist_type: str = "pgv_hnsw_cosine"
    table_method: str = "join"
    schedule: str = "realtime"
    update_time_col: str | None = None
    model_conn_id: str | None = None  # the Airflow connection of a remote model (never its secrets)
    requested_dimensions: int | None = None  # a shortened vector size asked of a remote model
    chunk_size: int | None = None  # tokens per chunk; None: one vector per row, as pg_vectorize
    chunk_overlap: int = 0
    chunker: str = "recursive"
    encoding: Encoding = Encoding()  # query vs document prompts / input types (``models.encoding``)
    pkey_type: str | tuple[str, ...] = ""  # the key column's type, or its columns' types
    ef_search: int | None = None  # hnsw.ef_search of searches that give none (``tune_search``); not configuration
    hnsw_m: int | None = None  # the HNSW index's m (None: pgvector's 16)
    hnsw_ef_construction: int | None = None  # its ef_construction (None: 64, a chunked project's CHUNK_INDEX_…)
    halfvec_index: bool = False  # the index holds the vectors at half precision (a chunked project's always does)
    max_attempts: int | None = None  # the last generation run's, when not the default (status judges as it did)
    dimensions: int = 0
    job_id: int | None = None

    # -- catalog form --------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The ``params`` jsonb, with pg_vectorize's keys (never secrets); a remote model's connection id
        and requested size under ``model_conn_id`` and ``dimensions``. A composite key's ``primary_key`` and
        ``pkey_type`` are lists (as ``columns`` is), a one-column key's the column and its type."""
        params = {
            "schema": self.schema,
            "relation": self.relation,
            "columns": list(self.columns),
            "update_time_col": self.update_time_col,
            "table_method": self.table_method,
            "primary_key": _listed(self.primary_key),
            "pkey_type": _listed(self.pkey_type),
            "schedule": self.schedule,
        }
        if self.model_conn_id is not None:
            params["model_conn_id"] = self.model_conn_id
        if self.requested_dimensions is not None:
            params["dimensions"] = self.requested_dimensions
        if self.is_chunked:
            params.update(chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap, chunker=self.chunker)
        if self.encoding.params():
            params["encoding"] = self.encoding.params()
        if self.ef_search is not None:
            params["ef_search"] = self.ef_search
        if self.hnsw_m is not None:
            params["hnsw_m"] = self.hnsw_m
        if self.hnsw_ef_construction is not None:
            params["hnsw_ef_construction"] = self.hnsw_ef_construction
        if self.halfvec_index:
            params["halfvec_index"] = True
        if self.max_attempts is not None:
            params["max_attempts"] = self.max_attempts
        return params

    def config(self) -> dict[str, Any]:
        """The configuration ``create_project`` compares (and ``alter_project``, for the index's), the index's
        options as they take effect: pgvector's defaults stated (``hnsw_m=16``) are the same as left out, and a
        chunked project's index is halfvec whatever ``halfvec_index`` says."""
        config = {field: getattr(self, field) for field in CONFIG_FIELDS}
        config["halfvec_index"] = self.half_index
        config["hnsw_m"] = index_build.DEFAULT_M if self.hnsw_m is None else self.hnsw_m
        if self.hnsw_ef_construction is None:
            config["hnsw_ef_construction"] = (CHUNK_INDEX_EF_CONSTRUCTION if self.is_chunked
                                              else index_build.DEFAULT_EF_CONSTRUCTION)
        return config

    def entry(self) -> dict[str, Any]:
        """The catalog row as a JSON-serialisable dict (plus the vector size)."""
        return {
            "job_id": self.job_id,
            "name": self.name,
            "index_dist_type": self.index_dist_type,
            "transformer": self.transformer,
            "params": self.params(),
            "dimensions": self.dimensions,
        }

    # -- what the configuration implies ----------------------------------------------------------------
    @property
    def is_join(self) -> bool:
        return self.table_method == "join"

    @property
    def half_index(self) -> bool:
        """Its HNSW index holds the vectors as halfvec (``index_expression``): ``halfvec_index``, or chunked."""
        return self.halfvec_index or self.is_chunked

    @property
    def is_chunked(self) -> bool:
        """One vector per chunk of a row's text (``vectorize._chunks_<job>``), not one per row."""
        return self.chunk_size is not None

    @cached_property
    def key(self) -> Key:
        """The key's columns and the SQL that names, compares and binds them (``airflow_vectorize.keys``)."""
        return Key(key_columns(self.primary_key))

    @property
    def distance(self) -> DistanceKind:
        return INDEX_DIST_TYPES[self.index_dist_type]

    @cached_property
    def names(self) -> StorageNames:
        """The names of everything the project stores (``airflow_vectorize.naming``)."""
        return StorageNames(self.name, self.schema, self.relation, self.is_join, self.is_chunked,
                            self.distance.index_suffix)

    def storage_objects(self) -> list[str]:
        return self.names.storage_objects(realtime=self.schedule == "realtime")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Project:
        params = row["params"]
        return cls(
            job_id=row["job_id"],
            name=row["name"],
            transformer=row["transformer"],
            index_dist_type=row["index_dist_type"],
            schema=params["schema"],
            relation=params["relation"],
            primary_key=_tupled(params["primary_key"]),
            columns=tuple(params["columns"]),
            table_method=params.get("table_method", "join"),
            schedule=params.get("schedule", "realtime"),
            update_time_col=params.get("update_time_col"),
            model_conn_id=params.get("model_conn_id"),
            requested_dimensions=params.get("dimensions"),
            chunk_size=params.get("chunk_size"),
            chunk_overlap=params.get("chunk_overlap", 0),
            chunker=params.get("chunker", "recursive"),
            encoding=Encoding.from_params(params.get("encoding")),
            pkey_type=_tupled(params.get("pkey_type", "")),
            ef_search=params.get("ef_search"),
            hnsw_m=params.get("hnsw_m"),
            hnsw_ef_construction=params.get("hnsw_ef_construction"),
            halfvec_index=params.get("halfvec_index", False),
            max_attempts=params.get("max_attempts"),
            dimensions=row["dimensions"] or row["removed_dimensions"] or 0,
        )


def key_columns(primary_key: str | tuple[str, ...]) -> tuple[str, ...]:
    return (primary_key,) if isinstance(primary_key, str) else tuple(primary_key)


def _listed(value: str | tuple[str, ...]) -> str | list[str]:
    return value if isinstance(value, str) else list(value)


def _tupled(value: str | list[str]) -> str | tuple[str, ...]:
    return value if isinstance(value, str) else tuple(value)


# -- advisory locks --------------------------------------------------------------------------------
def lock_project(cur: Cursor, job_name: str) -> None:
    """Serialise writers of one project until the transaction ends (a name no project can have needs no lock)."""
    if storable(job_name):
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"vectorize:{job_name}"])


# -- catalog reads and writes ------------------------------------------------------------------------
def ensure_vector_extension(cur: Cursor) -> None:
    """Create pgvector when it is available but not yet installed in this database; a VectorizeError when it is
    installed in a schema this session's ``search_path`` does not hold (its types would not be found)."""
    cur.execute("SELECT n.nspname, to_regtype('vector') IS NOT NULL FROM pg_extension e"
                " JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'")
    installed = cur.fetchone()
    if installed and not installed[1]:
        database = cur.connection.info.dbname
        path = cur.execute("SHOW search_path").fetchone()[0]
        raise VectorizeError(
            f"pgvector is installed in schema {installed[0]!r} of database {database!r}, which is not on this"
            f" connection's search_path ({path}), so its type vector cannot be found. Add the schema to the"
            f" database's search_path (ALTER DATABASE {sql.Identifier(database).as_string(cur)} SET search_path ="
            f" \"$user\", public, {sql.Identifier(installed[0]).as_string(cur)}; new sessions take it) or to the"
            " connection's (options: -c search_path=...)")
    if installed:
        return
    try:
        with cur.connection.transaction():
            cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error as error:
        raise VectorizeError(
            f"pgvector is not installed in database {cur.connection.info.dbname!r} and could not be created"
            f" ({error}). Ask an administrator to run CREATE EXTENSION vector."
        ) from error


def ensure_catalog(cur: Cursor) -> None:
    """Create the ``vectorize`` schema, job table and prompt templates if missing (serialised against
    concurrent creators)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtextextended('vectorize:catalog', 0))")
    cur.execute(
        """
        CREATE SCHEMA IF NOT EXISTS vectorize;
        CREATE TABLE IF NOT EXISTS vectorize.job (
            job_id bigserial PRIMARY KEY,
            name text UNIQUE NOT NULL,
            index_dist_type text NOT NULL DEFAULT 'pgv_hnsw_cosine',
            transformer text NOT NULL,
            params jsonb NOT NULL
        )
        """
    )
    ensure_prompts(cur)


_PROJECT_QUERY = """
SELECT j.job_id, j.name, j.index_dist_type, j.transformer, j.params,
       (SELECT a.atttypmod FROM pg_attribute a
         WHERE a.attrelid = CASE WHEN j.params->>'table_method' = 'append'
                                 THEN to_regclass(format('%%I.%%I', j.params->>'schema', j.params->>'relation'))
                                 WHEN j.params ? 'chunk_size' THEN to_regclass(format('vectorize.%%I', '_chunks_' || j.name))
                                 ELSE to_regclass(format('vectorize.%%I', '_embeddings_' || j.name)) END
           AND a.attname = CASE WHEN j.params->>'table_method' = 'append'
                                THEN j.name || '_embeddings' ELSE 'embeddings' END
           AND NOT a.attisdropped) AS dimensions,
       (SELECT a.atttypmod FROM pg_attribute a  -- an append project whose source was swapped: its removed rows'
         WHERE a.attrelid = to_regclass(format('vectorize.%%I', '_removed_' || j.name))
           AND a.attname = 'embeddings' AND NOT a.attisdropped) AS removed_dimensions
  FROM vectorize.job j
"""


def set_ef_search(cur: Cursor, project: Project, ef_search: int | None) -> bool:
    """Store (None: remove) the ``ef_search`` of ``project``'s searches; False when the entry is no longer that
    project's (dropped or re-created since it was read)."""
    cur.execute("UPDATE vectorize.job SET params = CASE WHEN %(ef)s::int IS NULL THEN params - 'ef_search'"
                " ELSE jsonb_set(params, '{ef_search}', to_jsonb(%(ef)s::int)) END"
                " WHERE name = %(name)s AND job_id = %(job_id)s",
                {"ef": ef_search, "name": project.name, "job_id": project.job_id})
    return cur.rowcount == 1


def storable(job_name: Any) -> bool:
    """Whether a catalog row can have this name: a str without NUL (PostgreSQL text cannot hold one)."""
    return isinstance(job_name, str) and "\x00" not in job_name


def find_project(cur: Cursor, job_name: str) -> Project | None:
    """The project named ``job_name``, or None (also when the catalog does not exist yet, and for a name no
    catalog row can have)."""
    if not storable(job_name) or not catalog_exists(cur):
        return None
    rows = _fetch_projects(cur, "WHERE j.name = %s", [job_name])
    return rows[0] if rows else None


async def afind_project(conn: psycopg.AsyncConnection, job_name: str) -> Project | None:
    """``find_project`` on an async connection (for triggers)."""
    if not storable(job_name):
        return None
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT to_regclass('vectorize.job') IS NOT NULL AS present")
        if not (await cur.fetchone())["present"]:
            return None
        await cur.execute(_PROJECT_QUERY + "WHERE j.name = %s", [job_name])
        row = await cur.fetchone()
    return Project.from_row(row) if row else None


def list_projects(cur: Cursor) -> list[Project]:
    if not catalog_exists(cur):
        return []
    return _fetch_projects(cur, "ORDER BY j.name", [])


def _fetch_projects(cur: Cursor, tail: str, params: list[Any]) -> list[Project]:
    with cur.connection.cursor(row_factory=dict_row) as dict_cur:
        dict_cur.execute(_PROJECT_QUERY + tail, params)
        return [Project.from_row(row) for row in dict_cur.fetchall()]


def catalog_exists(cur: Cursor) -> bool:
    cur.execute("SELECT to_regclass('vectorize.job') IS NOT NULL")
    return bool(cur.fetchone()[0])


def insert_project(cur: Cursor, project: Project) -> int:
    cur.execute(
        "INSERT INTO vectorize.job (name, index_dist_type, transformer, params)"
        " VALUES (%s, %s, %s, %s) RETURNING job_id",
        [project.name, project.index_dist_type, project.transformer, json.dumps(project.params())],
    )
    return cur.fetchone()[0]


# -- storage DDL -------------------------------------------------------------------------------------
def create_storage(cur: Cursor, project: Project) -> None:
    """Create the embeddings storage, index, queue and (for realtime) triggers."""
    key = project.key
    emb = sql.Identifier(project.names.embeddings_column)
    vector_type = sql.SQL("vector({})").format(sql.Literal(project.dimensions))
    parts = dict(target=project.names.target, keys=key.names(), vector_type=vector_type)
    if project.is_chunked:
        # One row per chunk: (key, chunk number) with its character offsets in the row's text, its text
        # and vector; every chunk of a row carries the md5 of the whole text it was cut from.
        cur.execute(
            sql.SQL(
                "{key_table};"
                " ALTER TABLE {target} ADD COLUMN chunk_no integer NOT NULL, ADD COLUMN start_offset integer NOT NULL,"
                " ADD COLUMN end_offset integer NOT NULL, ADD COLUMN chunk text NOT NULL,"
                " ADD COLUMN embeddings {vector_type} NOT NULL,"
                " ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),"
                " ADD COLUMN text_md5 uuid, ADD {key_index},"
                " ADD COLUMN {documents},"
                # Vectors stay in the row (a chunk's text is moved out of line first): searches read them.
                " ALTER COLUMN embeddings SET STORAGE MAIN"
            ).format(key_table=key_table(project, project.names.target, None), key_index=key_index(project),
                     documents=chunk_documents_column(), **parts)
        )
    elif project.is_join:
        cur.execute(
            sql.SQL(
                "{key_table};"
                " ALTER TABLE {target} ADD COLUMN embeddings {vector_type} NOT NULL,"
                " ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),"
                " ADD COLUMN text_md5 uuid, ADD {key_index}"
            ).format(key_table=key_table(project, project.names.target, None), key_index=key_index(project), **parts)
        )
    else:
        cur.execute(
            sql.SQL(
                "ALTER TABLE {source} ADD COLUMN {emb} {vector_type}, ADD COLUMN {updated_at} timestamptz,"
                " ADD COLUMN {text_md5} uuid"
            ).format(source=project.names.source, emb=emb, vector_type=vector_type,
                     updated_at=sql.Identifier(project.names.updated_at_column),
                     text_md5=sql.Identifier(project.names.text_md5_column))
        )
    if project.is_join:
        create_view(cur, project)
    create_index(cur, project)
    if not project.is_chunked:
        create_documents_table(cur, project)
    cur.execute(fts_index_statement(project))
    cur.execute(
        sql.SQL(
            "{key_table}; ALTER TABLE {queue} ADD COLUMN enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp()"
        ).format(key_table=key_table(project, project.names.queue, "PRIMARY KEY"), queue=project.names.queue)
    )
    create_errors_table(cur, project)
    ensure_bulk_table(cur, project)
    removal.create_removed_table(cur, project)
    removal.create_triggers(cur, project)
    if project.schedule == "realtime":
        create_triggers(cur, project)


def create_view(cur: Cursor, project: Project) -> None:
    """pg_vectorize's view ``vectorize.<job>_view``: the source's columns (as they are now) with each row's
    vector (a chunked project's: a row per chunk, with its number and text). It reads an SQL function that
    names the source only in its body, so the view does not depend on the source table: a DROP TABLE or a
    rename-swap of the source is never refused because of it. PostgreSQL inlines the function: a query on
    the view is planned as one on the join (its indexes used)."""
    names = project.names
    cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum", [names.source.as_string(cur)])
    columns = cur.fetchall()
    vectors = [("chunk_no", "integer", "e.chunk_no"), ("chunk", "text", "e.chunk")] if project.is_chunked else []
    vectors += [("embeddings", f"vector({project.dimensions})", "e.embeddings"),
                ("embeddings_updated_at", "timestamptz", "e.updated_at")]
    returns = [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind)) for name, kind in columns] + [
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind)) for name, kind, _ in vectors]
    body = sql.SQL("SELECT {columns}, {vectors} FROM {source} s JOIN {target} e ON {joined}").format(
        columns=sql.SQL(", ").join(sql.Identifier("s", name) for name, _ in columns),
        vectors=sql.SQL(", ").join(sql.SQL(expression) for _, _, expression in vectors),
        source=names.source, target=names.target, joined=project.key.equals("e", "s"))
    cur.execute(sql.SQL(
        "CREATE FUNCTION {function}() RETURNS TABLE ({returns}) LANGUAGE sql STABLE AS {body};"
        " CREATE VIEW {view} AS SELECT * FROM {function}()"
    ).format(function=names.view_function, returns=sql.SQL(", ").join(returns),
             body=sql.Literal(body.as_string(cur)), view=names.view))


_VIEW_COLUMNS = """
SELECT p.oid IS NULL,
       ARRAY(SELECT x.n || ':' || x.t FROM unnest(p.proargnames, p.proallargtypes::oid[]::text[], p.proargmodes::text[])
               WITH ORDINALITY AS x(n, t, m, o) WHERE x.m = 't' ORDER BY x.o),
       ARRAY(SELECT attname || ':' || atttypid::oid::text FROM pg_attribute WHERE attrelid = to_regclass(%s)
               AND attnum > 0 AND NOT attisdropped ORDER BY attnum)
FROM (SELECT to_regprocedure(%s) AS oid) f LEFT JOIN pg_proc p ON p.oid = f.oid
"""


def ensure_view(cur: Cursor, project: Project) -> bool:
    """Make a join project's view again when it is not today's (made on the source directly, before
    ``create_view``) or its columns are not the source's any more (a column added, dropped, renamed or
    retyped since: a query of the view fails on a column that is gone until then); returns whether it did.
    The privileges given on it stay. A view that the user made on it keeps it as it is, with a warning. Call
    with the project locked."""
    if not project.is_join:
        return False
    names = project.names
    cur.execute(_VIEW_COLUMNS, [names.source.as_string(cur), quoted(names.view_function_name) + "()"])
    missing, declared, source = cur.fetchone()
    vectors = 4 if project.is_chunked else 2  # (chunk_no, chunk,) embeddings, embeddings_updated_at
    if not missing and declared[:-vectors] == source:
        return False
    try:
        with cur.connection.transaction():  # a savepoint
            granted = grants.privileges(cur, names.view)
            cur.execute(sql.SQL("DROP VIEW IF EXISTS {}; DROP FUNCTION IF EXISTS {}()").format(
                names.view, names.view_function))
            create_view(cur, project)
            grants.restore(cur, granted, names.view)
    except (psycopg.errors.DependentObjectsStillExist, psycopg.errors.InvalidFunctionDefinition) as error:
        # other objects read it, or a column added to the source has the name of one of the view's own
        log.warning("Project %r: its view %s does not have the source's columns any more, and cannot be made"
                    " again: %s", project.name, names.view.as_string(cur), error.diag.message_detail or error)
        return False
    return True


def source_columns(project: Project, searching: bool = False) -> list[str]:
    """The user's source columns the project reads: its key, and (not for a search) its text and update columns.
    An append project's own columns are not among them: a table swapped in gets them when it is attached."""
    if searching:
        return list(project.key.columns)
    update = [] if project.update_time_col is None else [project.update_time_col]
    return [*project.key.columns, *project.columns, *update]


def source_is_partitioned(cur: Cursor, project: Project) -> bool:
    """Whether the project's source is a partitioned table (see ``storage.reconcile_removed``)."""
    cur.execute("SELECT EXISTS (SELECT FROM pg_class WHERE oid = to_regclass(%s) AND relkind = 'p')",
                [project.names.source.as_string(cur)])
    return cur.fetchone()[0]


def _triggers_table(cur: Cursor, project: Project) -> tuple[str, str] | None:
    """(schema, name) of the table the project's removal triggers are on, if any."""
    cur.execute("SELECT n.nspname::text, c.relname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgfoid = to_regprocedure(%s) AND t.tgparentid = 0"
                " LIMIT 1",
                [quoted(project.names.removal_function_name) + "()"])
    row = cur.fetchone()
    return None if row is None else (row[0], row[1])


def drop_triggers(cur: Cursor, project: Project) -> None:
    """Drop every trigger that calls one of the project's functions, on whatever table it now is (the source,
    or a table the source was renamed to)."""
    functions = [quoted(name) + "()" for name in (project.names.trigger_function_name,
                                                  project.names.removal_function_name)]
    cur.execute("SELECT tgrelid::regclass::text, tgname FROM pg_trigger"
                " WHERE tgfoid = ANY(ARRAY[to_regprocedure(%s), to_regprocedure(%s)]) AND NOT tgisinternal"
                " AND tgparentid = 0", functions)  # a partition's clone goes with its partitioned table's trigger
    for table, trigger in cur.fetchall():
        cur.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(trigger), sql.SQL(table)))


def key_table(project: Project, table: sql.Identifier, unique: str | None) -> sql.Composable:
    """``CREATE TABLE table`` of the project's key columns (their exact types, typmods included, copied from
    the source by CREATE TABLE AS), NOT NULL and ``unique`` (``PRIMARY KEY``, ``UNIQUE`` or None). No foreign
    key to the source, unlike pg_vectorize: its rows follow the source's through ``airflow_vectorize.removal``."""
    key = project.key
    not_null = [sql.SQL("ALTER COLUMN {} SET NOT NULL").format(sql.Identifier(c)) for c in key.columns]
    constraints = [sql.SQL("ADD {} ({})").format(sql.SQL(unique), key.names())] if unique else []
    return sql.SQL(
        "CREATE TABLE {table} AS SELECT {keys} FROM {source} WITH NO DATA;"
        " ALTER TABLE {table} {alterations}"
    ).format(table=table, keys=key.names(), source=project.names.source,
             alterations=sql.SQL(", ").join(not_null + constraints))


def key_index(project: Project) -> sql.Composable:
    """A join project's key on its vectors table (pg_vectorize's ``<pk> unique``; a chunked project's: key and
    chunk number), which also carries each row's ``text_md5`` (INCLUDE): the scans for rows due (generation,
    ``get_status``, freshness) then read the stored md5s from the index instead of the table of vectors."""
    if project.is_chunked:
        return sql.SQL("PRIMARY KEY ({}, chunk_no) INCLUDE (text_md5)").format(project.key.names())
    return sql.SQL("UNIQUE ({}) INCLUDE (text_md5)").format(project.key.names())


def ensure_key_index(cur: Cursor, project: Project) -> None:
    """Give the key of a join project created before its ``text_md5`` (``key_index``): the constraint is made
    again under its name (its index built anew, the vectors table locked meanwhile); a no-op when done."""
    if not project.is_join:
        return
    cur.execute(
        "SELECT c.conname FROM pg_constraint c JOIN pg_index i ON i.indexrelid = c.conindid"
        " WHERE c.conrelid = %s::regclass AND c.contype = %s AND i.indnatts = i.indnkeyatts",
        [project.names.target.as_string(cur), "p" if project.is_chunked else "u"])
    for (constraint,) in cur.fetchall():
        cur.execute(sql.SQL("ALTER TABLE {table} DROP CONSTRAINT {name}, ADD CONSTRAINT {name} {key}").format(
            table=project.names.target, name=sql.Identifier(constraint), key=key_index(project)))
        log.info("Project %r: its key index now carries the md5 of each embedded text", project.name)


def ensure_bulk_table(cur: Cursor, project: Project) -> None:
    """``vectorize._bulk_<job>`` (``StorageNames.bulk_name``): a row per bulk write a realtime run has not run
    for yet, with how many rows it wrote (NULL for an UPDATE's: ``freshness.queued`` counts them); a no-op
    when it exists (a project created before it gets it from its next generation run). Call with the project
    locked. Another relation of its name (another project's: ``_bulk_x``'s view ``_bulk_x_view`` is ``x_view``'s
    bulk table) is a ProjectConflictError."""
    cur.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, rows bigint,"
        " enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp())").format(project.names.bulk))
    cur.execute("SELECT c.relkind, a.attnotnull FROM pg_class c LEFT JOIN pg_attribute a ON a.attrelid = c.oid"
                " AND a.attname = 'rows' AND NOT a.attisdropped WHERE c.oid = %s::regclass",
                [project.names.bulk.as_string(cur)])
    kind, not_null = cur.fetchone()
    if kind != "r" or not_null is None:
        raise ProjectConflictError(
            f"project {project.name!r} keeps its bulk writes in {'.'.join(project.names.bulk_name)}, but a"
            f" relation of that name exists that is not its table (relkind {kind!r}; another project's, or"
            " another tool's): drop or rename it")
    if not_null:  # made before an UPDATE's bulk row left its count to the reader
        cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN rows DROP NOT NULL").format(project.names.bulk))


def create_errors_table(cur: Cursor, project: Project) -> None:
    """The rows generation could not embed; a no-op when it exists (projects created before it get it
    from their next generation run). ``text_md5``: the text that failed; a changed text is tried again
    whatever its attempts. Call with the project locked (``lock_project``)."""
    cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL", list(project.names.errors_name))
    if cur.fetchone()[0]:
        return
    cur.execute(sql.SQL(
        "{key_table}; ALTER TABLE {errors} ADD COLUMN error text NOT NULL, ADD COLUMN attempts integer NOT NULL DEFAULT 1,"
        " ADD COLUMN first_seen timestamptz NOT NULL DEFAULT clock_timestamp(),"
        " ADD COLUMN last_seen timestamptz NOT NULL DEFAULT clock_timestamp(), ADD COLUMN text_md5 uuid"
    ).format(key_table=key_table(project, project.names.errors, "PRIMARY KEY"), errors=project.names.errors))


# A chunked project's index is built with a longer candidate list than pgvector's default (64): its search
# ranks rows by their best chunk among the nearest 4 × num_results, so it needs those accurate, among 3-25×
# as many vectors. On 37,812 README chunks, 256 gives at ef_search 40 the share of exact top-10 rows (0.965)
# that 64 gives at 60, for 2.5× the build time (25 vs 10 s; embedding them took 822 s). An unchunked
# project's index is pg_vectorize's, built with pgvector's defaults.
CHUNK_INDEX_EF_CONSTRUCTION = 256


def index_expression(project: Project, alias: str | None = None) -> sql.Composable:
    """What the project's HNSW index holds: the embedding column, or for a chunked project the chunk vectors
    at half precision (``::halfvec(n)``). A chunk table holds 3-25× a project's vectors: on 37,812 README
    chunks the half-precision index is 0.57× the size (43 vs 76 MB) and a search 7 / 12 / 14 / 21 % faster at
    ef_search 40 / 120 / 240 / 320 for the same share of exact top-10 rows. Searches order by this expression
    and rank and score rows by the full vectors."""
    column = sql.Identifier(*filter(None, (alias, project.names.embeddings_column)))
    if not project.half_index:
        return column
    return sql.SQL("({}::halfvec({}))").format(column, sql.Literal(project.dimensions))


def index_statement(project: Project, table: sql.Identifier | None = None, name: str | None = None,
                    concurrently: bool = False) -> sql.Composable:
    """CREATE INDEX IF NOT EXISTS of the project's HNSW index, with its ``m`` / ``ef_construction`` (on
    ``table`` under ``name``: the same index of a table that is to take the project's table's place);
    ``concurrently``: CREATE INDEX CONCURRENTLY, which fails on a name already taken."""
    options = {"m": project.hnsw_m, "ef_construction": project.hnsw_ef_construction}
    if project.is_chunked and options["ef_construction"] is None:
        options["ef_construction"] = CHUNK_INDEX_EF_CONSTRUCTION
    given = [sql.SQL("{} = {}").format(sql.SQL(name), sql.Literal(value)) for name, value in options.items()
             if value is not None]
    create = "CREATE INDEX CONCURRENTLY" if concurrently else "CREATE INDEX IF NOT EXISTS"
    return sql.SQL(create + " {index} ON {target} USING hnsw ({indexed} {opclass}){options}").format(
        index=sql.Identifier(name or project.names.index_name),
        target=table or project.names.target,
        indexed=index_expression(project),
        opclass=sql.Identifier(project.distance.halfvec_opclass if project.half_index else project.distance.opclass),
        options=sql.SQL(" WITH ({})").format(sql.SQL(", ").join(given)) if given else sql.SQL(""),
    )


def embedded_rows(cur: Cursor, project: Project) -> int:
    """The project's stored vectors (a chunked project's chunks)."""
    cur.execute(sql.SQL("SELECT count({emb}) FROM {target}").format(
        emb=sql.Identifier(project.names.embeddings_column), target=project.names.target))
    return cur.fetchone()[0]


def create_index(cur: Cursor, project: Project, build_cap: int | None = None) -> dict[str, Any] | None:
    """The project's HNSW index; a no-op when it exists, also when a concurrent run's build commits first
    (IF NOT EXISTS sees only committed indexes: the later build then fails on the name, in a savepoint).
    ``build_cap``: a build over the table's vectors, its memory sized to them within the cap
    (``index_build.build``; returns its figures); None: on an empty table, as it is created."""
    if build_cap is not None:
        if cur.execute("SELECT to_regclass(%s) IS NOT NULL",
                       [sql.Identifier(*project.names.index_qualified_name).as_string(cur)]).fetchone()[0]:
            return None
        return index_build.build(cur, index_statement(project), f"project {project.name!r}", embedded_rows(cur, project),
                                 project.dimensions, project.hnsw_m, project.half_index, build_cap)
    try:
        with cur.connection.transaction():
            cur.execute(index_statement(project))
    except psycopg.errors.UniqueViolation:
        pass
    return None


def drop_index(cur: Cursor, project: Project) -> None:
    cur.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(*project.names.index_qualified_name)))


DROP_INDEX_LOCK_TIMEOUT = "1s"


@contextmanager
def lock_timeout(cur: Cursor, timeout: str) -> Iterator[None]:
    """A savepoint whose statements wait at most ``timeout`` for a lock (``LockNotAvailable`` otherwise): the
    caller's transaction survives the timeout, and keeps its own ``lock_timeout`` afterwards."""
    previous = cur.execute("SELECT current_setting('lock_timeout')").fetchone()[0]
    try:
        with cur.connection.transaction():
            cur.execute("SELECT set_config('lock_timeout', %s, true)", [timeout])
            yield
    finally:
        cur.execute("SELECT set_config('lock_timeout', %s, true)", [previous])


def take_exclusively(cur: Cursor, table: sql.Composable, attempts: int, timeout: str, pause: float) -> bool:
    """ACCESS EXCLUSIVE on ``table`` until the transaction ends: up to ``attempts`` tries of ``timeout`` each,
    ``pause`` seconds apart, so that the searches queued behind a try run meanwhile; False when it stayed in use."""
    for attempt in range(attempts):
        try:
            with lock_timeout(cur, timeout):
                cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
            return True
        except psycopg.errors.LockNotAvailable:
            if attempt + 1 < attempts:
                time.sleep(pause)
    return False


def drop_index_unless_busy(cur: Cursor, project: Project) -> bool:
    """Drop the index before a bulk write unless another session keeps the storage in use for longer than
    DROP_INDEX_LOCK_TIMEOUT; returns whether it was dropped. DROP INDEX waits for every open transaction that
    read the table (another run's batch, from its claim to its commit), and every statement on the table,
    searches included, queues behind it meanwhile."""
    try:
        with lock_timeout(cur, DROP_INDEX_LOCK_TIMEOUT):
            drop_index(cur, project)
        return True
    except psycopg.errors.LockNotAvailable:
        return False


# An INSERT (or COPY) of more rows than this is recorded as one bulk row instead of each key in the queue.
BULK_ROWS = 10_000
# A transaction's first UPDATED_ROWS - 1 rows whose embedded columns changed are queued key by key; the next
# one records the rest as one bulk row.
UPDATED_ROWS = 1_000
# The comment on a project's trigger function that says it is today's (``upgrade_triggers``).
TRIGGER_LAYOUT = "airflow-vectorize realtime queue, layout 5"
# The statement trigger that closed an UPDATE of a realtime project of layout 2.
LEGACY_UPDATE_STATEMENT_TRIGGER = "vectorize_update_stmt_{job}"


def create_triggers(cur: Cursor, project: Project) -> None:
    """Queue the keys of inserted rows, and of rows whose embedded columns changed, and NOTIFY.

    Inserts are handled per statement (one set-based insert from the transition table; per row, as updates,
    on a partitioned table); a statement of more
    than BULK_ROWS rows is recorded as one row of ``vectorize._bulk_<job>`` (how many) instead: queueing each
    key would cost a bulk load ~3× its time; the next realtime run scans for due rows, as a bulk load's
    embedding needs anyway. Updates use a row trigger limited to the embedded columns (PostgreSQL allows no
    transition table with a column list), so writing embeddings, or changing any other column, never queues
    a row. It queues a transaction's first UPDATED_ROWS - 1 changed rows (counted in a transaction-local
    setting); the next one writes a bulk row without a count (``freshness.queued`` counts the rows it stands
    for when read) and sets the setting to ``bulk``, and the calls for the rest return at once (an UPDATE of
    100k texts of 1M rows: 1.4-1.6× its time without a project in ``make bench-writes``; 2.2× when each row
    was counted). The notification (channel ``vectorize_<job>``, empty payload) is delivered at commit, once
    per transaction however many rows it queued: it wakes ``PendingRowsTrigger``.
    """
    key = project.key
    counter = transaction_setting("changed", project.job_id)
    body = sql.SQL(
        """
        DECLARE
          inserted bigint;
          changed integer;
        BEGIN
          IF TG_LEVEL = 'ROW' THEN
            IF current_setting({counter}, true) = 'bulk' THEN
              RETURN NULL;
            END IF;
            changed := coalesce(nullif(current_setting({counter}, true), ''), '0')::integer + 1;
            IF changed < {updated_rows} THEN
              PERFORM set_config({counter}, changed::text, true);
              INSERT INTO {queue} ({keys}) VALUES ({new_keys})
                ON CONFLICT ({keys}) DO UPDATE SET enqueued_at = clock_timestamp();
            ELSE
              PERFORM set_config({counter}, 'bulk', true);
              INSERT INTO {bulk} (rows) VALUES (NULL);
            END IF;
            IF changed = 1 THEN
              PERFORM pg_notify({channel}, '');
            END IF;
            RETURN NULL;
          END IF;
          SELECT count(*) INTO inserted FROM vectorize_new_rows;
          IF inserted > {bulk_rows} THEN
            INSERT INTO {bulk} (rows) VALUES (inserted);
          ELSE
            INSERT INTO {queue} ({keys}) SELECT {n_keys} FROM vectorize_new_rows n
              ON CONFLICT ({keys}) DO UPDATE SET enqueued_at = clock_timestamp();
          END IF;
          PERFORM pg_notify({channel}, '');
          RETURN NULL;
        END
        """
    ).format(queue=project.names.queue, keys=key.names(), new_keys=key.names("new"), n_keys=key.names("n"),
             channel=sql.Literal(project.names.channel), bulk=project.names.bulk, bulk_rows=sql.Literal(BULK_ROWS),
             updated_rows=sql.Literal(UPDATED_ROWS), counter=counter)
    changed = sql.SQL(" OR ").join(
        sql.SQL("OLD.{c} IS DISTINCT FROM NEW.{c}").format(c=sql.Identifier(c)) for c in project.columns
    )
    # A partitioned table's statement triggers fire only for statements naming it, not for an INSERT or COPY
    # into one of its partitions; its row triggers are on every partition, those to come included.
    inserts = sql.SQL("FOR EACH ROW" if source_is_partitioned(cur, project)
                      else "REFERENCING NEW TABLE AS vectorize_new_rows FOR EACH STATEMENT")
    removal.define_trigger_function(cur, project.names.trigger_function, body.as_string(cur))
    cur.execute(
        sql.SQL(
            "COMMENT ON FUNCTION {function}() IS {layout};"
            " CREATE TRIGGER {insert_trigger} AFTER INSERT ON {source} {inserts} EXECUTE FUNCTION {function}();"
            " CREATE TRIGGER {update_trigger} AFTER UPDATE OF {columns} ON {source}"
            " FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION {function}()"
        ).format(
            function=project.names.trigger_function,
            layout=sql.Literal(TRIGGER_LAYOUT),
            insert_trigger=sql.Identifier(project.names.insert_trigger),
            update_trigger=sql.Identifier(project.names.update_trigger),
            source=project.names.source,
            columns=sql.SQL(", ").join(sql.Identifier(c) for c in project.columns),
            changed=changed,
            inserts=inserts,
        )
    )
    removal.fire_always(cur, project, (project.names.insert_trigger, project.names.update_trigger))


def drop_realtime_triggers(cur: Cursor, project: Project) -> None:
    """Drop a realtime project's insert and update triggers and their function (a partition's clones go with
    them)."""
    for trigger in (project.names.insert_trigger, project.names.update_trigger):
        cur.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), project.names.source))
    cur.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(project.names.trigger_function))


ALTERED_PARAMS = ("columns", "update_time_col", "schedule")  # alter_project's in-place changes
INDEX_PARAMS = ("hnsw_m", "hnsw_ef_construction", "halfvec_index")  # its index settings (``index_rebuild``)


def write_params(cur: Cursor, project: Project, altered: Project, keys: tuple[str, ...]) -> None:
    """Write ``altered``'s ``keys`` of ``params`` into ``project``'s catalog row (one that ``altered`` leaves out,
    a default, goes); its other keys, pg_vectorize's included, stay as they are."""
    given = {key: value for key, value in altered.params().items() if key in keys}
    cur.execute("UPDATE vectorize.job SET params = (params - %s::text[]) || %s::jsonb WHERE job_id = %s",
                [list(keys), json.dumps(given), project.job_id])


def upgrade_triggers(cur: Cursor, project: Project) -> bool:
    """Give a realtime project whose triggers an earlier version made (its trigger function without today's
    TRIGGER_LAYOUT comment, or a partitioned source's insert trigger per statement) today's; returns whether
    it did. Call with the project locked, after
    ``ensure_bulk_table`` (today's function writes bulk rows without a count)."""
    if project.schedule != "realtime":
        return False
    function = quoted(project.names.trigger_function_name) + "()"
    source = project.names.source.as_string(cur)
    cur.execute("SELECT (obj_description(to_regprocedure(%s), 'pg_proc') IS DISTINCT FROM %s"
                " AND EXISTS (SELECT FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s))"
                # an insert trigger per statement on a partitioned table (made before it was per row there)
                " OR EXISTS (SELECT FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relkind = 'p'"
                " AND t.tgrelid = to_regclass(%s) AND t.tgname = %s AND t.tgtype & 1 = 0)",
                [function, TRIGGER_LAYOUT, source, project.names.update_trigger, source, project.names.insert_trigger])
    if not cur.fetchone()[0]:
        return False
    legacy = LEGACY_UPDATE_STATEMENT_TRIGGER.format(job=project.name)
    cur.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(legacy), project.names.source))
    drop_realtime_triggers(cur, project)
    create_triggers(cur, project)
    return True


def chunk_documents_column() -> sql.Composable:
    """A chunk table's column of its chunks' full-text documents, generated by every write of a chunk."""
    return sql.SQL("{} tsvector GENERATED ALWAYS AS ({}) STORED").format(
        sql.Identifier(CHUNK_FTS_COLUMN), expressions.chunk_fts_document())


def create_documents_table(cur: Cursor, project: Project) -> None:
    """An unchunked project's ``vectorize._documents_<job>``: each embedded row's full-text document
    (``expressions.fts_document``), written with its vector (``storage.write_documents``), so that hybrid
    search ranks matches by stored documents instead of parsing their texts, and writes to the source pay
    for no full-text index."""
    cur.execute(sql.SQL("{key_table}; ALTER TABLE {documents} ADD COLUMN {document} tsvector NOT NULL").format(
        key_table=key_table(project, project.names.documents, "PRIMARY KEY"), documents=project.names.documents,
        document=sql.Identifier(DOCUMENT_COLUMN)))


def fts_index_statement(project: Project) -> sql.Composable:
    """Hybrid search's full-text index ``<job>_fts_idx``: on the stored documents, or on a chunked project's
    chunk documents (``chunk_documents_column``) in its chunk table."""
    if project.is_chunked:
        table, indexed = project.names.target, sql.Identifier(CHUNK_FTS_COLUMN)
    else:
        table, indexed = project.names.documents, sql.Identifier(DOCUMENT_COLUMN)
    return sql.SQL("CREATE INDEX {} ON {} USING gin ({})").format(
        sql.Identifier(project.names.fts_index_name), table, indexed)


def append_home(cur: Cursor, project: Project) -> Project | None:
    """An append project pointed at the table that holds its columns: the source, or the table its triggers are
    on (the source renamed away, or swapped out by a rename-swap); None when no table holds them."""
    for place in ((project.schema, project.relation), _triggers_table(cur, project)):
        if place is not None and cur.execute(
                "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s"
                " AND NOT attisdropped)", [quoted(place), project.names.embeddings_column]).fetchone()[0]:
            return replace(project, schema=place[0], relation=place[1])
    return None


def drop_storage(cur: Cursor, project: Project, source_exists: bool) -> None:
    """Remove everything ``create_storage`` made and the catalog row, never the source table (nor a table it
    was renamed to, or swapped out to: an append project's columns are dropped from the one holding them)."""
    if not project.is_join:
        home = append_home(cur, project)
        project, source_exists = (home, True) if home is not None else (project, False)
    drop_triggers(cur, project)  # also from a table the source was renamed to
    if source_exists:  # a project's created before the documents table (never the user's of that name)
        legacy_fts.drop_source_fts_index(cur, project)
    if project.is_join:
        cur.execute(sql.SQL("DROP VIEW IF EXISTS {}; DROP FUNCTION IF EXISTS {}(); DROP TABLE IF EXISTS {}").format(
            project.names.view, project.names.view_function, project.names.target))
    cur.execute(sql.SQL("DROP FUNCTION IF EXISTS {}(), {}()").format(project.names.trigger_function,
                                                                   project.names.removal_function))
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}, {}, {}, {}").format(
        project.names.queue, project.names.bulk, project.names.errors, project.names.removed,
        project.names.documents))
    if not project.is_join and source_exists:
        drop_append_columns(cur, project)
    cur.execute("DELETE FROM vectorize.job WHERE name = %s", [project.name])


def drop_append_columns(cur: Cursor, project: Project) -> None:
    """Drop an append project's columns from its source (``project``'s schema and relation), and with them
    the index on them."""
    cur.execute(
        sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}, DROP COLUMN IF EXISTS {}, DROP COLUMN IF EXISTS {}").format(
            project.names.source,
            sql.Identifier(project.names.embeddings_column),
            sql.Identifier(project.names.updated_at_column),
            sql.Identifier(project.names.text_md5_column),
        )
    )
