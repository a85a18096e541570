"""Scheduled ingestion and backfills: the DAG is pg_vectorize's background worker.

``vectorize_scheduled_ingestion`` runs daily with catchup: it lands the day's catalogue changes, embeds the
rows whose ``updated_at`` falls in the run's data interval (new rows and rows whose text changed; a price
change re-embeds nothing), and checks that search finds phones for "mobile phone". Re-running a day embeds
nothing that is already current.

``vectorize_embedding_backfill`` embeds a whole table at once, spread over Airflow's workers with dynamic
task mapping: four disjoint, complete hash partitions of the keys, one mapped task each.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from airflow_vectorize.operators import (
    CreateVectorizeProjectOperator,
    GenerateEmbeddingsOperator,
    VectorSearchOperator,
)

CONN_ID = os.environ.get("VECTORIZE_CONN_ID", "postgres_default")
CATALOG_JOB = "product_catalog"
BACKFILL_JOB = "product_archive"
PARTITIONS = 4


@dag(
    dag_id="vectorize_scheduled_ingestion",
    # Airflow 3's "@daily" has zero-length data intervals; ingestion wants real [start, end) days.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=True,
    max_active_runs=1,
    tags=["vectorize", "example"],
)
def vectorize_scheduled_ingestion():
    @task
    def land_daily_changes(data_interval_start=None) -> dict:
        """Upsert the catalogue as a day's feed; only rows whose content changed get a new updated_at."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from airflow_vectorize.example_data import PRODUCTS

        stamp = data_interval_start.add(hours=1)
        with PostgresHook(postgres_conn_id=CONN_ID).get_conn() as conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS catalog (product_id integer PRIMARY KEY, name text NOT NULL,"
                " description text, category text, price numeric(10, 2), updated_at timestamptz NOT NULL)"
            )
            cur.executemany(
                "INSERT INTO catalog AS c (product_id, name, description, category, price, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (product_id) DO UPDATE"
                " SET name = excluded.name, description = excluded.description, category = excluded.category,"
                " price = excluded.price, updated_at = excluded.updated_at"
                " WHERE (c.name, c.description, c.category, c.price)"
                " IS DISTINCT FROM (excluded.name, excluded.description, excluded.category, excluded.price)",
                [(*product, stamp) for product in PRODUCTS],
            )
            cur.execute("SELECT count(*) FROM catalog WHERE updated_at = %s", [stamp])
            changed = cur.fetchone()[0]
        return {"changed_rows": changed, "updated_at": stamp.isoformat()}

    create_project = CreateVectorizeProjectOperator(
        task_id="create_project",
        postgres_conn_id=CONN_ID,
        job_name=CATALOG_JOB,
        table="catalog",
        primary_key="product_id",
        columns=["name", "description"],
        update_col="updated_at",
        schedule="manual",
    )

    embed_interval = GenerateEmbeddingsOperator(
        task_id="embed_interval",
        postgres_conn_id=CONN_ID,
        job_name=CATALOG_JOB,
        since="{{ data_interval_start }}",
        until="{{ data_interval_end }}",
    )

    search = VectorSearchOperator(
        task_id="search_check",
        postgres_conn_id=CONN_ID,
        job_name=CATALOG_JOB,
        query="mobile phone",
        return_columns=["product_id", "name", "category"],
        num_results=3,
    )

    @task
    def phones_come_first(rows: list[dict]) -> str:
        if not rows or rows[0]["category"] != "phones":
            raise ValueError(f"search for 'mobile phone' did not return a phone first: {rows}")
        return rows[0]["name"]

    land_daily_changes() >> create_project >> embed_interval >> search
    phones_come_first(search.output)


@dag(
    dag_id="vectorize_embedding_backfill",
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    tags=["vectorize", "example"],
    # Trigger with conf {"rows": N} for a bigger table (the deployment bench uses 5-20k).
    params={"rows": Param(1000, type="integer", minimum=1, description="rows in the archive table")},
)
def vectorize_embedding_backfill():
    @task
    def prepare_archive(params=None) -> int:
        """A larger table to backfill: product-like texts made from the sample catalogue."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        rows = int(params["rows"])
        hook = PostgresHook(postgres_conn_id=CONN_ID)
        hook.run("CREATE TABLE IF NOT EXISTS archive (id integer PRIMARY KEY, title text NOT NULL)")
        hook.run(
            "INSERT INTO archive SELECT g, 'listing ' || g || ': ' || (ARRAY['used phone', 'desk lamp',"
            " 'hiking boots', 'electric kettle', 'road bike', 'paperback novel'])[g %% 6 + 1]"
            " FROM generate_series(1, %(rows)s) g ON CONFLICT (id) DO NOTHING",
            parameters={"rows": rows},
        )
        return rows

    create_project = CreateVectorizeProjectOperator(
        task_id="create_project",
        postgres_conn_id=CONN_ID,
        job_name=BACKFILL_JOB,
        table="archive",
        primary_key="id",
        columns=["title"],
        schedule="manual",
    )

    embed_partitions = GenerateEmbeddingsOperator.partial(
        task_id="embed_partition",
        postgres_conn_id=CONN_ID,
        job_name=BACKFILL_JOB,
        partition_count=PARTITIONS,
    ).expand(partition_index=list(range(PARTITIONS)))

    @task
    def check_complete() -> dict:
        from airflow_vectorize.hooks.vectorize import VectorizeHook

        status = VectorizeHook(postgres_conn_id=CONN_ID).get_status(BACKFILL_JOB)
        if status["missing_rows"]:
            raise ValueError(f"backfill left rows without embeddings: {status}")
        return status

    prepare_archive() >> create_project >> embed_partitions >> check_complete()


ingestion_dag = vectorize_scheduled_ingestion()
backfill_dag = vectorize_embedding_backfill()
