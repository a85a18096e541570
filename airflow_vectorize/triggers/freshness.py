"""FreshnessTrigger: waits in the triggerer until a project's embeddings are fresh enough."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_vectorize import catalog, freshness
from airflow_vectorize.hooks.vectorize import VectorizeHook


class FreshnessTrigger(BaseTrigger):
    """Poll ``airflow_vectorize.freshness`` every ``poll_interval`` seconds on one connection, reading the
    project from the catalog at each poll (its columns may have been altered meanwhile); fire
    ``{"status": "fresh", "pending", "stale", "lag_seconds"}`` once every condition holds, or
    ``{"status": "error", "message"}`` (project missing, database error).

    ``None`` for a ``max_*`` leaves that condition out.
    """

    def __init__(self, job_name: str, postgres_conn_id: str = VectorizeHook.default_conn_name,
                 max_pending: int | None = 0, max_stale: int | None = 0, max_lag_seconds: float | None = None,
                 poll_interval: float = 10.0) -> None:
        super().__init__()
        self.job_name = job_name
        self.postgres_conn_id = postgres_conn_id
        self.max_pending = max_pending
        self.max_stale = max_stale
        self.max_lag_seconds = max_lag_seconds
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"job_name": self.job_name, "postgres_conn_id": self.postgres_conn_id,
                 "max_pending": self.max_pending, "max_stale": self.max_stale,
                 "max_lag_seconds": self.max_lag_seconds, "poll_interval": self.poll_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            async with await VectorizeHook(self.postgres_conn_id).aconnect() as conn:
                while True:
                    # Read at every poll (one catalog row): alter_project(columns=...) changes what is fresh.
                    project = await catalog.afind_project(conn, self.job_name)
                    if project is None:
                        yield TriggerEvent({"status": "error",
                                            "message": f"project {self.job_name!r} does not exist"})
                        return
                    try:
                        state = await freshness.ameasure(conn, project)
                    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
                        if await catalog.afind_project(conn, self.job_name) != project:
                            continue  # dropped or altered since it was read: read it again
                        raise
                    if not state.unmet(self.max_pending, self.max_stale, self.max_lag_seconds):
                        yield TriggerEvent({"status": "fresh", "job_name": self.job_name, **state.as_dict()})
                        return
                    await asyncio.sleep(self.poll_interval)
        except psycopg.Error as error:
            yield TriggerEvent({"status": "error",
                                "message": f"project {self.job_name!r}: {type(error).__name__}: {error}"})
