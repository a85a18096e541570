"""Application writes that race a generation run's batch, on the real database and model: the application
changes a row (or an import stores its vector) while the batch holding that row is encoding, and commits while
the batch writes. The row must stay queued for the next realtime run, and no older vector may overwrite a
newer one. Before, such a row was taken off the queue with a vector of its old text (PostgreSQL re-checked
the dequeue's condition on the new queue entry with the source row of the statement's snapshot), and an
import made during the run was overwritten by the run's older vector."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import psycopg
import pytest

from airflow_vectorize import catalog
from airflow_vectorize.exceptions import ProjectConflictError, ProjectNotFoundError
from airflow_vectorize.hooks.vectorize import VectorizeHook

COLUMNS = ["name", "description"]
LAYOUTS = {"join": {}, "append": {"table_method": "append"}, "chunked": {"chunk_size": 64}}
OLD, NEW = "a red bicycle with a basket", "a blue submarine for two"


@contextmanager
def during_first_encode(hook, monkeypatch, action):
    """Run ``action()`` once, when the next run's model is first asked to embed (its batch claimed)."""
    make_model, done = hook._model, []

    class Wrapped:
        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

        def embed(self, texts, *args, **kwargs):
            if not done:
                done.append(True)
                action()
            return self.model.embed(texts, *args, **kwargs)

    monkeypatch.setattr(hook, "_model", lambda project, *a, **k: Wrapped(make_model(project, *a, **k)))
    yield
    assert done, "the run embedded nothing"


def commit_later(db, statement: str, params=(), seconds: float = 1.5) -> threading.Timer:
    """The application's transaction: ``statement`` now (its trigger queues the row again, holding the queue
    entry's lock), COMMIT after ``seconds``, while the batch is writing."""
    app = psycopg.connect(db.uri, autocommit=True)
    app.execute("BEGIN")
    app.execute(statement, params)

    def commit() -> None:
        app.execute("COMMIT")
        app.close()

    timer = threading.Timer(seconds, commit)
    timer.start()
    return timer


def queued(db, job: str) -> set[int]:
    return {row[0] for row in db.execute(f"SELECT product_id FROM vectorize._pending_{job}")}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_row_changed_while_its_batch_writes_stays_queued(products, hook, monkeypatch, layout):
    hook.create_project("shop", "products", "product_id", COLUMNS, embed_existing=True, **LAYOUTS[layout])
    products.execute("UPDATE products SET description = %s WHERE product_id = 1", [OLD])
    timers = []
    with during_first_encode(hook, monkeypatch, lambda: timers.append(commit_later(
            products, "UPDATE products SET description = %s WHERE product_id = 1", [NEW]))):
        hook.generate_embeddings("shop", pending_only=True)
    timers[0].join()

    assert queued(products, "shop") == {1}  # before: {} (join, chunked), with the old text's vector
    assert hook.get_freshness("shop")["pending"] == 1
    assert hook.generate_embeddings("shop", pending_only=True)["embedded"] == 1
    assert queued(products, "shop") == set()
    assert hook.get_freshness("shop")["stale"] == 0


def test_a_refused_row_fixed_while_its_batch_writes_stays_queued(products, hook, embedding_server, monkeypatch):
    hook.create_project("remote", "products", "product_id", COLUMNS, transformer="openai/MiniLM",
                        model_conn_id="flaky", embed_existing=True)
    products.execute("UPDATE products SET description = %s WHERE product_id = 5", ["far too long " * 20])  # queued
    embedding_server.reset(max_input_bytes=150)
    timers = []
    with during_first_encode(hook, monkeypatch, lambda: timers.append(commit_later(
            products, "UPDATE products SET description = 'fixed' WHERE product_id = 5"))):
        summary = hook.generate_embeddings("remote", pending_only=True, max_failed_share=1)
    timers[0].join()

    assert summary["failed"] == 1
    assert queued(products, "remote") == {5}  # before: {}, and realtime runs never embedded the fixed text
    assert hook.generate_embeddings("remote", pending_only=True)["embedded"] == 1
    assert hook.get_status("remote")["failed_rows"] == 0 and hook.get_freshness("remote")["stale"] == 0


