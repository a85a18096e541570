"""How fresh a project's embeddings are: queued rows, rows due, and the age of the oldest queued row.

One statement, run by ``VectorizeHook.get_freshness`` and, on an async connection, by
``FreshnessTrigger`` (the deferrable ``VectorizeFreshnessSensor``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from airflow_vectorize.catalog import Project
from airflow_vectorize.generation import row_sql


@dataclass(frozen=True)
class Freshness:
    """``pending``: rows queued by the realtime triggers; ``stale``: rows with text whose embedding is
    missing or out of date (queued or not), except those given up on; ``lag_seconds``: age of the oldest
    queued row (0 if none); ``failed``: rows in the project's errors table."""

    pending: int
    stale: int
    lag_seconds: float
    failed: int = 0

    def unmet(self, max_pending: int | None = 0, max_stale: int | None = 0,
              max_lag_seconds: float | None = None) -> list[str]:
        """The conditions not met yet, in words; empty when the project is fresh enough."""
        unmet = []
        if max_pending is not None and self.pending > max_pending:
            unmet.append(f"{self.pending} pending > {max_pending}")
        if max_stale is not None and self.stale > max_stale:
            unmet.append(f"{self.stale} stale > {max_stale}")
        if max_lag_seconds is not None and self.lag_seconds > max_lag_seconds:
            unmet.append(f"lag {self.lag_seconds:.1f} s > {max_lag_seconds} s")
        return unmet

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def statement(project: Project) -> sql.Composed:
    p = row_sql(project)
    return sql.SQL(
        "SELECT (SELECT count(*) FROM {queue}),"
        " (SELECT count(*) FROM {rows} WHERE {needs} AND {text} <> ''),"
        " coalesce(extract(epoch FROM clock_timestamp() - (SELECT min(enqueued_at) FROM {queue})), 0)::float8,"
        " (SELECT count(*) FROM {errors})"
    ).format(queue=project.names.queue, rows=p["from"], needs=p["needs"], text=p["text"], errors=project.names.errors)


def measure(conn: psycopg.Connection, project: Project) -> Freshness:
    pending, stale, lag, failed = conn.execute(statement(project)).fetchone()
    return Freshness(pending, stale, round(lag, 3), failed)


async def ameasure(conn: psycopg.AsyncConnection, project: Project) -> Freshness:
    cur = await conn.execute(statement(project))
    pending, stale, lag, failed = await cur.fetchone()
    return Freshness(pending, stale, round(lag, 3), failed)
