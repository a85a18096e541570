"""Import embeddings computed elsewhere into a vector-search project, embed the rest, search, clean up.

The chain: prepare a product catalogue and pre-computed embeddings for most of it (as an upstream system
would) -> create the project -> import the embeddings -> embed the rows the upstream system did not cover
-> check the status -> search -> drop the project and the demo tables.
Set the Airflow connection ``postgres_default`` (or ``VECTORIZE_CONN_ID``) to a PostgreSQL with pgvector.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task

from airflow_vectorize.operators import (
    CreateVectorizeProjectOperator,
    DropVectorizeProjectOperator,
    GenerateEmbeddingsOperator,
    ImportEmbeddingsOperator,
    VectorSearchOperator,
)

CONN_ID = os.environ.get("VECTORIZE_CONN_ID", "postgres_default")
JOB_NAME = "product_search"
UPSTREAM_COVERS = 20  # the upstream system embedded products 1..20; 21..24 are embedded here


@dag(
    dag_id="vectorize_import_embeddings",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["vectorize", "example"],
)
def vectorize_import_embeddings():
    @task
    def prepare_source_data() -> dict:
        """The catalogue table, and embeddings an upstream system computed for most of it (real[])."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
        from airflow_vectorize.example_data import PRODUCTS, create_products_table, insert_products
        from airflow_vectorize.models.local import load_model

        covered = PRODUCTS[:UPSTREAM_COVERS]
        texts = [f"{name}, {description}" for _, name, description, _, _ in covered]
        vectors = load_model(DEFAULT_TRANSFORMER).embed(texts)
        with PostgresHook(postgres_conn_id=CONN_ID).get_conn() as conn, conn.cursor() as cur:
            create_products_table(cur, "products", updated_at=True)
            insert_products(cur, "products")
            cur.execute("CREATE TABLE IF NOT EXISTS product_embeddings (product_id integer PRIMARY KEY,"
                        " embedding real[]); TRUNCATE product_embeddings")
            with cur.copy("COPY product_embeddings (product_id, embedding) FROM STDIN") as copy:
                for (product_id, *_), vector in zip(covered, vectors):
                    copy.write_row((product_id, vector.tolist()))
        return {"products": len(PRODUCTS), "embeddings": len(vectors), "dimensions": int(vectors.shape[1])}

    create_project = CreateVectorizeProjectOperator(
        task_id="create_project",
        postgres_conn_id=CONN_ID,
        job_name=JOB_NAME,
        table="products",
        primary_key="product_id",
        columns=["name", "description"],
        schedule="realtime",
    )

    import_embeddings = ImportEmbeddingsOperator(
        task_id="import_embeddings",
        postgres_conn_id=CONN_ID,
        job_name=JOB_NAME,
        src_table="product_embeddings",
        src_primary_key="product_id",
        src_embeddings_col="embedding",
    )

    embed_the_rest = GenerateEmbeddingsOperator(
        task_id="embed_the_rest", postgres_conn_id=CONN_ID, job_name=JOB_NAME
    )

    @task
    def check_status() -> dict:
        """Fail unless every product has an embedding and nothing is left in the queue."""
        from airflow_vectorize.hooks.vectorize import VectorizeHook

        status = VectorizeHook(postgres_conn_id=CONN_ID).get_status(JOB_NAME)
        if status["missing_rows"] or status["pending"]:
            raise ValueError(f"project {JOB_NAME!r} is incomplete: {status}")
        return status

    search = VectorSearchOperator(
        task_id="search",
        postgres_conn_id=CONN_ID,
        job_name=JOB_NAME,
        query="mobile phone with a good camera",
        return_columns=["product_id", "name", "category", "price"],
        num_results=3,
    )

    drop_project = DropVectorizeProjectOperator(
        task_id="drop_project", postgres_conn_id=CONN_ID, job_name=JOB_NAME, missing_ok=True,
        trigger_rule="all_done",
    )

    @task(trigger_rule="all_done")
    def drop_source_tables() -> None:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        PostgresHook(postgres_conn_id=CONN_ID).run("DROP TABLE IF EXISTS product_embeddings, products")

    (
        prepare_source_data()
        >> create_project
        >> import_embeddings
        >> embed_the_rest
        >> check_status()
        >> search
        >> drop_project
        >> drop_source_tables()
    )


dag = vectorize_import_embeddings()
