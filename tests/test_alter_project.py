"""alter_project: a project's schedule (pause and resume realtime), text columns, update column and HNSW index
changed in place, its vectors kept, on the real database and model."""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest
from conftest import snapshot

from airflow_vectorize import index_rebuild
from airflow_vectorize.exceptions import (
    InvalidInputError,
    ProjectConflictError,
    ProjectNotFoundError,
    SourceColumnsMissingError,
)

LAYOUTS = {"join": {}, "append": {"table_method": "append"}, "chunked": {"chunk_size": 12}}
COLUMNS = ["name", "description"]


@pytest.fixture(params=list(LAYOUTS))
def project(request, products, hook):
    """A realtime project ``shop`` over name and description of the 24 products, every row embedded."""
    hook.create_project("shop", "products", "product_id", COLUMNS, **LAYOUTS[request.param])
    assert hook.generate_embeddings("shop")["embedded"] == 24
    products.layout = request.param
    return products


def stored(db) -> dict[int, tuple]:
    """product_id -> what the project stores for it (vector(s) and md5)."""
    if db.layout == "append":
        query = "SELECT product_id, shop_embeddings::text, shop_text_md5 FROM products WHERE shop_embeddings IS NOT NULL"
    elif db.layout == "chunked":
        query = ("SELECT product_id, array_agg(embeddings::text ORDER BY chunk_no), max(text_md5::text)"
                 " FROM vectorize._chunks_shop GROUP BY product_id")
    else:
        query = "SELECT product_id, embeddings::text, text_md5 FROM vectorize._embeddings_shop"
    return {row[0]: row[1:] for row in db.execute(query)}


def triggers(db) -> list[str]:
    return [name for (name,) in db.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'products'::regclass"
                                           " AND NOT tgisinternal ORDER BY 1")]


REALTIME = ["vectorize_delete_trigger_shop", "vectorize_insert_trigger_shop", "vectorize_rekey_trigger_shop",
            "vectorize_trunc_trigger_shop", "vectorize_update_trigger_shop"]
MANUAL = [t for t in REALTIME if "insert" not in t and "update" not in t]


def test_pause_and_resume_realtime_keeps_the_vectors_and_catches_up(project, hook):
    db = project
    before = stored(db)
    db.execute("UPDATE products SET description = 'Refurbished.' WHERE product_id = 1")  # queued
    assert hook.get_status("shop")["pending"] == 1

    assert hook.alter_project("shop", schedule="manual") == {"job_name": "shop",
                                                             "changed": {"schedule": ["realtime", "manual"]}}
    assert triggers(db) == MANUAL
    assert db.scalar("SELECT to_regprocedure('vectorize.handle_update_shop()') IS NULL")
    assert hook.get_status("shop")["pending"] == 0  # the queue emptied; the row is still due by its md5
    assert hook.get_project("shop")["params"]["schedule"] == "manual"
    db.execute("INSERT INTO products (product_id, name, description) VALUES (100, 'Garden hose', '30 m')")
    db.execute("UPDATE products SET name = 'Tablet stand' WHERE product_id = 2")
    assert hook.get_status("shop")["pending"] == 0 and hook.get_freshness("shop")["stale"] == 3

    assert hook.alter_project("shop", schedule="realtime")["changed"] == {"schedule": ["manual", "realtime"]}
    assert triggers(db) == REALTIME
    assert hook.get_status("shop")["pending"] == 3  # the three rows changed while paused
    summary = hook.generate_embeddings("shop", pending_only=True)  # a realtime run looks at every row once
    assert summary["embedded"] == 3
    after = stored(db)
    assert {i: after[i] for i in before if i not in (1, 2)} == {i: before[i] for i in before if i not in (1, 2)}
    db.execute("UPDATE products SET description = 'Queued again.' WHERE product_id = 3")
    assert hook.get_status("shop")["pending"] == 1


