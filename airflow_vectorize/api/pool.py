"""One pool of hooks per process and connection: a request borrows a ``VectorizeHook`` and gives it back.

A hook keeps one search connection with its session settings, its looked-up projects and its built
statements (see ``VectorizeHook._run_search``), and runs one search at a time: the pool holds up to ``size``
of them per Airflow connection, made on demand and reused (most recently returned first, so a quiet server
keeps few connections warm). Query embeddings are batched across the pool's hooks (``batch_queries``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from airflow_vectorize.api.errors import ApiError
from airflow_vectorize.hooks.vectorize import VectorizeHook

DEFAULT_SIZE = 8
DEFAULT_WAIT = 30.0  # seconds a request waits for a free hook before 503


class HookPool:
    def __init__(self, size: int = DEFAULT_SIZE, wait: float = DEFAULT_WAIT) -> None:
        self.size, self.wait = size, wait
        self._idle: dict[str, queue.LifoQueue[VectorizeHook]] = {}
        self._made: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hook(self, conn_id: str) -> Iterator[VectorizeHook]:
        hook = self._borrow(conn_id)
        try:
            yield hook
        finally:
            self._idle[conn_id].put(hook)

    def _borrow(self, conn_id: str) -> VectorizeHook:
        with self._lock:
            idle = self._idle.setdefault(conn_id, queue.LifoQueue())
            try:
                return idle.get_nowait()
            except queue.Empty:
                if self._made.get(conn_id, 0) < self.size:
                    self._made[conn_id] = self._made.get(conn_id, 0) + 1
                    return VectorizeHook(postgres_conn_id=conn_id, batch_queries=True)
        try:
            return idle.get(timeout=self.wait)
        except queue.Empty:
            raise ApiError(503, f"all {self.size} database sessions of connection {conn_id!r} stayed busy for"
                                f" {self.wait:g} s; try again", "ServerBusy", {"Retry-After": "1"}) from None

    def stats(self) -> dict[str, dict[str, int]]:
        return {conn_id: {"sessions": self._made.get(conn_id, 0), "idle": idle.qsize()}
                for conn_id, idle in self._idle.items()}

    def close(self) -> None:
        for idle in self._idle.values():
            while True:
                try:
                    hook = idle.get_nowait()
                except queue.Empty:
                    break
                if hook._search_conn is not None:
                    hook._search_conn.close()
