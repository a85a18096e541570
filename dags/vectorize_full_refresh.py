"""A nightly full refresh: the catalogue is reloaded from the night's export file as a whole (``TRUNCATE`` +
``COPY`` in one transaction), then the project's generation run sends the model only the rows whose text
changed — every other row keeps its vector, and the rows that are no longer in the file lose theirs.

The export differs from night to night: the second night (2026-11-02) drops two products, changes the
description of three and adds one, so its run embeds 4 of the 23 rows.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from airflow_vectorize.operators import CreateVectorizeProjectOperator, GenerateEmbeddingsOperator

CONN_ID = os.environ.get("VECTORIZE_CONN_ID", "postgres_default")
JOB = "catalogue_refresh"
TABLE = "catalogue_nightly"


def night_export(night: int) -> list[tuple]:
    """The upstream system's export for the ``night``-th night (0 = the first): the sample catalogue, changed a
    little each night after the first."""
    from airflow_vectorize.example_data import PRODUCTS

    rows = [list(p) for p in PRODUCTS]
    if night:
        rows = [r for r in rows if r[0] not in (night % 24 + 1, (night + 11) % 24 + 1)]  # two products withdrawn
        for r in rows[:3]:
            r[2] = f"{r[2]} (model year {2026 + night})"  # three descriptions revised
        rows.append([100 + night, f"Garden hose {night}", "30 m flexible garden hose with a spray nozzle",
                     "garden", 39.0])
    return [tuple(r) for r in rows]


@dag(
    dag_id="vectorize_full_refresh",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=True,
    max_active_runs=1,
    tags=["vectorize", "example"],
)
def vectorize_full_refresh():
    @task
    def write_export(logical_date=None) -> str:
        """Stands for the upstream system: the night's export as a CSV file."""
        import csv
        import tempfile

        night = max(0, (logical_date - pendulum.datetime(2026, 11, 1, tz="UTC")).days)
        path = os.path.join(tempfile.gettempdir(), f"catalogue-{logical_date:%Y%m%d}.csv")
        with open(path, "w", newline="") as file:
            csv.writer(file).writerows(night_export(night))
        return path

    @task
    def reload_table(path: str) -> int:
        """TRUNCATE + COPY of the whole file, in one transaction (readers see the old or the new table)."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook
        from psycopg import sql

        from airflow_vectorize.example_data import create_products_table

        with PostgresHook(postgres_conn_id=CONN_ID).get_conn() as conn, conn.cursor() as cur:
            create_products_table(cur, TABLE)
            table = sql.Identifier(TABLE)
            cur.execute(sql.SQL("TRUNCATE {}").format(table))
            with open(path, "rb") as file, cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT csv)").format(table)) as copy:
                while data := file.read(1 << 16):
                    copy.write(data)
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
            return cur.fetchone()[0]

    create_project = CreateVectorizeProjectOperator(
        task_id="create_project",
        postgres_conn_id=CONN_ID,
        job_name=JOB,
        table=TABLE,
        primary_key="product_id",
        columns=["name", "description"],
        schedule="manual",
    )

    embed = GenerateEmbeddingsOperator(task_id="embed_changes", postgres_conn_id=CONN_ID, job_name=JOB)

    @task
    def report(rows: int, summary: dict) -> str:
        embedded = summary["embedded"]
        line = (f"embedded {embedded} of {rows} rows ({rows - embedded} unchanged);"
                f" {summary.get('vectors_removed', 0)} vectors of rows no longer in the file removed")
        print(line)
        return line

    loaded = reload_table(write_export())
    loaded >> create_project >> embed
    report(loaded, embed.output)


full_refresh_dag = vectorize_full_refresh()
