"""Operators that fill a project with embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_vectorize.operators._base import VectorizeBaseOperator


class ImportEmbeddingsOperator(VectorizeBaseOperator):
    """Import embeddings computed elsewhere (pg_vectorize's ``vectorize.import_embeddings``).

    :param job_name: the project to fill.
    :param src_table: the table holding the embeddings; ``src_schema`` its schema.
    :param src_primary_key: its column matching the project's primary key.
    :param src_embeddings_col: its vector, halfvec, real[] or double precision[] column.
    """

    template_fields: Sequence[str] = (
        "job_name", "src_table", "src_schema", "src_primary_key", "src_embeddings_col"
    )

    def __init__(
        self,
        *,
        job_name: str,
        src_table: str,
        src_primary_key: str,
        src_embeddings_col: str,
        src_schema: str = "public",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_name = job_name
        self.src_table = src_table
        self.src_primary_key = src_primary_key
        self.src_embeddings_col = src_embeddings_col
        self.src_schema = src_schema

    def execute(self, context: Any) -> dict[str, Any]:
        return self.hook.import_embeddings(
            job_name=self.job_name,
            src_table=self.src_table,
            src_primary_key=self.src_primary_key,
            src_embeddings_col=self.src_embeddings_col,
            src_schema=self.src_schema,
        )
