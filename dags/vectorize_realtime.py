"""Realtime embeddings without a polling DAG: rows are embedded seconds after they are committed.

- ``vectorize_realtime_setup`` (manual): the table ``live_products`` and its project, ``schedule="realtime"``:
  the project's triggers queue every inserted or changed row and NOTIFY at commit; then a few first rows
  arrive (queued, not embedded: that is the realtime DAG's job).
- ``vectorize_realtime`` is scheduled on the project's queue Asset. Its watcher, a ``PendingRowsTrigger`` in
  the triggerer, LISTENs for those notifications and fires; the run embeds only the queued rows. With
  ``max_active_runs=1`` rows arriving during a run are picked up by the next one (events coalesce).
- ``vectorize_realtime_consumer`` is scheduled on the project's embeddings Asset, which the realtime run
  emits with its counts: it waits (deferrable sensor) until no change is older than 30 s, then searches.

Needs the Airflow triggerer (``airflow triggerer``) for the watcher. The model: the local default, or set
``VECTORIZE_REALTIME_MODEL`` (e.g. ``openai/all-MiniLM-L6-v2``) and ``VECTORIZE_REALTIME_MODEL_CONN_ID`` to use
a model server, which avoids loading the model in every run.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task

from airflow_vectorize.assets import embeddings_asset, pending_rows_asset
from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
from airflow_vectorize.operators import (
    CreateVectorizeProjectOperator,
    GenerateEmbeddingsOperator,
    VectorSearchOperator,
)
from airflow_vectorize.sensors import VectorizeFreshnessSensor

CONN_ID = os.environ.get("VECTORIZE_CONN_ID", "postgres_default")
JOB_NAME = "live_products"
START = pendulum.datetime(2026, 1, 1, tz="UTC")


@dag(dag_id="vectorize_realtime_setup", schedule=None, start_date=START, catchup=False,
     tags=["vectorize", "example", "realtime"])
def vectorize_realtime_setup():
    @task
    def create_table() -> str:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        PostgresHook(postgres_conn_id=CONN_ID).run(
            "CREATE TABLE IF NOT EXISTS live_products (product_id bigint PRIMARY KEY, name text NOT NULL,"
            " description text, created_at timestamptz NOT NULL DEFAULT clock_timestamp())")
        return "live_products"

    @task
    def first_rows() -> int:
        """Rows written by an application after the project exists: the triggers queue them."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        rows = [(1, "Gadget one", "a brand new gadget"), (2, "Gadget two", "a brand new gadget"),
                (3, "Garden hose", "thirty metres, with a brass nozzle")]
        PostgresHook(postgres_conn_id=CONN_ID).insert_rows("live_products", rows,
                                                            target_fields=["product_id", "name", "description"],
                                                            replace=True, replace_index="product_id")
        return len(rows)

    create_table() >> CreateVectorizeProjectOperator(
        task_id="create_project",
        postgres_conn_id=CONN_ID,
        job_name=JOB_NAME,
        table="live_products",
        primary_key="product_id",
        columns=["name", "description"],
        schedule="realtime",
        transformer=os.environ.get("VECTORIZE_REALTIME_MODEL", DEFAULT_TRANSFORMER),
        model_conn_id=os.environ.get("VECTORIZE_REALTIME_MODEL_CONN_ID"),
    ) >> first_rows()


@dag(dag_id="vectorize_realtime", schedule=[pending_rows_asset(JOB_NAME, CONN_ID, poll_interval=30)],
     start_date=START, catchup=False, max_active_runs=1, tags=["vectorize", "example", "realtime"])
def vectorize_realtime():
    GenerateEmbeddingsOperator(task_id="embed_pending", postgres_conn_id=CONN_ID, job_name=JOB_NAME,
                               pending_only=True)


@dag(dag_id="vectorize_realtime_consumer", schedule=[embeddings_asset(JOB_NAME, CONN_ID)], start_date=START,
     catchup=False, max_active_runs=1, tags=["vectorize", "example", "realtime"])
def vectorize_realtime_consumer():
    @task
    def what_changed(triggering_asset_events=None) -> list[dict]:
        """The counts each triggering realtime run put on the embeddings Asset's event."""
        return [dict(event.extra) for events in (triggering_asset_events or {}).values() for event in events]

    wait = VectorizeFreshnessSensor(task_id="wait_until_fresh", postgres_conn_id=CONN_ID, job_name=JOB_NAME,
                                    max_pending=None, max_stale=None, max_lag_seconds=30, poke_interval=5,
                                    timeout=600)
    search = VectorSearchOperator(task_id="search", postgres_conn_id=CONN_ID, job_name=JOB_NAME,
                                  query="a brand new gadget", return_columns=["product_id", "name"],
                                  num_results=3)
    what_changed() >> wait >> search


setup_dag = vectorize_realtime_setup()
realtime_dag = vectorize_realtime()
consumer_dag = vectorize_realtime_consumer()
