"""Projects made by earlier versions, before their next generation run: read-only calls (status, freshness, the
freshness sensor and triggers) read around the tables they lack without writing; writing calls (alter_project,
attach_source, import_embeddings) bring them to today's layout first (``storage.upgrade_layout``); a chunked
project of the 2026-12-02 layout gets its chunk documents from its next run. Each older layout is today's
project turned back with SQL — against the real PostgreSQL."""

from __future__ import annotations

import asyncio

from airflow_vectorize import expressions
from airflow_vectorize.sensors import VectorizeFreshnessSensor
from airflow_vectorize.triggers import FreshnessTrigger
from airflow_vectorize.triggers.pending import _queue_state
from tests.conftest import create_embeddings_table, snapshot

COLUMNS = ["name", "description"]
LAYOUT_TABLES = ("_errors_shop", "_bulk_shop", "_removed_shop", "_documents_shop")


def as_made_on_2026_11_24(db, hook, job: str = "shop", source: str = "products", key: str = "product_id") -> None:
    """Turn today's join project ``job`` into the layout the 2026-11-24 code made: no errors, bulk, removed or
    documents table, pg_vectorize's foreign keys instead of the removal triggers, its full-text index on the
    source."""
    project = hook._search_target(job).project
    document = expressions.fts_document(project).as_string(db.conn)
    db.execute(
        f"DROP TRIGGER vectorize_delete_trigger_{job} ON {source}; DROP TRIGGER vectorize_trunc_trigger_{job} ON {source};"
        f" DROP TRIGGER vectorize_rekey_trigger_{job} ON {source}; DROP FUNCTION vectorize.handle_removal_{job}();"
        f" DROP TABLE vectorize._removed_{job}, vectorize._errors_{job}, vectorize._bulk_{job}, vectorize._documents_{job};"
        f" ALTER TABLE vectorize._embeddings_{job} ADD FOREIGN KEY ({key}) REFERENCES {source} ON DELETE CASCADE;"
        f" ALTER TABLE vectorize._pending_{job} ADD FOREIGN KEY ({key}) REFERENCES {source} ON DELETE CASCADE;"
        f" CREATE INDEX {job}_fts_idx ON {source} USING gin ({document})")
    hook._search_cache.clear()


def present(db, *tables: str) -> set[str]:
    """Which of ``tables`` exist in the ``vectorize`` schema."""
    return {t for t in tables if db.scalar("SELECT to_regclass(%s) IS NOT NULL", [f"vectorize.{t}"])}


def first_event(trigger) -> dict:
    async def run() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("no event")
    return asyncio.run(asyncio.wait_for(run(), 20))


def test_an_older_project_reports_status_and_freshness_without_its_errors_table_and_writes_nothing(products, hook):
    """A project made before the errors table (2026-11-24): get_freshness, the freshness sensor and trigger,
    and the pending-rows trigger's count failed with a raw UndefinedTable on _errors_<job>; get_status did too
    once a bulk table was there (after alter_project(schedule="realtime")). A missing errors table is no
    failed row, and nothing is created by reading."""
    hook.create_project("shop", "products", "product_id", COLUMNS, schedule="realtime")
    hook.generate_embeddings("shop")
    as_made_on_2026_11_24(products, hook)
    products.execute("UPDATE products SET description = 'a garden hose' WHERE product_id = 1")

    for bulk in (False, True):  # as made; with the bulk table an alter to realtime makes
        if bulk:
            products.execute("CREATE TABLE vectorize._bulk_shop (id bigserial PRIMARY KEY, rows bigint,"
                             " enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp())")
        before = snapshot(products)
        status, freshness = hook.get_status("shop"), hook.get_freshness("shop")
        sensor = VectorizeFreshnessSensor(task_id="fresh", job_name="shop", postgres_conn_id=products.conn_id,
                                          max_pending=0, max_stale=None)
        poked = sensor.poke({})
        event = first_event(FreshnessTrigger("shop", products.conn_id, max_pending=1, max_stale=None,
                                             poll_interval=0.2))

        async def queue_state():
            async with await hook.aconnect() as conn:
                return await _queue_state(conn, hook._search_target("shop").project)
        pending, _, lag = asyncio.run(queue_state())

        assert snapshot(products) == before, bulk  # read, not written
        assert (status["pending"], status["stale_rows"], status["failed_rows"]) == (1, 1, 0), bulk
        assert (freshness["pending"], freshness["stale"], freshness["failed"]) == (1, 1, 0), bulk
        assert not poked and sensor.last["pending"] == 1
        assert event["status"] == "fresh" and event["pending"] == 1, event
        assert pending == 1 and lag > 0
    assert present(products, *LAYOUT_TABLES) == {"_bulk_shop"}
    hook.generate_embeddings("shop", pending_only=True)
    assert hook.get_freshness("shop")["pending"] == 0


