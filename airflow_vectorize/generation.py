"""Embedding generation: the DAG is pg_vectorize's background worker.

A run embeds the rows of a project that need it — no embedding yet, or text changed since it was embedded
(the stored md5 of the embedded text differs from the current one) — optionally limited to an
``update_col`` interval ``[since, until)`` and to one hash partition of the keys. Queued realtime work is
removed once the row's embedding is current.

Pipeline, per batch: claim the keys (transaction-scoped advisory locks, so concurrent runs never embed the
same row) and re-read their current text in a writer transaction -> encode -> binary COPY into a staging
table -> one set-based upsert -> dequeue -> commit. Writer connections take turns so the database work
of one batch overlaps the encoding of the next (with a remote model, several batches are in flight
at once: ``concurrency``). Keys come from one scan that counts the rows due and keeps their keys in a
cursor WITH HOLD (``DueKeys``), ordered by text length, so batches pad little (a local model then orders a
batch's texts by tokens: ``LocalModel.embed``). A killed run keeps its committed batches; its retry starts
where it stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from airflow_vectorize import catalog, expressions, index_build, storage
from airflow_vectorize.catalog import Project
from airflow_vectorize.chunking import Chunk, TextSplitter
from airflow_vectorize.exceptions import (
    EmbeddingFailuresError,
    InvalidInputError,
    ModelRequestError,
    ModelResponseError,
    ProjectConflictError,
    ProjectNotFoundError,
)
from airflow_vectorize.naming import quoted
from airflow_vectorize.validation import HALFVEC_MAX

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_ATTEMPTS = 3  # a row that failed this often with the same text is skipped until it changes
DEFAULT_MAX_FAILED_SHARE = 0.1  # a run fails when more of its rows than this could not be embedded
PROGRESS_EVERY_SECONDS = 10.0
# Characters a token of English prose takes in WordPiece/BPE vocabularies (man pages with all-MiniLM-L6-v2:
# 4.4): a chunked run's text volume gives an estimate of the chunks it writes.
CHARACTERS_PER_TOKEN = 4
# A key as text (its hash partition, its row lock) must be the same in every run's session: PGTZ, PGDATESTYLE
# or a connection's ``options`` could otherwise make two workers split a timestamptz or date key differently
# (rows in no partition, or in two). Generation's sessions render keys with these settings.
KEY_TEXT_SETTINGS = {"TimeZone": "UTC", "DateStyle": "ISO, MDY", "IntervalStyle": "postgres",
                     "extra_float_digits": "1", "bytea_output": "hex", "lc_monetary": "C"}


@dataclass(frozen=True)
class Scope:
    """Which rows a run looks at: an update_col interval, a hash partition of the keys, and (for realtime
    runs) only the rows the project's triggers queued, or that the model refused before."""

    since: datetime | str | None = None
    until: datetime | str | None = None
    partition_index: int = 0
    partition_count: int = 1
    pending_only: bool = False
    # The TimeZone a ``timestamp`` (without time zone) update_col is read in: the connection's, which its
    # writers' now() used (a run's own sessions are on UTC, KEY_TEXT_SETTINGS); None for a timestamptz column.
    update_col_zone: str | None = None

    @property
    def whole(self) -> bool:
        """Every row of the table: no update_col interval, no hash partition (pending_only aside)."""
        return self.since is None and self.until is None and self.partition_count == 1

    def check(self, cur: psycopg.Cursor, project: Project) -> Scope:
        """Refuse a scope that cannot be run: since/until without an update_col, or that are not timestamps
        (read by PostgreSQL in the connection's TimeZone, as an offset-less value means there), or an empty
        interval; a partition out of range. Returns the scope to run: its bounds as UTC datetimes, and the zone
        of a ``timestamp`` update_col."""
        if (self.since is not None or self.until is not None) and project.update_time_col is None:
            raise InvalidInputError(
                f"since/until need an update_col, but project {project.name!r} was created without one"
            )
        if not isinstance(self.partition_count, int) or self.partition_count < 1:
            raise InvalidInputError(f"partition_count must be a positive integer, got {self.partition_count!r}")
        if not isinstance(self.partition_index, int) or not 0 <= self.partition_index < self.partition_count:
            raise InvalidInputError(
                f"partition_index must be in [0, {self.partition_count}), got {self.partition_index!r}"
            )
        if self.since is None and self.until is None:
            return self
        since, until = (_timestamp(cur, name, value) for name, value in (("since", self.since), ("until", self.until)))
        if since is not None and until is not None and cur.execute(
                "SELECT %s::timestamptz >= %s::timestamptz", [since, until]).fetchone()[0]:
            raise InvalidInputError(
                f"since must be before until: [{self.since}, {self.until}) holds no time, so the run would embed"
                " nothing. A DAG run's data interval is empty with Airflow 3's cron schedules (\"@daily\"):"
                " schedule with CronDataIntervalTimetable for intervals"
            )
        zone = cur.execute("SELECT current_setting('TimeZone') FROM pg_attribute WHERE attrelid = %s::regclass"
                           " AND attname = %s AND atttypid = 'timestamp'::regtype",
                           [quoted((project.schema, project.relation)), project.update_time_col]).fetchone()
        return replace(self, since=since, until=until, update_col_zone=zone[0] if zone else None)

    def condition(self, project: Project) -> tuple[sql.Composable, list[Any]]:
        """SQL condition on the source alias ``r`` and its bound values."""
        parts: list[sql.Composable] = [sql.SQL("TRUE")]
        params: list[Any] = []
        column = sql.Identifier(project.update_time_col) if project.update_time_col else None
        bound = sql.SQL("%s::timestamptz") if self.update_col_zone is None else sql.SQL("(%s::timestamptz AT TIME ZONE %s)")
        for value, operator in ((self.since, ">="), (self.until, "<")):
            if value is not None:
                parts.append(sql.SQL("r.{} {} {}").format(column, sql.SQL(operator), bound))
                params += [value] if self.update_col_zone is None else [value, self.update_col_zone]
        if self.partition_count > 1:
            parts.append(sql.SQL("abs(hashtextextended({}, 0) %% %s) = %s").format(project.key.as_text("r")))
            params += [self.partition_count, self.partition_index]
        if self.pending_only:  # a realtime run reads the (small) queue, not the whole source, and the rows
            # refused before, which left the queue for the errors table: tried again up to max_attempts
            # (``needs`` leaves out those given up on), by Airflow's retry of the failed task too
            parts.append(sql.SQL("({r_keys}) IN (SELECT {keys} FROM {queue} UNION SELECT {keys} FROM {errors})").format(
                r_keys=project.key.names("r"), keys=project.key.names(), queue=project.names.queue,
                errors=project.names.errors))
        return sql.SQL(" AND ").join(parts), params


