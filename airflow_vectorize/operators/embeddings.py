"""Operators that fill a project with embeddings."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from airflow_vectorize.generation import DEFAULT_BATCH_SIZE, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_FAILED_SHARE
from airflow_vectorize.lineage import openlineage_installed
from airflow_vectorize.operators._base import ProjectWriterOperator, run_start


class ImportEmbeddingsOperator(ProjectWriterOperator):
    """Import embeddings computed elsewhere (pg_vectorize's ``vectorize.import_embeddings``).

    :param job_name: the project to fill.
    :param src_table: the table holding the embeddings; ``src_schema`` its schema.
    :param src_primary_key: its column matching the project's primary key (a list, in the key's order,
        for a composite key).
    :param src_embeddings_col: its vector, halfvec, real[] or double precision[] column.
    :param src_chunk_col: for a chunked project, its chunk number column (0, 1, ... within a row).
    :param rebuild_index: build the HNSW index anew (True: for a join project with vectors, in a new table
        swapped in, searches keeping the old index meanwhile; otherwise dropped before the write and built
        after it), or keep it (False: slower writes, searches stay fast); None rebuilds from 10 % of the
        project's rows. See ``VectorizeHook.import_embeddings``.
    """

    template_fields: Sequence[str] = (
        "job_name", "src_table", "src_schema", "src_primary_key", "src_embeddings_col", "src_chunk_col"
    )

    def __init__(
        self,
        *,
        job_name: str,
        src_table: str,
        src_primary_key: str | Sequence[str],
        src_embeddings_col: str,
        src_schema: str = "public",
        src_chunk_col: str | None = None,
        rebuild_index: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(job_name=job_name, **kwargs)
        self.src_chunk_col = src_chunk_col
        self.rebuild_index = rebuild_index
        self.src_table = src_table
        self.src_primary_key = src_primary_key
        self.src_embeddings_col = src_embeddings_col
        self.src_schema = src_schema

    def execute(self, context: Any) -> dict[str, Any]:
        summary = self.hook.import_embeddings(
            job_name=self.job_name,
            src_table=self.src_table,
            src_primary_key=self.src_primary_key,
            src_embeddings_col=self.src_embeddings_col,
            src_schema=self.src_schema,
            src_chunk_col=self.src_chunk_col,
            rebuild_index=self.rebuild_index,
        )
        if openlineage_installed():
            self.capture_tables(inputs=[(self.src_schema, self.src_table)],
                                outputs=[self.hook.project_tables(self.job_name)["storage"]])
        return self.emit(context, summary, ("imported", "inserted", "updated"))


class GenerateEmbeddingsOperator(ProjectWriterOperator):
    """Embed the project's rows that need it: new, text changed, or queued by the realtime triggers.

    For scheduled ingestion and backfills pass ``since="{{ data_interval_start }}"`` and
    ``until="{{ data_interval_end }}"`` (needs the project's ``update_col``); re-running an interval embeds
    nothing that is already current. To spread one backfill over workers, map it over partitions:
    ``GenerateEmbeddingsOperator.partial(..., partition_count=4).expand(partition_index=[0, 1, 2, 3])``.

    :param job_name: the project to fill.
    :param since: only rows whose update_col is at or after this time.
    :param until: only rows whose update_col is before this time.
    :param partition_index: this task's slice of the keys, in ``[0, partition_count)``.
    :param partition_count: how many disjoint slices the keys are split into.
    :param batch_size: rows per encode / write / commit.
    :param concurrency: batches embedded at once (default 1 for a local model; for a remote one the
        connection's ``concurrency`` extra, else 4).
    :param pending_only: only the rows the project's realtime triggers queued (for a DAG scheduled on
        ``pending_rows_asset``: reads the queue, not the whole table).
    :param max_attempts: rows the model refused this often with the same text are skipped until it changes.
    :param max_failed_share: fail the task when more than this share of the rows tried could not be
        embedded for the first time in this DAG run — in any try of the task, so a retry fails as the first try
        did; rows that failed in earlier DAG runs only warn (they are recorded in ``vectorize._errors_<job>``;
        the others are written either way).
    :param rebuild_index: as ``ImportEmbeddingsOperator``'s (a partition of several never drops the index).
    """

    template_fields: Sequence[str] = ("job_name", "since", "until", "partition_index", "partition_count")

    def __init__(
        self,
        *,
        job_name: str,
        since: Any = None,
        until: Any = None,
        partition_index: int = 0,
        partition_count: int = 1,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int | None = None,
        pending_only: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_failed_share: float = DEFAULT_MAX_FAILED_SHARE,
        rebuild_index: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(job_name=job_name, **kwargs)
        self.rebuild_index = rebuild_index
        self.pending_only = pending_only
        self.max_attempts = max_attempts
        self.max_failed_share = max_failed_share
        self.since = since
        self.until = until
        self.partition_index = partition_index
        self.partition_count = partition_count
        self.batch_size = batch_size
        self.concurrency = concurrency

    def execute(self, context: Any) -> dict[str, Any]:
        try:
            summary = self._run(context)
        except Exception:  # a run that fails may have written what it could: its lineage says so
            with contextlib.suppress(Exception):  # never in place of the run's own error
                self._capture_run_tables()
            raise
        self._capture_run_tables()
        return self.emit(context, summary, ("embedded", "failed", "skipped", "partition"))

    def _run(self, context: Any) -> dict[str, Any]:
        return self.hook.generate_embeddings(
            job_name=self.job_name,
            since=self.since or None,
            until=self.until or None,
            partition_index=int(self.partition_index),
            partition_count=int(self.partition_count),
            batch_size=self.batch_size,
            concurrency=self.concurrency,
            pending_only=self.pending_only,
            max_attempts=self.max_attempts,
            max_failed_share=self.max_failed_share,
            rebuild_index=self.rebuild_index,
            failures_since=run_start(context),
        )

    def _capture_run_tables(self) -> None:
        if openlineage_installed():
            tables = self.hook.project_tables(self.job_name)
            self.capture_tables(inputs=[tables["source"]], outputs=[tables["storage"]])