def test_an_import_made_during_a_run_is_not_overwritten_by_its_older_vector(products, hook, model, monkeypatch):
    hook.create_project("shop", "products", "product_id", COLUMNS, schedule="manual")
    products.execute("UPDATE products SET description = %s WHERE product_id = 1", [OLD])
    new_text = f"{products.scalar('SELECT name FROM products WHERE product_id = 1')}, {NEW}"
    products.execute("CREATE TABLE fresh (product_id integer PRIMARY KEY, embedding real[])")
    products.execute("INSERT INTO fresh VALUES (1, %s)", [[float(x) for x in model.encode([new_text])[0]]])

    def change_and_import() -> None:  # the application changes the text, an upstream job imports its vector
        products.execute("UPDATE products SET description = %s WHERE product_id = 1", [NEW])
        assert hook.import_embeddings("shop", "fresh", "product_id", "embedding")["imported"] == 1

    with during_first_encode(hook, monkeypatch, change_and_import):
        summary = hook.generate_embeddings("shop")

    assert summary["embedded"] == 23  # every row but the one whose text changed under the batch
    status = hook.get_status("shop")
    assert (status["embedded_rows"], status["stale_rows"]) == (24, 0)  # before: row 1 stale, the import lost
    assert hook.search("shop", NEW, num_results=1, return_columns=["product_id"])[0]["product_id"] == 1


def test_a_run_whose_project_is_dropped_during_a_batch_stops_with_a_typed_error(products, hook, monkeypatch):
    """Before: a raw UndefinedTable error quoting the run's SQL."""
    hook.create_project("shop", "products", "product_id", COLUMNS, schedule="manual")
    other = VectorizeHook(products.conn_id)
    worker = threading.Thread(target=other.drop_project, args=("shop",))  # it waits for the batch being written

    with during_first_encode(hook, monkeypatch, worker.start), pytest.raises(
            ProjectNotFoundError, match="project 'shop' was dropped during this run, which stops"):
        hook.generate_embeddings("shop", batch_size=4)
    worker.join()

    assert other.list_projects() == []


def test_a_run_whose_project_is_created_again_meanwhile_writes_nothing_into_the_new_one(products, hook, monkeypatch):
    """Before, a run that outlived a drop and create of its project (another worker's, while its model loaded)
    wrote vectors of the old configuration (here without the new document prompt) into the new project, which
    counted them current."""
    hook.create_project("shop", "products", "product_id", COLUMNS, schedule="manual")
    other, load_model = VectorizeHook(products.conn_id), hook._model

    def model_loaded_meanwhile(project, *args, **kwargs):
        other.drop_project("shop")
        other.create_project("shop", "products", "product_id", COLUMNS, schedule="manual", document_prompt="passage: ")
        return load_model(project, *args, **kwargs)

    monkeypatch.setattr(hook, "_model", model_loaded_meanwhile)
    with pytest.raises(ProjectConflictError, match="'shop' was dropped and created again during this run, which"
                                                   " stops without writing into the new project"):
        hook.generate_embeddings("shop")

    assert other.get_status("shop")["embedded_rows"] == 0
    assert other.generate_embeddings("shop")["embedded"] == 24


