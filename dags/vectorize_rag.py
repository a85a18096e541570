"""Retrieval-augmented generation over a project: answer a few questions from the product catalogue.

The chain: the demo catalogue -> a project (local model) with its embeddings -> ``RAGOperator`` answers the
questions with a chat model (context: the project's own search) -> drop the project and the table.
The chat model is ``openai/<model>`` on OpenAI, or on any OpenAI-compatible server (vLLM, Ollama's /v1,
``transformers serve``) when the connection's host points at it:

    AIRFLOW_CONN_OPENAI_DEFAULT='{"conn_type": "openai", "password": "sk-..."}'
    VECTORIZE_CHAT_MODEL=openai/gpt-4o-mini          # the default
    VECTORIZE_CHAT_CONN_ID=openai_default            # the default

Set ``postgres_default`` (or ``VECTORIZE_CONN_ID``) to a PostgreSQL with pgvector.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task

from airflow_vectorize.operators import (
    CreateVectorizeProjectOperator,
    DropVectorizeProjectOperator,
    RAGOperator,
)

CONN_ID = os.environ.get("VECTORIZE_CONN_ID", "postgres_default")
CHAT_MODEL = os.environ.get("VECTORIZE_CHAT_MODEL", "openai/gpt-4o-mini")
CHAT_CONN_ID = os.environ.get("VECTORIZE_CHAT_CONN_ID", "openai_default")
JOB_NAME = "product_answers"
QUESTIONS = [
    "Which phone has the best camera?",
    "What can I use to make a cappuccino at home?",
    "What do I need for a camping trip in the mountains?",
]


@dag(
    dag_id="vectorize_rag",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["vectorize", "example"],
)
def vectorize_rag():
    @task
    def prepare_source_data() -> dict:
        """The demo product catalogue."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from airflow_vectorize.example_data import create_products_table, insert_products

        with PostgresHook(postgres_conn_id=CONN_ID).get_conn() as conn, conn.cursor() as cur:
            create_products_table(cur, "rag_products")
            return {"products": insert_products(cur, "rag_products")}

    create_project = CreateVectorizeProjectOperator(
        task_id="create_project",
        postgres_conn_id=CONN_ID,
        job_name=JOB_NAME,
        table="rag_products",
        primary_key="product_id",
        columns=["name", "description"],
        schedule="manual",
        embed_existing=True,
    )

    answer = RAGOperator(
        task_id="answer_questions",
        postgres_conn_id=CONN_ID,
        job_name=JOB_NAME,
        query=QUESTIONS,
        chat_model=CHAT_MODEL,
        chat_conn_id=CHAT_CONN_ID,
        num_context=3,
        force_trim=True,
        max_tokens=128,
    )

    drop_project = DropVectorizeProjectOperator(
        task_id="drop_project", postgres_conn_id=CONN_ID, job_name=JOB_NAME, missing_ok=True,
        trigger_rule="all_done",
    )

    @task(trigger_rule="all_done")
    def drop_source_table() -> None:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        PostgresHook(postgres_conn_id=CONN_ID).run("DROP TABLE IF EXISTS rag_products")

    prepare_source_data() >> create_project >> answer >> drop_project >> drop_source_table()


dag = vectorize_rag()