def test_columns_renamed_in_the_source_are_followed_without_embedding_again(project, hook):
    db = project
    before = stored(db)
    db.execute("ALTER TABLE products RENAME COLUMN description TO details")
    with pytest.raises(SourceColumnsMissingError, match="has no column 'description' any more"):
        hook.get_status("shop")

    assert hook.alter_project("shop", columns=["name", "details"])["changed"] == {
        "columns": [COLUMNS, ["name", "details"]]}
    assert hook.generate_embeddings("shop")["embedded"] == 0  # the same text: the same md5, the same vectors
    assert stored(db) == before
    assert hook.get_status("shop")["embedded_rows"] == 24
    db.execute("UPDATE products SET details = 'Now with a case.' WHERE product_id = 4")  # the new trigger's column
    assert hook.get_status("shop")["pending"] == 1


def test_other_columns_are_embedded_by_the_next_run_and_searched_meanwhile(project, hook):
    db = project
    before = stored(db)
    assert hook.alter_project("shop", columns=["name", "description", "category"])["changed"]
    assert {r["product_id"] for r in hook.search("shop", "mobile phone", num_results=3)} & {1, 2, 3}  # old vectors
    assert hook.get_status("shop")["stale_rows"] == 24
    assert hook.generate_embeddings("shop", pending_only=True)["embedded"] == 24
    after = stored(db)
    assert all(after[i][1] != before[i][1] for i in before)  # every md5 is of the new text
    db.execute("UPDATE products SET category = 'gadgets' WHERE product_id = 5")  # now an embedded column
    assert hook.get_status("shop")["pending"] == 1


def test_update_col_is_set_and_removed(products, hook):
    hook.create_project("shop", "products", "product_id", COLUMNS, schedule="manual")
    assert hook.alter_project("shop", update_col="updated_at")["changed"] == {"update_col": [None, "updated_at"]}
    assert hook.get_project("shop")["params"]["update_time_col"] == "updated_at"
    assert hook.alter_project("shop", update_col="updated_at") == {"job_name": "shop", "changed": {}}
    assert hook.alter_project("shop", update_col=None)["changed"] == {"update_col": ["updated_at", None]}
    assert hook.get_project("shop")["params"]["update_time_col"] is None


def index_definition(db) -> list[str]:
    """The project's HNSW index definitions (the rebuilt one's too, while it exists), names schema-free."""
    return [definition for (definition,) in db.execute(
        "SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'shop_hnsw%%' ORDER BY indexname")]


def test_the_index_is_built_again_with_other_settings_its_vectors_kept(project, hook):
    db = project
    before, found = stored(db), [r["product_id"] for r in hook.search("shop", "mobile phone", num_results=5)]
    half = db.layout == "chunked"  # a chunked project's index is always half-precision
    assert "m='" not in index_definition(db)[0]

    summary = hook.alter_project("shop", hnsw_m=8, hnsw_ef_construction=40)
    assert summary["changed"] == {"hnsw_m": [None, 8], "hnsw_ef_construction": [None, 40]}
    assert summary["index"]["rebuilt"] is True and summary["index"]["fits"] is True
    (definition,) = index_definition(db)  # the rebuilt index took the old one's name; nothing else is left
    assert "USING hnsw" in definition and "WITH (m='8', ef_construction='40')" in definition
    assert ("halfvec" in definition) is half
    assert {k: v for k, v in hook.get_project("shop")["params"].items() if k.startswith("hnsw")} == {
        "hnsw_m": 8, "hnsw_ef_construction": 40}
    assert stored(db) == before  # no vector written again
    assert [r["product_id"] for r in hook.search("shop", "mobile phone", num_results=5)] == found
    assert hook.alter_project("shop", hnsw_m=8) == {"job_name": "shop", "changed": {}}

    if not half:
        summary = hook.alter_project("shop", halfvec_index=True, hnsw_m=None, hnsw_ef_construction=None)
        assert summary["changed"] == {"halfvec_index": [False, True], "hnsw_m": [8, None],
                                      "hnsw_ef_construction": [40, None]}
        (definition,) = index_definition(db)
        assert "halfvec(384)" in definition and "halfvec_cosine_ops" in definition and "WITH" not in definition
        assert hook.get_project("shop")["params"]["halfvec_index"] is True
        assert {r["product_id"] for r in hook.search("shop", "mobile phone", num_results=5)} == set(found)
        assert hook.alter_project("shop", halfvec_index=False)["index"]["rebuilt"]
        assert "halfvec" not in index_definition(db)[0] and "halfvec_index" not in hook.get_project("shop")["params"]
    db.execute("UPDATE products SET description = 'Refurbished.' WHERE product_id = 1")
    assert hook.generate_embeddings("shop")["embedded"] == 1  # generation writes through the new index