def test_rows_another_run_holds_keep_a_bulk_insert_due_for_realtime_runs(products, hook, monkeypatch):
    """A realtime run that finds rows of a bulk insert held by another run (its batch claimed, encoding) keeps
    the bulk insert's marker: before, it deleted it, and when that run died the rows were never embedded by a
    realtime run (only a full one)."""
    monkeypatch.setattr(catalog, "BULK_ROWS", 5)  # an insert of 5 rows or more is recorded as one bulk row
    hook.create_project("shop", "products", "product_id", COLUMNS, embed_existing=True)
    products.execute("INSERT INTO products (product_id, name, description)"
                     " SELECT i, 'gadget ' || i, 'a new gadget' FROM generate_series(101, 120) i")
    assert products.scalar("SELECT count(*) FROM vectorize._bulk_shop") == 1
    other_run = psycopg.connect(products.uri, autocommit=True)  # its batch of rows 101-105, then it dies
    other_run.execute("BEGIN")
    other_run.execute("SELECT pg_advisory_xact_lock(hashtextextended('vectorize:shop:' || i, 0))"
                      " FROM generate_series(101, 105) i")

    run = hook.generate_embeddings("shop", pending_only=True)
    assert (run["embedded"], run["held_by_other_runs"]) == (15, 5)
    assert products.scalar("SELECT count(*) FROM vectorize._bulk_shop") == 1  # before: 0
    other_run.close()

    run = hook.generate_embeddings("shop", pending_only=True)
    assert (run["embedded"], run["held_by_other_runs"]) == (5, 0)
    assert products.scalar("SELECT count(*) FROM vectorize._bulk_shop") == 0
    assert hook.get_freshness("shop")["stale"] == 0


def test_an_import_that_swaps_the_table_in_waits_for_the_batch_being_written(products, hook, monkeypatch):
    """Before, the import's swap (SHARE, then ACCESS EXCLUSIVE on the embeddings table) and a batch claimed
    before it (waiting to write) deadlocked: the run failed with a raw DeadlockDetected."""
    hook.create_project("shop", "products", "product_id", COLUMNS, schedule="manual", embed_existing=True)
    products.execute("UPDATE products SET description = description || ' (revised)' WHERE product_id <= 12")
    products.execute("CREATE TABLE kept AS SELECT product_id, embeddings FROM vectorize._embeddings_shop"
                     " WHERE product_id > 12")
    other, imported = VectorizeHook(products.conn_id), []
    worker = threading.Thread(target=lambda: imported.append(other.import_embeddings(
        "shop", "kept", "product_id", "embeddings", rebuild_index=True)))

    with during_first_encode(hook, monkeypatch, worker.start):
        run = hook.generate_embeddings("shop", batch_size=4)
    worker.join()

    assert run["embedded"] == 12 and imported[0]["imported"] == 12
    status = hook.get_status("shop")
    assert (status["embedded_rows"], status["stale_rows"]) == (24, 0)


def test_an_import_of_a_rows_chunks_waits_for_the_batch_writing_them(products, hook, model, monkeypatch):
    """Before, an import of chunks while a batch held chunks of the same row (written, its dequeue waiting
    for the application) failed with a raw UniqueViolation on the chunks' key."""
    hook.create_project("docs", "products", "product_id", COLUMNS, chunk_size=64, embed_existing=True)
    products.execute("UPDATE products SET description = %s WHERE product_id = 1", [OLD])  # queued
    products.execute("CREATE TABLE chunk_vectors (product_id integer, chunk integer, embedding real[])")
    products.execute("INSERT INTO chunk_vectors VALUES (1, 0, %s)", [[float(x) for x in model.encode([NEW])[0]]])
    other, imported, timers = VectorizeHook(products.conn_id), [], []
    importer = threading.Thread(target=lambda: imported.append(other.import_embeddings(
        "docs", "chunk_vectors", "product_id", "embedding", src_chunk_col="chunk")))

    def meanwhile() -> None:  # the application holds row 1's queue entry past the batch's write; then an import
        timers.append(commit_later(products, "UPDATE products SET description = %s WHERE product_id = 1", [NEW],
                                   seconds=2.0))
        threading.Timer(0.5, importer.start).start()

    with during_first_encode(hook, monkeypatch, meanwhile):
        hook.generate_embeddings("docs", pending_only=True)
    timers[0].join()
    importer.join()

    assert imported and imported[0]["imported"] == 1
    assert products.execute("SELECT chunk_no FROM vectorize._chunks_docs WHERE product_id = 1") == [(0,)]
