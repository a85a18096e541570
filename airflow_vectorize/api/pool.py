"""The API's hooks: one ``VectorizeHook`` per thread and connection, one pool of search sessions per
connection and process.

A request runs in one of FastAPI's worker threads and uses that thread's hook, with its looked-up projects
and built statements (see ``VectorizeHook._run_search``). The hooks of a connection share a
``SessionPool``: a search embeds its query first (batched with the other threads' queries,
``batch_queries``), holding no database session, and borrows one only for its statement.
"""

from __future__ import annotations

import threading

from airflow_vectorize.hooks.vectorize import VectorizeHook
from airflow_vectorize.search_sessions import DEFAULT_SIZE, SessionPool


class Hooks:
    def __init__(self, sessions_per_connection: int = DEFAULT_SIZE) -> None:
        self.size = sessions_per_connection
        self._pools: dict[str, SessionPool] = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    def get(self, conn_id: str) -> VectorizeHook:
        """This thread's hook of ``conn_id``."""
        hooks = self._local.__dict__.setdefault("hooks", {})
        hook = hooks.get(conn_id)
        if hook is None:
            hook = hooks[conn_id] = VectorizeHook(postgres_conn_id=conn_id, batch_queries=True,
                                                  search_sessions=self._pool(conn_id))
        return hook

    def _pool(self, conn_id: str) -> SessionPool:
        with self._lock:
            pool = self._pools.get(conn_id)
            if pool is None:
                pool = self._pools[conn_id] = SessionPool(VectorizeHook(postgres_conn_id=conn_id).connect, self.size)
            return pool

    def stats(self) -> dict[str, dict[str, int]]:
        return {conn_id: pool.stats() for conn_id, pool in self._pools.items()}

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
