"""Airflow Assets of a project: its embeddings (an outlet of generation and import) and its queued rows
(watched by ``PendingRowsTrigger``, to schedule a realtime DAG).

URIs: ``vectorize://<postgres_conn_id>/<job_name>`` for the embeddings and
``vectorize://<postgres_conn_id>/<job_name>/pending`` for the queue. They are two assets on purpose: a DAG
scheduled on the queue emits the embeddings asset, so its own runs never schedule it again.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetWatcher

from airflow_vectorize.hooks.vectorize import VectorizeHook

SCHEME = "vectorize"
GROUP = "vectorize"


def embeddings_asset(job_name: str, postgres_conn_id: str = VectorizeHook.default_conn_name) -> Asset:
    """The project's embeddings; its events carry ``extra`` = the task's summary counts."""
    uri = f"{SCHEME}://{postgres_conn_id}/{job_name}"
    return Asset(name=uri, uri=uri, group=GROUP)


def evaluation_asset(job_name: str, postgres_conn_id: str = VectorizeHook.default_conn_name) -> Asset:
    """The project's retrieval evaluations; an event carries the metrics of a run that passed its gate."""
    uri = f"{SCHEME}://{postgres_conn_id}/{job_name}/evaluation"
    return Asset(name=uri, uri=uri, group=GROUP)


def pending_rows_asset(job_name: str, postgres_conn_id: str = VectorizeHook.default_conn_name,
                       poll_interval: float = 30.0, debounce: float = 0.5,
                       refire_after: float | None = 600.0) -> Asset:
    """The project's queue of rows to embed, watched by a ``PendingRowsTrigger``: schedule a DAG on it
    (``schedule=[pending_rows_asset(job)]``) to embed rows seconds after they are written."""
    from airflow_vectorize.triggers.pending import PendingRowsTrigger

    uri = f"{SCHEME}://{postgres_conn_id}/{job_name}/pending"
    trigger = PendingRowsTrigger(job_name, postgres_conn_id, poll_interval=poll_interval, debounce=debounce,
                                 refire_after=refire_after)
    return Asset(name=uri, uri=uri, group=GROUP,
                 watchers=[AssetWatcher(name=f"vectorize_{job_name}_pending", trigger=trigger)])
