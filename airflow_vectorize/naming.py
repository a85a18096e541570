"""The names of everything a project stores, derived from its job name as pg_vectorize derives them.

- ``join``:   ``vectorize._embeddings_<job>`` (key, ``embeddings``, ``updated_at``) and view
  ``vectorize.<job>_view``; chunked projects (ours): ``vectorize._chunks_<job>`` instead;
- ``append``: columns ``<job>_embeddings``, ``<job>_updated_at`` (and our ``<job>_text_md5``) on the source;
- index ``<job>_hnsw_cos_idx`` / ``_l2_idx`` / ``_ip_idx``; triggers ``vectorize_insert_trigger_<job>`` and
  ``vectorize_update_trigger_<job>`` calling ``vectorize.handle_update_<job>()``;
- ours: instead of pg_vectorize's foreign keys to the source, ``vectorize_delete_trigger_<job>``,
  ``vectorize_trunc_trigger_<job>`` and ``vectorize_rekey_trigger_<job>`` calling
  ``vectorize.handle_removal_<job>()``, which record what was removed in ``vectorize._removed_<job>``
  (``airflow_vectorize.removal``); the queue ``vectorize._pending_<job>`` (and ``vectorize._bulk_<job>`` for
  inserts too big to queue key by key), the errors table ``vectorize._errors_<job>``, the stored full-text
  documents ``vectorize._documents_<job>`` with their index ``<job>_fts_idx`` (a chunked project's index is on
  its chunk table's ``chunk_fts`` column), the view's function ``vectorize.<job>_view_rows()`` and the NOTIFY
  channel ``vectorize_<job>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

SCHEMA = "vectorize"
# A chunked project's chunk table: each chunk's full-text document, a stored generated column.
CHUNK_FTS_COLUMN = "chunk_fts"
# An unchunked project's documents table (``StorageNames.documents``): each row's full-text document.
DOCUMENT_COLUMN = "document"


def quoted(name: tuple[str, ...]) -> str:
    """``"schema"."name"``: a qualified name as text for ``to_regclass`` / ``to_regprocedure``, which fold an
    unquoted name to lower case (a job named ``Shop`` would not be found)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name)


def transaction_setting(what: str, job_id: int | None) -> sql.Literal:
    """The name of a transaction-local setting of a project's triggers (``what``: changed, removed): by job id,
    not job name, as PostgreSQL folds setting names to lower case (``Notes`` and ``notes`` would share one)."""
    if job_id is None:
        raise ValueError("a project's settings are named after its job_id: insert it into the catalog first")
    return sql.Literal(f"vectorize.{what}_{job_id}")


