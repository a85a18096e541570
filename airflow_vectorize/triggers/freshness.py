"""FreshnessTrigger: waits in the triggerer until a project's embeddings are fresh enough."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_vectorize import catalog, freshness
from airflow_vectorize.hooks.vectorize import VectorizeHook
from airflow_vectorize.validation import check_seconds

log = logging.getLogger(__name__)


class FreshnessTrigger(BaseTrigger):
    """Poll ``airflow_vectorize.freshness`` every ``poll_interval`` seconds on one connection, reading the
    project from the catalog at each poll (its columns may have been altered meanwhile); fire
    ``{"status": "fresh", "pending", "stale", "lag_seconds"}`` once every condition holds, or
    ``{"status": "error", "message"}`` (project missing or dropped, a database error, no connection at the
    start). A connection lost while waiting (session terminated, server restarted, failover) is opened again,
    with backoff (1 s doubling up to ``poll_interval``), and the wait goes on.

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
        self.poll_interval = check_seconds("poll_interval", poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"job_name": self.job_name, "postgres_conn_id": self.postgres_conn_id,
                 "max_pending": self.max_pending, "max_stale": self.max_stale,
                 "max_lag_seconds": self.max_lag_seconds, "poll_interval": self.poll_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        backoff, connected = 1.0, False
        while True:
            try:
                async with await VectorizeHook(self.postgres_conn_id).aconnect() as conn:
                    connected, backoff = True, 1.0
                    payload = await self._until_fresh(conn)
            except psycopg.OperationalError as error:
                if not connected or not _connection_lost(error):
                    payload = self._error(error)  # cannot connect at all, a statement cancelled, ...
                else:  # the session ended (terminated, a restart, a failover): reconnect, keep waiting
                    log.warning("Project %r: connection lost (%s); reconnecting in %g s", self.job_name,
                                error, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, max(self.poll_interval, 1.0))
                    continue
            except psycopg.Error as error:
                payload = self._error(error)
            yield TriggerEvent(payload)
            return

    async def _until_fresh(self, conn: psycopg.AsyncConnection) -> dict[str, Any]:
        """Poll until every condition holds (the ``fresh`` event) or the project is gone (``error``)."""
        while True:
            # Read at every poll (one catalog row): alter_project(columns=...) changes what is fresh.
            project = await catalog.afind_project(conn, self.job_name)
            if project is None:
                return {"status": "error", "message": f"project {self.job_name!r} does not exist"}
            try:
                state = await freshness.ameasure(conn, project)
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as error:
                if await catalog.afind_project(conn, self.job_name) != project:
                    continue  # dropped or altered since it was read: read it again
                return {"status": "error", "message": (
                    f"project {self.job_name!r}: {error.diag.message_primary} — its source table, or a column of"
                    f" it, was dropped or renamed away. Put it back and run generation (or"
                    f" VectorizeHook.attach_source({self.job_name!r})), or drop the project")}
            if not state.unmet(self.max_pending, self.max_stale, self.max_lag_seconds):
                return {"status": "fresh", "job_name": self.job_name, **state.as_dict()}
            await asyncio.sleep(self.poll_interval)

    def _error(self, error: psycopg.Error) -> dict[str, Any]:
        return {"status": "error", "message": f"project {self.job_name!r}: {type(error).__name__}: {error}"}


def _connection_lost(error: psycopg.OperationalError) -> bool:
    """Whether the session ended or could not be opened again (worth a reconnect): no SQLSTATE (the socket
    closed), a connection exception (class 08) or a shutdown (57P01 admin, 57P02 crash, 57P03 cannot connect
    now). Not a statement cancelled (57014), a lock not available (55P03), ..."""
    state = error.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")
