"""Fixtures: one embedded PostgreSQL + pgvector per session, a fresh database per test, the real model."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
from airflow_vectorize.embedded_postgres import EmbeddedPostgres, throwaway_dir  # noqa: E402 (no airflow)

# Airflow reads these when it is first imported: set them before anything imports airflow.
os.environ["AIRFLOW_HOME"] = throwaway_dir("airflow-home-")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psycopg  # noqa: E402
import pytest  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402
from psycopg import sql  # noqa: E402

from airflow_vectorize.example_data import PRODUCTS  # noqa: E402


@dataclass
class Database:
    """A test's own database: its name, Airflow connection id and an autocommit connection."""

    name: str
    conn_id: str
    uri: str
    conn: psycopg.Connection

    def execute(self, query: Any, params: Any = None) -> list[tuple]:
        cur = self.conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    def scalar(self, query: Any, params: Any = None) -> Any:
        return self.conn.execute(query, params).fetchone()[0]


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as server:
        yield server


@contextmanager
def fresh_database(postgres: EmbeddedPostgres) -> Iterator[Database]:
    """A new database (pgvector installed), the Airflow connection of its name, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    uri = postgres.create_database(name)
    postgres.use_as_airflow_connection(name, name)
    conn = postgres.connect(name)
    register_vector(conn)
    try:
        yield Database(name=name, conn_id=name, uri=uri, conn=conn)
    finally:
        conn.close()
        os.environ.pop(f"AIRFLOW_CONN_{name.upper()}", None)
        postgres.drop_database(name)


@pytest.fixture
def database(postgres: EmbeddedPostgres) -> Iterator[Database]:
    with fresh_database(postgres) as db:
        yield db


@pytest.fixture
def hook(database: Database):
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    return VectorizeHook(postgres_conn_id=database.conn_id)


@pytest.fixture(scope="session")
def model():
    """The real default model, loaded once for the session (the same cached instance the hook uses)."""
    from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
    from airflow_vectorize.models.local import load_model

    return load_model(DEFAULT_TRANSFORMER).model


@pytest.fixture
def exact_scan_max_pages(monkeypatch):
    """Sets ``search.EXACT_SCAN_MAX_PAGES`` for a test. Statements are built with it written in: the caches of
    built statements are emptied when it is set and after the test."""
    from airflow_vectorize import search

    def forget() -> None:
        search._vector_statement.cache_clear()
        search._hybrid_statement.cache_clear()

    def set_pages(pages: int) -> None:
        monkeypatch.setattr(search, "EXACT_SCAN_MAX_PAGES", pages)
        forget()

    yield set_pages
    forget()


@pytest.fixture
def index_path(exact_scan_max_pages):
    """Chunked searches take the HNSW index path, as on a chunk table of more than EXACT_SCAN_MAX_PAGES."""
    exact_scan_max_pages(-1)


def create_products(db: Database, table: str = "products", schema: str = "public") -> None:
    """The sample catalogue as ``schema.table`` (product_id primary key, text columns, price, updated_at)."""
    target = sql.Identifier(schema, table)
    db.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    db.execute(sql.SQL(
        "CREATE TABLE {} (product_id integer PRIMARY KEY, name text NOT NULL, description text,"
        " category varchar(40), price numeric(10, 2), updated_at timestamptz NOT NULL DEFAULT now())"
    ).format(target))
    with db.conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {} (product_id, name, description, category, price) VALUES (%s, %s, %s, %s, %s)")
            .format(target),
            PRODUCTS,
        )


@pytest.fixture
def products(database: Database) -> Database:
    create_products(database)
    return database


def product_texts(db: Database, columns: tuple[str, ...] = ("name", "description")) -> dict[int, str]:
    """product_id -> the text a project over ``columns`` embeds (joined with ', ', NULL and '' skipped)."""
    rows = db.execute(sql.SQL("SELECT product_id, {} FROM products").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns)))
    return {row[0]: ", ".join(v for v in row[1:] if v) for row in rows}


def create_embeddings_table(db: Database, model, table: str = "product_embeddings",
                            column_type: sql.Composable = sql.SQL("real[]")) -> None:
    """Pre-computed embeddings of every product (as an upstream system would make them)."""
    texts = product_texts(db)
    vectors = model.encode(list(texts.values()))
    db.execute(sql.SQL("CREATE TABLE {} (product_id integer PRIMARY KEY, embedding {})").format(
        sql.Identifier(table), column_type))
    with db.conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier(table)),
            [(pid, [float(x) for x in vector]) for pid, vector in zip(texts, vectors)],
        )


def unit_vectors(n: int, seed: int, dimensions: int = 384) -> "np.ndarray":
    """Random unit vectors: the hardest data for a graph search (pgvector's default ef_search finds about half
    of their true top-10 among a few thousand)."""
    import numpy as np

    points = np.random.default_rng(seed).normal(size=(n, dimensions))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def create_points(db: Database, hook, vectors) -> None:
    """Project ``points`` (join, manual) on table points(id, part, body), ``vectors`` imported as rows 1..n
    (``part`` = (id - 1) % 10) under its HNSW index."""
    db.execute("CREATE TABLE points (id int PRIMARY KEY, part int NOT NULL, body text NOT NULL);"
               " CREATE TABLE point_vectors (id int PRIMARY KEY, embedding vector(384))")
    with db.conn.cursor() as cur:
        with cur.copy("COPY points (id, part, body) FROM STDIN") as copy:
            for i in range(len(vectors)):
                copy.write_row((i + 1, i % 10, f"point {i + 1}"))
        with cur.copy("COPY point_vectors (id, embedding) FROM STDIN") as copy:
            for i, vector in enumerate(vectors):
                copy.write_row((i + 1, "[" + ",".join(map(repr, vector.tolist())) + "]"))
    hook.create_project("points", "points", "id", ["body"], schedule="manual")
    hook.import_embeddings("points", "point_vectors", "id", "embedding")
    db.execute("ANALYZE points; ANALYZE vectorize._embeddings_points")


def concurrently(call: Callable[[], Any], times: int) -> tuple[list[Any], list[BaseException]]:
    """Run ``call`` in ``times`` threads at once; (their results, the exceptions they raised)."""
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(call())
        except Exception as error:  # noqa: BLE001 - returned to the test, which asserts on it
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def snapshot(db: Database) -> dict[str, Any]:
    """Every user relation, column, trigger, vectorize function and the content of every table."""
    exclude = "('pg_catalog', 'information_schema', 'pg_toast')"
    state: dict[str, Any] = {
        "relations": db.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            f" WHERE n.nspname NOT IN {exclude} AND n.nspname NOT LIKE 'pg_temp%%'"
            " AND n.nspname NOT LIKE 'pg_toast_temp%%' ORDER BY 1, 2"),  # other sessions' temporary tables
        "columns": db.execute(
            "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns"
            f" WHERE table_schema NOT IN {exclude} AND table_schema NOT LIKE 'pg_temp%%' ORDER BY 1, 2, 3"),
        "triggers": db.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1"),
        "functions": db.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'vectorize' ORDER BY 1"),
    }
    for schema, name, kind in state["relations"]:
        if kind == "r":
            state[f"{schema}.{name}"] = db.scalar(sql.SQL(
                "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"
            ).format(sql.Identifier(schema, name)))
    return state


# -- remote models ---------------------------------------------------------------------------------------
def set_model_connection(conn_id: str, url: str, api_key: str | None = None, **extra: Any) -> None:
    """An ``openai`` Airflow connection (JSON form, from the environment) to an embeddings server."""
    import json

    conn = {"conn_type": "openai", "host": url, "extra": extra}
    if api_key:
        conn["password"] = api_key
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)


@pytest.fixture(scope="session")
def embedding_server_session(model):
    from tests.model_servers import EmbeddingServer

    server = EmbeddingServer(model)
    yield server
    server.close()


@pytest.fixture
def embedding_server(embedding_server_session):
    """The misbehaving embeddings server, well-behaved until a test scripts faults; connection ``flaky``
    (fast retries, a 2 s timeout)."""
    server = embedding_server_session
    server.reset()
    set_model_connection("flaky", server.url, server.api_key, max_retries=3, retry_initial_delay=0.05,
                         retry_max_delay=0.2, timeout=2)
    yield server
    os.environ.pop("AIRFLOW_CONN_FLAKY", None)


_servers: dict[str, Any] = {}  # fixture name -> server started at collection
_last_deployment_test: list[Any] = []  # the last collected test that uses the deployment


def pytest_collection_finish(session) -> None:
    """Start Infinity and the chat server as soon as a collected test needs them, so their ~20-40 s starts
    overlap other tests."""
    from scripts.chat_server import ChatServer
    from scripts.infinity_server import InfinityServer

    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    for name, server in (("infinity", InfinityServer), ("chat_server", ChatServer)):
        if name in needed:
            _servers[name] = server().start()
    _last_deployment_test[:] = [item for item in session.items if "deployment" in getattr(item, "fixturenames", ())][-1:]


def pytest_runtest_teardown(item, nextitem) -> None:
    """The Airflow deployment stops after the last test that uses it (its scheduler, dag-processor and
    triggerer would otherwise take CPU from every later test)."""
    if _last_deployment_test and item is _last_deployment_test[0] and "deployment" in _servers:
        _servers.pop("deployment").stop()


def pytest_sessionfinish(session, exitstatus) -> None:
    for server in _servers.values():
        server.stop()


BACKFILL_ROWS = 300


@pytest.fixture(scope="session")
def deployment():
    """A real Airflow 3 (scripts/deployment.py, LocalExecutor), once per session: test_deployment.py and
    test_deployment_api.py share it; it stops after the last test that uses it."""
    from scripts.deployment import AirflowDeployment

    # Every example DAG runs at once (``outcomes``): up to 3 chains of single tasks next to the backfill's 4
    # mapped partitions. With fewer slots than that, a partition can wait for a slot the other DAGs hold, and
    # whether the partitions overlap (test_backfill_maps_partitions_over_the_executor) becomes timing.
    running = _servers["deployment"] = AirflowDeployment("LocalExecutor", parallelism=8).start()
    yield running
    if _servers.pop("deployment", None) is not None:
        running.stop()


@pytest.fixture(scope="session")
def outcomes(deployment) -> dict[str, list]:
    """The example DAGs run through the deployment's scheduler, all at once; their outcomes by dag_id."""
    import time

    from scripts.deployment import LOCAL_DAGS, run_examples

    started = time.perf_counter()
    results = run_examples(deployment, LOCAL_DAGS, backfill_rows=BACKFILL_ROWS, scheduled_days=2)
    deployment.timings["runs"] = time.perf_counter() - started
    by_dag: dict[str, list] = {}
    for result in results:
        by_dag.setdefault(result.dag_id, []).append(result)
    return by_dag


@pytest.fixture(scope="session")
def infinity():
    """The Infinity server (started at collection), ready; connection ``infinity`` points at it."""
    server = _servers["infinity"].wait()
    set_model_connection("infinity", server.url)
    return server


@pytest.fixture(scope="session")
def chat_server():
    """The real chat server (``transformers serve``, started at collection), ready."""
    return _servers["chat_server"].wait()


@pytest.fixture
def chat(embedding_server, chat_server):
    """``(chat model name, recording server)``: connection ``chat`` reaches the real chat server through
    the recording (and, on request, misbehaving) server; a 2048-token context window."""
    embedding_server.chat_upstream = chat_server.url
    set_model_connection("chat", embedding_server.url, embedding_server.api_key, context_window=2048,
                         max_retries=2, retry_initial_delay=0.05, timeout=60)
    yield f"openai/{chat_server.model}", embedding_server
    os.environ.pop("AIRFLOW_CONN_CHAT", None)
