"""Know whether search is good, and stop the DAG when it got worse: create, embed, sample queries, evaluate, gate.

The chain: a table of real long texts (README-style descriptions of 40 installed Python packages) -> a
chunked project -> embed -> ``EvaluateRetrievalOperator``: up to 40 queries sampled from the rows themselves
(the last sentence of 12+ words of each text, that row the relevant one: a proxy for real labelled queries),
recall@1/5/10, MRR, nDCG@10, kept in ``vectorize.evaluations``; the task fails when recall@10 is under 0.6 or
when MRR dropped by more than 0.05 against the last good run — a scheduled re-embedding or a model change
that hurts retrieval stops here, before downstream consumers run -> drop the project and the table.
Set the Airflow connection ``postgres_default`` (or ``VECTORIZE_CONN_ID``) to a PostgreSQL with pgvector.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task

from airflow_vectorize.example_data import package_descriptions
from airflow_vectorize.operators import (
    CreateVectorizeProjectOperator,
    DropVectorizeProjectOperator,
    EvaluateRetrievalOperator,
    GenerateEmbeddingsOperator,
)

CONN_ID = os.environ.get("VECTORIZE_CONN_ID", "postgres_default")
JOB_NAME = "package_docs_quality"
DOCUMENTS = 40


@dag(
    dag_id="vectorize_retrieval_gate",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["vectorize", "example"],
)
def vectorize_retrieval_gate():
    @task
    def prepare_documents() -> dict:
        """The ``quality_docs`` table: real README texts nobody here wrote."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        documents = package_descriptions(DOCUMENTS)
        with PostgresHook(postgres_conn_id=CONN_ID).get_conn() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS quality_docs (doc_id integer PRIMARY KEY,"
                        " package text NOT NULL, body text NOT NULL)")
            cur.executemany("INSERT INTO quality_docs VALUES (%s, %s, %s) ON CONFLICT (doc_id) DO NOTHING",
                            [(i, name, text) for i, (name, text) in enumerate(documents, 1)])
        return {"documents": len(documents)}

    create_project = CreateVectorizeProjectOperator(
        task_id="create_project", postgres_conn_id=CONN_ID, job_name=JOB_NAME, table="quality_docs",
        primary_key="doc_id", columns=["body"], schedule="manual", chunk_size=200, chunk_overlap=24,
    )

    embed = GenerateEmbeddingsOperator(task_id="embed", postgres_conn_id=CONN_ID, job_name=JOB_NAME)

    evaluate = EvaluateRetrievalOperator(
        task_id="evaluate", postgres_conn_id=CONN_ID, job_name=JOB_NAME, sample=DOCUMENTS, seed=1,
        position="last", k=(1, 5, 10), query_set="sampled-last-sentences",
        min_metrics={"recall@10": 0.6}, max_drop={"mrr": 0.05},
    )

    drop_project = DropVectorizeProjectOperator(
        task_id="drop_project", postgres_conn_id=CONN_ID, job_name=JOB_NAME, missing_ok=True,
    )

    @task
    def drop_source_table() -> None:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        PostgresHook(postgres_conn_id=CONN_ID).run("DROP TABLE IF EXISTS quality_docs")

    # The drops are teardowns: they run whatever happened, and a failed gate still fails the DAG run.
    prepared, cleanup = prepare_documents(), drop_source_table()
    prepared >> create_project >> embed >> evaluate >> drop_project >> cleanup
    drop_project.as_teardown(setups=create_project)
    cleanup.as_teardown(setups=prepared)


dag = vectorize_retrieval_gate()
