"""What every Vectorize operator shares: the connection id and a cached hook."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from airflow_vectorize.hooks.vectorize import VectorizeHook


class VectorizeBaseOperator(BaseOperator):
    """Base for operators that call one VectorizeHook method and return its summary to XCom.

    :param postgres_conn_id: the Airflow connection to PostgreSQL with pgvector.
    """

    def __init__(self, *, postgres_conn_id: str = VectorizeHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.postgres_conn_id = postgres_conn_id

    @cached_property
    def hook(self) -> VectorizeHook:
        return VectorizeHook(postgres_conn_id=self.postgres_conn_id)
