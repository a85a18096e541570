"""PendingRowsTrigger: an event trigger that fires when a project's realtime triggers queue rows.

It LISTENs on the project's channel (``vectorize_<job>``, notified at commit by the queue triggers), so an
insert is seen within milliseconds, and polls the queue every ``poll_interval`` seconds in case a
notification is missed (a project created by an older version, a pooler without LISTEN, a reconnect).
A burst of notifications within ``debounce`` seconds becomes one event; Airflow then queues one DAG run
for all events that arrive before the scheduler creates it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import psycopg
from airflow.triggers.base import BaseEventTrigger, TriggerEvent
from psycopg import sql

from airflow_vectorize import catalog, freshness, removal
from airflow_vectorize.catalog import Project
from airflow_vectorize.exceptions import InvalidInputError
from airflow_vectorize.hooks.vectorize import VectorizeHook
from airflow_vectorize.naming import quoted
from airflow_vectorize.validation import check_seconds

log = logging.getLogger(__name__)


class PendingRowsTrigger(BaseEventTrigger):
    """Fire ``{"job_name", "pending"}`` whenever rows are queued for the project ``job_name``.

    Fires once at start when rows are already queued; then on every (debounced) notification that finds
    rows queued, and on a poll (or a reconnect) that finds rows queued after the last event, or rows still
    queued ``refire_after`` seconds after the last event whose oldest is as old (the run it scheduled failed
    for good, say: the rows would otherwise wait for the next write). Fires
    ``{"job_name", "pending", "partitions_changed": True}`` on a poll that finds a partitioned source's
    partitions changed since the last run (a partition attached brings rows no trigger queued). Survives a
    lost connection (reconnects with backoff) and waits for a project that does not exist yet, or no longer:
    after a ``drop_project`` it waits for the project to be created again, then listens to it.

    :param job_name: the project (created with ``schedule="realtime"``).
    :param postgres_conn_id: the Airflow connection to its database.
    :param poll_interval: seconds between polls of the queue when no notification arrives.
    :param debounce: seconds to collect further notifications after the first, for one event.
    :param refire_after: seconds after which rows left in the queue are announced again (at most once per
        ``refire_after``, at a poll); None never announces the same rows twice.
    """

    def __init__(self, job_name: str, postgres_conn_id: str = VectorizeHook.default_conn_name,
                 poll_interval: float = 30.0, debounce: float = 0.5,
                 refire_after: float | None = 600.0) -> None:
        super().__init__()
        if refire_after is not None and (isinstance(refire_after, bool) or not isinstance(refire_after, (int, float))
                                         or refire_after <= 0):
            raise InvalidInputError(f"refire_after must be a positive number of seconds or None, got {refire_after!r}")
        self.job_name = job_name
        self.postgres_conn_id = postgres_conn_id
        self.poll_interval = check_seconds("poll_interval", poll_interval)
        self.debounce = check_seconds("debounce", debounce, zero_ok=True)
        self.refire_after = None if refire_after is None else float(refire_after)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"job_name": self.job_name, "postgres_conn_id": self.postgres_conn_id,
                 "poll_interval": self.poll_interval, "debounce": self.debounce,
                 "refire_after": self.refire_after})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        announced: datetime | None = None  # the newest enqueued_at an event has covered
        partitions_announced: str | None = None  # the partitions an event said changed (none yet)
        fired: float | None = None  # time.monotonic() of the last event
        backoff = 1.0
        while True:
            try:
                async with await VectorizeHook(self.postgres_conn_id).aconnect() as conn:
                    warned = False  # about a project, or a table of it, that is missing
                    while True:
                        project = await self._wait_for_project(conn, warned)
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(project.names.channel)))
                        # (Re)connected: rows queued before are announced if newer than the last event.
                        backoff, notified = 1.0, False
                        try:
                            while True:
                                pending, newest, lag = await _queue_state(conn, project)
                                partitions = await _partitions_changed(conn, project)
                                if partitions is not None and partitions != partitions_announced:
                                    partitions_announced, announced, fired = partitions, newest, time.monotonic()
                                    yield TriggerEvent({"job_name": self.job_name, "pending": pending,
                                                        "partitions_changed": True})
                                elif pending and (notified or announced is None or newest > announced
                                                  or self._left_queued(lag, fired)):
                                    announced, fired = newest, time.monotonic()
                                    yield TriggerEvent({"job_name": self.job_name, "pending": pending})
                                warned = False
                                notified = await self._wait(conn)
                        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as error:
                            now = await catalog.afind_project(conn, self.job_name)
                            if now is not None and now.job_id == project.job_id:
                                # the project is there, a table of it is not (its source dropped or renamed
                                # away): wait for it, as for a dropped project; dying would only make the
                                # triggerer start the watcher again, to fail again, at every loop
                                await self._wait_for_table(error, warned)
                                warned = True
                                continue
                            # Dropped (and maybe created again): wait for it as at the start; a project
                            # created again has a new queue, announced as at the start.
                            log.warning("Project %r was dropped; waiting for it to exist again (checking every"
                                        " %g s)", self.job_name, self.poll_interval)
                            warned, announced, partitions_announced = True, None, None
            except psycopg.OperationalError as error:
                log.warning("Project %r: connection lost (%s); reconnecting in %g s", self.job_name,
                            error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.poll_interval)

    def _left_queued(self, lag: float, fired: float | None) -> bool:
        """Rows announced already are still queued ``refire_after`` seconds later: announce them again."""
        if self.refire_after is None or lag < self.refire_after:
            return False
        if fired is not None and time.monotonic() - fired < self.refire_after:
            return False
        log.info("Project %r: rows queued for %.0f s, none embedded since the last event; announcing them again",
                 self.job_name, lag)
        return True

    async def _wait_for_project(self, conn: psycopg.AsyncConnection, warned: bool = False) -> Project:
        while (project := await catalog.afind_project(conn, self.job_name)) is None:
            if not warned:
                log.warning("Project %r does not exist (yet); checking every %g s", self.job_name,
                            self.poll_interval)
                warned = True
            await asyncio.sleep(self.poll_interval)
        return project

    async def _wait_for_table(self, error: psycopg.Error, warned: bool) -> None:
        """Sleep ``poll_interval`` while a table of the project, or a column of its source, is missing, saying
        once what is wrong and the way out."""
        if not warned:
            log.warning("Project %r: %s — its source table, or a column of it, was dropped or renamed away. Put a"
                        " table with its key and columns under that name and run generation (or"
                        " VectorizeHook.attach_source(%r)), or drop the project; checking every %g s",
                        self.job_name, error.diag.message_primary,
                        self.job_name, self.poll_interval)
        await asyncio.sleep(self.poll_interval)

    async def _wait(self, conn: psycopg.AsyncConnection) -> bool:
        """Wait for a notification (True) or the poll interval (False); a burst counts as one."""
        notified = False
        async for _ in conn.notifies(timeout=self.poll_interval, stop_after=1):
            notified = True
        if notified and self.debounce > 0:
            async for _ in conn.notifies(timeout=self.debounce):
                pass
        return notified


async def _queue_state(conn: psycopg.AsyncConnection, project: Project) -> tuple[int, datetime | None, float]:
    """(rows queued, when the newest was, age in seconds of the oldest or 0): the queue's keys and the rows
    bulk inserts recorded (``freshness.queued``, not exact: no scan of the source at every poll while a long
    run embeds a bulk write; the run finds what is due)."""
    present = await freshness.atables(conn, project)
    newest = sql.SQL("(SELECT max(enqueued_at) FROM {})").format(project.names.queue)
    if present.bulk:
        newest = sql.SQL("greatest({}, (SELECT max(enqueued_at) FROM {}))").format(newest, project.names.bulk)
    cur = await conn.execute(sql.SQL(
        "SELECT {}::bigint, {}, coalesce(extract(epoch FROM clock_timestamp() - {}), 0)::float8"
    ).format(freshness.queued(project, present, exact=False), newest, freshness.oldest(project, present.bulk)))
    return await cur.fetchone()


async def _partitions_changed(conn: psycopg.AsyncConnection, project: Project) -> str | None:
    """A partitioned source's partitions, when they changed since the last run (``removal.PARTITIONS_CHANGED``):
    a partition attached brings rows no trigger queued."""
    source = project.names.source.as_string(conn)
    cur = await conn.execute(removal.PARTITIONS_CHANGED, [source, source, quoted(project.names.removed_name)])
    row = await cur.fetchone()
    return None if row is None else row[0]