def _timestamp(cur: psycopg.Cursor, name: str, value: datetime | str | None) -> datetime | str | None:
    """``value`` (since / until) as PostgreSQL reads it in this session: an aware UTC datetime (infinity as
    text); ``InvalidInputError`` when it is no timestamp."""
    if value is None:
        return None
    try:
        with cur.connection.transaction():  # a savepoint: the caller's transaction goes on
            moment, text = cur.execute("SELECT CASE WHEN isfinite(t) THEN t END, t::text FROM (SELECT %s::timestamptz t) s",
                                       [value]).fetchone()
    except psycopg.errors.DataError as error:
        hint = (" (a rendered '{{ data_interval_start }}' is 'None' in a DAG run without a data interval)"
                if str(value) == "None" else "")
        raise InvalidInputError(f"{name} must be a timestamp, got {value!r}: {error.diag.message_primary}"
                                f"{hint}") from error
    return text if moment is None else moment.astimezone(timezone.utc)


def row_sql(project: Project, max_attempts: int | None = None, errors: bool = True) -> dict[str, sql.Composable]:
    """SQL pieces for 'source rows with their stored embedding's md5' and 'needs embedding': no current
    embedding, and not a row that failed ``max_attempts`` times with the same text (``failed``; None: the
    ``max_attempts`` of the project's last generation run, so status and freshness judge as it did).
    ``errors``: the project has its errors table (one created before it has none, and no failed row, until
    its next generation run or writing call: ``storage.upgrade_layout``)."""
    if max_attempts is None:
        max_attempts = project.max_attempts or DEFAULT_MAX_ATTEMPTS
    stored_md5 = sql.Identifier("e" if project.is_join else "r", project.names.text_md5_column)
    text_md5 = expressions.text_md5(project, "r")
    # IS NOT DISTINCT FROM, not '=': an '=' would be a hash key of the anti-join with the errors table, and every
    # row's md5 computed for it as well as for the comparison with the stored one; as a join filter, only the
    # rows in the errors table compute it there.
    failed = sql.SQL(
        "EXISTS (SELECT 1 FROM {errors} x WHERE {same_key} AND x.attempts >= {attempts}"
        " AND x.text_md5 IS NOT DISTINCT FROM {current})"
    ).format(errors=project.names.errors, same_key=project.key.equals("x", "r"),
             attempts=sql.Literal(max_attempts), current=text_md5) if errors else sql.SQL("false")
    return {
        "from": expressions.stored_rows(project),
        "needs": sql.SQL("{stored} IS DISTINCT FROM {current} AND NOT {failed}").format(
            stored=stored_md5, current=text_md5, failed=failed),
        "failed": failed,
        "current": sql.SQL("{stored} = {current}").format(stored=stored_md5, current=text_md5),
        "stored": stored_md5,
        "text": expressions.text(project, "r"),
        "md5": text_md5,
        "key": project.key.names("r"),
    }


