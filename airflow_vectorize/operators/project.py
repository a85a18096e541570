"""Operators that create and drop vectorize projects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
from airflow_vectorize.exceptions import ProjectNotFoundError
from airflow_vectorize.generation import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_FAILED_SHARE
from airflow_vectorize.hooks.vectorize import KEEP
from airflow_vectorize.lineage import openlineage_installed
from airflow_vectorize.operators._base import VectorizeBaseOperator, listed, run_start


class CreateVectorizeProjectOperator(VectorizeBaseOperator):
    """Create a vector-search project on a table (pg_vectorize's ``vectorize.table``); idempotent.

    :param job_name: the project name, ``[A-Za-z0-9_]+``.
    :param table: the source table; ``schema`` its schema.
    :param primary_key: a unique column of the table, or a list of the columns of a composite key.
    :param columns: the text columns whose values, joined with ', ', are embedded.
    :param transformer: the model: ``sentence-transformers/<name>`` or a local directory (computed on the
        worker, or by a self-hosted server with ``model_conn_id``), ``openai/<model>``, ``ollama/<model>``,
        ``cohere/<model>``, ``voyage/<model>`` or ``portkey/<provider>/<model>``; it decides the vector size.
    :param model_conn_id: the Airflow connection of a remote model (default ``<provider>_default``); only
        its id is stored.
    :param dimensions: ask a remote model for vectors of this size (OpenAI's text-embedding-3 models).
    :param chunk_size: cut each row's text into chunks of this many tokens of the model's tokenizer, one
        vector per chunk (join projects); None (the default) embeds each row whole, as pg_vectorize.
    :param chunk_overlap: tokens shared by neighbouring chunks; :param chunker: ``recursive``.
    :param table_method: ``join`` (separate embeddings table + view) or ``append`` (columns on the table).
    :param index_dist_type: ``pgv_hnsw_cosine``, ``pgv_hnsw_l2`` or ``pgv_hnsw_ip``.
    :param schedule: ``realtime`` (triggers queue changed rows) or ``manual``.
    :param update_col: a timestamp column that tells when a row changed (for interval runs).
    :param embed_existing: embed the rows already in the table right away (the initial load). It fails the
        task when more than ``max_failed_share`` of its rows could not be embedded for the first time in this
        DAG run — in any try, so Airflow's retry fails as the first try did; ``max_attempts``: as
        ``GenerateEmbeddingsOperator``'s.
    :param document_prompt: text put before every document ("" for none; default: the model's own);
        :param query_prompt: the same for every search query.
    :param input_types: ``{"document": ..., "query": ...}``, the ``input_type`` of a provider that takes one
        (Cohere, Voyage; default: its search types).
    :param hnsw_m: the HNSW index's ``m``; :param hnsw_ef_construction: its ``ef_construction`` (default
        pgvector's); :param halfvec_index: the index holds the vectors at half precision.
    """

    template_fields: Sequence[str] = (
        "job_name", "table", "schema", "primary_key", "columns", "transformer", "update_col", "model_conn_id",
        "document_prompt", "query_prompt",
    )

    def __init__(
        self,
        *,
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
        document_prompt: str | None = None,
        query_prompt: str | None = None,
        input_types: dict[str, str | None] | None = None,
        hnsw_m: int | None = None,
        hnsw_ef_construction: int | None = None,
        halfvec_index: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_failed_share: float = DEFAULT_MAX_FAILED_SHARE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_name = job_name
        self.table = table
        self.primary_key = primary_key
        self.columns = columns
        self.transformer = transformer
        self.schema = schema
        self.table_method = table_method
        self.index_dist_type = index_dist_type
        self.schedule = schedule
        self.update_col = update_col
        self.embed_existing = embed_existing
        self.model_conn_id = model_conn_id
        self.dimensions = dimensions
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.chunker = chunker
        self.document_prompt = document_prompt
        self.query_prompt = query_prompt
        self.input_types = input_types
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.halfvec_index = halfvec_index
        self.max_attempts = max_attempts
        self.max_failed_share = max_failed_share

    def execute(self, context: Any) -> dict[str, Any]:
        summary = self.hook.create_project(
            job_name=self.job_name,
            table=self.table,
            primary_key=self.primary_key,
            columns=listed(self.columns),
            transformer=self.transformer,
            schema=self.schema,
            table_method=self.table_method,
            index_dist_type=self.index_dist_type,
            schedule=self.schedule,
            update_col=self.update_col,
            embed_existing=self.embed_existing,
            model_conn_id=self.model_conn_id,
            dimensions=self.dimensions,
            chunk_size=self.chunk_size,
            chunk_overlap=self.chunk_overlap,
            chunker=self.chunker,
            document_prompt=self.document_prompt,
            query_prompt=self.query_prompt,
            input_types=self.input_types,
            hnsw_m=self.hnsw_m,
            hnsw_ef_construction=self.hnsw_ef_construction,
            halfvec_index=self.halfvec_index,
            max_attempts=self.max_attempts,
            max_failed_share=self.max_failed_share,
            failures_since=run_start(context),
        )
        if openlineage_installed():
            tables = self.hook.project_tables(self.job_name)
            self.capture_tables(inputs=[tables["source"]], outputs=[tables["storage"]])
        return summary


class AlterVectorizeProjectOperator(VectorizeBaseOperator):
    """Change a project in place, its vectors kept (``VectorizeHook.alter_project``): pause or resume realtime
    queueing, embed other columns (only rows whose text changed are embedded again by the next run), follow
    columns renamed in the source, set the update column, or build the HNSW index again with other settings
    (beside the old one, which searches use until it is built).

    :param job_name: the project to alter.
    :param schedule: ``realtime`` or ``manual``; None leaves it.
    :param columns: the text columns to embed; None leaves them.
    :param update_col: a timestamp column, or None for none; left as it is when not given.
    :param hnsw_m: the index's ``m`` (None: pgvector's 16); left as it is when not given.
    :param hnsw_ef_construction: its ``ef_construction`` (None: the default); left as it is when not given.
    :param halfvec_index: the index holds half-precision vectors; left as it is when not given.
    """

    template_fields: Sequence[str] = ("job_name", "schedule", "columns", "update_col")

    def __init__(self, *, job_name: str, schedule: str | None = None, columns: Sequence[str] | None = None,
                 update_col: str | None = KEEP, hnsw_m: int | None = KEEP, hnsw_ef_construction: int | None = KEEP,
                 halfvec_index: bool = KEEP, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job_name = job_name
        self.schedule = schedule
        self.columns = columns
        self.update_col = update_col
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.halfvec_index = halfvec_index

    def execute(self, context: Any) -> dict[str, Any]:
        return self.hook.alter_project(self.job_name, schedule=self.schedule,
                                       columns=listed(self.columns),
                                       update_col=self.update_col, hnsw_m=self.hnsw_m,
                                       hnsw_ef_construction=self.hnsw_ef_construction, halfvec_index=self.halfvec_index)


class DropVectorizeProjectOperator(VectorizeBaseOperator):
    """Remove a project's embeddings, index, view, triggers, queue and catalog row; never the source table.

    :param job_name: the project to drop.
    :param missing_ok: succeed (``dropped: False``) when the project does not exist.
    """

    template_fields: Sequence[str] = ("job_name",)

    def __init__(self, *, job_name: str, missing_ok: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job_name = job_name
        self.missing_ok = missing_ok

    def execute(self, context: Any) -> dict[str, Any]:
        tables = None
        if openlineage_installed():
            try:
                tables = self.hook.project_tables(self.job_name)
            except ProjectNotFoundError:
                pass  # drop_project decides (missing_ok)
        if tables and tables["storage"] != tables["source"]:  # join: its storage table goes
            self.capture_tables(dropped=[tables["storage"]])
        summary = self.hook.drop_project(self.job_name, missing_ok=self.missing_ok)
        if tables and tables["storage"] == tables["source"]:  # append: the source loses its columns
            self.capture_tables(outputs=[tables["source"]])
        return summary
