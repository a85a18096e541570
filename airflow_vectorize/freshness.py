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


@dataclass(frozen=True)
class Tables:
    """Which of the tables a project created by an earlier version may lack it has (until its next generation
    run or writing call: ``storage.upgrade_layout``): ``bulk`` (``_bulk_<job>``), ``errors`` (``_errors_<job>``;
    none: no row failed). Read-only calls read around a missing one instead of creating it."""

    bulk: bool = True
    errors: bool = True


PRESENT = "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL"


def present_params(project: Project) -> list[str]:
    """``PRESENT``'s parameters for ``project``."""
    return [quoted(project.names.bulk_name), quoted(project.names.errors_name)]


def tables(cur: psycopg.Cursor, project: Project) -> Tables:
    """The project's ``Tables`` (one catalog read)."""
    return Tables(*cur.execute(PRESENT, present_params(project)).fetchone())


async def atables(conn: psycopg.AsyncConnection, project: Project) -> Tables:
    """``tables`` on an async connection."""
    cur = await conn.execute(PRESENT, present_params(project))
    return Tables(*await cur.fetchone())


def queued(project: Project, present: Tables, unqueued: sql.Composable | None = None,
           exact: bool = True) -> sql.Composable:
    """Rows queued for the next realtime run: the keys in the queue, plus, while a bulk write waits for its
    run (when the project has a ``_bulk_<job>`` table: ``present.bulk``), the rows due that are not in the
    queue: ``unqueued``, or counted by a scan of its own. Not a bulk insert's recorded count: its rows may
    have been imported, deleted, queued again by an update or have no text since (``statement``'s scan
    counts them for nothing more). Not ``exact`` (the pending trigger's poll, which only announces work and
    must not scan the source while a long run embeds a bulk write): the bulk inserts' recorded counts, a scan
    only for a bulk row without one."""
    keys = sql.SQL("(SELECT count(*) FROM {})").format(project.names.queue)
    if not present.bulk:
        return keys
    if unqueued is None:
        p = row_sql(project, errors=present.errors)
        unqueued = sql.SQL(
            "(SELECT count(*) FROM {rows} WHERE {needs} AND {text} <> ''"
            " AND NOT EXISTS (SELECT FROM {queue} q WHERE {queued}))"
        ).format(rows=p["from"], needs=p["needs"], text=p["text"], queue=project.names.queue,
                 queued=project.key.equals("q", "r"))
    if not exact:
        return sql.SQL(
            "({keys} + (SELECT CASE WHEN bool_or(b.rows IS NULL) THEN {unqueued} ELSE coalesce(sum(b.rows), 0) END"
            " FROM {bulk} b))").format(keys=keys, unqueued=unqueued, bulk=project.names.bulk)
    return sql.SQL("({keys} + CASE WHEN EXISTS (SELECT FROM {bulk}) THEN {unqueued} ELSE 0 END)").format(
        keys=keys, unqueued=unqueued, bulk=project.names.bulk)


def oldest(project: Project, bulk: bool, unqueued: sql.Composable | None = None) -> sql.Composable:
    """When the oldest row queued was (the queue's keys and the bulk writes not run for yet; with ``unqueued``,
    the bulk writes only while rows due are not in the queue)."""
    oldest = sql.SQL("(SELECT min(enqueued_at) FROM {})").format(project.names.queue)
    if not bulk:
        return oldest
    bulk_oldest = sql.SQL("(SELECT min(enqueued_at) FROM {})").format(project.names.bulk)
    if unqueued is not None:
        bulk_oldest = sql.SQL("CASE WHEN {} > 0 THEN {} END").format(unqueued, bulk_oldest)
    return sql.SQL("least({}, {})").format(oldest, bulk_oldest)


def statement(project: Project, present: Tables) -> sql.Composed:
    """(pending, stale, lag, failed); one scan of the source counts the rows due, and those not queued (an
    outer join, not a correlated EXISTS, so that the scan may stay parallel)."""
    p = row_sql(project, errors=present.errors)
    rows, unqueued = p["from"], sql.SQL("NULL::bigint")
    if present.bulk:
        rows = sql.SQL("{} LEFT JOIN {} q ON {}").format(rows, project.names.queue, project.key.equals("q", "r"))
        unqueued = sql.SQL("count(*) FILTER (WHERE {} IS NULL)").format(sql.Identifier("q", project.key.columns[0]))
    failed = sql.SQL("(SELECT count(*) FROM {})").format(project.names.errors) if present.errors else sql.SQL("0")
    return sql.SQL(
        "SELECT {queued}::bigint, d.stale,"
        " coalesce(extract(epoch FROM clock_timestamp() - {oldest}), 0)::float8, {failed}::bigint"
        " FROM (SELECT count(*) AS stale, {unqueued} AS unqueued FROM {rows} WHERE {needs} AND {text} <> '') d"
    ).format(queued=queued(project, present, sql.SQL("d.unqueued")),
             oldest=oldest(project, present.bulk, sql.SQL("d.unqueued")),
             rows=rows, needs=p["needs"], text=p["text"], failed=failed, unqueued=unqueued)


def measure(conn: psycopg.Connection, project: Project) -> Freshness:
    pending, stale, lag, failed = conn.execute(statement(project, tables(conn.cursor(), project))).fetchone()
    return Freshness(pending, stale, round(lag, 3), failed)


async def ameasure(conn: psycopg.AsyncConnection, project: Project) -> Freshness:
    cur = await conn.execute(statement(project, await atables(conn, project)))
    pending, stale, lag, failed = await cur.fetchone()
    return Freshness(pending, stale, round(lag, 3), failed)