def queue_due_rows(cur: psycopg.Cursor, project: Project) -> int:
    """Queue every source row that needs embedding (one scan of the source); returns how many were new."""
    p = row_sql(project)
    cur.execute(sql.SQL(
        "INSERT INTO {queue} ({keys}) SELECT {r_keys} FROM {rows} WHERE {needs} ON CONFLICT DO NOTHING"
    ).format(queue=project.names.queue, keys=project.key.names(), r_keys=p["key"], rows=p["from"],
             needs=p["needs"]))
    return cur.rowcount


@dataclass(frozen=True)
class RowFailure:
    """A row the model could not embed: its key, the error, the md5 of the text that failed."""

    key: Any
    error: str
    text_md5: Any
    attempts: int = 0  # after this run's attempt (1: the first failure of this text)
    first_seen: datetime | None = None  # when this text first failed


@dataclass
class Encoded:
    """A batch after encoding: the rows embedded (with their vectors, and chunks for a chunked project)
    and the rows that failed."""

    rows: list[tuple[Any, str, Any]]
    vectors: list[Any]
    chunks: list[list[Chunk]] | None
    failures: list[RowFailure]

    def __add__(self, other: Encoded) -> Encoded:
        chunks = None if self.chunks is None else self.chunks + other.chunks
        return Encoded(self.rows + other.rows, self.vectors + other.vectors, chunks,
                       self.failures + other.failures)


CONTROL_TEXT = "control"  # what a refused batch is checked against: a text any model embeds


def encode_rows(rows: list[tuple[Any, str, Any]], encode: Callable[[list[str]], Any],
                splitter: TextSplitter | None, input_errors: tuple[type[Exception], ...],
                control: bool = True) -> Encoded:
    """Encode the rows' texts (their chunks' texts for a chunked project). When the model raises one of
    its ``input_errors``, halve the batch until the offending rows are alone; they become failures and
    the others are still embedded.

    A refused batch is first checked with one request of ``CONTROL_TEXT`` (``control``; the halves are not
    checked again): refused too, the model refuses every request (a proxy's exhausted budget, a key without
    access), not these rows' texts: ModelRequestError, no row recorded, and the batch stays due."""
    try:
        texts = [text for _, text, _ in rows]
        chunks = splitter.split_all(texts) if splitter else None
        vectors = encode([c.text for row in chunks for c in row] if chunks else texts)
        return Encoded(rows, list(vectors), chunks, [])
    except input_errors as error:
        if control:
            _check_control(encode, input_errors, error, len(rows))
        if len(rows) == 1:
            (key, _, md5), = rows
            message = f"{type(error).__name__}: {error}"[:2000]
            return Encoded([], [], None if splitter is None else [], [RowFailure(key, message, md5)])
        half = len(rows) // 2
        return (encode_rows(rows[:half], encode, splitter, input_errors, control=False)
                + encode_rows(rows[half:], encode, splitter, input_errors, control=False))


def _check_control(encode: Callable[[list[str]], Any], input_errors: tuple[type[Exception], ...],
                   error: Exception, rows: int) -> None:
    """ModelRequestError when the model refuses ``CONTROL_TEXT`` as it refused a batch of ``rows`` rows."""
    try:
        encode([CONTROL_TEXT])
    except input_errors as refused:
        raise ModelRequestError(
            f"{error}; a control request of one short text was refused too ({type(refused).__name__}): the model"
            f" refuses every request, not these rows' texts. None of the batch's {rows} row(s) was recorded as"
            " failed; they stay due for the next run"
        ) from error


