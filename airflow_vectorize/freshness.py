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
from airflow_vectorize.naming import quoted


@dataclass(frozen=True)
class Freshness:
    """``pending``: rows queued by the realtime triggers (``queued``); ``stale``: rows with text whose embedding is
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


def queued(project: Project, bulk: bool, unqueued: sql.Composable | None = None) -> sql.Composable:
    """Rows queued for the next realtime run: the keys in the queue, plus the rows of the bulk writes it has
    not run for yet (``bulk``: the project has a ``_bulk_<job>`` table; one created before has none until its
    next generation run). A bulk row without a count (a large UPDATE's) makes that the rows due that are not
    in the queue (they include those of the other bulk rows): ``unqueued``, or counted by a scan of its own."""
    keys = sql.SQL("(SELECT count(*) FROM {})").format(project.names.queue)
    if not bulk:
        return keys
    if unqueued is None:
        p = row_sql(project)
        unqueued = sql.SQL(
            "(SELECT count(*) FROM {rows} WHERE {needs} AND {text} <> ''"
            " AND NOT EXISTS (SELECT FROM {queue} q WHERE {queued}))"
        ).format(rows=p["from"], needs=p["needs"], text=p["text"], queue=project.names.queue,
                 queued=project.key.equals("q", "r"))
    return sql.SQL(
        "({keys} + (SELECT CASE WHEN bool_or(b.rows IS NULL) THEN {unqueued} ELSE coalesce(sum(b.rows), 0) END"
        " FROM {bulk} b))"
    ).format(keys=keys, unqueued=unqueued, bulk=project.names.bulk)


def oldest(project: Project, bulk: bool) -> sql.Composable:
    """When the oldest row queued was (the queue's keys and the bulk writes not run for yet)."""
    oldest = sql.SQL("(SELECT min(enqueued_at) FROM {})").format(project.names.queue)
    if not bulk:
        return oldest
    return sql.SQL("least({}, (SELECT min(enqueued_at) FROM {}))").format(oldest, project.names.bulk)


BULK_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"


def statement(project: Project, bulk: bool) -> sql.Composed:
    """(pending, stale, lag, failed); one scan of the source counts the rows due, and those not queued (an
    outer join, not a correlated EXISTS, so that the scan may stay parallel)."""
    p = row_sql(project)
    rows, unqueued = p["from"], sql.SQL("NULL::bigint")
    if bulk:
        rows = sql.SQL("{} LEFT JOIN {} q ON {}").format(rows, project.names.queue, project.key.equals("q", "r"))
        unqueued = sql.SQL("count(*) FILTER (WHERE {} IS NULL)").format(sql.Identifier("q", project.key.columns[0]))
    return sql.SQL(
        "SELECT {queued}::bigint, d.stale,"
        " coalesce(extract(epoch FROM clock_timestamp() - {oldest}), 0)::float8,"
        " (SELECT count(*) FROM {errors})"
        " FROM (SELECT count(*) AS stale, {unqueued} AS unqueued FROM {rows} WHERE {needs} AND {text} <> '') d"
    ).format(queued=queued(project, bulk, sql.SQL("d.unqueued")), oldest=oldest(project, bulk), rows=rows,
             needs=p["needs"], text=p["text"], errors=project.names.errors, unqueued=unqueued)


def measure(conn: psycopg.Connection, project: Project) -> Freshness:
    bulk = conn.execute(BULK_EXISTS, [quoted(project.names.bulk_name)]).fetchone()[0]
    pending, stale, lag, failed = conn.execute(statement(project, bulk)).fetchone()
    return Freshness(pending, stale, round(lag, 3), failed)


async def ameasure(conn: psycopg.AsyncConnection, project: Project) -> Freshness:
    cur = await conn.execute(BULK_EXISTS, [quoted(project.names.bulk_name)])
    (bulk,) = await cur.fetchone()
    cur = await conn.execute(statement(project, bulk))
    pending, stale, lag, failed = await cur.fetchone()
    return Freshness(pending, stale, round(lag, 3), failed)