def test_pausing_an_older_project_moves_it_to_todays_layout_first(products, hook):
    """alter_project(schedule="manual") (the page's Pause, PATCH /api/v1/table) raised a raw UndefinedTable on
    _bulk_<job> on a project made before the bulk table, and changed nothing; it moves the project to today's
    layout, then pauses it."""
    hook.create_project("shop", "products", "product_id", COLUMNS, schedule="realtime")
    hook.generate_embeddings("shop")
    as_made_on_2026_11_24(products, hook)

    assert hook.alter_project("shop", schedule="manual")["changed"] == {"schedule": ["realtime", "manual"]}
    assert present(products, *LAYOUT_TABLES) == set(LAYOUT_TABLES)
    assert products.scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
                           " AND confrelid = 'products'::regclass") == 0
    assert products.scalar("SELECT to_regclass('public.shop_fts_idx')") is None
    assert products.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'products'::regclass AND NOT tgisinternal"
                            " ORDER BY 1") == [("vectorize_delete_trigger_shop",), ("vectorize_rekey_trigger_shop",),
                                               ("vectorize_trunc_trigger_shop",)]
    products.execute("UPDATE products SET description = 'a garden hose' WHERE product_id = 1")
    assert hook.get_status("shop")["pending"] == 0  # paused: nothing queued
    assert hook.alter_project("shop", schedule="realtime")["changed"] == {"schedule": ["manual", "realtime"]}
    assert hook.generate_embeddings("shop", pending_only=True)["embedded"] == 1
    assert hook.hybrid_search("shop", "garden hose", return_columns=["product_id"], num_results=1)[0]["product_id"] == 1


def test_attach_source_and_import_move_an_older_project_to_todays_layout_first(products, hook, model):
    """attach_source raised a raw UndefinedTable on _removed_<job> for a project made before the removal
    triggers; it and import_embeddings move the project to today's layout first (the foreign keys dropped:
    a TRUNCATE of the source works)."""
    hook.create_project("shop", "products", "product_id", COLUMNS)
    hook.generate_embeddings("shop")
    as_made_on_2026_11_24(products, hook)
    before = hook.hybrid_search("shop", "garden", return_columns=["product_id"])

    assert hook.attach_source("shop") == {"job_name": "shop", "attached": False}  # the triggers were added
    assert present(products, *LAYOUT_TABLES) == set(LAYOUT_TABLES)
    assert products.scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
                           " AND confrelid = 'products'::regclass") == 0
    assert hook.hybrid_search("shop", "garden", return_columns=["product_id"]) == before
    assert hook.generate_embeddings("shop")["embedded"] == 0

    as_made_on_2026_11_24(products, hook)
    create_embeddings_table(products, model)
    assert hook.import_embeddings("shop", "product_embeddings", "product_id", "embedding")["imported"] == 24
    assert present(products, *LAYOUT_TABLES) == set(LAYOUT_TABLES)
    assert products.scalar("SELECT count(*) FROM vectorize._documents_shop") == 24
    products.execute("TRUNCATE products")  # the old layout's foreign keys refused it
    assert hook.generate_embeddings("shop")["vectors_removed"] == 24


def test_an_older_project_whose_source_was_swapped_is_attached_to_the_new_table(products, hook):
    """A project of the foreign-key layout whose source was swapped (its foreign keys go with the table swapped
    out): the move drops them all, and attach_source attaches the new table (its triggers, the vectors of keys
    it no longer has deleted by the next run) instead of finding the triggers the move put on it."""
    hook.create_project("shop", "products", "product_id", COLUMNS)
    hook.generate_embeddings("shop")
    as_made_on_2026_11_24(products, hook)
    products.execute("CREATE TABLE products_new (LIKE products INCLUDING ALL); INSERT INTO products_new"
                     " SELECT * FROM products WHERE product_id <> 2;"
                     " INSERT INTO products_new (product_id, name, description) VALUES (100, 'Hose', 'a garden hose')")
    with products.conn.transaction():
        products.execute("ALTER TABLE products RENAME TO products_old; ALTER TABLE products_new RENAME TO products")

    assert hook.attach_source("shop") == {"job_name": "shop", "attached": True}
    summary = hook.generate_embeddings("shop")
    products.execute("DROP TABLE products_old")  # no foreign key refuses it any more

    assert (summary["embedded"], summary["vectors_removed"]) == (1, 1)
    assert products.scalar("SELECT count(*) FROM vectorize._embeddings_shop") == 24
    assert products.execute("SELECT tgrelid::regclass::text, count(*) FROM pg_trigger WHERE tgname LIKE '%shop'"
                            " GROUP BY 1") == [("products", 5)]  # realtime and removal triggers
    assert hook.search("shop", "garden hose", return_columns=["product_id"], num_results=1)[0]["product_id"] == 100