class BatchWriter:
    """One writer connection: claims a batch of keys, then writes its embeddings set-based and commits."""

    def __init__(self, conn: psycopg.Connection, project: Project,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self.conn = conn
        self.project = project
        self.parts = row_sql(project, max_attempts)
        register_vector(conn)
        self.key = key = project.key
        chunk_columns = sql.SQL(
            ", ADD COLUMN chunk_no integer, ADD COLUMN start_offset integer, ADD COLUMN end_offset integer,"
            " ADD COLUMN chunk text" if project.is_chunked else "")
        with conn.transaction():
            conn.execute(sql.SQL(
                "CREATE TEMP TABLE vectorize_staging ON COMMIT DELETE ROWS AS SELECT {keys} FROM {source}"
                " WITH NO DATA; ALTER TABLE vectorize_staging ADD COLUMN embeddings {vector},"
                " ADD COLUMN text_md5 uuid{chunk_columns}"
            ).format(keys=key.names(), source=project.names.source, chunk_columns=chunk_columns,
                     vector=sql.SQL("vector({})").format(sql.Literal(project.dimensions))))
            if project.is_chunked:  # the keys of a batch's rows still current (``storage.upsert_from_staging``)
                conn.execute(sql.SQL("CREATE TEMP TABLE vectorize_current ON COMMIT DELETE ROWS AS SELECT {keys}"
                                     " FROM {source} WITH NO DATA").format(keys=key.names(), source=project.names.source))
            self.documents = storage.has_documents(conn.cursor(), project)
            # How COPY writes each column: strings and enums (char(n), citext, an enum) as text, whose binary
            # form theirs is (psycopg has no binary dumper for most of them); a domain as its base type.
            self.types = [r[0] for r in conn.execute(
                "SELECT CASE WHEN t.typcategory IN ('S', 'E') THEN 'text'::regtype::oid"
                " ELSE coalesce(nullif(t.typbasetype, 0), t.oid) END"
                " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
                " WHERE a.attrelid = 'pg_temp.vectorize_staging'::regclass AND a.attnum > 0 ORDER BY a.attnum")]
        self.transaction: psycopg.Transaction | None = None
        self.dequeued = 0
        self.held_elsewhere = 0  # rows due that another run held (locked) when a batch was claimed

    def claim(self, keys: list[Any]) -> list[tuple[Any, str, Any]]:
        """Begin a transaction; lock the keys no other run holds; return (key, text, md5) of those still due."""
        self.transaction = self.conn.transaction()
        self.transaction.__enter__()
        check_still_there(self.conn.cursor(), self.project)
        if self.project.is_join:  # the lock its write takes, now: an import that swaps the table in (SHARE,
            # then ACCESS EXCLUSIVE) waits for this batch, instead of a deadlock with its write. The source
            # first, as drop_project and searches take them.
            self.conn.execute(sql.SQL("LOCK TABLE ONLY {} IN ACCESS SHARE MODE; LOCK TABLE {} IN ROW EXCLUSIVE MODE")
                              .format(self.project.names.source, self.project.names.target))
        p, key, names = self.parts, self.key, self.key.aliases()
        # The lock is taken in the outer query, on the rows of the batch only: a condition beside the key's
        # (a semi-join for a composite key) could be evaluated first, on every row of the table.
        rows = self.conn.execute(sql.SQL(
            "SELECT {names}, t, m, pg_try_advisory_xact_lock(hashtextextended(%s || {key_text}, 0)) FROM"
            " (SELECT {keys}, {text} AS t, {md5} AS m FROM {from_} WHERE {claimed} AND {needs} AND {text} <> ''"
            " OFFSET 0) c ORDER BY length(t)"
        ).format(names=names.names("c"), keys=key.select_as("r", names), text=p["text"], md5=p["md5"],
                 from_=p["from"], needs=p["needs"], claimed=key.in_values("r", self.project.names.source),
                 key_text=names.as_text("c")),
            [f"vectorize:{self.project.name}:", key.bind(keys)]).fetchall()
        self.held_elsewhere += sum(1 for row in rows if not row[-1])  # another run is embedding them
        claimed = [(key.value(row), row[-3], row[-2]) if key.composite else row[:3] for row in rows if row[-1]]
        if not claimed:
            return claimed
        # A run that committed some of these rows after this statement's snapshot was taken released their
        # locks before this statement took them: they are embedded already. Look again on a new snapshot
        # (the locks now held, no other run can write them meanwhile).
        due = {key.value(row) for row in self.conn.execute(sql.SQL(
            "SELECT {keys} FROM {from_} WHERE {claimed} AND {needs}"
        ).format(keys=key.names("r"), from_=p["from"], needs=p["needs"],
                 claimed=key.in_values("r", self.project.names.source)), [key.bind(k for k, _, _ in claimed)])}
        return [row for row in claimed if row[0] in due]

    def write(self, rows: list[tuple[Any, str, Any]], vectors: Any,
              chunks: list[list[Chunk]] | None = None,
              failures: Sequence[RowFailure] = ()) -> tuple[int, list[RowFailure]]:
        """COPY the batch into staging, upsert it, dequeue what is now current, record the rows that could
        not be embedded (and clear the errors of those that now could), commit. Returns the rows written
        and the failures with their attempts.

        ``chunks``: for a chunked project, each row's chunks; ``vectors`` then has one row per chunk.
        """
        project, p, values = self.project, self.parts, self.key.flat
        try:
            with self.conn.cursor() as cur:
                with cur.copy("COPY vectorize_staging FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(self.types)
                    if chunks is None:
                        for (key, _, md5), vector in zip(rows, vectors):
                            copy.write_row((*values(key), vector, md5))
                    else:
                        flat = ((key, md5, chunk) for (key, _, md5), row_chunks in zip(rows, chunks)
                                for chunk in row_chunks)
                        for (key, md5, chunk), vector in zip(flat, vectors):
                            copy.write_row((*values(key), vector, md5, chunk.number, chunk.start, chunk.end, chunk.text))
                written = storage.upsert_from_staging(cur, project, self.documents)
                dequeued = dequeue(cur, project, sql.SQL("{} AND {}").format(
                    p["current"], self.key.in_values("q", project.names.source)), [self.key.bind(r[0] for r in rows)])
                failures = self._record_errors(cur, [row[0] for row in rows], failures)
            self.commit()
            self.dequeued += dequeued
            return written, failures
        except BaseException:
            self.rollback()
            raise

    def _record_errors(self, cur: psycopg.Cursor, written: list[Any],
                       failures: Sequence[RowFailure]) -> list[RowFailure]:
        """Clear the errors of written rows; upsert those of failed rows (attempts restart when the text
        changed) and take them off the queue: they are tracked in the errors table now."""
        project, key = self.project, self.key
        listed = key.in_values(None, project.names.source)
        if written:
            cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(project.names.errors, listed), [key.bind(written)])
        if not failures:
            return []
        cur.executemany(sql.SQL(
            "INSERT INTO {errors} ({pk}, error, text_md5) VALUES ({values}, %s, %s) ON CONFLICT ({pk}) DO UPDATE"
            " SET error = excluded.error, last_seen = clock_timestamp(), text_md5 = excluded.text_md5,"
            " attempts = CASE WHEN {errors}.text_md5 IS NOT DISTINCT FROM excluded.text_md5"
            " THEN {errors}.attempts + 1 ELSE 1 END,"
            " first_seen = CASE WHEN {errors}.text_md5 IS NOT DISTINCT FROM excluded.text_md5"
            " THEN {errors}.first_seen ELSE clock_timestamp() END RETURNING attempts, first_seen"
        ).format(errors=project.names.errors, pk=key.names(), values=sql.SQL(", ").join([sql.Placeholder()] * len(key.columns))),
            [(*key.flat(f.key), f.error, f.text_md5) for f in failures], returning=True)
        recorded = []
        while True:
            recorded.append(cur.fetchone())
            if not cur.nextset():
                break
        dequeue(cur, project, sql.SQL(  # not a row whose text changed since it failed: that one is due again
            "{} AND EXISTS (SELECT FROM {} x WHERE {} AND x.text_md5 IS NOT DISTINCT FROM {})"
        ).format(key.in_values("q", project.names.source), project.names.errors, key.equals("x", "r"),
                 self.parts["md5"]), [key.bind(f.key for f in failures)])
        return [replace(f, attempts=n, first_seen=seen) for f, (n, seen) in zip(failures, recorded)]

    def commit(self) -> None:
        if self.transaction is not None:
            transaction, self.transaction = self.transaction, None
            transaction.__exit__(None, None, None)

    def rollback(self) -> None:
        if self.transaction is not None:
            transaction, self.transaction = self.transaction, None
            transaction.__exit__(RuntimeError, RuntimeError("rolled back"), None)


@dataclass(frozen=True)
class Due:
    """What a run has to do: the rows to embed, the rows due that have no text at all, and the characters of
    the texts to embed."""

    rows: int = 0
    without_text: int = 0
    characters: int = 0


class DueKeys:
    """The rows due in a scope, counted (``due``), and their keys, shortest text first, ``batch_size`` at a
    time, from one scan.

    The scan fills a cursor WITH HOLD: ``conn`` is in autocommit, so the server keeps the cursor's rows once the
    scan's own transaction has committed. Reading them then holds no snapshot, which would hold VACUUM back
    for a whole backfill, and no lock, which would keep a bulk run from dropping the index after the count.
    Every row carries the counts (window aggregates over the rows due); rows without text come last (length
    0) and are left out of the batches; those that still have a stored embedding (their text was cleared
    since) are listed in ``emptied``."""

    def __init__(self, conn: psycopg.Connection, project: Project, scope: Scope, batch_size: int,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        p = row_sql(project, max_attempts)
        condition, params = scope.condition(project)
        self.names = names = project.key.aliases()  # the key's columns in the cursor's rows
        self.batch_size, self.length_at = batch_size, len(names.columns)
        self.emptied: list[Any] = []
        self.cursor = conn.cursor(name="vectorize_due_keys", withhold=True)
        with by_key(conn, scope.pending_only):
            self.cursor.execute(sql.SQL(
                "SELECT {names}, n, stored, count(*) FILTER (WHERE n > 0) OVER (),"
                " count(*) FILTER (WHERE n = 0) OVER (), sum(n) OVER () FROM (SELECT {keys}, length({text}) AS n,"
                " {stored} IS NOT NULL AS stored FROM {from_} WHERE {needs} AND {scope} OFFSET 0) d ORDER BY n = 0, n"
            ).format(names=names.names("d"), keys=project.key.select_as("r", names), text=p["text"],
                     stored=p["stored"], from_=p["from"], needs=p["needs"], scope=condition), params)
        self.first = self.cursor.fetchmany(batch_size)
        self.due = Due(*self.first[0][self.length_at + 2:]) if self.first else Due()

    def __iter__(self) -> Iterator[list[Any]]:
        rows, self.first = self.first, []
        while rows:
            if keys := [self.names.value(row) for row in rows if row[self.length_at]]:
                yield keys
            self.emptied += [self.names.value(row) for row in rows if not row[self.length_at] and row[self.length_at + 1]]
            rows = self.cursor.fetchmany(self.batch_size)

    def close(self) -> None:
        self.cursor.close()


def nested_loops(conn: psycopg.Connection, on: bool) -> psycopg.Connection:
    """``conn``, whose statements are planned with nested loops only when ``on`` (a partitioned source): a
    writer's statements read a batch's rows by their keys, and on a partitioned table the planner would scan
    every partition for each batch instead (see ``by_key``), a cost that grows with the table."""
    for join in NESTED_LOOPS_ONLY if on else ():
        conn.execute(f"SET {join} = off")
    return conn


NESTED_LOOPS_ONLY = ("enable_hashjoin", "enable_mergejoin")


@contextmanager
def by_key(conn: psycopg.Connection, queued: bool) -> Iterator[None]:
    """Plan the statements run within (on ``conn``, in autocommit) with nested loops only when ``queued`` (a
    realtime run's scope: the queued keys, few next to the table), so that the rows are read by their key. On a
    partitioned source the planner would scan every partition instead (it prices each key's probe into every
    partition's index, not the one that run-time pruning leaves): 50 ms on 300k rows in 10 partitions, for a
    queue of one key."""
    if not queued:
        yield
        return
    nested_loops(conn, True)
    try:
        yield
    finally:
        for join in NESTED_LOOPS_ONLY:
            conn.execute(f"RESET {join}")


def incoming_vectors(project: Project, rows: int, characters: int) -> int:
    """The vectors a run will write: one a row, or for a chunked project about one a ``chunk_size`` tokens
    of text (CHARACTERS_PER_TOKEN each; at least one a row), which the bulk-load rule compares with the
    vectors stored."""
    if not project.is_chunked:
        return rows
    return max(rows, characters // (project.chunk_size * CHARACTERS_PER_TOKEN))


def clear_current_pending(conn: psycopg.Connection, project: Project, scope: Scope) -> int:
    """Dequeue rows in the scope whose embedding is current or that have no text to embed."""
    p = row_sql(project)
    condition, params = scope.condition(project)
    with by_key(conn, scope.pending_only), conn.transaction():
        return dequeue(conn.cursor(), project, sql.SQL("({current} OR {text} = '') AND {scope}").format(
            current=p["current"], text=p["text"], scope=condition), params)


def check_still_there(cur: psycopg.Cursor, project: Project) -> None:
    """Raise when the project a run started with is no longer in the catalog: dropped
    (``ProjectNotFoundError``), or dropped and created again (``ProjectConflictError``: a batch of the old
    configuration must not write into the new project, whose model or prompts may differ)."""
    found = cur.execute("SELECT job_id FROM vectorize.job WHERE name = %s", [project.name]).fetchone()
    if found is None:
        raise ProjectNotFoundError(f"project {project.name!r} was dropped during this run, which stops: the batches"
                                   " it wrote went with the project")
    if found[0] != project.job_id:
        raise ProjectConflictError(f"project {project.name!r} was dropped and created again during this run, which"
                                   " stops without writing into the new project (its configuration may differ);"
                                   " run again to embed for it")


def dequeue(cur: psycopg.Cursor, project: Project, where: sql.Composable, params: Sequence[Any]) -> int:
    """Delete the queue entries ``q`` whose source row ``r`` (``expressions.stored_rows``) meets ``where``, as
    this statement's snapshot sees both; returns how many. An entry the application's trigger queued again
    meanwhile (a new ``enqueued_at``) stays: a DELETE that waited for that transaction would otherwise check
    ``where`` again on the new entry but with the source row of its snapshot (READ COMMITTED), and take off
    the queue a row whose text has just changed, for good."""
    cur.execute(sql.SQL(
        "DELETE FROM {queue} q USING (SELECT {q_keys}, q.enqueued_at FROM {queue} q, {from_} WHERE {same} AND {where}) s"
        " WHERE {same_entry} AND q.enqueued_at = s.enqueued_at"
    ).format(queue=project.names.queue, q_keys=project.key.names("q"), from_=expressions.stored_rows(project),
             same=project.key.equals("q", "r"), where=where, same_entry=project.key.equals("q", "s")), params)
    return cur.rowcount


def _key_text_session(connect: Callable[[], psycopg.Connection]) -> psycopg.Connection:
    """A new connection whose session renders keys as text the same way everywhere (KEY_TEXT_SETTINGS)."""
    conn = connect()
    try:
        conn.execute("SELECT set_config(name, setting, false) FROM unnest(%s::text[], %s::text[]) s(name, setting)",
                     [list(KEY_TEXT_SETTINGS), list(KEY_TEXT_SETTINGS.values())])
    except BaseException:
        conn.close()
        raise
    return conn


def _within_halfvec(encode: Callable[[list[str]], Any], project: Project, texts: list[str]) -> Any:
    """``encode(texts)``, refused when a value is beyond what a chunked project's half-precision index holds."""
    import numpy as np  # here, not at import: DAG files import the hook, and through it this module

    vectors = encode(texts)
    if len(vectors) and float(np.abs(vectors).max()) > HALFVEC_MAX:
        raise ModelResponseError(
            f"project {project.name!r}: the model returned values beyond ±{HALFVEC_MAX:g}, which the"
            " project's index (halfvec, half precision) cannot hold"
        )
    return vectors


def generate(
    connect: Callable[[], psycopg.Connection],  # a new autocommit connection per call
    project: Project,
    scope: Scope,
    encode: Callable[[list[str]], Any],
    batch_size: int = DEFAULT_BATCH_SIZE,
    index_build_cap: int = index_build.AUTO_CAP,
    concurrency: int = 1,
    splitter: TextSplitter | None = None,
    input_errors: tuple[type[Exception], ...] = (),
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    max_failed_share: float = DEFAULT_MAX_FAILED_SHARE,
    rebuild_index: bool | None = None,
    failures_since: datetime | None = None,
) -> dict[str, Any]:
    """Embed every row of ``project`` in ``scope`` that needs it; see the module docstring.

    ``rebuild_index``: drop the HNSW index first and build it at the end (None: when the rows due are at least
    ``storage.REBUILD_INDEX_SHARE`` of the project's; never for one partition of several).

    ``splitter`` (a chunked project's): each row's text is cut into chunks, one vector each.

    A row the model refuses (one of its ``input_errors``) is recorded in the project's errors table and
    skipped; the rest of its batch is written. It is tried again by later runs until it failed
    ``max_attempts`` times with the same text (a changed text starts again). The run raises
    ``EmbeddingFailuresError`` at the end when more than ``max_failed_share`` of the rows it tried failed
    for the first time (or first at or after ``failures_since``; see ``_report_failures``).

    ``concurrency`` batches are encoded at once (1 for a local model; several for a remote one, whose
    requests then overlap); each has its own writer connection, plus one being claimed, and batches are
    written one at a time, each in its own transaction, as their vectors arrive.
    """
    if scope.pending_only and project.schedule != "realtime":
        log.warning("Project %r is %s: no trigger queues its rows, so a pending_only run embeds only what was"
                    " queued while it was realtime (alter_project(%r, schedule='realtime') queues changes)",
                    project.name, project.schedule, project.name)
    started = time.monotonic()
    embedded = batches = 0
    failures: list[RowFailure] = []
    connect = partial(_key_text_session, connect)
    if project.half_index:
        encode = partial(_within_halfvec, encode, project)
    with ExitStack() as stack:
        control = stack.enter_context(connect())
        streamer = stack.enter_context(connect())
        due_keys = stack.enter_context(closing(DueKeys(streamer, project, scope, batch_size, max_attempts)))
        to_embed, skipped = due_keys.due.rows, due_keys.due.without_text
        log.info("Project %r: %d row(s) to embed, %d without text (scope %s)", project.name, to_embed, skipped, scope)
        incoming = incoming_vectors(project, to_embed, due_keys.due.characters)
        rebuild = False
        if scope.partition_count == 1:  # a bulk load: build the HNSW graph once at the end, not row by row
            with control.transaction():
                rebuild = storage.drop_index_for_bulk_write(control.cursor(), project, incoming, rebuild_index)
        keyed = catalog.source_is_partitioned(control.cursor(), project)
        writers = [BatchWriter(nested_loops(stack.enter_context(connect()), keyed), project, max_attempts)
                   for _ in range(concurrency + 1)]
        encoders = stack.enter_context(ThreadPoolExecutor(concurrency, thread_name_prefix="vectorize-encode"))
        write_pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="vectorize-writer"))
        free = deque(writers)
        in_flight: dict[BatchWriter, Future] = {}  # oldest first; each resolves to its write's Future
        failed = threading.Event()  # once a batch fails, batches not yet encoding are rolled back

        def encode_then_write(writer: BatchWriter, rows: list[tuple[Any, str, Any]]) -> Future:
            try:
                if failed.is_set():
                    raise BatchCancelled("an earlier batch failed")
                encoded = encode_rows(rows, encode, splitter, input_errors)
            except ModelResponseError as error:  # the model layer cannot know nothing was written
                failed.set()
                writer.rollback()
                raise ModelResponseError(f"{error}; nothing of this batch was written") from error
            except BaseException:
                failed.set()
                writer.rollback()
                raise
            return write_pool.submit(write, writer, encoded)

        def write(writer: BatchWriter, encoded: Encoded) -> int:
            try:
                count, recorded = writer.write(encoded.rows, encoded.vectors, encoded.chunks, encoded.failures)
            except BaseException:
                failed.set()
                raise
            failures.extend(recorded)
            return count

        last_log = None  # progress: after the first batch written, every PROGRESS_EVERY_SECONDS, at the end

        def written(count: int) -> None:
            nonlocal embedded, last_log
            embedded += count
            now = time.monotonic()
            if embedded < to_embed and (last_log is None or now - last_log >= PROGRESS_EVERY_SECONDS):
                last_log = now
                _log_progress(project, scope, embedded, to_embed, now - started)

        try:
            for keys in due_keys:
                if not free:  # every writer holds a batch: the oldest must be committed first
                    oldest = next(iter(in_flight))
                    written(in_flight.pop(oldest).result().result())
                    free.append(oldest)
                writer = free.popleft()
                rows = writer.claim(keys)
                if not rows:
                    writer.commit()
                    free.appendleft(writer)
                    continue
                in_flight[writer] = encoders.submit(encode_then_write, writer, rows)
                batches += 1
            while in_flight:
                written(in_flight.pop(next(iter(in_flight))).result().result())
        except BaseException:
            _settle(in_flight.values())  # never close a connection in use
            raise
        finally:  # build the index after a bulk load, or repair the one a killed bulk run dropped
            with control.transaction():
                build = storage.build_index(control.cursor(), project, index_build_cap)
        with control.transaction():
            emptied = storage.remove_without_text(control.cursor(), project, due_keys.emptied)
        pending_cleared = clear_current_pending(control, project, scope) + sum(w.dequeued for w in writers)
    seconds = time.monotonic() - started
    summary = {
        "job_name": project.name,
        "embedded": embedded,
        "failed": len(failures),
        "skipped": skipped,
        "vectors_emptied": emptied,
        "batches": batches,
        "pending_cleared": pending_cleared,
        "held_by_other_runs": sum(w.held_elsewhere for w in writers),  # due, but another run was embedding them
        "index_rebuilt": rebuild,
        **({"index_build": build} if build else {}),
        "partition": f"{scope.partition_index}/{scope.partition_count}",
        "pending_only": scope.pending_only,
        "since": None if scope.since is None else str(scope.since),
        "until": None if scope.until is None else str(scope.until),
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "rows_per_second": round(embedded / seconds, 1) if seconds > 0 else 0.0,
    }
    _log_progress(project, scope, embedded, to_embed, seconds, finished=True)
    log.info("Embedding run finished: %s", summary)
    if failures:
        _report_failures(project, failures, embedded, max_failed_share, failures_since)
    return summary


def _report_failures(project: Project, failures: list[RowFailure], embedded: int, max_share: float,
                     failures_since: datetime | None = None) -> None:
    """Warn about rows that could not be embedded; raise when the rows failing for the first time (with
    this text, or first at or after ``failures_since``) are more than ``max_share`` of the rows tried —
    failures known from before only warn, so a scheduled run does not fail again and again for the same rows,
    while a retry of a failed task (``failures_since``: its DAG run's start) fails as its first try did."""
    new = sum(1 for f in failures if f.attempts == 1 or (
        failures_since is not None and f.first_seen is not None and f.first_seen >= failures_since))
    share = new / (len(failures) + embedded)
    examples = "; ".join(f"{f.key!r}: {f.error}" for f in failures[:3])
    message = (f"project {project.name!r}: {len(failures)} row(s) could not be embedded ({new} for the first"
               f" time: {share:.0%} of the rows tried), recorded in {'.'.join(project.names.errors_name)}; e.g. {examples}")
    if share > max_share:
        raise EmbeddingFailuresError(f"{message}. More than the allowed {max_share:.0%}: the run fails (the"
                                     f" {embedded} row(s) embedded are kept)")
    log.warning("%s", message)


class BatchCancelled(Exception):
    """A batch rolled back unencoded because another one failed first."""


def _settle(batches: Iterable[Future]) -> None:
    """Wait until every batch in flight has been written or rolled back, ignoring their errors."""
    for batch in batches:
        try:
            batch.result().result()
        except BaseException:  # noqa: BLE001 - the first error is the one raised
            pass


@dataclass(frozen=True)
class Progress:
    """A generation's progress; log records of this module carry it as ``record.vectorize_progress``."""

    job_name: str
    partition: str  # "" for a whole-table run, else "index/count"
    done: int
    total: int
    seconds: float
    finished: bool = False

    @property
    def rows_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        where = f"Project {self.job_name!r}" + (f" partition {self.partition}" if self.partition else "")
        if self.finished and not self.total:
            return f"{where}: nothing to embed, done in {self.seconds:.1f} s"
        rate = self.rows_per_second
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        tail = f"done in {self.seconds:.1f} s" if self.finished else f"ETA {eta:.0f} s"
        return (f"{where}: embedded {self.done} of {self.total} rows ({100.0 * self.done / max(self.total, 1):.0f}%),"
                f" {rate:.0f} rows/s, {tail}")


def _log_progress(project: Project, scope: Scope, done: int, total: int, elapsed: float,
                  finished: bool = False) -> None:
    partition = f"{scope.partition_index}/{scope.partition_count}" if scope.partition_count > 1 else ""
    progress = Progress(project.name, partition, done, total, elapsed, finished)
    log.info("%s", progress, extra={"vectorize_progress": progress})
