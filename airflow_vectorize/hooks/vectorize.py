"""VectorizeHook: pg_vectorize's project API on any PostgreSQL with pgvector; the one place that writes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from airflow.providers.postgres.hooks.postgres import PostgresHook
from psycopg import Cursor, sql

from airflow_vectorize import (
    catalog,
    chunking,
    evaluation,
    expressions,
    freshness,
    generation,
    grants,
    index_build,
    index_rebuild,
    models,
    rag,
    removal,
    source_renames,
    storage,
    swap,
    tuning,
    validation,
)
from airflow_vectorize import search as searching
from airflow_vectorize.catalog import DEFAULT_TRANSFORMER, Project
from airflow_vectorize.exceptions import (
    DatabaseConnectionError,
    DatabasePermissionError,
    DimensionMismatchError,
    InvalidInputError,
    ModelConnectionError,
    ProjectConflictError,
    ProjectNotFoundError,
    RetrievalRegressionError,
    SourceColumnsMissingError,
    SourceTableMissingError,
    VectorizeError,
)
from airflow_vectorize.models import batching, encoding
from airflow_vectorize.models.remote import positive_int
from airflow_vectorize.naming import quoted
from airflow_vectorize.search_sessions import SessionPool

if TYPE_CHECKING:
    from airflow.models import Connection

DROP_ATTEMPTS = 3
# the connection types of a database (a URI's postgresql:// is read as postgres; a JSON connection may leave it out)
DATABASE_CONN_TYPES = {"postgres", "postgresql", "", None}
# alter_project's changes of the realtime triggers, and drop_project, take the source table exclusively in tries
# this short, so the application's reads and writes queued behind a try run between them: (tries,
# lock_timeout, pause s).
ALTER_LOCK_TRIES = (60, "500ms", 0.2)


class _Keep:
    """``alter_project``'s "leave this setting as it is"; its fixed text keeps a DAG's serialized form (a
    template field's default) the same from one parse to the next."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


class VectorizeHook(PostgresHook):
    """Create, fill, inspect and drop vector-search projects, stored as pg_vectorize stores them.

    Every method runs in one transaction on its own connection: an error leaves nothing half-written,
    and a retried task converges to the same state. Writers of one project are serialised with a
    transaction-scoped advisory lock.

    :param postgres_conn_id: the Airflow connection to a PostgreSQL database with pgvector available.
    :param index_build_memory: the most ``maintenance_work_mem`` an HNSW build after a bulk write may ask for
        (this transaction only; it asks for the graph's estimated size, :mod:`airflow_vectorize.index_build`):
        ``"auto"`` (4 GB) or a size such as ``"16GB"``.
    :param batch_queries: search queries embedded at the same time by this process's hooks (in other
        threads) go to the model in one call (:mod:`airflow_vectorize.models.batching`); for servers.
    :param search_sessions: searches borrow a database session from this pool, shared with the hooks of
        other threads, only to run their statement (:mod:`airflow_vectorize.search_sessions`); by default
        the hook keeps one search connection of its own.
    """

    conn_name_attr = "postgres_conn_id"
    default_conn_name = "postgres_default"
    conn_type = "postgres"
    hook_name = "Vectorize (PostgreSQL + pgvector)"

    def __init__(
        self, postgres_conn_id: str = default_conn_name, *, index_build_memory: str = index_build.AUTO,
        batch_queries: bool = False, search_sessions: SessionPool | None = None, **kwargs: Any
    ) -> None:
        super().__init__(postgres_conn_id=postgres_conn_id, **kwargs)
        self.index_build_memory = index_build_memory
        self._build_cap = index_build.parse_cap(index_build_memory)
        self.batch_queries = batch_queries
        self.search_sessions = search_sessions
        self._search_conn: psycopg.Connection | None = None
        self._search_cache: dict[str, searching.SearchTarget] = {}
        self._query_models: dict[tuple, models.EmbeddingModel] = {}
        self._chat_models: dict[tuple, models.ChatModel] = {}

    # -- connections -------------------------------------------------------------------------------
    def connect(self) -> psycopg.Connection:
        """A new autocommit psycopg 3 connection (PostgresHook's, with its connection options)."""
        self._check_database_connection(self.connection)
        conn = self.get_conn()
        if not isinstance(conn, psycopg.Connection):
            conn.close()
            raise VectorizeError(
                "VectorizeHook needs psycopg 3 (PostgresHook uses it when psycopg and SQLAlchemy 2 are"
                " installed): pip install 'psycopg[binary]' 'sqlalchemy>=2'"
            )
        conn.autocommit = True
        return conn

    def _whole_source_connect(self) -> psycopg.Connection:
        """``connect`` for a generation run's sessions, with row security off: a statement that a row-level
        security policy would filter (forced on the source during the run) fails instead of acting on part of
        the rows (``_project`` refuses a source it filters before the run)."""
        conn = self.connect()
        conn.execute("SET row_security = off")
        return conn

    async def aconnect(self) -> psycopg.AsyncConnection:
        """A new autocommit async connection, for triggers (same host, login, database and extras as
        ``connect``; the connection is fetched without blocking the triggerer's event loop)."""
        conn = await self.aget_connection(self.postgres_conn_id)
        self._check_database_connection(conn)
        if conn.extra_dejson.get("iam"):
            raise VectorizeError(f"connection {self.postgres_conn_id!r}: IAM authentication is not supported"
                                 " by the Vectorize triggers; use a password")
        args: dict[str, Any] = {"host": conn.host, "user": conn.login, "password": conn.password,
                                "dbname": self.database or conn.schema, "port": conn.port}
        args.update({k: v for k, v in conn.extra_dejson.items() if k not in self.ignored_extra_options})
        return await psycopg.AsyncConnection.connect(**{k: v for k, v in args.items() if v is not None},
                                                     autocommit=True)

    def _check_database_connection(self, conn: Connection) -> None:
        """``conn`` is a PostgreSQL connection (not, say, a model's: its host is no database to log in to)."""
        if conn.conn_type not in DATABASE_CONN_TYPES:
            raise InvalidInputError(f"connection {self.postgres_conn_id!r} is a {conn.conn_type!r} connection, not"
                                    " a PostgreSQL database (conn_type 'postgres')")

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A cursor inside one transaction on a fresh connection, closed afterwards. A session that ends
        meanwhile (terminated, server restarted, network) raises ``DatabaseConnectionError``: nothing of the
        transaction was committed."""
        with self._cursor(in_transaction=True) as cur:
            yield cur

    @contextmanager
    def _cursor(self, in_transaction: bool) -> Iterator[Cursor]:
        """A cursor on a fresh connection, in one transaction or autocommit (``transaction``'s errors)."""
        try:
            with self.connect() as conn, conn.transaction() if in_transaction else nullcontext(), \
                    conn.cursor() as cur:
                yield cur
        except psycopg.errors.InsufficientPrivilege as error:
            raise self._permission_error(error) from error
        except psycopg.OperationalError as error:
            if not _session_ended(error):
                raise
            raise DatabaseConnectionError(
                f"the database connection failed or ended before the transaction committed ({error}); nothing of it was"
                " written: run the call again"
            ) from error

    def _permission_error(self, error: psycopg.errors.InsufficientPrivilege) -> DatabasePermissionError:
        if "row-level security" in (error.diag.message_primary or ""):  # row_security = off (``_project``)
            return DatabasePermissionError(
                f"row-level security hides rows of a project's source from the role of connection"
                f" {self.postgres_conn_id!r} ({error.diag.message_primary}); nothing of the transaction was written."
                " Runs, import and status need a role that sees every row: one with BYPASSRLS, or the table's"
                " owner without FORCE ROW LEVEL SECURITY."
            )
        return DatabasePermissionError(
            f"the database role of connection {self.postgres_conn_id!r} lacks a privilege this call needs"
            f" ({error.diag.message_primary}); nothing was written. A role that searches and reads status gets"
            " what it needs from the project's owner: VectorizeHook.grant_search(job_name, role); creating,"
            " generating, importing, altering and dropping a project take the role that owns it."
        )

    # -- projects ----------------------------------------------------------------------------------
    def create_project(
        self,
        job_name: str,
        table: str,
        primary_key: str | Sequence[str],
        columns: Sequence[str],
        transformer: str = DEFAULT_TRANSFORMER,
        schema: str = "public",
        table_method: str = "join",
        index_dist_type: str = "pgv_hnsw_cosine",
        schedule: str = "realtime",
        update_col: str | None = None,
        embed_existing: bool = False,
        model_conn_id: str | None = None,
        dimensions: int | None = None,
        chunk_size: int | None = None,
        chunk_overlap: int = 0,
        chunker: str = "recursive",
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        input_types: Mapping[str, str | None] | None = None,
        hnsw_m: int | None = None,
        hnsw_ef_construction: int | None = None,
        halfvec_index: bool = False,
        max_attempts: int = generation.DEFAULT_MAX_ATTEMPTS,
        max_failed_share: float = generation.DEFAULT_MAX_FAILED_SHARE,
        failures_since: datetime | None = None,
    ) -> dict[str, Any]:
        """Make ``schema.table`` searchable: embeddings storage, HNSW index, queue and realtime triggers.

        ``primary_key`` is a unique column, or the columns of a composite key (a list; a primary key or a
        unique index on exactly them); the project's tables key their rows by the same columns.

        ``transformer`` is a local model (``sentence-transformers/<name>``, a directory; with ``model_conn_id``
        computed by a self-hosted server) or a remote one (``openai/<model>``, ``ollama/<model>``,
        ``cohere/<model>``, ``voyage/<model>``, ``portkey/<provider>/<model>``) reached through the Airflow
        connection ``model_conn_id`` (default ``<provider>_default``); a remote model is asked once for a
        vector to learn its size, and ``dimensions`` asks it for shortened vectors (OpenAI's text-embedding-3).
        The catalog keeps the connection id, never what the connection holds.

        ``chunk_size`` (tokens of the model's tokenizer) cuts each row's text into chunks of that size with
        ``chunk_overlap`` tokens shared by neighbours, one vector per chunk (``vectorize._chunks_<job>``;
        join projects only); searches still return each row once, ranked by its best chunk.

        Documents and queries are encoded as the model wants them (``models.encoding``): a local model's own
        configured prompts, Cohere's / Voyage's ``input_type`` per side. ``document_prompt`` /
        ``query_prompt`` put a text before every document / query ("" for none); ``input_types``
        (``{"document": ..., "query": ...}``) sets a provider's input type per side. Kept in the catalog.

        ``hnsw_m`` / ``hnsw_ef_construction``: the HNSW index's ``m`` and ``ef_construction`` (default pgvector's
        16 and 64; a chunked project's ef_construction 256), kept in the catalog and used by every rebuild.
        ``halfvec_index``: the index holds the vectors at half precision (``::halfvec``, half the size and
        build memory); the table keeps them whole, and rows are scored by them. A chunked project's is always.

        The same call again returns the existing project unchanged; another configuration under an
        existing name raises ProjectConflictError naming the fields that differ. With ``embed_existing``
        the rows already in the table are embedded right away (pg_vectorize's initial load); the summary
        then carries that run's summary under ``initial_load``. ``max_attempts``, ``max_failed_share`` and
        ``failures_since`` are that run's (``generate_embeddings``): with a DAG run's start as
        ``failures_since``, Airflow's retry of a create task whose initial load failed fails too.
        """
        check_failure_options(max_attempts, max_failed_share, failures_since)
        validation.check_job_name(job_name)
        validation.check_options(table_method, index_dist_type, schedule)
        if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
            raise validation.InvalidInputError(f"columns must be a list of column names, got {columns!r}")
        if dimensions is not None:
            positive_int(dimensions, "dimensions")
        chunking.check_options(chunk_size, chunk_overlap, chunker)
        validation.check_index_options(hnsw_m, hnsw_ef_construction,
                                       64 if chunk_size is None else catalog.CHUNK_INDEX_EF_CONSTRUCTION)
        if not isinstance(halfvec_index, bool):
            raise InvalidInputError(f"halfvec_index must be True or False, got {halfvec_index!r}")
        if chunk_size is not None and table_method != "join":
            raise InvalidInputError("chunking (chunk_size) needs table_method='join': chunks live in their own table")
        wanted = Project(
            name=job_name,
            schema=schema,
            relation=table,
            primary_key=validation.key_spelling(primary_key),
            columns=tuple(columns),
            transformer=transformer,
            index_dist_type=index_dist_type,
            table_method=table_method,
            schedule=schedule,
            update_time_col=update_col,
            model_conn_id=models.model_conn_id(transformer, model_conn_id),
            requested_dimensions=dimensions,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap if chunk_size is not None else 0,
            chunker=chunker,
            hnsw_m=hnsw_m,
            hnsw_ef_construction=hnsw_ef_construction,
            halfvec_index=halfvec_index,
        )
        choice = encoding.Choice(query_prompt, document_prompt, input_types)
        # Read-only pass first: a repeated call or bad input answers without loading the model.
        with self.transaction() as cur:
            existing = catalog.find_project(cur, job_name)
            if existing is None:
                validation.check_project_source(cur, wanted)
        if existing is None:
            summary = self._create_project(wanted, choice)
        else:
            summary = self._existing_project(existing, replace(wanted, encoding=choice.over(existing.encoding)))
        if embed_existing:
            summary["initial_load"] = self.generate_embeddings(job_name, max_attempts=max_attempts,
                                                               max_failed_share=max_failed_share,
                                                               failures_since=failures_since)
        return summary

    def _create_project(self, wanted: Project, choice: encoding.Choice) -> dict[str, Any]:
        job_name = wanted.name
        wanted = self._with_model(wanted, choice)
        with self.transaction() as cur:
            catalog.ensure_vector_extension(cur)
            catalog.ensure_catalog(cur)
            catalog.lock_project(cur, job_name)
            existing = catalog.find_project(cur, job_name)  # a concurrent creator may have won
            if existing is not None:
                return self._existing_project(existing, replace(wanted, encoding=choice.over(existing.encoding)))
            keys = validation.check_project_source(cur, wanted)
            pkey_type = keys[0].data_type if len(keys) == 1 else tuple(k.data_type for k in keys)
            project = replace(wanted, pkey_type=pkey_type)
            validation.check_storage_free(cur, project)
            project = replace(project, job_id=catalog.insert_project(cur, project))
            catalog.create_storage(cur, project)
        self.log.info("Created vectorize project %r (%s, %d dimensions)", job_name, project.table_method,
                      project.dimensions)
        return self._project_summary(project, created=True)

    @staticmethod
    def _with_model(project: Project, choice: encoding.Choice) -> Project:
        """``project`` with what its model implies: the vector size (a remote model is asked once — a wrong
        key, model or host fails here, before anything is created; a requested size must be what the model
        answers) and the encoding of each side."""
        wanted = project.requested_dimensions
        model = models.embedding_model(project.transformer, project.model_conn_id, wanted, shorten=wanted is not None)
        dims = model.probe()
        if wanted is not None and dims != wanted:
            raise InvalidInputError(
                f"dimensions={wanted} was requested, but {model.describe()} produces {dims}-dimensional"
                " vectors and cannot shorten them; omit dimensions"
            )
        validation.check_index_dimensions(replace(project, dimensions=dims), model.describe())
        chosen = choice.for_model(model)
        if project.is_chunked:
            document_side = encoding.SideModel(model, chosen, "document")
            chunking.check_size(project.chunk_size, document_side.max_input_tokens, model.describe())
        return replace(project, dimensions=dims, encoding=chosen)

    def _existing_project(self, existing: Project, wanted: Project) -> dict[str, Any]:
        have, want = existing.config(), wanted.config()
        differing = [f for f in catalog.CONFIG_FIELDS if have[f] != want[f]]
        if differing:
            details = "; ".join(f"{f}: existing {have[f]!r}, requested {want[f]!r}" for f in differing)
            raise ProjectConflictError(
                f"project {existing.name!r} already exists with a different configuration ({details})."
                " Drop it first (DropVectorizeProjectOperator) or use another job_name."
            )
        self.log.info("Vectorize project %r already exists with this configuration", existing.name)
        return self._project_summary(existing, created=False)

    @staticmethod
    def _project_summary(project: Project, created: bool) -> dict[str, Any]:
        return {
            "job_name": project.name,
            "created": created,
            "table_method": project.table_method,
            "dimensions": project.dimensions,
            "transformer": project.transformer,
            "model_conn_id": project.model_conn_id,
            "index": project.names.index_name,
            "schedule": project.schedule,
            "objects": project.storage_objects(),
        }

    def get_project(self, job_name: str) -> dict[str, Any]:
        """The catalog entry of ``job_name`` (job_id, name, index_dist_type, transformer, params, dimensions)."""
        with self.transaction() as cur:
            return self._project(cur, job_name, source=False).entry()

    def list_projects(self) -> list[dict[str, Any]]:
        with self.transaction() as cur:
            return [project.entry() for project in catalog.list_projects(cur)]

    def _project(self, cur: Cursor, job_name: str, source: bool = True, searching: bool = False,
                 attaching: bool = False, whole: bool = True) -> Project:
        """The project's catalog entry; with ``source``, only while its source table exists with the columns
        the project reads (a search: its key) and passes ``create_project``'s checks of their types and of the
        key's uniqueness (``validation.check_source_state``), and for an append project, unless ``searching``
        or ``attaching`` (generation, attach_source), while that table is the one holding its columns.
        ``whole`` (not for a search): the call reads every row, so row-level security must hide none from the
        role, and is off for the rest of the transaction (a statement it would filter fails instead)."""
        project = catalog.find_project(cur, job_name)
        if project is None:
            raise ProjectNotFoundError(
                f"project {job_name!r} not yet initialized: there is no such job in vectorize.job."
                " Create it first (VectorizeHook.create_project / CreateVectorizeProjectOperator)."
            )
        if source:
            needed = catalog.source_columns(project, searching)
            # An append project's own column, in the source (a search of a swapped-in table finds nothing instead)
            own = [] if project.is_join or searching or attaching else [project.names.embeddings_column]
            state = validation.source_state(cur, project, needed, own, searching, whole and not searching)
            gone, missing, replaced, children = state.gone, state.missing, state.replaced, state.children
            if replaced and not gone:  # another table under the source's name: a rename-swap, DROP and CREATE
                raise SourceTableMissingError(
                    f"the table now named {project.schema}.{project.relation} is not the source of append project"
                    f" {job_name!r} (it has no {replaced[0]!r} column): another table took its name. Run generation"
                    f" (or VectorizeHook.attach_source({job_name!r})) to attach it, keeping the vectors of its"
                    f" unchanged rows; or drop the project (drop_project({job_name!r}))."
                )
            if gone:
                raise SourceTableMissingError(
                    f"the source table {project.schema}.{project.relation} of project {job_name!r} no longer"
                    " exists (dropped, or renamed away). Put a table with its key"
                    f" ({', '.join(project.key.columns)}) and columns ({', '.join(project.columns)}) under that"
                    f" name and run generation (or VectorizeHook.attach_source({job_name!r})) to attach it,"
                    f" keeping the vectors of its unchanged rows; or drop the project (drop_project({job_name!r}))."
                )
            if children:  # create_project refuses them (validation.check_project_source); attached since
                raise ProjectConflictError(
                    f"the source table {project.schema}.{project.relation} of project {job_name!r} has child tables"
                    f" through INHERITS now ({', '.join(children)}): their rows are read through it, but their"
                    " writes fire none of its triggers, so the project would miss their inserts, changes and"
                    " deletes. Detach them (ALTER TABLE <child> NO INHERIT <table>), or drop the project."
                )
            if missing:
                now = source_renames.renamed(cur, project)
                followed = "" if now is None else (
                    f" The source says {source_renames.described(project, now)}: the next generation run, or"
                    f" attach_source({job_name!r}), follows it.")
                raise SourceColumnsMissingError(
                    f"the source table {project.schema}.{project.relation} of project {job_name!r} has no column"
                    f" {', '.join(map(repr, missing))} any more (renamed or dropped); the project reads"
                    f" {', '.join(map(repr, needed))}.{followed} Rename it back (ALTER TABLE ... RENAME COLUMN <new"
                    f" name> TO <old name>), give the project a text or update column's new name"
                    f" (alter_project({job_name!r}, columns=[...], update_col=...)), or drop the project"
                    f" (drop_project({job_name!r}))."
                )
            validation.check_source_state(project, state, searching)
        return project

    def _follow_renames(self, cur: Cursor, job_name: str) -> None:
        """Follow the source's key and embedded columns renamed under the project (``source_renames``); call it
        with the project locked."""
        project = catalog.find_project(cur, job_name)
        if project is not None and source_renames.follow(cur, project) is not None:
            self._search_cache.pop(job_name, None)

    def attach_source(self, job_name: str) -> dict[str, Any]:
        """Make the table now named as the project's source its source, after a rename-swap (``ALTER TABLE t
        RENAME TO t_old; ALTER TABLE t_new RENAME TO t; DROP TABLE t_old``) or a DROP and CREATE: the
        project's triggers move to it and a join project keeps the vectors of its keys (embedded again by the
        next generation run only where the text changed; the others' deleted by it). Generation does this
        by itself; call it after a swap to have a realtime project queue the new table's changes at once.
        It also puts back a realtime trigger dropped from the source and makes the view again on the source's
        columns (README: "Changing the source's columns"), as each generation run does. Returns
        ``{"job_name", "attached"}`` (False: no trigger was missing)."""
        with self.transaction() as cur:
            catalog.lock_project(cur, job_name)
            self._follow_renames(cur, job_name)
            project = self._project(cur, job_name, attaching=True)
            upgraded = storage.upgrade_layout(cur, project)  # a project created by an earlier version
            attached = removal.attach(cur, project) or upgraded.triggers_restored
            catalog.ensure_view(cur, project)
            index_rebuild.discard_leftover(cur, project)
        self._search_cache.pop(job_name, None)
        return {"job_name": job_name, "attached": attached}

    def alter_project(
        self, job_name: str, *, schedule: str | None = None, columns: Sequence[str] | None = None,
        update_col: str | None = KEEP, hnsw_m: int | None = KEEP, hnsw_ef_construction: int | None = KEEP,
        halfvec_index: bool = KEEP,
    ) -> dict[str, Any]:
        """Change a project without dropping it: its vectors stay, and are searched, until embedded again.

        ``schedule``: ``realtime`` ↔ ``manual`` (pause and resume the triggers that queue changes). Going
        realtime, the next realtime run looks at every row (changes made meanwhile were not queued); going
        manual, the queue is emptied (a manual run finds the rows due by their text's md5).
        ``columns``: the text columns to embed. Each row's text, and so its md5, is then made of them: the next
        generation run embeds again the rows whose text changed, and only those (after a column's rename,
        the same columns under their new names change nothing, and the project reads them again; see
        ``SourceColumnsMissingError``). ``update_col``: another timestamp column, or None for none.

        ``hnsw_m``, ``hnsw_ef_construction`` (None: pgvector's default) and ``halfvec_index``: the HNSW index
        is built again with them beside the old one, concurrently, and takes its place when built
        (``index_rebuild``); searches use the old one meanwhile, and the call lasts as long as the build. The
        other changes are committed first.

        The model, vector size, table method, key and chunking cannot change in place: create another
        project, embed it, point searches at it and drop this one. Returns ``{"job_name", "changed":
        {field: [before, after]}}`` (empty when nothing differs), with the build's figures under ``index``
        when the index was built again (``index_build``).
        """
        index = {name: value for name, value in (("hnsw_m", hnsw_m), ("hnsw_ef_construction", hnsw_ef_construction),
                                                 ("halfvec_index", halfvec_index)) if value is not KEEP}
        if schedule is None and columns is None and update_col is KEEP and not index:
            raise InvalidInputError("nothing to alter: give schedule, columns, update_col and/or the index's hnsw_m,"
                                    " hnsw_ef_construction, halfvec_index")
        if columns is not None and (isinstance(columns, str) or not all(isinstance(c, str) for c in columns)):
            raise InvalidInputError(f"columns must be a list of column names, got {columns!r}")
        with self.transaction() as cur:
            catalog.lock_project(cur, job_name)
            project = self._project(cur, job_name, source=False)
            if schedule is not None:
                validation.check_options(project.table_method, project.index_dist_type, schedule)
            altered = replace(
                project, schedule=schedule or project.schedule,
                columns=project.columns if columns is None else tuple(columns),
                update_time_col=project.update_time_col if update_col is KEEP else update_col)
            reindexed = index_rebuild.altered(project, index)
            changed = {field: [before, after] for field, before, after in (
                ("schedule", project.schedule, altered.schedule),
                ("columns", list(project.columns), list(altered.columns)),
                ("update_col", project.update_time_col, altered.update_time_col)) if before != after}
            # the index's settings as they take effect (``Project.config``): hnsw_m=16 is pgvector's default, a
            # chunked project's index is halfvec already; a change of none of them builds nothing again
            changed.update({name: [getattr(project, name), getattr(reindexed, name)] for name in index
                            if project.config()[name] != reindexed.config()[name]})
            index_rebuild.check_half_range(cur, project, reindexed)
            if changed.keys() - index.keys():
                self._alter_in_place(cur, project, altered, changed)
        if changed.keys() - index.keys():
            self._search_cache.pop(job_name, None)
            self.log.info("Altered vectorize project %r: %s", job_name, changed)
        return self._altered_index(job_name, index, changed)

    @staticmethod
    def _alter_in_place(cur: Cursor, project: Project, altered: Project, changed: dict[str, list]) -> None:
        """``alter_project``'s changes but the index's, in its transaction."""
        validation.check_project_source(cur, altered, attaching=True)
        catalog.write_params(cur, project, altered, catalog.ALTERED_PARAMS)
        triggers = ("schedule" in changed or "columns" in changed) and "realtime" in (project.schedule,
                                                                                      altered.schedule)
        if triggers and not catalog.take_exclusively(cur, project.names.source, *ALTER_LOCK_TRIES):
            # DROP / CREATE TRIGGER would wait for it with every read and write of the table queued behind
            raise ProjectConflictError(
                f"project {project.name!r}: its source table {project.names.source.as_string(cur)} stayed in use"
                f" (a long transaction reads or writes it) for {ALTER_LOCK_TRIES[0]} tries of {ALTER_LOCK_TRIES[1]};"
                " its triggers could not change, and nothing did: alter it again when the table is free")
        # A project created by an earlier version, as it is configured until this change but with the columns
        # it reads now (those it read may have been renamed): the steps below change today's layout.
        storage.upgrade_layout(cur, replace(altered, schedule=project.schedule))
        if ("schedule" in changed or "columns" in changed) and project.schedule == "realtime":
            catalog.drop_realtime_triggers(cur, project)  # their WHEN names the columns
        if ("schedule" in changed or "columns" in changed) and altered.schedule == "realtime":
            catalog.create_triggers(cur, altered)
            # the next realtime run looks at every row: those changed while paused, those of new text
            cur.execute(sql.SQL("INSERT INTO {} (rows) VALUES (NULL)").format(altered.names.bulk))
            cur.execute("SELECT pg_notify(%s, '')", [altered.names.channel])
        if "schedule" in changed:
            removal.replace_function(cur, altered)
            if altered.schedule == "manual":
                cur.execute(sql.SQL("DELETE FROM {}; DELETE FROM {}").format(altered.names.queue,
                                                                              altered.names.bulk))
        catalog.ensure_view(cur, altered)

    def _altered_index(self, job_name: str, index: dict[str, Any], changed: dict[str, list]) -> dict[str, Any]:
        """The rest of ``alter_project`` once its transaction committed: the index built again when a setting of
        it (``index``) changed (``index_rebuild``, on a session of its own)."""
        summary: dict[str, Any] = {"job_name": job_name, "changed": changed}
        if not changed.keys() & index.keys():
            return summary
        with self._cursor(in_transaction=False) as cur:
            if not index_rebuild.rebuild_lock(cur, job_name):
                raise ProjectConflictError(f"project {job_name!r}: another session is rebuilding its index or dropping"
                                           " the project; alter it again when that is done")
            project = self._project(cur, job_name, source=False)
            wanted = index_rebuild.altered(project, index)
            try:
                summary["index"] = index_rebuild.rebuild(cur, project, wanted, self._build_cap)
            except psycopg.errors.DeadlockDetected as error:  # the build waited for a session that waited for it
                raise ProjectConflictError(
                    f"project {job_name!r}: the rebuild of its index waited for another session that waited for it"
                    " (an import into a new table, say); PostgreSQL cancelled the rebuild, which was undone: alter it"
                    " again") from error
        self._search_cache.pop(job_name, None)
        self.log.info("Rebuilt the HNSW index of vectorize project %r: %s", job_name, summary["index"])
        if project.ef_search is not None:
            self.log.warning("Project %r searches with ef_search %d, tuned on the old index: run tune_search again",
                             job_name, project.ef_search)
        return summary

    def grant_search(self, job_name: str, role: str) -> dict[str, Any]:
        """Let ``role`` (an application's or a read replica's user) search the project and read its status:
        SELECT on the catalog, the project's tables and view, and on the source when this role may grant it,
        USAGE on the ``vectorize`` schema; nothing it could write (``airflow_vectorize.grants``). Returns
        ``{"job_name", "role", "granted": [relations], "source_granted"}``; when the source was not granted,
        its owner grants ``SELECT`` on it."""
        with self._granting(job_name, role) as (cur, project):
            return {"job_name": job_name, "role": role, **grants.grant_search(cur, project, role)}

    def revoke_search(self, job_name: str, role: str) -> dict[str, Any]:
        """Take back what ``grant_search`` granted on the project's tables and view (the catalog, the schema and
        the source stay: other projects may need them). Returns ``{"job_name", "role", "revoked": [...]}``."""
        with self._granting(job_name, role) as (cur, project):
            return {"job_name": job_name, "role": role, "revoked": grants.revoke_search(cur, project, role)}

    @contextmanager
    def _granting(self, job_name: str, role: str) -> Iterator[tuple[Cursor, Project]]:
        """A transaction with the project locked, once ``role`` is known to exist."""
        validation.check_identifier(role, "role")
        with self.transaction() as cur:
            catalog.lock_project(cur, job_name)
            project = self._project(cur, job_name, source=False)
            cur.execute("SELECT to_regrole(%s) IS NULL", [quoted((role,))])
            if cur.fetchone()[0]:
                raise InvalidInputError(f"role {role!r} does not exist")
            yield cur, project

    def drop_project(self, job_name: str, missing_ok: bool = False) -> dict[str, Any]:
        """Remove everything the project created, never its source table.

        A search running at that moment can hold the project's tables in the other order; when
        PostgreSQL picks the drop as the deadlock's victim, the drop (one transaction) runs again.
        """
        for attempt in range(1, DROP_ATTEMPTS + 1):
            try:
                return self._drop_project(job_name, missing_ok)
            except psycopg.errors.DeadlockDetected:
                if attempt == DROP_ATTEMPTS:
                    raise
                self.log.warning("Dropping project %r lost a deadlock to a concurrent search; again", job_name)
        raise AssertionError("unreachable")

    def _drop_project(self, job_name: str, missing_ok: bool) -> dict[str, Any]:
        with self.transaction() as cur:
            catalog.lock_project(cur, job_name)
            if missing_ok and catalog.find_project(cur, job_name) is None:
                self.log.info("Vectorize project %r does not exist; nothing to drop", job_name)
                return {"job_name": job_name, "dropped": False}
            project = self._project(cur, job_name, source=False)
            if index_rebuild.rebuilding(cur, job_name):  # waiting for it could deadlock its build
                raise ProjectConflictError(f"project {job_name!r}: its index is being rebuilt (alter_project); drop it"
                                           " when that is done")
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", [project.names.source.as_string(None)])
            source_exists = cur.fetchone()[0]
            home = project if project.is_join else catalog.append_home(cur, project)  # swapped out, renamed away
            embeddings = catalog.embedded_rows(cur, home) if home is not None else 0
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(project.names.queue))
            pending = cur.fetchone()[0]
            if source_exists and not catalog.take_exclusively(cur, project.names.source, *ALTER_LOCK_TRIES):
                raise ProjectConflictError(  # its DROP TRIGGER would wait with the table's statements behind it
                    f"project {job_name!r}: its source table {project.names.source.as_string(cur)} stayed in use (a"
                    f" long transaction reads or writes it) for {ALTER_LOCK_TRIES[0]} tries of {ALTER_LOCK_TRIES[1]};"
                    " nothing was dropped: drop it again when the table is free")
            catalog.drop_storage(cur, project, source_exists)
        self.log.info("Dropped vectorize project %r (%d embeddings)", job_name, embeddings)
        return {
            "job_name": job_name,
            "dropped": True,
            "table_method": project.table_method,
            "embeddings_removed": embeddings,
            "pending_removed": pending,
            "objects": project.storage_objects() + [f"vectorize.job[{job_name}]"],
        }

    def get_status(self, job_name: str) -> dict[str, Any]:
        """Exact counts: rows in the source, with a current or stale embedding, without one, queued (and
        for a chunked project, its ``chunks``), of the rows the role sees (row-level security)."""
        with self.transaction() as cur:
            project = self._project(cur, job_name, whole=False)
            alias = "e" if project.is_join else "r"
            # A join project's stored row always holds its vector (NOT NULL): its key says it is there, and the
            # scan reads the key index, which carries the md5 (``catalog.key_index``), not the vectors.
            stored = sql.Identifier("e", project.key.columns[0]) if project.is_join \
                else sql.Identifier("r", project.names.embeddings_column)
            present = freshness.tables(cur, project)  # a project created before may lack some (read around)
            cur.execute(
                sql.SQL(
                    "SELECT count(*), count({stored}),"
                    " count(*) FILTER (WHERE {stored} IS NOT NULL AND {md5} IS DISTINCT FROM {text_md5}),"
                    " count(*) FILTER (WHERE {text} = ''),"
                    " {queued}::bigint"
                    " FROM {rows}"
                ).format(
                    stored=stored,
                    md5=expressions.text_md5(project, "r"),
                    text_md5=sql.Identifier(alias, project.names.text_md5_column),
                    text=expressions.text(project, "r"),
                    queued=freshness.queued(project, present),
                    rows=expressions.stored_rows(project),
                )
            )
            total, embedded, stale, no_text, pending = cur.fetchone()
            chunks = (cur.execute(sql.SQL("SELECT count(*) FROM {} e WHERE EXISTS (SELECT FROM {} r WHERE {})").format(
                project.names.target, project.names.source, project.key.equals("r", "e"))).fetchone()[0]
                if project.is_chunked else None)
            failed = (cur.execute(sql.SQL("SELECT count(*) FROM {}").format(project.names.errors)).fetchone()[0]
                      if present.errors else 0)  # a project created before the errors table: none yet
        return {
            "job_name": job_name,
            "table_method": project.table_method,
            "total_rows": total,
            "embedded_rows": embedded,
            "missing_rows": total - embedded,
            "stale_rows": stale,
            "no_text_rows": no_text,
            "pending": pending,
            "failed_rows": failed,
            **({"chunks": chunks} if project.is_chunked else {}),
        }

    def project_tables(self, job_name: str) -> dict[str, tuple[str, str]]:
        """``source`` and ``storage`` (the embeddings table; the source itself for an append project) as
        (schema, table)."""
        with self.transaction() as cur:
            project = self._project(cur, job_name, source=False)
        return {"source": (project.schema, project.relation), "storage": project.names.target_name}

    def table_columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        """(column, type) of a table in column order; empty when it does not exist."""
        with self.transaction() as cur:
            cur.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
                " WHERE a.attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))"
                " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", [schema, table])
            return cur.fetchall()

    def get_freshness(self, job_name: str) -> dict[str, Any]:
        """``pending`` (queued rows), ``stale`` (rows with text whose embedding is missing or out of date)
        and ``lag_seconds`` (age of the oldest queued row), of the rows the role sees; see
        ``airflow_vectorize.freshness``."""
        with self.connect() as conn, conn.transaction():
            project = self._project(conn.cursor(), job_name, whole=False)
            return {"job_name": job_name, **freshness.measure(conn, project).as_dict()}

    # -- embeddings ----------------------------------------------------------------------------------
    def import_embeddings(
        self,
        job_name: str,
        src_table: str,
        src_primary_key: str | Sequence[str],
        src_embeddings_col: str,
        src_schema: str = "public",
        src_chunk_col: str | None = None,
        rebuild_index: bool | None = None,
    ) -> dict[str, Any]:
        """Import pre-computed embeddings from ``src_schema.src_table``, all or nothing.

        Everything is validated before the first write (missing table or column, column type, dimensions,
        NULL/NaN/infinite values, duplicate keys, keys not in the project's table). Existing embeddings
        are overwritten (join and append alike); queued realtime work is cleared for the imported keys.
        A chunked project takes one embedding per (key, ``src_chunk_col``) and replaces each imported row's
        chunks; the chunks' offsets and text come from cutting the row's text with the project's splitter
        (see :func:`airflow_vectorize.storage.import_chunks`). ``imported``/``inserted``/``updated`` count
        rows, ``chunks`` the chunks written.

        ``rebuild_index``: build the HNSW index anew, or keep it (each row inserted into the graph: slower
        writes, searches as fast as ever). None: rebuild when the import brings at least
        ``storage.REBUILD_INDEX_SHARE`` (10 %) of the project's rows, where that is the faster way. A join
        project with vectors is rebuilt in a new table, indexed, then swapped in (``airflow_vectorize.swap``):
        searches read the old table and its index until the commit (``table_swapped`` in the summary);
        otherwise the index is dropped before the write and built after its commit (searches wait for the
        write, then run without the index until it is built).
        """
        started = time.monotonic()
        chunks = None
        validation.check_rebuild_index(rebuild_index)
        with self.transaction() as cur:
            catalog.lock_project(cur, job_name)
            project = self._project(cur, job_name)
            if storage.upgrade_layout(cur, project).searched:  # a project created by an earlier version
                self._search_cache.pop(job_name, None)
            table, keys, emb, chunk = validation.check_import_source(
                cur, project, src_schema, src_table, src_primary_key, src_embeddings_col, src_chunk_col
            )
            source = validation.check_import_rows(cur, project, table, keys, emb, chunk)
            rebuild = storage.rebuild_worthwhile(cur, project, source.rows) if rebuild_index is None else rebuild_index
            swapped = rebuild and swap.import_into_new_table(cur, project, source, self._build_cap)
            if swapped:
                rebuilt, (inserted, written, pending_cleared, build) = True, swapped
            else:
                rebuilt = storage.drop_index_for_bulk_write(cur, project, source.rows, rebuild)
                if project.is_chunked:
                    splitter = self._splitter(project, self._model(project))
                    inserted, written, chunks = storage.import_chunks(cur, project, source, splitter)
                else:
                    inserted, written = storage.import_from_table(
                        cur, project, source.table, source.key, source.embeddings, exclusive=rebuilt
                    )
                    storage.write_documents(cur, project, source.table, source.key, incoming=source.rows,
                                            index_dropped=rebuilt)
                if inserted is None:  # append: the validation pass counted rows that already had one
                    inserted = written - source.already_embedded
                pending_cleared = storage.clear_pending(cur, project, source.table, source.key)
        if not swapped:
            build = self._build_index(project)  # after the commit: searches wait for the write only
        summary = {
            "job_name": job_name,
            "table_method": project.table_method,
            "source": f"{src_schema}.{src_table}",
            "imported": written,
            "inserted": inserted,
            "updated": written - inserted,
            "dimensions": project.dimensions,
            "pending_cleared": pending_cleared,
            "index_rebuilt": rebuilt,
            "table_swapped": bool(swapped),
            **({"index_build": build} if build else {}),
            **({"chunks": chunks} if project.is_chunked else {}),
            "seconds": round(time.monotonic() - started, 3),
        }
        self.log.info("Imported embeddings: %s", summary)
        return summary

    def generate_embeddings(
        self,
        job_name: str,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        partition_index: int = 0,
        partition_count: int = 1,
        batch_size: int = generation.DEFAULT_BATCH_SIZE,
        concurrency: int | None = None,
        pending_only: bool = False,
        max_attempts: int = generation.DEFAULT_MAX_ATTEMPTS,
        max_failed_share: float = generation.DEFAULT_MAX_FAILED_SHARE,
        rebuild_index: bool | None = None,
        failures_since: datetime | None = None,
    ) -> dict[str, Any]:
        """Embed the project's rows that need it (new, text changed, queued); see ``generation``.

        :param since: with ``until``, only rows whose ``update_col`` is in ``[since, until)``.
        :param partition_index: with ``partition_count``, only this hash slice of the keys, so mapped
            tasks split one backfill into disjoint, complete parts.
        :param batch_size: rows per encode / write / commit.
        :param concurrency: batches embedded at once (default: 1 for a local model, the connection's
            ``concurrency`` extra or 4 for a remote one).
        :param pending_only: only rows the project's realtime triggers queued (a realtime run: reads the
            queue, not the whole source).
        :param max_attempts: a row the model refused this many times with the same text is skipped (it
            stays in ``vectorize._errors_<job>``) until its text changes.
        :param max_failed_share: the run fails (``EmbeddingFailuresError``, after writing every row it
            could) when more than this share of the rows it tried could not be embedded for the first time
            with their text: rows that failed in earlier runs only warn.
        :param failures_since: rows that first failed at or after this instant (the database's clock) count as
            failing for the first time too; ``GenerateEmbeddingsOperator`` passes its DAG run's start, so that
            Airflow's retry of a failed task fails again instead of passing over the same rows.
        :param rebuild_index: drop the HNSW index first and build it at the end, or keep it (see
            ``import_embeddings``); None: when the rows due are at least 10 % of the project's. One partition
            of several never drops it.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if concurrency is not None:
            concurrency = positive_int(concurrency, "concurrency")
        max_attempts = check_failure_options(max_attempts, max_failed_share, failures_since)
        validation.check_rebuild_index(rebuild_index)
        scope = generation.Scope(since, until, partition_index, partition_count, bool(pending_only))
        with self.transaction() as cur:
            catalog.lock_project(cur, job_name)
            self._follow_renames(cur, job_name)
            project = self._project(cur, job_name, attaching=True)
            scope = scope.check(cur, project)
            if max_attempts != (project.max_attempts or generation.DEFAULT_MAX_ATTEMPTS):  # status judges as it
                recorded = None if max_attempts == generation.DEFAULT_MAX_ATTEMPTS else max_attempts
                catalog.write_params(cur, project, replace(project, max_attempts=recorded), ("max_attempts",))
                project = replace(project, max_attempts=recorded)
            if storage.upgrade_layout(cur, project).searched:  # a project created by an earlier version
                self._search_cache.pop(job_name, None)
            index_rebuild.discard_leftover(cur, project)
            if removal.attach(cur, project):  # another table was put in the source's place
                self._search_cache.pop(job_name, None)
                project = self._project(cur, job_name)
            reconciled = storage.reconcile_removed(cur, project)
            if reconciled.pop("partitions_changed", False) and project.schedule == "realtime":
                # a partition attached queued no keys: realtime runs look at every row until one has embedded them
                cur.execute(sql.SQL("INSERT INTO {} (rows) VALUES (NULL)").format(project.names.bulk))
            bulk = [row[0] for row in cur.execute(sql.SQL("SELECT id FROM {}").format(project.names.bulk))]
            if bulk and scope.pending_only:  # a bulk insert queued no keys: look at every row
                scope = replace(scope, pending_only=False)
        # Many of an append project's vectors restored without the index: the run embeds the rows due without it
        # too and builds it once at the end, instead of a build now and each of them inserted into the graph.
        # A partition of several builds it first: the other partitions' writes would wait for its build.
        restored_without_index = reconciled.pop("index_dropped", False)
        if restored_without_index:
            if scope.partition_count > 1:
                self._build_index(project)
            else:
                rebuild_index = True
        model = self._model(project)
        try:
            summary = generation.generate(
                self._whole_source_connect,
                project,
                scope,
                encode=model.embed,
                batch_size=batch_size,
                index_build_cap=self._build_cap,
                concurrency=concurrency or model.concurrency,
                splitter=self._splitter(project, model),
                input_errors=model.input_errors,
                max_attempts=max_attempts,
                max_failed_share=max_failed_share,
                rebuild_index=rebuild_index,
                failures_since=failures_since,
            )
        except psycopg.errors.InsufficientPrivilege as error:  # row security forced on the source meanwhile
            raise self._permission_error(error) from error
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
            with self.connect() as conn:  # the project dropped after a batch checked it was there
                generation.check_still_there(conn.cursor(), project)
            raise
        except psycopg.OperationalError as error:
            if not _session_ended(error):
                raise
            raise DatabaseConnectionError(
                f"project {job_name!r}: the database session ended during generation ({error}). The batches"
                " committed before are kept; run again to embed the rest."
            ) from error
        if bulk and scope.whole and not summary["held_by_other_runs"]:  # every row due was embedded: the bulk
            # inserts seen are done (not while another run holds some of them: it may never commit)
            with self.transaction() as cur:
                cur.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(project.names.bulk), [bulk])
        return {**summary, **reconciled}

    def _build_index(self, project: Project) -> dict[str, Any] | None:
        """The project's HNSW index, built in a transaction of its own unless it exists (``storage.build_index``)."""
        with self.transaction() as cur:
            return storage.build_index(cur, project, self._build_cap)

    @staticmethod
    def _splitter(project: Project, model: models.EmbeddingModel) -> chunking.TextSplitter | None:
        """A chunked project's splitter, counting tokens as its model does."""
        if not project.is_chunked:
            return None
        return chunking.TextSplitter(model.tokenizer(), project.chunk_size, project.chunk_overlap)

    def encode(self, job_name: str, texts: Sequence[str], side: encoding.Side = "query") -> list[list[float]]:
        """Embed ``texts`` with the project's model (pg_vectorize's ``vectorize.encode``), as queries (its
        use: a query vector to search with) or, with ``side="document"``, as the project's documents."""
        if side not in encoding.SIDES:
            raise InvalidInputError(f"side must be one of {', '.join(map(repr, encoding.SIDES))}, got {side!r}")
        if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
            raise InvalidInputError(f"texts must be a list of texts, got {texts!r:.200}")
        for position, text in enumerate(texts):
            validation.check_text(text, f"texts[{position}]")
        with self.transaction() as cur:
            project = self._project(cur, job_name, source=False)
        return self._model(project, side).embed(list(texts)).tolist()

    @staticmethod
    def _model(project: Project, side: encoding.Side = "document") -> models.EmbeddingModel:
        """The project's model encoding one side (documents: generation; queries: search); a local one must
        still produce the project's vector size (a remote one's answers are checked against it)."""
        model = models.embedding_model(project.transformer, project.model_conn_id, project.dimensions,
                                       shorten=project.requested_dimensions is not None)
        if model.dimensions != project.dimensions:
            raise DimensionMismatchError(
                f"transformer {project.transformer!r} now produces {model.dimensions} dimensions,"
                f" but project {project.name!r} stores {project.dimensions}"
            )
        return encoding.SideModel(model, project.encoding, side)

    def _query_model(self, project: Project) -> models.EmbeddingModel:
        """The model that embeds search queries, built once per hook and project (its HTTP client is the
        process's); batched with every caller of the same model and query encoding."""
        key = (project.job_id, project.transformer, project.model_conn_id, project.dimensions, project.encoding)
        if key not in self._query_models:
            model = self._model(project, "query")
            if self.batch_queries:
                model = batching.shared((project.transformer, project.model_conn_id, project.dimensions,
                                         project.requested_dimensions, model.prompt, model.input_type), model)
            self._query_models[key] = model
        return self._query_models[key]

    def _embed_query(self, project: Project) -> Callable[[str], Any]:
        return lambda text: self._query_model(project).embed([text])[0]

    # -- search ---------------------------------------------------------------------------------------
    def _search_connection(self) -> psycopg.Connection:
        """This hook's connection for searches, opened once (pgvector registered, iterative scans on);
        ``_search_session``: what goes with it (see :class:`searching.SearchSession`)."""
        if self._search_conn is None or self._search_conn.closed:
            self._search_conn = self.connect()
            self._search_session = searching.prepare_connection(self._search_conn)
            self._search_cache.clear()
        return self._search_conn

    @contextmanager
    def _session(self) -> Iterator[searching.SearchSession]:
        """A search session for one statement: borrowed from ``search_sessions``, or the hook's own."""
        try:
            if self.search_sessions is not None:
                with self.search_sessions.borrow() as session:
                    yield session
                return
            if self._search_conn is None or self._search_conn.closed:
                self._search_connection()
            yield self._search_session
        except psycopg.errors.InsufficientPrivilege as error:
            raise self._permission_error(error) from error

    def _iterative_scans(self) -> bool:
        """Whether the search sessions scan HNSW indexes iteratively (pgvector >= 0.8)."""
        if self.search_sessions is None:
            self._search_connection()
            return searching.ITERATIVE_SCAN in self._search_session.baseline
        if self.search_sessions.baseline is None:
            with self.search_sessions.borrow():
                pass
        return searching.ITERATIVE_SCAN in self.search_sessions.baseline

    def _search_target(self, job_name: str, refresh: bool = False) -> searching.SearchTarget:
        """The project as searches see it, looked up once per hook and again when ``refresh`` or
        ``SearchTarget.stale``; an unchanged entry is kept (with its built searches)."""
        cached = self._search_cache.get(job_name)
        if refresh or cached is None or cached.stale:
            with self._session() as session, session.conn.transaction(), session.conn.cursor() as cur:
                fresh = searching.search_target(cur, self._project(cur, job_name, searching=True))
            if fresh == cached:
                cached.looked_up = fresh.looked_up
            else:
                self._search_cache[job_name] = cached = fresh
        return cached

    def _run_search(
        self, job_name: str, build: Callable[[searching.SearchTarget], searching.SearchQuery]
    ) -> list[dict[str, Any]]:
        """Build and run a search from the cached entry. Every statement carries a guard that returns no
        rows once the entry is stale (project dropped or re-created; a changed layout fails instead): an
        empty result is checked against a fresh lookup, and run again if the project changed. A source
        column whose type changed under a prepared statement gets a new connection and a rerun; one renamed
        (a key followed by ``source_renames``) a rerun from a fresh lookup, and so does a search that names a
        column the entry does not know (added or renamed since it was looked up).

        The usual call (open connection, cached entry, rows found) costs one statement: the entry's
        built searches are reused (``SearchTarget.queries``) and settings such as ``hnsw.ef_search`` are
        given to the connection's session only when they change. The search is built (its query embedded)
        before a session is taken."""
        if self.search_sessions is None and (self._search_conn is None or self._search_conn.closed):
            self._search_connection()  # a new connection forgets the looked-up projects
        target = self._search_target(job_name)
        try:
            search = build(target)
        except InvalidInputError:  # a column unknown when the entry was looked up may be there now
            fresh = self._search_target(job_name, refresh=True)
            if fresh is target:
                raise
            target, search = fresh, build(fresh)
        rerun = False
        with self._session() as session:
            try:
                rows = searching.run(session.conn, search, session)
                target.follow(search)
            except psycopg.errors.UndefinedTable:  # storage changed since
                rows = []
            except psycopg.errors.UndefinedColumn:  # a column renamed since: look again, run again
                rows, rerun = [], True
            except psycopg.errors.FeatureNotSupported:  # "cached plan must not change result type"
                session.conn.close()  # its prepared statements go with it
                rows, rerun = [], True
            except psycopg.OperationalError as error:  # lost a deadlock to drop_project, or the session ended
                if not (isinstance(error, psycopg.errors.DeadlockDetected) or _session_ended(error)):
                    raise
                rows, rerun = [], True  # look again, on a new connection if the server closed this one
        if not rows:
            fresh = self._search_target(job_name, refresh=True)
            if rerun or fresh.project.job_id != target.project.job_id:
                search = build(fresh)
                dropped = None
                with self._session() as session:
                    try:
                        rows = searching.run(session.conn, search, session)
                        fresh.follow(search)
                    except psycopg.errors.UndefinedTable as error:  # dropped while this search waited for it
                        dropped = error
                    except psycopg.errors.UndefinedColumn:  # an append project's vectors, gone with its table
                        rows = []  # (a swap that the next run attaches)
                if dropped is not None:
                    self._search_target(job_name, refresh=True)  # ProjectNotFoundError once it is gone
                    raise dropped
        return rows

    def search(
        self,
        job_name: str,
        query: str | Sequence[float],
        return_columns: Sequence[str] | None = None,
        num_results: int = 10,
        filters: dict[str, Any] | None = None,
        ef_search: int | None = None,
    ) -> list[dict[str, Any]]:
        """Nearest rows to ``query`` (a text, embedded with the project's model, or a vector), best first.

        Each row has ``return_columns`` (default: every source column, never embeddings) and
        ``similarity_score`` (see :mod:`airflow_vectorize.search`). ``filters``: ``{column: value}`` or
        ``{column: {op: value}}`` with op eq, ne, gt, gte, lt, lte, in; all values are bound parameters.
        The query orders by the distance operator, so the HNSW index serves it; ``ef_search`` sets
        ``hnsw.ef_search`` for this query. A chunked project returns each row once, with its nearest
        chunk (``chunk``); while its chunk table is small, every chunk is compared (exact at any ef_search),
        and past that its HNSW index is read at any ef_search (a search with filters: as PostgreSQL plans it),
        every chunk compared when the nearest chunks it reads leave the result short (``_read_more_chunks``).
        """
        vector: list[Any] = []  # a text query is embedded once, also when a chunked search asks again
        last: list[searching.SearchQuery] = []

        def build(target: searching.SearchTarget, chunks_per_row: int = searching.CHUNKS_PER_ROW,
                  single_pass: bool = True) -> searching.SearchQuery:
            if isinstance(query, str) and not vector:
                vector.append(searching.query_vector(target.project, query, self._embed_query(target.project)))
            last[:] = [searching.vector_search_query(
                target, vector[0] if vector else query, return_columns, num_results, filters, ef_search,
                chunks_per_row=chunks_per_row,
                single_pass=single_pass and self._iterative_scans())]
            return last[0]

        rows = self._run_search(job_name, build)
        target = self._search_cache.get(job_name)
        chunked = target is not None and target.project.is_chunked
        if last and last[0].single_pass and len(rows) < num_results and not chunked:
            rows = self._run_search(job_name, lambda t: build(t, single_pass=False))  # the first pass was not enough
        if chunked:  # the nearest chunks may cover too few rows
            rows = self._read_more_chunks(job_name, rows, num_results, last, build,
                                          lambda found: len(found) < num_results)
        return rows

    def _read_more_chunks(
        self, job_name: str, rows: list[dict[str, Any]], wanted: int, last: list[searching.SearchQuery],
        build: Callable[..., searching.SearchQuery], short: Callable[[list[dict[str, Any]]], bool],
    ) -> list[dict[str, Any]]:
        """A chunked search on the index path (``build(target, chunks_per_row)``, ``last`` its latest
        statement) whose nearest chunks covered too few rows (``short(rows)``): it asks again for 4× as many
        chunks per row while its index scan fills its LIMIT (``SearchQuery.more``; a first pass without
        iterative scans may end before it: asked again too), up to MAX_CHUNKS_PER_ROW and MAX_INDEX_CHUNKS
        chunks (``wanted`` rows' worth). Otherwise it compares every chunk (``search.exact_path``): an HNSW scan
        that ended before its LIMIT may have left chunks unread (``hnsw.max_scan_tuples``, its memory bound,
        pgvector < 0.8's ef_search), one row may own thousands of the nearest chunks. So a search never
        returns fewer rows than exist and match; one whose first chunks cover its rows runs once."""
        per_row = searching.CHUNKS_PER_ROW
        while last and not last[0].exact and short(rows):
            wider = per_row * 4
            if ((last[0].more or last[0].single_pass) and self._iterative_scans()
                    and wider <= searching.MAX_CHUNKS_PER_ROW and wanted * wider <= searching.MAX_INDEX_CHUNKS):
                per_row = wider
                rows = self._run_search(job_name, lambda t, n=per_row: build(t, n))
            else:
                rows = self._run_search(job_name, lambda t: build(searching.exact_path(t)))
        return rows

    def hybrid_search(
        self,
        job_name: str,
        query: str,
        return_columns: Sequence[str] | None = None,
        num_results: int = 10,
        filters: dict[str, Any] | None = None,
        semantic_weight: float = 1.0,
        full_text_weight: float = 1.0,
        candidates: int | None = None,
        ef_search: int | None = None,
        rrf_k: float = searching.RRF_K,
    ) -> list[dict[str, Any]]:
        """Vector and full-text search fused by reciprocal rank (``rrf_k``, default 60), best first.

        The top ``candidates`` rows (default max(num_results, 40); fewer than ``num_results`` give at most
        2 × ``candidates`` rows, as pg_vectorize's ``window_size``) by vector distance and by ``ts_rank``
        (``websearch_to_tsquery('english', query)`` over the project's columns, served by its
        ``<job>_fts_idx`` GIN index) are fused: ``rrf_score = semantic_weight / (rrf_k + semantic_rank) +
        full_text_weight / (rrf_k + full_text_rank)``. Each row carries ``rrf_score``, ``semantic_rank`` and
        ``full_text_rank`` (None when absent from that list) and ``similarity_score``. A chunked project's
        rows are ranked by their best chunk in both lists: full-text matches are chunks matching the query,
        ranked from their stored documents (``chunk_fts``, indexed by ``<job>_fts_idx`` in the chunk table).
        """
        last: list[searching.SearchQuery] = []
        vector: list[Any] = []  # embedded once, also when a chunked search asks again

        def build(target: searching.SearchTarget, chunks_per_row: int = searching.CHUNKS_PER_ROW
                  ) -> searching.SearchQuery:
            embed = self._embed_query(target.project)

            def embed_once(text: str) -> Any:
                if not vector:
                    vector.append(embed(text))
                return vector[0]

            last[:] = [searching.hybrid_search_query(
                target, query, return_columns, num_results, filters, semantic_weight, full_text_weight,
                candidates, ef_search, embed=embed_once, rrf_k=rrf_k, chunks_per_row=chunks_per_row)]
            return last[0]

        rows = self._run_search(job_name, build)
        target = self._search_cache.get(job_name)
        if target is not None and target.project.is_chunked:
            # Its vector candidates: more of them while the index gives more chunks (their ranks, as the exact
            # candidates'), every chunk when the result would otherwise be short.
            wanted = max(num_results, searching.DEFAULT_CANDIDATES) if candidates is None else candidates
            rows = self._read_more_chunks(
                job_name, rows, wanted, last, build,
                lambda found: last[0].more or (len(found) < num_results and (last[0].short or not found)))
        return rows

    # -- retrieval quality ------------------------------------------------------------------------------
    def evaluate_retrieval(
        self,
        job_name: str,
        queries: Sequence[Mapping[str, Any]] | str,
        k: int | Sequence[int] = (1, 5, 10),
        mode: str = "vector",
        filters: dict[str, Any] | None = None,
        semantic_weight: float = 1.0,
        full_text_weight: float = 1.0,
        ef_search: int | None = None,
        label: str | None = None,
        store: bool = True,
        min_metrics: Mapping[str, float] | None = None,
        max_drop: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """How well the project finds what ``queries`` say it should (:mod:`airflow_vectorize.evaluation`).

        ``queries``: ``[{"query": text, "relevant": [key, ...]}]`` (or ``{key: grade}`` for graded
        relevance; a composite key is a list of its values), or the name of a table or view holding them
        (``evaluation.load_queries``: ``query``, the key column(s), optional ``grade``). Each runs through ``search`` (``mode="vector"``)
        or ``hybrid_search`` (``"hybrid"``, with the weights) with ``filters`` and ``ef_search``.

        :return: ``metrics`` (recall@k and precision@k for each k, ``mrr``, ``ndcg@10``, ``hit_rate``,
            ``no_relevant``, ``latency_p50_ms``, ``latency_p95_ms``), ``worst`` (query, expected, got),
            ``config``, ``gate`` and, when ``store``, the ``evaluation_id`` of its row in ``vectorize.evaluations``.

        A gate: ``min_metrics`` ({metric: bound}; a maximum for ``no_relevant`` and the latencies) and
        ``max_drop`` ({metric: how much worse than the last kept run of the same ``label`` that passed its
        gate}; a run without a label is compared with the last one without a label). Failing it raises RetrievalRegressionError naming each failure; the run is kept, marked failed,
        so the next run is compared with the last good one.
        """
        ks = evaluation.check_ks(k)
        if mode not in evaluation.MODES:
            raise InvalidInputError(f"mode must be one of {', '.join(map(repr, evaluation.MODES))}, got {mode!r}")
        minimum = evaluation.check_thresholds("min_metrics", min_metrics, evaluation.metric_names(ks))
        drops = evaluation.check_thresholds("max_drop", max_drop, evaluation.metric_names(ks))
        with self.transaction() as cur:
            project = self._project(cur, job_name, whole=False)
            if isinstance(queries, str):
                queries = evaluation.load_queries(cur, project, queries)
            labelled = evaluation.parse_queries(queries, project.key.columns)
            labelled = evaluation.resolve_keys(cur, project, labelled)
            rows = cur.execute(sql.SQL("SELECT count(*) FROM {}").format(project.names.source)).fetchone()[0]
            previous = evaluation.last(cur, job_name, label) if drops else None
        columns = list(project.key.columns)

        def search(query: str, limit: int) -> list[tuple]:
            if mode == "hybrid":
                found = self.hybrid_search(job_name, query, columns, limit, filters, semantic_weight,
                                           full_text_weight, ef_search=ef_search)
            else:
                found = self.search(job_name, query, columns, limit, filters, ef_search=ef_search)
            return [tuple(row[c] for c in columns) for row in found]

        result = evaluation.evaluate(labelled, ks, search, time.perf_counter)
        config = {"transformer": project.transformer, "chunk_size": project.chunk_size,
                  "chunk_overlap": project.chunk_overlap, "mode": mode, "k": list(ks), "filters": filters,
                  "semantic_weight": semantic_weight if mode == "hybrid" else None,
                  "full_text_weight": full_text_weight if mode == "hybrid" else None,
                  "ef_search": project.ef_search if ef_search is None else ef_search, "rows": rows,
                  "encoding": project.encoding.params(),
                  "queries": evaluation.fingerprint(labelled)}
        failures = evaluation.gate(result["metrics"], previous and previous["metrics"], minimum, drops)
        passed = not failures if minimum or drops else None
        summary = {"job_name": job_name, "label": label, "config": config, "queries": result["queries"],
                   "metrics": result["metrics"], "worst": result["worst"],
                   "gate": {"passed": passed, "failures": failures, "previous": previous}}
        if store:
            with self.transaction() as cur:
                summary["evaluation_id"] = evaluation.store(cur, job_name, label, config, result, passed)
        self.log.info("Retrieval of %r on %d queries: %s", job_name, result["queries"], result["metrics"])
        if failures:
            kept = f" (kept as evaluation {summary['evaluation_id']})" if store else ""
            raise RetrievalRegressionError(f"retrieval of project {job_name!r} failed its gate: "
                                           + "; ".join(failures) + kept, summary)
        return summary

    def compare(
        self,
        job_a: str | None = None,
        job_b: str | None = None,
        queries: Sequence[Mapping[str, Any]] | None = None,
        evaluation_ids: Sequence[int] | None = None,
        chart_path: str | None = None,
        seed: int = 0,
        **options: Any,
    ) -> dict[str, Any]:
        """Two projects on the same ``queries`` (each evaluated and kept with ``options`` of
        ``evaluate_retrieval``), or two kept runs (``evaluation_ids=(a, b)``, of the same query set), side by
        side: each one's metrics, B − A for each metric, and B against A query by query on reciprocal rank
        (``paired``: wins, losses, ties, the sign test's p, a 95 % bootstrap interval of the mean difference)
        — "B is better" means something when the interval excludes 0. ``chart_path``: a PNG of recall@k."""
        if evaluation_ids is not None:
            if job_a is not None or job_b is not None or queries is not None or options:
                raise InvalidInputError("compare either two projects on queries, or two evaluation_ids; not both")
            if isinstance(evaluation_ids, (str, bytes)) or len(evaluation_ids) != 2:
                raise InvalidInputError(f"evaluation_ids must be two ids, got {evaluation_ids!r}")
            with self.transaction() as cur:
                runs = [evaluation.load(cur, i) for i in evaluation_ids]
            if runs[0]["config"].get("queries") != runs[1]["config"].get("queries") or \
                    len(runs[0]["per_query"]) != len(runs[1]["per_query"]):
                raise InvalidInputError(f"evaluations {evaluation_ids[0]} and {evaluation_ids[1]} were not run on the"
                                        " same queries: compare projects on one query set instead")
        else:
            if not job_a or not job_b or queries is None:
                raise InvalidInputError("compare needs job_a, job_b and queries (or evaluation_ids)")
            if options.get("store") is False:
                raise InvalidInputError("compare keeps both runs (it reads each query's result back): leave store")
            options.setdefault("label", f"compare {job_a} vs {job_b}")
            with self.transaction() as cur:  # both exist before either is evaluated
                for job in (job_a, job_b):
                    self._project(cur, job, source=False)
            first = self.evaluate_retrieval(job_a, queries, **options)["evaluation_id"]
            try:
                second = self.evaluate_retrieval(job_b, queries, **options)["evaluation_id"]
            except BaseException:  # a refused compare keeps nothing
                with self.transaction() as cur:
                    cur.execute("DELETE FROM vectorize.evaluations WHERE id = %s", [first])
                raise
            with self.transaction() as cur:
                runs = [evaluation.load(cur, i) for i in (first, second)]
        a, b = runs
        names = [f"{run['job_name']} #{run['evaluation_id']}" for run in runs]
        result = {
            "a": {"job_name": a["job_name"], "evaluation_id": a["evaluation_id"], "metrics": a["metrics"]},
            "b": {"job_name": b["job_name"], "evaluation_id": b["evaluation_id"], "metrics": b["metrics"]},
            "difference": {m: round(b["metrics"][m] - a["metrics"][m], 6) for m in a["metrics"] if m in b["metrics"]},
            "paired": {"metric": "reciprocal_rank", "queries": len(a["per_query"]), **evaluation.paired(
                [q["reciprocal_rank"] for q in a["per_query"]], [q["reciprocal_rank"] for q in b["per_query"]], seed)},
        }
        if chart_path:
            result["chart"] = evaluation.chart(chart_path, dict(zip(names, (a["metrics"], b["metrics"]))),
                                               f"{names[0]} vs {names[1]}")
        return result

    def tune_search(
        self,
        job_name: str,
        target_recall: float = 0.95,
        queries: Sequence[Any] | None = None,
        k: int = 10,
        filters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        sample: int = 100,
        seed: int = 0,
        store: bool = True,
    ) -> dict[str, Any]:
        """The smallest ``hnsw.ef_search`` at which the project's search finds ``target_recall`` of the exact
        top-``k`` rows on ``queries`` (texts, vectors or labelled queries; None: ``sample`` of
        ``sample_queries``), with no filter and with each of ``filters`` (the project's common ones), kept in
        its catalog entry (``store``): ``search``, ``hybrid_search``, ``rag`` and the HTTP API then use it when
        the caller gives none (a long-lived hook within ``search.RECHECK_SECONDS``). See
        :mod:`airflow_vectorize.tuning`. Tune again after the table grows a lot.

        :return: ``ef_search``, ``reached`` (False: no value up to 1000 reached the target; the largest is kept),
            ``previous``, ``curves`` (per filter: recall and p50 time at each value measured), ``queries``,
            ``rows``, ``stored``. A chunked project whose searches compare every chunk (a small chunk table)
            has nothing to tune: ``ef_search`` None, ``reason``.
        """
        target = tuning.check_target(target_recall)
        searching.check_count("k", k)
        cases = tuning.check_filters(filters)
        with self.transaction() as cur:
            project = self._project(cur, job_name, whole=False)
            rows = cur.execute(sql.SQL("SELECT count(*) FROM {}").format(project.names.source)).fetchone()[0]
        summary: dict[str, Any] = {"job_name": job_name, "target_recall": target, "k": k, "rows": rows,
                                   "previous": project.ef_search, "stored": False}
        if self._search_target(job_name, refresh=True).exact:
            return {**summary, "ef_search": None, "reason": (
                f"chunked project {job_name!r} compares every chunk while its chunk table has at most"
                f" {searching.EXACT_SCAN_MAX_PAGES} pages: its searches are exact at any ef_search; tune it once"
                " the table is larger")}
        texts = tuning.query_texts(queries if queries is not None else self.sample_queries(job_name, sample, seed))
        embed = self._embed_query(project)
        vectors = [searching.query_vector(project, text, embed) for text in texts]
        columns = list(project.key.columns)

        def keys(found: list[dict[str, Any]]) -> list[tuple]:
            return [tuple(row[c] for c in columns) for row in found]

        curves = []
        for case in cases:
            exact = [keys(self._run_search(
                job_name, lambda t, v=vector, f=case: searching.exact_query(t, v, columns, k, f))) for vector in vectors]
            measured = tuning.curve(lambda v, ef, f=case: keys(self.search(job_name, v, columns, k, f, ef_search=ef)),
                                    vectors, exact, target)
            curves.append({"filters": case, **measured})
        chosen, reached = tuning.choose(curves)
        summary.update(ef_search=chosen, reached=reached, queries=len(vectors), curves=curves)
        if not reached:
            self.log.warning("No ef_search up to %d reaches recall %.3f of the exact top-%d on %r; keeping %d",
                             tuning.GRID[-1], target, k, job_name, chosen)
        if store:
            self.set_ef_search(job_name, chosen, project)
            summary["stored"] = True
        self.log.info("ef_search of %r: %d (recall target %.3f at top-%d, %d queries, previously %s)",
                      job_name, chosen, target, k, len(vectors), project.ef_search)
        return summary

    def set_ef_search(self, job_name: str, ef_search: int | None, project: Project | None = None) -> None:
        """Keep ``ef_search`` (1-1000; None: pgvector's default again) for the project's searches that give
        none. ``project``: the entry it was chosen for (a project re-created since is not changed)."""
        if ef_search is not None:
            searching.scan_settings(ef_search)  # the same bounds as a search's
        with self.transaction() as cur:
            entry = self._project(cur, job_name)
            if not catalog.set_ef_search(cur, project or entry, ef_search):
                raise VectorizeError(f"project {job_name!r} was dropped or re-created while its ef_search was"
                                     " tuned: nothing stored; tune it again")
        self._search_cache.pop(job_name, None)

    def sample_queries(self, job_name: str, n: int = 100, seed: int = 0, position: str = "any") -> list[dict[str, Any]]:
        """``n`` labelled queries made from the project's own rows, reproducible for a seed: a sentence of 12+
        words of a row's text (``position``: any, the ``first`` or the ``last`` one) as the query, that row as
        the relevant one. A proxy for a baseline on day one, not a substitute for real labelled queries."""
        with self.transaction() as cur:
            project = self._project(cur, job_name, whole=False)
            return evaluation.sample(cur, project, n, seed, position)

    # -- RAG ------------------------------------------------------------------------------------------
    def rag(
        self,
        job_name: str,
        query: str,
        chat_model: str,
        chat_conn_id: str | None = None,
        task: str = "question_answer",
        num_context: int = 2,
        force_trim: bool = False,
        filters: dict[str, Any] | None = None,
        hybrid: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> dict[str, Any]:
        """Answer ``query`` from the project's rows (pg_vectorize's ``vectorize.rag``).

        The ``num_context`` best rows of ``search`` (or ``hybrid_search``) with ``filters`` are the context,
        best first, each as the text the project embeds; the ``task`` template of ``vectorize.prompts`` makes
        the prompt; ``chat_model`` (``openai/<model>``, ``ollama/<model>``, ``portkey/<provider>/<model>``) at
        ``chat_conn_id`` answers.
        See :func:`airflow_vectorize.rag.fit_context` for ``force_trim`` (without ``max_tokens`` it keeps
        min(1024, a quarter of the context window) free for the answer).

        :return: ``chat_response``, ``finish_reason`` (``stop``: complete; ``length``: cut at ``max_tokens`` or
            the context window; None when the server does not say), ``context`` ([{record_id, content,
            token_ct, similarity_score}]), ``model``, ``usage``, ``query``, ``task``, ``context_dropped``.
        :raises ModelResponseError: the server's content filter stopped the answer, or it was cut before its
            first word.
        """
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError(f"query must be a non-empty text, got {query!r}")
        searching.check_count("num_context", num_context)
        _check_generation_options(max_tokens, temperature)
        try:  # the model's name is checked now; a connection that is not set up is reported after the input
            model: models.ChatModel | ModelConnectionError = self._chat_model(chat_model, chat_conn_id)
        except ModelConnectionError as error:
            model = error
        with self.transaction() as cur:  # its own transaction: kept when the task is unknown
            rag.ensure_prompts(cur)
        with self.transaction() as cur:
            project = self._project(cur, job_name, whole=False)
            prompt = rag.load_prompt(cur, task)
        columns = list(dict.fromkeys([*project.key.columns, *project.columns]))
        retrieve = self.hybrid_search if hybrid else self.search
        rows = retrieve(job_name, query, return_columns=columns, num_results=num_context, filters=filters)
        if isinstance(model, ModelConnectionError):  # a bad project, task or filter was the caller's error (400,
            raise model  # 404) even where the chat model is not set up (503)
        documents = []
        for row in rows:  # a chunked project's context is each row's best chunk
            content = row["chunk"] if project.is_chunked else ", ".join(
                str(row[c]) for c in project.columns if row[c] not in (None, ""))
            record_id = project.key.from_mapping(row)  # a composite key as a list (JSON, XCom)
            documents.append(rag.ContextDocument(list(record_id) if project.key.composite else record_id, content,
                                                 model.tokens.count(content),
                                                 float(row["similarity_score"])))
        messages, kept = rag.fit_context(model, prompt, query, documents, max_tokens, force_trim)
        answer = model.chat(messages, max_tokens=max_tokens, temperature=temperature)
        return {
            "query": query,
            "task": task,
            "chat_response": answer.text,
            "finish_reason": answer.finish_reason,
            "context": [document.as_dict() for document in kept],
            "context_dropped": len(documents) - len(kept),
            "model": answer.model,
            "usage": answer.usage,
        }

    def generate(
        self,
        prompt: str,
        chat_model: str,
        chat_conn_id: str | None = None,
        system_prompt: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> dict[str, Any]:
        """A plain completion of ``prompt`` (pg_vectorize's ``vectorize.generate``): ``chat_response``,
        ``finish_reason`` (as :meth:`rag`'s), ``model``, ``usage``. A prompt longer than the model's context
        window is refused before sending."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInputError(f"prompt must be a non-empty text, got {prompt!r}")
        _check_generation_options(max_tokens, temperature)
        model = self._chat_model(chat_model, chat_conn_id)
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": prompt}]
        needed = model.prompt_tokens(messages)
        if needed + (max_tokens or 0) > model.context_window:
            raise InvalidInputError(
                f"the prompt takes {needed} tokens + max_tokens {max_tokens or 0} > the context window of"
                f" {model.describe()}, {model.context_window} tokens; nothing was sent"
            )
        answer = model.chat(messages, max_tokens=max_tokens, temperature=temperature)
        return {"chat_response": answer.text, "finish_reason": answer.finish_reason, "model": answer.model,
                "usage": answer.usage}

    def _chat_model(self, name: str, conn_id: str | None) -> models.ChatModel:
        """A client of the chat model, built once per hook (the HTTP client is the process's)."""
        key = (name, conn_id)
        if key not in self._chat_models:
            self._chat_models[key] = models.chat_model(name, conn_id)
        return self._chat_models[key]


def _session_ended(error: psycopg.OperationalError) -> bool:
    """Whether the server or the network ended the session (terminated, restarted, unreachable), rather
    than the statement failing."""
    return error.sqlstate is None or error.sqlstate.startswith(("08", "57P"))


def _check_generation_options(max_tokens: int | None, temperature: float | None) -> None:
    if max_tokens is not None:
        searching.check_count("max_tokens", max_tokens)
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not 0 <= temperature <= 2):
        raise InvalidInputError(f"temperature must be a number from 0 to 2, got {temperature!r}")


def check_failure_options(max_attempts: int, max_failed_share: float, failures_since: datetime | None) -> int:
    """Refuse a generation run's failure options that cannot be used (``InvalidInputError``); returns
    ``max_attempts``."""
    max_attempts = positive_int(max_attempts, "max_attempts")
    if isinstance(max_failed_share, bool) or not isinstance(max_failed_share, (int, float)) \
            or not 0 <= max_failed_share <= 1:
        raise InvalidInputError(f"max_failed_share must be a number in [0, 1], got {max_failed_share!r}")
    if failures_since is not None and (not isinstance(failures_since, datetime) or failures_since.tzinfo is None):
        raise InvalidInputError(f"failures_since must be a datetime with a time zone, got {failures_since!r}")
    return max_attempts
