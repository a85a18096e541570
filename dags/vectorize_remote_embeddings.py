"""Embeddings from a remote model server through an Airflow connection: create, embed, search, clean up.

The model is ``openai/<model>`` on OpenAI, or on any OpenAI-compatible server (vLLM, Infinity, TEI, a
LiteLLM proxy) when the connection's host points at it; ``ollama/<model>`` works the same way with an
``ollama_default`` connection. Only the connection id is stored in the catalog, never the key.

    AIRFLOW_CONN_OPENAI_DEFAULT='{"conn_type": "openai", "password": "sk-..."}'
    # or a self-hosted server:
    AIRFLOW_CONN_OPENAI_DEFAULT='{"conn_type": "openai", "host": "http://gpu-box:7997"}'
    VECTORIZE_REMOTE_MODEL=openai/all-MiniLM-L6-v2   # default: openai/text-embedding-3-small

Set ``postgres_default`` (or ``VECTORIZE_CONN_ID``) to a PostgreSQL with pgvector.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task

from airflow_vectorize.operators import (
    CreateVectorizeProjectOperator,
    DropVectorizeProjectOperator,
    GenerateEmbeddingsOperator,
    VectorSearchOperator,
)

CONN_ID = os.environ.get("VECTORIZE_CONN_ID", "postgres_default")
MODEL = os.environ.get("VECTORIZE_REMOTE_MODEL", "openai/text-embedding-3-small")
MODEL_CONN_ID = os.environ.get("VECTORIZE_MODEL_CONN_ID", "openai_default")
JOB_NAME = "remote_product_search"


@dag(
    dag_id="vectorize_remote_embeddings",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["vectorize", "example"],
)
def vectorize_remote_embeddings():
    @task
    def prepare_source_data() -> dict:
        """The demo product catalogue."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from airflow_vectorize.example_data import create_products_table, insert_products

        with PostgresHook(postgres_conn_id=CONN_ID).get_conn() as conn, conn.cursor() as cur:
            create_products_table(cur, "remote_products")
            return {"products": insert_products(cur, "remote_products")}

    create_project = CreateVectorizeProjectOperator(
        task_id="create_project",
        postgres_conn_id=CONN_ID,
        job_name=JOB_NAME,
        table="remote_products",
        primary_key="product_id",
        columns=["name", "description"],
        transformer=MODEL,
        model_conn_id=MODEL_CONN_ID,
        schedule="manual",
    )

    embed = GenerateEmbeddingsOperator(
        task_id="embed", postgres_conn_id=CONN_ID, job_name=JOB_NAME, batch_size=8, concurrency=4
    )

    search = VectorSearchOperator(
        task_id="search",
        postgres_conn_id=CONN_ID,
        job_name=JOB_NAME,
        query="mobile phone with a good camera",
        return_columns=["product_id", "name", "category"],
        num_results=3,
    )

    drop_project = DropVectorizeProjectOperator(
        task_id="drop_project", postgres_conn_id=CONN_ID, job_name=JOB_NAME, missing_ok=True,
        trigger_rule="all_done",
    )

    @task(trigger_rule="all_done")
    def drop_source_table() -> None:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        PostgresHook(postgres_conn_id=CONN_ID).run("DROP TABLE IF EXISTS remote_products")

    prepare_source_data() >> create_project >> embed >> search >> drop_project >> drop_source_table()


dag = vectorize_remote_embeddings()
