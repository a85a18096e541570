"""Search sessions of one database, shared by the threads of a server: a search borrows one for its statement.

A hook alone keeps one search connection (see ``VectorizeHook._run_search``). A server answering many
searches at once gives its hooks (one per thread) a ``SessionPool`` instead: each search embeds its query
first, holding nothing, and borrows a session only to run its statement. So the queries of concurrent
requests can wait for the model together (and be embedded in one call, ``models.batching``) while few
database sessions serve them all.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from airflow_vectorize import search as searching
from airflow_vectorize.exceptions import DatabaseConnectionError

DEFAULT_SIZE = 8
DEFAULT_WAIT = 30.0  # seconds a search waits for a free session


class SessionPool:
    """Up to ``size`` search sessions (connections prepared by ``search.prepare_connection``), opened on demand
    with ``connect``, reused most recently returned first (a quiet server keeps few warm); a closed or broken
    one is dropped when it comes back."""

    def __init__(self, connect: Callable[[], psycopg.Connection], size: int = DEFAULT_SIZE,
                 wait: float = DEFAULT_WAIT) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.connect, self.size, self.wait = connect, size, wait
        self._idle: queue.LifoQueue[searching.SearchSession] = queue.LifoQueue()
        self._open = 0
        self._lock = threading.Lock()
        self.baseline: dict[str, str] | None = None  # the settings every session starts with, once known

    @contextmanager
    def borrow(self) -> Iterator[searching.SearchSession]:
        session = self._take()
        try:
            yield session
        finally:
            self._give_back(session)

    def _take(self) -> searching.SearchSession:
        with self._lock:
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                opening = self._open < self.size
                if opening:
                    self._open += 1
        if opening:
            try:
                conn = self.connect()
                session = searching.prepare_connection(conn)
            except BaseException:
                with self._lock:
                    self._open -= 1
                raise
            self.baseline = dict(session.baseline)
            return session
        try:
            return self._idle.get(timeout=self.wait)
        except queue.Empty:
            raise DatabaseConnectionError(
                f"all {self.size} search sessions stayed busy for {self.wait:g} s; try again (or raise the pool"
                " size: VECTORIZE_API_POOL_SIZE)") from None

    def _give_back(self, session: searching.SearchSession) -> None:
        if session.conn.closed or session.conn.broken:
            session.conn.close()
            with self._lock:
                self._open -= 1
            return
        self._idle.put(session)

    def stats(self) -> dict[str, int]:
        return {"sessions": self._open, "idle": self._idle.qsize(), "size": self.size}

    def close(self) -> None:
        while True:
            try:
                session = self._idle.get_nowait()
            except queue.Empty:
                return
            session.conn.close()
            with self._lock:
                self._open -= 1