@dataclass(frozen=True)
class StorageNames:
    """Names (``*_name``: (schema, name) tuples or plain strings) and quoted identifiers of one project's
    objects."""

    job: str
    schema: str  # the source table's
    relation: str
    is_join: bool
    is_chunked: bool
    index_suffix: str

    @property
    def source(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.relation)

    @property
    def target_name(self) -> tuple[str, str]:
        """(schema, table) of the table that holds the embeddings."""
        if self.is_chunked:
            return SCHEMA, f"_chunks_{self.job}"
        return (SCHEMA, f"_embeddings_{self.job}") if self.is_join else (self.schema, self.relation)

    @property
    def target(self) -> sql.Identifier:
        return sql.Identifier(*self.target_name)

    @property
    def embeddings_column(self) -> str:
        return "embeddings" if self.is_join else f"{self.job}_embeddings"

    @property
    def updated_at_column(self) -> str:
        return "updated_at" if self.is_join else f"{self.job}_updated_at"

    @property
    def text_md5_column(self) -> str:
        return "text_md5" if self.is_join else f"{self.job}_text_md5"

    @property
    def view_name(self) -> tuple[str, str]:
        return SCHEMA, f"{self.job}_view"

    @property
    def view(self) -> sql.Identifier:
        return sql.Identifier(*self.view_name)

    @property
    def view_function_name(self) -> tuple[str, str]:
        """The SQL function the view reads (``catalog.create_view``)."""
        return SCHEMA, f"{self.job}_view_rows"

    @property
    def view_function(self) -> sql.Identifier:
        return sql.Identifier(*self.view_function_name)

    @property
    def index_name(self) -> str:
        return f"{self.job}_{self.index_suffix}"

    @property
    def index_qualified_name(self) -> tuple[str, str]:
        return (SCHEMA if self.is_join else self.schema), self.index_name

    @property
    def rebuilt_index_name(self) -> str:
        """The index that ``index_rebuild`` builds beside ``index_name`` and then names so."""
        return f"{self.index_name}_rebuild"

    @property
    def fts_index_name(self) -> str:
        """The full-text GIN index of hybrid search."""
        return f"{self.job}_fts_idx"

    @property
    def fts_index_qualified_name(self) -> tuple[str, str]:
        """(schema, name) of the full-text index: on the documents table, or for a chunked project on its
        chunk table (``CHUNK_FTS_COLUMN``). Projects created before the documents table had it on the source
        (``source_fts_index_qualified_name``)."""
        return SCHEMA, self.fts_index_name

    @property
    def source_fts_index_qualified_name(self) -> tuple[str, str]:
        """Where an unchunked project created before the documents table has its full-text index: on the
        source's ``expressions.fts_document``."""
        return self.schema, self.fts_index_name

    @property
    def documents_name(self) -> tuple[str, str]:
        """An unchunked project's stored full-text documents: (key, ``DOCUMENT_COLUMN``), one per embedded row,
        written with its vector."""
        return SCHEMA, f"_documents_{self.job}"

    @property
    def documents(self) -> sql.Identifier:
        return sql.Identifier(*self.documents_name)

    @property
    def queue_name(self) -> tuple[str, str]:
        return SCHEMA, f"_pending_{self.job}"

    @property
    def queue(self) -> sql.Identifier:
        return sql.Identifier(*self.queue_name)

    @property
    def bulk_name(self) -> tuple[str, str]:
        """Statements that inserted too many rows for the realtime queue to list (``catalog.BULK_ROWS``):
        (id, rows, enqueued_at); the next realtime run scans for due rows instead of reading the queue."""
        return SCHEMA, f"_bulk_{self.job}"

    @property
    def bulk(self) -> sql.Identifier:
        return sql.Identifier(*self.bulk_name)

    @property
    def errors_name(self) -> tuple[str, str]:
        """Rows generation could not embed: (key, error, attempts, first_seen, last_seen, text_md5)."""
        return SCHEMA, f"_errors_{self.job}"

    @property
    def errors(self) -> sql.Identifier:
        return sql.Identifier(*self.errors_name)

    @property
    def removed_name(self) -> tuple[str, str]:
        """Keys removed from the source since the last generation run (``airflow_vectorize.removal``)."""
        return SCHEMA, f"_removed_{self.job}"

    @property
    def removed(self) -> sql.Identifier:
        return sql.Identifier(*self.removed_name)

    @property
    def removal_function_name(self) -> tuple[str, str]:
        return SCHEMA, f"handle_removal_{self.job}"

    @property
    def removal_function(self) -> sql.Identifier:
        return sql.Identifier(*self.removal_function_name)

    @property
    def delete_trigger(self) -> str:
        return f"vectorize_delete_trigger_{self.job}"

    @property
    def truncate_trigger(self) -> str:
        return f"vectorize_trunc_trigger_{self.job}"

    @property
    def rekey_trigger(self) -> str:
        return f"vectorize_rekey_trigger_{self.job}"

    @property
    def removal_triggers(self) -> tuple[str, str, str]:
        return self.delete_trigger, self.truncate_trigger, self.rekey_trigger

    @property
    def trigger_function_name(self) -> tuple[str, str]:
        return SCHEMA, f"handle_update_{self.job}"

    @property
    def trigger_function(self) -> sql.Identifier:
        return sql.Identifier(*self.trigger_function_name)

    @property
    def insert_trigger(self) -> str:
        return f"vectorize_insert_trigger_{self.job}"

    @property
    def update_trigger(self) -> str:
        return f"vectorize_update_trigger_{self.job}"

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel the realtime triggers notify when they queue rows."""
        return f"vectorize_{self.job}"

    def storage_objects(self, realtime: bool) -> list[str]:
        """Every object the project owns, as 'schema.name' (columns as 'schema.table.column')."""
        objects = [".".join(self.index_qualified_name), ".".join(self.fts_index_qualified_name),
                   ".".join(self.queue_name), ".".join(self.bulk_name), ".".join(self.errors_name),
                   ".".join(self.removed_name),
                   ".".join(self.removal_function_name) + "()", *self.removal_triggers]
        if not self.is_chunked:
            objects.insert(2, ".".join(self.documents_name))
        if self.is_join:
            objects[:0] = [".".join(self.target_name), ".".join(self.view_name),
                           ".".join(self.view_function_name) + "()"]
        else:
            objects[:0] = [f"{self.schema}.{self.relation}.{column}" for column in
                           (self.embeddings_column, self.updated_at_column, self.text_md5_column)]
        if realtime:
            objects += [".".join(self.trigger_function_name) + "()", self.insert_trigger, self.update_trigger]
        return objects
