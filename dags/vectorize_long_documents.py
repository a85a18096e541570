"""Search long documents by their chunks: a sentence from the end of a document finds it.

The chain: a table of real long texts (the README-style descriptions of the Python packages installed here,
3-20 kB each, far beyond the 256 word-pieces the model reads of one input) -> a chunked project (chunks of
200 tokens of the model's own tokenizer, 24 shared with the next) -> embed them -> status (rows and chunks)
-> vector and hybrid search for a sentence from the last third of one document: each row once, ranked by its
best chunk, with that chunk's text -> drop the project and the table.
Set the Airflow connection ``postgres_default`` (or ``VECTORIZE_CONN_ID``) to a PostgreSQL with pgvector.
"""

from __future__ import annotations

import os
import re

import pendulum
from airflow.sdk import dag, task

from airflow_vectorize.example_data import package_descriptions
from airflow_vectorize.operators import (
    CreateVectorizeProjectOperator,
    DropVectorizeProjectOperator,
    GenerateEmbeddingsOperator,
    VectorSearchOperator,
)

CONN_ID = os.environ.get("VECTORIZE_CONN_ID", "postgres_default")
JOB_NAME = "package_docs"
DOCUMENTS = 16
QUERY = "{{ ti.xcom_pull(task_ids='prepare_documents')['query'] }}"


def late_sentence(documents: list[tuple[str, str]]) -> tuple[str, str]:
    """A prose sentence of 12-40 words from the last third of one document, found in no other."""
    for name, text in documents:
        tail = " ".join(text[2 * len(text) // 3:].split())
        for sentence in re.split(r"(?<=[.!?])\s+", tail)[1:]:
            if 12 <= len(sentence.split()) <= 40 and not re.search(r"[`|<>#*\[\]=_{}]|://", sentence) \
                    and sum(sentence in other for _, other in documents) == 1:
                return name, sentence
    raise ValueError(f"no prose sentence of 12-40 words in the last third of {len(documents)} descriptions")


@dag(
    dag_id="vectorize_long_documents",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["vectorize", "example"],
)
def vectorize_long_documents():
    @task
    def prepare_documents() -> dict:
        """The ``package_docs`` table, and the query: a sentence from the end of one of its documents."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        documents = package_descriptions(DOCUMENTS)
        package, sentence = late_sentence(documents)
        with PostgresHook(postgres_conn_id=CONN_ID).get_conn() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS package_docs (doc_id integer PRIMARY KEY,"
                        " package text NOT NULL, body text NOT NULL)")
            cur.executemany("INSERT INTO package_docs VALUES (%s, %s, %s) ON CONFLICT (doc_id) DO NOTHING",
                            [(i, name, text) for i, (name, text) in enumerate(documents, 1)])
        return {"documents": len(documents), "characters": sum(len(text) for _, text in documents),
                "query": sentence, "from_package": package}

    create_project = CreateVectorizeProjectOperator(
        task_id="create_project",
        postgres_conn_id=CONN_ID,
        job_name=JOB_NAME,
        table="package_docs",
        primary_key="doc_id",
        columns=["body"],
        schedule="manual",
        chunk_size=200,
        chunk_overlap=24,
    )

    embed = GenerateEmbeddingsOperator(task_id="embed", postgres_conn_id=CONN_ID, job_name=JOB_NAME)

    @task
    def status() -> dict:
        """Fail unless every document is embedded; the rows and their chunks."""
        from airflow_vectorize.hooks.vectorize import VectorizeHook

        found = VectorizeHook(postgres_conn_id=CONN_ID).get_status(JOB_NAME)
        if found["missing_rows"] or found["pending"]:
            raise ValueError(f"project {JOB_NAME!r} is incomplete: {found}")
        return {key: found[key] for key in ("total_rows", "embedded_rows", "chunks")}

    asked = {"postgres_conn_id": CONN_ID, "job_name": JOB_NAME, "query": QUERY,
             "return_columns": ["doc_id", "package"], "num_results": 3}
    search = VectorSearchOperator(task_id="search", **asked)
    hybrid_search = VectorSearchOperator(task_id="hybrid_search", hybrid=True, **asked)  # and full-text

    drop_project = DropVectorizeProjectOperator(
        task_id="drop_project", postgres_conn_id=CONN_ID, job_name=JOB_NAME, missing_ok=True,
        trigger_rule="all_done",
    )

    @task(trigger_rule="all_done")
    def drop_source_table() -> None:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        PostgresHook(postgres_conn_id=CONN_ID).run("DROP TABLE IF EXISTS package_docs")

    (
        prepare_documents()
        >> create_project
        >> embed
        >> status()
        >> [search, hybrid_search]
        >> drop_project
        >> drop_source_table()
    )


dag = vectorize_long_documents()