def test_a_project_without_its_index_takes_the_settings_for_its_next_build(products, hook):
    """No index to rebuild (a killed bulk write's): the settings are written, and the next run builds with them."""
    hook.create_project("shop", "products", "product_id", COLUMNS, embed_existing=True)
    products.execute("DROP INDEX vectorize.shop_hnsw_cos_idx")
    assert hook.alter_project("shop", hnsw_m=8)["index"] == {"rebuilt": False}
    assert index_definition(products) == [] and hook.get_project("shop")["params"]["hnsw_m"] == 8
    hook.generate_embeddings("shop")
    assert "WITH (m='8')" in index_definition(products)[0]


def test_searches_do_not_queue_behind_the_swap_while_the_table_is_busy(products, hook, database, monkeypatch):
    """The swap tries to take the table SWAP_LOCK_TIMEOUT at a time: a search that comes while a transaction
    holds the table runs between two tries, not after that transaction; the swap then takes the table."""
    hook.create_project("shop", "products", "product_id", COLUMNS, embed_existing=True)
    monkeypatch.setattr(index_rebuild, "SWAP_LOCK_TIMEOUT", "200ms")
    assert hook.search("shop", "mobile phone", num_results=3)
    reader = psycopg.connect(database.uri)
    reader.execute("SELECT count(*) FROM vectorize._embeddings_shop")  # holds the table until it ends
    outcome: dict[str, dict] = {}
    rebuild = threading.Thread(target=lambda: outcome.update(alter=hook.alter_project("shop", hnsw_m=12)))
    rebuild.start()
    try:
        for _ in range(200):  # until the rebuilt index is built and waits for the table
            if products.scalar("SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND mode = 'AccessExclusiveLock'"
                               " AND relation = 'vectorize._embeddings_shop'::regclass)"):
                break
            time.sleep(0.02)
        found: list = []
        search = threading.Thread(target=lambda: found.extend(hook.search("shop", "mobile phone", num_results=3)))
        search.start()
        search.join(30)  # not behind the swap's wait: the transaction holding the table goes on until the end
        assert len(found) == 3
        time.sleep(1)
        assert rebuild.is_alive() and "m='12'" not in index_definition(products)[0]  # still waiting
    finally:
        reader.commit()
        rebuild.join(60)
        reader.close()
    assert outcome["alter"]["index"]["rebuilt"] and "m='12'" in index_definition(products)[0]


def test_a_killed_rebuilds_index_is_dropped_and_a_running_one_refused(products, hook, database):
    hook.create_project("shop", "products", "product_id", COLUMNS, embed_existing=True)
    products.execute("CREATE INDEX shop_hnsw_cos_idx_rebuild ON vectorize._embeddings_shop"
                     " USING hnsw (embeddings vector_cosine_ops) WITH (m = 4)")  # as a killed rebuild leaves it
    assert hook.alter_project("shop", hnsw_m=6)["index"]["rebuilt"]
    assert index_definition(products) == [("CREATE INDEX shop_hnsw_cos_idx ON vectorize._embeddings_shop"
                                           " USING hnsw (embeddings vector_cosine_ops) WITH (m='6')")]

    other = psycopg.connect(database.uri, autocommit=True)
    other.execute("SELECT pg_advisory_lock(hashtextextended('vectorize-index:shop', 0))")  # a rebuild running
    before = snapshot(products)
    try:
        with pytest.raises(ProjectConflictError, match="another session is rebuilding its index or dropping"):
            hook.alter_project("shop", hnsw_m=8)
    finally:
        other.close()
    assert snapshot(products) == before

    products.execute("CREATE TABLE elsewhere (v vector(3)); CREATE INDEX shop_hnsw_cos_idx_rebuild ON elsewhere (v)"
                     "; ALTER TABLE elsewhere SET SCHEMA vectorize")
    before = snapshot(products)
    with pytest.raises(ProjectConflictError, match=re.escape(
            "vectorize.shop_hnsw_cos_idx_rebuild exists and is not an index of the project's table")):
        hook.alter_project("shop", hnsw_m=8)
    assert snapshot(products) == before


@pytest.mark.parametrize("call", ["generate_embeddings", "attach_source"])
def test_a_stopped_rebuilds_index_is_dropped_by_the_next_run_unless_a_rebuild_runs(products, hook, database, call):
    """An index a stopped rebuild left is kept up to date by every write: the next generation run (or
    attach_source) drops it, but not while a rebuild runs (it may be that rebuild's)."""
    hook.create_project("shop", "products", "product_id", COLUMNS, embed_existing=True)
    products.execute("CREATE INDEX shop_hnsw_cos_idx_rebuild ON vectorize._embeddings_shop"
                     " USING hnsw (embeddings vector_cosine_ops) WITH (m = 4)")
    with psycopg.connect(database.uri, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtextextended('vectorize-index:shop', 0))")  # a rebuild running
        getattr(hook, call)("shop")
        assert len(index_definition(products)) == 2
    getattr(hook, call)("shop")
    assert index_definition(products) == [("CREATE INDEX shop_hnsw_cos_idx ON vectorize._embeddings_shop"
                                           " USING hnsw (embeddings vector_cosine_ops)")]


BAD = [
    ({}, InvalidInputError, "nothing to alter: give schedule, columns, update_col and/or the index's hnsw_m"),
    ({"schedule": "hourly"}, InvalidInputError, "schedule 'hourly' is not supported"),
    ({"columns": "name"}, InvalidInputError, "columns must be a list of column names, got 'name'"),
    ({"columns": []}, InvalidInputError, "columns must name at least one text column to embed"),
    ({"columns": ["name", "colour"]}, InvalidInputError, "text column 'colour' does not exist in table"),
    ({"columns": ["name", "price"]}, InvalidInputError, "column 'price' of \"public\".\"products\" is numeric"),
    ({"update_col": "name"}, InvalidInputError, "update_col 'name' of \"public\".\"products\" is text"),
    ({"schedule": "manual", "columns": ["nope"]}, InvalidInputError, "text column 'nope' does not exist"),
    ({"hnsw_m": 1}, InvalidInputError, "hnsw_m must be an integer from 2 to 100, got 1"),
    ({"schedule": "manual", "hnsw_ef_construction": 20}, InvalidInputError,
     "hnsw_ef_construction (20) must be at least 2 × hnsw_m (32)"),
    ({"hnsw_m": 40}, InvalidInputError, "hnsw_ef_construction (64, the default) must be at least 2 × hnsw_m (80)"),
    ({"halfvec_index": "yes"}, InvalidInputError, "halfvec_index must be True or False, got 'yes'"),
]


@pytest.mark.parametrize("arguments, error_type, message", BAD, ids=[str(a) for a, _, _ in BAD])
def test_bad_input_changes_nothing(products, hook, arguments, error_type, message):
    hook.create_project("shop", "products", "product_id", COLUMNS)
    before = snapshot(products)
    with pytest.raises(error_type, match=re.escape(message)):
        hook.alter_project("shop", **arguments)
    assert snapshot(products) == before
    with pytest.raises(ProjectNotFoundError, match="project 'other' not yet initialized"):
        hook.alter_project("other", schedule="manual")
    assert snapshot(products) == before


def test_a_drop_is_refused_while_the_index_is_rebuilt(products, hook, database):
    """A drop would wait for the rebuild's CREATE INDEX CONCURRENTLY, which waits for the snapshots older than
    it: refused, nothing changed; the rebuild completes, and the drop goes through afterwards."""
    hook.create_project("shop", "products", "product_id", COLUMNS, embed_existing=True)
    older = psycopg.connect(database.uri)
    older.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    older.execute("SELECT 1")  # a snapshot the build waits for
    outcome: dict[str, BaseException | dict] = {}

    def alter() -> None:
        try:
            outcome["alter"] = hook.alter_project("shop", hnsw_m=8)
        except Exception as error:  # noqa: BLE001 - checked below
            outcome["alter"] = error

    rebuild = threading.Thread(target=alter)
    rebuild.start()
    release = threading.Timer(3.0, older.commit)  # a drop that waited would go on after it
    try:
        for _ in range(200):  # until the build runs
            if products.scalar("SELECT to_regclass('vectorize.shop_hnsw_cos_idx_rebuild') IS NOT NULL"):
                break
            time.sleep(0.05)
        before = snapshot(products)
        release.start()
        with pytest.raises(ProjectConflictError, match="project 'shop': its index is being rebuilt"):
            hook.drop_project("shop")
        assert snapshot(products) == before
    finally:
        if release.is_alive():
            release.join()
        rebuild.join(60)
        older.close()
    assert outcome["alter"]["index"]["rebuilt"], outcome
    assert hook.drop_project("shop")["dropped"]
    assert products.scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'shop%%'") == 0


def open_report(db) -> psycopg.Connection:
    """A long transaction that read the source (a report); it holds the table until it is closed."""
    report = psycopg.connect(db.uri)
    report.execute("SELECT count(*) FROM products").fetchone()
    return report


def waits_for_the_table(db) -> None:
    """Return once a session waits for a lock on ``products`` (an alter or drop behind the report)."""
    for _ in range(200):
        if db.scalar("SELECT count(*) FROM pg_locks WHERE relation = 'products'::regclass AND NOT granted"):
            return
        time.sleep(0.05)
    raise AssertionError("no session waited for products")


def the_application_gets_through(db) -> None:
    """A read and a write of the table while the report still holds it: with a lock wait bounded generously,
    they fail (LockNotAvailable) if they stay queued behind a statement that waits for the report."""
    with psycopg.connect(db.uri, autocommit=True) as app:
        app.execute("SET lock_timeout = '5s'")
        app.execute("UPDATE products SET price = price WHERE product_id = 1")
        app.execute("SELECT count(*) FROM products").fetchone()


def test_pausing_a_busy_source_lets_the_application_through_between_its_tries(products, hook):
    """Before, DROP TRIGGER waited for the report with every read and write of the table queued behind it:
    the application's statements failed on their lock timeout here."""
    hook.create_project("shop", "products", "product_id", COLUMNS)
    report, altered = open_report(products), []
    alter = threading.Thread(target=lambda: altered.append(hook.alter_project("shop", schedule="manual")))
    alter.start()
    try:
        waits_for_the_table(products)
        the_application_gets_through(products)
    finally:
        report.close()
        alter.join(60)

    assert altered[0]["changed"] == {"schedule": ["realtime", "manual"]} and triggers(products) == MANUAL


def test_a_source_busy_for_every_try_refuses_the_alter_and_changes_nothing(products, hook, monkeypatch):
    from airflow_vectorize.hooks import vectorize

    hook.create_project("shop", "products", "product_id", COLUMNS)
    monkeypatch.setattr(vectorize, "ALTER_LOCK_TRIES", (2, "200ms", 0.1))
    before = snapshot(products)
    report = open_report(products)
    threading.Timer(20, report.close).start()  # without the tries, the alter would wait for it: then no error

    try:
        with pytest.raises(ProjectConflictError, match=re.escape(
                "project 'shop': its source table \"public\".\"products\" stayed in use (a long transaction reads"
                " or writes it) for 2 tries of 200ms; its triggers could not change, and nothing did")):
            hook.alter_project("shop", columns=["name"])
    finally:
        report.close()

    assert snapshot(products) == before and triggers(products) == REALTIME
