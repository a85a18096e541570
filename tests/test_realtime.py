"""Realtime without a polling DAG: the pending-rows event trigger, the freshness trigger and sensor,
pending-only generation and the project's Asset outlets — against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from typing import Any

import pytest
from airflow.sdk import DAG, TaskGroup, task
from airflow.sdk.exceptions import TaskDeferred
from conftest import create_products

from airflow_vectorize.assets import embeddings_asset, pending_rows_asset
from airflow_vectorize.exceptions import InvalidInputError, VectorizeError
from airflow_vectorize.operators import GenerateEmbeddingsOperator, ImportEmbeddingsOperator
from airflow_vectorize.sensors import VectorizeFreshnessSensor
from airflow_vectorize.triggers import FreshnessTrigger, PendingRowsTrigger

COLUMNS = ["name", "description"]


def insert_products(db, first: int, count: int, one_transaction: bool = True) -> None:
    rows = [(first + i, f"Gadget {first + i}", "a brand new gadget") for i in range(count)]
    with db.conn.cursor() as cur:
        if one_transaction:
            cur.executemany("INSERT INTO products (product_id, name, description) VALUES (%s, %s, %s)", rows)
        else:
            for row in rows:
                cur.execute("INSERT INTO products (product_id, name, description) VALUES (%s, %s, %s)", row)


def collect(trigger, seconds: float, actions: list[tuple[float, Any]] = ()) -> list[tuple[float, dict]]:
    """Run the trigger for ``seconds``; call each action in a thread at its time; (time, payload) per event."""
    events: list[tuple[float, dict]] = []

    async def main() -> None:
        start = time.monotonic()
        for at, action in actions:
            threading.Timer(at, action).start()

        async def consume() -> None:
            async for event in trigger.run():
                events.append((round(time.monotonic() - start, 2), event.payload))

        try:
            await asyncio.wait_for(consume(), seconds)
        except TimeoutError:
            pass

    asyncio.run(main())
    return events


def test_pending_trigger_fires_on_commit_and_coalesces_a_burst(products, hook):
    hook.create_project("shop", "products", "product_id", COLUMNS)  # realtime: queue triggers + NOTIFY
    trigger = PendingRowsTrigger("shop", products.conn_id, poll_interval=60, debounce=0.5)

    events = collect(trigger, 4.0, [
        (0.5, lambda: insert_products(products, 100, 3)),  # one transaction
        (2.0, lambda: insert_products(products, 200, 20, one_transaction=False)),  # a burst of 20 commits
    ])

    assert events[0][1] == {"job_name": "shop", "pending": 3}
    assert events[0][0] < 1.5  # notified at commit, + debounce: not the 60 s poll
    burst = [payload for at, payload in events[1:]]
    assert 1 <= len(burst) <= 2 and burst[-1]["pending"] == 23  # 20 commits, at most 2 events
    assert events[-1][0] < 3.5


def test_pending_trigger_catches_up_at_start_and_polls_without_notify(products, hook):
    hook.create_project("shop", "products", "product_id", COLUMNS)
    insert_products(products, 100, 2)  # queued before the trigger starts
    trigger = PendingRowsTrigger("shop", products.conn_id, poll_interval=0.5, debounce=0)

    def queue_without_notify() -> None:  # as a project created before NOTIFY existed would
        products.execute("INSERT INTO vectorize._pending_shop (product_id) VALUES (1)")

    events = collect(trigger, 2.5, [(1.2, queue_without_notify)])

    assert [payload["pending"] for _, payload in events] == [2, 3]  # the same rows are announced once
    assert 1.2 < events[1][0] < 2.0


def test_pending_trigger_waits_for_the_project_and_survives_a_lost_connection(products, hook):
    trigger = PendingRowsTrigger("shop", products.conn_id, poll_interval=0.3, debounce=0)

    def create() -> None:
        hook.create_project("shop", "products", "product_id", COLUMNS)

    def kill_listener() -> None:
        products.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                         " AND pid <> pg_backend_pid() AND backend_type = 'client backend'")

    events = collect(trigger, 4.5, [
        (0.2, create),
        (0.8, lambda: insert_products(products, 100, 1)),
        (1.5, kill_listener),
        (3.0, lambda: insert_products(products, 101, 1)),
    ])

    assert [payload["pending"] for _, payload in events] == [1, 2]


def test_pending_trigger_waits_again_when_the_project_is_dropped(products, hook):
    """A drop_project made the trigger's next poll raise UndefinedTable: the trigger died, and rows queued
    for the project created again got no event. It waits for the project again, then LISTENs again."""
    hook.create_project("shop", "products", "product_id", COLUMNS)
    trigger = PendingRowsTrigger("shop", products.conn_id, poll_interval=0.3, debounce=0)

    events = collect(trigger, 4.5, [
        (0.3, lambda: insert_products(products, 100, 1)),
        (0.8, lambda: hook.drop_project("shop")),
        (1.4, lambda: hook.create_project("shop", "products", "product_id", COLUMNS)),
        (3.2, lambda: insert_products(products, 101, 2)),
    ])

    assert [payload for _, payload in events] == [{"job_name": "shop", "pending": 1},
                                                  {"job_name": "shop", "pending": 2}]  # the new project's queue
    assert 3.2 <= events[1][0] < 4.0  # the trigger watches the project created again (times rounded to 0.01 s)


def test_pending_trigger_waits_for_a_source_table_dropped_under_its_project(products, hook, caplog):
    """The source table dropped (or renamed away) under a project still in the catalog: the trigger raised
    UndefinedTable, and the triggerer started the watcher again, to fail again, at every loop. It says once
    what is missing and the way out, waits, and watches the table put back."""
    hook.create_project("shop", "products", "product_id", COLUMNS)
    trigger = PendingRowsTrigger("shop", products.conn_id, poll_interval=0.2, debounce=0)

    def put_back() -> None:
        create_products(products)
        hook.attach_source("shop")  # its triggers queue the new table's writes again

    with caplog.at_level(logging.WARNING, logger="airflow_vectorize.triggers.pending"):
        events = collect(trigger, 4.5, [
            (0.3, lambda: insert_products(products, 100, 1)),
            (0.8, lambda: products.execute("DROP TABLE products CASCADE")),
            (1.6, put_back),
            (3.0, lambda: insert_products(products, 101, 2)),
        ])

    # put back: its 24 rows, never embedded, queued by attach_source; then the 2 inserted
    assert [payload["pending"] for _, payload in events] == [1, 24, 26]
    warnings = [r.getMessage() for r in caplog.records if "dropped or renamed away" in r.getMessage()]
    assert warnings == [('Project \'shop\': relation "public.products" does not exist — its source table, or a'
                         " column of it, was dropped or renamed away. Put a table with its key and columns under"
                         " that name and run generation (or VectorizeHook.attach_source('shop')), or drop the"
                         " project; checking every 0.2 s")]


def test_pending_trigger_waits_for_a_source_column_renamed_while_a_bulk_update_waits(products, hook, caplog,
                                                                                      monkeypatch):
    """A large UPDATE's bulk row makes the trigger count the rows due, which reads the embedded columns: one of
    them renamed away made it raise UndefinedColumn. It waits for the column as for a missing table."""
    from airflow_vectorize import catalog

    monkeypatch.setattr(catalog, "UPDATED_ROWS", 3)  # written into the trigger when the project is created
    hook.create_project("shop", "products", "product_id", COLUMNS)
    hook.generate_embeddings("shop")
    trigger = PendingRowsTrigger("shop", products.conn_id, poll_interval=0.2, debounce=0)

    with caplog.at_level(logging.WARNING, logger="airflow_vectorize.triggers.pending"):
        events = collect(trigger, 3.0, [
            (0.3, lambda: products.execute("ALTER TABLE products RENAME COLUMN description TO details")),
            (0.6, lambda: products.execute("UPDATE products SET name = name || '!' WHERE product_id <= 5")),
            (1.5, lambda: products.execute("ALTER TABLE products RENAME COLUMN details TO description")),
        ])

    # once the column is back: the 5 rows due (the UPDATE's notification, read after the wait, may repeat it)
    assert events and all(at >= 1.5 and payload["pending"] == 5 for at, payload in events)
    assert any('column r.description does not exist — its source table, or a column of it, was dropped' in
               r.getMessage() for r in caplog.records)


def test_pending_trigger_fires_again_for_rows_left_queued(products, hook):
    """The trigger fired on a poll only for rows queued after its last event: rows a failed run left in the
    queue got no event until the next write. It fires again once the oldest queued row is ``refire_after``
    seconds old and as long since its last event, so never on every poll."""
    hook.create_project("shop", "products", "product_id", COLUMNS)
    trigger = PendingRowsTrigger("shop", products.conn_id, poll_interval=0.2, debounce=0, refire_after=1.0)

    events = collect(trigger, 3.2, [(0.3, lambda: insert_products(products, 100, 1))])  # no run takes it

    assert 2 <= len(events) <= 3 and all(payload == {"job_name": "shop", "pending": 1} for _, payload in events)
    times = [at for at, _ in events]
    assert times[0] < 1.0 and all(b - a >= 0.95 for a, b in itertools.pairwise(times))  # not at every poll
    assert PendingRowsTrigger("shop", refire_after=None).serialize()[1]["refire_after"] is None  # never again
    with pytest.raises(InvalidInputError, match="refire_after must be a positive number of seconds or None"):
        PendingRowsTrigger("shop", refire_after=0)


def test_a_pending_only_run_of_a_manual_project_says_nothing_queues_its_rows(products, hook, caplog):
    """Before, it embedded nothing on every run, silently, while its rows stayed stale."""
    hook.create_project("shop", "products", "product_id", COLUMNS, schedule="manual")
    with caplog.at_level(logging.WARNING):
        assert hook.generate_embeddings("shop", pending_only=True)["embedded"] == 0
    assert "Project 'shop' is manual: no trigger queues its rows, so a pending_only run embeds only" in caplog.text


def test_pending_only_generation_embeds_the_queue_not_the_table(products, hook):
    hook.create_project("shop", "products", "product_id", COLUMNS)  # 24 rows, none embedded, none queued
    insert_products(products, 100, 2)

    result = hook.generate_embeddings("shop", pending_only=True)

    assert (result["embedded"], result["pending_only"], result["pending_cleared"]) == (2, True, 2)
    status = hook.get_status("shop")
    assert (status["embedded_rows"], status["pending"]) == (2, 0)
    assert hook.get_freshness("shop")["stale"] == 24


@pytest.mark.parametrize("order", ["ASC", "DESC"])
def test_keys_shifted_in_one_statement_stay_queued(database, hook, order):
    """A deferrable key lets one UPDATE give a row the key another row just left. Before, the trigger of the
    row that left key 2 took key 2 off the queue after the trigger of the row that took it had queued it:
    key 2's vector (of the other row's text) stayed stale, unqueued, for realtime runs."""
    database.execute("CREATE TABLE shifts (id integer, body text, CONSTRAINT shifts_pk PRIMARY KEY (id) DEFERRABLE)")
    database.execute("INSERT INTO shifts VALUES (1, 'a red kettle'), (2, 'a green lamp'), (3, 'a blue chair')")
    hook.create_project("shifts", "shifts", "id", ["body"], embed_existing=True)
    database.execute("CLUSTER shifts USING shifts_pk" if order == "ASC" else
                     "CREATE INDEX shifts_desc ON shifts (id DESC); CLUSTER shifts USING shifts_desc")

    database.execute("UPDATE shifts SET id = id + 1")  # rows read in the table's order: 1 first, or 3 first

    assert sorted(database.execute("SELECT id FROM vectorize._pending_shifts")) == [(2,), (3,), (4,)]
    run = hook.generate_embeddings("shifts", pending_only=True)
    assert (run["embedded"], run["vectors_removed"]) == (3, 1)  # key 1 is no row now
    status = hook.get_status("shifts")
    assert (status["embedded_rows"], status["stale_rows"], status["pending"]) == (3, 0, 0)
    assert hook.search("shifts", "kettle", num_results=1)[0]["id"] == 2


def test_freshness_trigger_fires_once_the_queue_is_embedded(products, hook):
    hook.create_project("shop", "products", "product_id", COLUMNS)
    insert_products(products, 100, 2)
    trigger = FreshnessTrigger("shop", products.conn_id, max_pending=0, max_stale=None, poll_interval=0.2)

    events = collect(trigger, 6.0, [(0.5, lambda: hook.generate_embeddings("shop", pending_only=True))])

    assert len(events) == 1 and events[0][0] > 0.5
    at, payload = events[0]
    assert payload["status"] == "fresh" and payload["pending"] == 0 and payload["stale"] == 24


def test_freshness_trigger_measures_the_project_as_it_is_at_each_poll(database, hook):
    """The trigger read the project once: after alter_project(columns=...) and a run that embedded every row
    with the new text, it measured with the old columns, found every row stale, and never fired."""
    database.execute("CREATE TABLE docs (id integer PRIMARY KEY, body text, category text)")
    database.execute("INSERT INTO docs VALUES (1, 'a red kettle', 'kitchen'), (2, 'a green lamp', 'light')")
    hook.create_project("docs", "docs", "id", ["body"], schedule="manual")  # 2 rows due: not fresh
    trigger = FreshnessTrigger("docs", database.conn_id, max_pending=0, max_stale=0, poll_interval=0.2)

    def alter_and_embed() -> None:
        hook.alter_project("docs", columns=["body", "category"])
        hook.generate_embeddings("docs")

    events = collect(trigger, 6.0, [(0.5, alter_and_embed)])

    assert [payload for _, payload in events] == [
        {"status": "fresh", "job_name": "docs", "pending": 0, "stale": 0, "lag_seconds": 0.0, "failed": 0}]


def test_freshness_trigger_reconnects_after_a_lost_connection(database, hook):
    """A terminated session made the trigger fire an error event (the deferred sensor failed), although the
    project was fresh a second later: it reconnects, as PendingRowsTrigger does."""
    database.execute("CREATE TABLE docs (id integer PRIMARY KEY, body text)")
    database.execute("INSERT INTO docs VALUES (1, 'a red kettle'), (2, 'a green lamp')")
    hook.create_project("docs", "docs", "id", ["body"], schedule="manual")
    trigger = FreshnessTrigger("docs", database.conn_id, max_pending=0, max_stale=0, poll_interval=0.2)

    def kill_sessions() -> None:
        database.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                         " AND pid <> pg_backend_pid() AND backend_type = 'client backend'")

    events = collect(trigger, 6.0, [(0.5, kill_sessions), (1.0, lambda: hook.generate_embeddings("docs"))])

    assert [payload["status"] for _, payload in events] == ["fresh"]
    assert events[0][0] > 1.0


def test_freshness_trigger_reports_a_missing_project(database):
    events = collect(FreshnessTrigger("nope", database.conn_id), 2.0)
    assert events[0][1] == {"status": "error", "message": "project 'nope' does not exist"}


def test_freshness_trigger_says_what_to_do_about_a_dropped_source_table(products, hook):
    hook.create_project("shop", "products", "product_id", COLUMNS)
    products.execute("DROP TABLE products CASCADE")  # before: PostgreSQL's raw "UndefinedTable: ..." text
    events = collect(FreshnessTrigger("shop", products.conn_id), 2.0)
    assert [payload for _, payload in events] == [{"status": "error", "message": (
        'project \'shop\': relation "public.products" does not exist — its source table, or a column of it, was'
        " dropped or renamed away. Put it back and run generation (or VectorizeHook.attach_source('shop')), or"
        " drop the project")}]


def test_freshness_sensor_defers_then_completes(products, hook):
    hook.create_project("shop", "products", "product_id", COLUMNS)
    sensor = VectorizeFreshnessSensor(task_id="fresh", job_name="shop", postgres_conn_id=products.conn_id,
                                      max_stale=0, poke_interval=0.2, timeout=60)

    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context={})
    trigger = deferred.value.trigger
    assert isinstance(trigger, FreshnessTrigger) and deferred.value.method_name == "execute_complete"
    assert (trigger.max_pending, trigger.max_stale, trigger.poll_interval) == (0, 0, 0.2)
    assert deferred.value.timeout.total_seconds() == 60

    events = collect(trigger, 30.0, [(0.3, lambda: hook.generate_embeddings("shop"))])
    result = sensor.execute_complete(context={}, event=events[0][1])
    assert result == {"job_name": "shop", "pending": 0, "stale": 0, "lag_seconds": 0.0, "failed": 0}
    assert sensor.execute(context={}) == {"job_name": "shop", "pending": 0, "stale": 0, "lag_seconds": 0.0, "failed": 0}
    with pytest.raises(VectorizeError, match="VectorizeFreshnessSensor: project 'shop' does not exist"):
        sensor.execute_complete(context={}, event={"status": "error", "message": "project 'shop' does not exist"})


def test_freshness_sensor_pokes_when_not_deferrable(products, hook):
    hook.create_project("shop", "products", "product_id", COLUMNS)
    sensor = VectorizeFreshnessSensor(task_id="fresh", job_name="shop", postgres_conn_id=products.conn_id,
                                      max_pending=None, max_stale=30, deferrable=False)
    assert sensor.poke({}) is True and sensor.last["stale"] == 24
    sensor = VectorizeFreshnessSensor(task_id="fresh2", job_name="shop", postgres_conn_id=products.conn_id,
                                      max_stale=10, deferrable=False)
    assert sensor.poke({}) is False


@pytest.mark.parametrize("kwargs, message", [
    ({"max_pending": -1}, "max_pending must be a non-negative number or None, got -1"),
    ({"max_stale": "0"}, "max_stale must be a non-negative number or None, got '0'"),
    ({"max_lag_seconds": True}, "max_lag_seconds must be a non-negative number or None, got True"),
    ({"max_pending": None, "max_stale": None}, "needs at least one of max_pending, max_stale, max_lag_seconds"),
    ({"poke_interval": 0}, ("poke_interval must be a positive number of seconds, got 0.0: 0 or less would poll the"
                            " database in a loop without pause")),
])
def test_freshness_sensor_rejects_bad_thresholds(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        VectorizeFreshnessSensor(task_id="fresh", job_name="shop", **kwargs)


@pytest.mark.parametrize("make", [PendingRowsTrigger, pending_rows_asset, FreshnessTrigger])
@pytest.mark.parametrize("poll_interval, message", [
    (0, ("poll_interval must be a positive number of seconds, got 0: 0 or less would poll the database in a loop"
         " without pause")),
    (-5.0, "poll_interval must be a positive number of seconds, got -5.0"),
    ("10", "poll_interval must be a positive number of seconds, got '10'"),
])
def test_triggers_refuse_a_poll_interval_that_would_poll_without_pause(make, poll_interval, message):
    """poll_interval=0 was taken: each deferred sensor or asset watcher queried the database thousands of
    times a second in the triggerer's event loop. Refused when the DAG file is parsed."""
    with pytest.raises(InvalidInputError, match=message):
        make("shop", poll_interval=poll_interval)


@pytest.mark.parametrize("make", [PendingRowsTrigger, pending_rows_asset])
def test_the_pending_trigger_refuses_a_negative_debounce(make):
    with pytest.raises(InvalidInputError, match=r"debounce must be a number of seconds >= 0, got -0.5$"):
        make("shop", debounce=-0.5)


def test_writers_emit_the_project_asset_and_the_watcher_watches_its_queue():
    generate = GenerateEmbeddingsOperator(task_id="embed", job_name="shop", postgres_conn_id="pg")
    load = ImportEmbeddingsOperator(task_id="load", job_name="shop", src_table="t", src_primary_key="k",
                                    src_embeddings_col="e")
    templated = GenerateEmbeddingsOperator(task_id="embed2", job_name="{{ params.job }}")

    assert [a.uri for a in generate.outlets] == ["vectorize://pg/shop"]
    assert [a.uri for a in load.outlets] == ["vectorize://postgres_default/shop"]
    assert templated.outlets == []
    with DAG("writers", schedule=None, default_args={"postgres_conn_id": "warehouse"}):
        defaulted = GenerateEmbeddingsOperator(task_id="embed3", job_name="shop")  # before: postgres_default's
        mapped = ImportEmbeddingsOperator.partial(task_id="load2", job_name="shop", src_primary_key="k",
                                                  src_embeddings_col="e").expand(src_table=["a", "b"])

        @task
        def project_name() -> str:
            return "shop"

        from_xcom = GenerateEmbeddingsOperator(task_id="embed4", job_name=project_name())  # before: TypeError
    assert [a.uri for a in defaulted.outlets] == ["vectorize://warehouse/shop"]
    assert [a.uri for a in mapped.partial_kwargs["outlets"]] == ["vectorize://warehouse/shop"]  # before: []
    assert from_xcom.outlets == []  # unknown when parsed, as a template
    pending = pending_rows_asset("shop", "pg", poll_interval=5)
    assert pending.uri == "vectorize://pg/shop/pending" != embeddings_asset("shop", "pg").uri
    (watcher,) = pending.watchers
    assert watcher.trigger.serialize() == ("airflow_vectorize.triggers.pending.PendingRowsTrigger",
                                           {"job_name": "shop", "postgres_conn_id": "pg", "poll_interval": 5.0,
                                            "debounce": 0.5, "refire_after": 600.0})


def test_mapped_writers_in_a_task_group_declare_the_connection_of_its_default_args():
    """A mapped writer took its connection from its own and its DAG's default_args only: in a TaskGroup whose
    default_args name the connection it embedded through that one but declared (and emitted, with an empty
    extra) the asset of postgres_default. Now the defaults merge as Airflow's partial() merges them."""
    with (DAG("grouped", schedule=None, default_args={"postgres_conn_id": "warehouse"}),
          TaskGroup("tg", default_args={"postgres_conn_id": "lake"})):
            plain = GenerateEmbeddingsOperator(task_id="plain", job_name="shop")
            mapped = GenerateEmbeddingsOperator.partial(task_id="mapped", job_name="shop", partition_count=2).expand(
                partition_index=[0, 1])
            with TaskGroup("inner"):
                nested = ImportEmbeddingsOperator.partial(task_id="load", job_name="shop", src_primary_key="k",
                                                          src_embeddings_col="e").expand(src_table=["a", "b"])
                own = GenerateEmbeddingsOperator.partial(task_id="own", job_name="shop", partition_count=2,
                                                         default_args={"postgres_conn_id": "pg"}).expand(
                    partition_index=[0, 1])

    assert [a.uri for a in plain.outlets] == ["vectorize://lake/shop"]
    assert [a.uri for a in mapped.partial_kwargs["outlets"]] == ["vectorize://lake/shop"]  # before: postgres_default
    assert [a.uri for a in nested.partial_kwargs["outlets"]] == ["vectorize://lake/shop"]
    assert [a.uri for a in own.partial_kwargs["outlets"]] == ["vectorize://pg/shop"]


def test_a_large_update_queues_its_first_rows_and_records_the_rest_once(products, hook, monkeypatch):
    """A transaction whose UPDATEs change the embedded text of UPDATED_ROWS rows or more queues the first
    UPDATED_ROWS - 1 keys and records the rest as one bulk row without a count, after which the trigger stops
    firing for the transaction (across its statements); every row is still updated; pending counts the rows
    the bulk row stands for exactly, when read; other columns queue nothing; one notification per
    transaction; the next realtime run embeds every changed row."""
    import psycopg

    from airflow_vectorize import catalog
    from airflow_vectorize.triggers.pending import _queue_state

    monkeypatch.setattr(catalog, "UPDATED_ROWS", 5)  # written into the trigger when the project is created
    monkeypatch.setattr(catalog, "BULK_ROWS", 5)
    hook.create_project("shop", "products", "product_id", COLUMNS)
    hook.generate_embeddings("shop")
    with psycopg.connect(products.uri, autocommit=True) as listener:
        listener.execute("LISTEN vectorize_shop")
        with psycopg.connect(products.uri) as writer:  # one transaction, three statements
            writer.execute("UPDATE products SET description = description || ' (v2)' WHERE product_id <= 8")
            writer.execute("UPDATE products SET name = name || ' II' WHERE product_id BETWEEN 9 AND 12")
            writer.execute("UPDATE products SET name = name || ' III' WHERE product_id = 1")  # changed again
        products.execute("UPDATE products SET price = price + 1")  # not embedded: nothing queued, no notify
        notified = list(listener.notifies(timeout=1.0, stop_after=5))
    assert len(notified) == 1
    assert products.scalar("SELECT count(*) FROM products WHERE description LIKE '%(v2)'") == 8
    assert products.scalar("SELECT count(*) FROM products WHERE name LIKE '% II'") == 4
    assert products.scalar("SELECT name LIKE '% III' FROM products WHERE product_id = 1")
    assert products.scalar("SELECT count(*) FROM vectorize._pending_shop") == 4
    assert products.execute("SELECT rows FROM vectorize._bulk_shop") == [(None,)]
    products.execute("INSERT INTO products (product_id, name, description)"  # a bulk insert: counted once
                     " SELECT g, 'Gadget ' || g, 'a brand new gadget' FROM generate_series(100, 105) g")
    assert products.execute("SELECT rows FROM vectorize._bulk_shop ORDER BY id") == [(None,), (6,)]
    assert hook.get_status("shop")["pending"] == 18
    assert hook.get_freshness("shop")["pending"] == 18

    async def state():
        async with await psycopg.AsyncConnection.connect(products.uri, autocommit=True) as conn:
            return await _queue_state(conn, hook._search_target("shop").project)
    assert asyncio.run(state())[0] == 18

    run = hook.generate_embeddings("shop", pending_only=True)
    assert run["embedded"] == 18 and run["pending_only"] is False  # the bulk row made it look at every row
    assert products.scalar("SELECT count(*) FROM vectorize._bulk_shop") == 0
    assert hook.get_status("shop")["pending"] == 0 and hook.get_freshness("shop")["stale"] == 0
    with psycopg.connect(products.uri) as writer:  # the setting ended with its transaction: keys are queued again
        writer.execute("UPDATE products SET description = description || ' (v3)' WHERE product_id <= 2")
    assert products.scalar("SELECT count(*) FROM vectorize._pending_shop") == 2
    assert products.scalar("SELECT count(*) FROM vectorize._bulk_shop") == 0


def test_pending_after_a_bulk_insert_is_the_rows_due_whatever_happened_to_them_since(database, hook, monkeypatch):
    """A bulk insert's recorded count is not what pending says: its rows updated (queued again), deleted,
    imported or without text are counted as they are (before: the recorded count stayed until the next run,
    an update's rows counted twice, and max_pending=0 waited for rows long embedded). The pending trigger,
    which only announces work, polls with the recorded count: no scan of the source at every poll while a run
    embeds a large bulk write (the run then finds what is due)."""
    import psycopg

    from airflow_vectorize import catalog
    from airflow_vectorize.triggers.pending import _queue_state

    monkeypatch.setattr(catalog, "BULK_ROWS", 20)  # written into the trigger when the project is created
    database.execute("CREATE TABLE docs (id int PRIMARY KEY, body text);"
                     " INSERT INTO docs SELECT g, 'doc ' || g FROM generate_series(1, 5) g")
    hook.create_project("docs", "docs", "id", ["body"])
    hook.generate_embeddings("docs")

    def pending() -> list[int]:
        async def state():
            async with await psycopg.AsyncConnection.connect(database.uri, autocommit=True) as conn:
                return (await _queue_state(conn, hook._search_target("docs").project))[0]
        freshness = hook.get_freshness("docs")
        assert freshness["pending"] == freshness["stale"]  # every row due is queued, one way or the other
        return [hook.get_status("docs")["pending"], freshness["pending"], asyncio.run(state())]

    database.execute("INSERT INTO docs SELECT g, CASE WHEN g <= 55 THEN 'bulk ' || g END"
                     " FROM generate_series(6, 65) g")  # 10 of the 60 without text
    assert database.execute("SELECT rows FROM vectorize._bulk_docs") == [(60,)]
    assert pending() == [50, 50, 60]
    database.execute("UPDATE docs SET body = body || ' v2' WHERE id BETWEEN 6 AND 10")  # queued: counted once
    assert pending() == [50, 50, 65]
    database.execute("DELETE FROM docs WHERE id > 30")
    assert pending() == [25, 25, 65]
    database.execute("CREATE TABLE v AS SELECT id, array_fill(0.5::real, ARRAY[384]) AS e FROM docs WHERE id > 5")

    assert hook.import_embeddings("docs", "v", "id", "e")["imported"] == 25

    assert pending() == [0, 0, 60]  # the trigger's next event starts a run that finds nothing due
    assert hook.get_freshness("docs") == {"job_name": "docs", "pending": 0, "stale": 0, "lag_seconds": 0.0,
                                          "failed": 0}


def test_a_realtime_project_of_an_earlier_version_gets_todays_triggers_from_its_next_run(products, hook):
    """A realtime project made by an earlier version (a trigger function that queued every updated row, a
    statement trigger beside it, a bulk table whose rows had a count) gets today's triggers from its next
    generation run, once."""
    from airflow_vectorize import catalog

    hook.create_project("shop", "products", "product_id", COLUMNS, schedule="realtime")
    products.execute("CREATE OR REPLACE FUNCTION vectorize.handle_update_shop() RETURNS trigger LANGUAGE plpgsql AS"
                     " $$BEGIN INSERT INTO vectorize._pending_shop (product_id) VALUES (NEW.product_id)"
                     " ON CONFLICT DO NOTHING; RETURN NULL; END$$;"
                     " COMMENT ON FUNCTION vectorize.handle_update_shop() IS NULL;"
                     " CREATE TRIGGER vectorize_update_stmt_shop AFTER UPDATE OF name, description ON products"
                     " FOR EACH STATEMENT EXECUTE FUNCTION suppress_redundant_updates_trigger();"
                     " ALTER TABLE vectorize._bulk_shop ALTER COLUMN rows SET NOT NULL")
    triggers = "SELECT tgname FROM pg_trigger WHERE tgrelid = 'products'::regclass AND tgname LIKE 'vectorize_update%'"
    layout = "SELECT obj_description('vectorize.handle_update_shop()'::regprocedure, 'pg_proc')"
    assert sorted(products.execute(triggers)) == [("vectorize_update_stmt_shop",), ("vectorize_update_trigger_shop",)]

    hook.generate_embeddings("shop")
    assert products.execute(triggers) == [("vectorize_update_trigger_shop",)]
    assert products.scalar(layout) == catalog.TRIGGER_LAYOUT
    assert not products.scalar("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'vectorize._bulk_shop'::regclass"
                               " AND attname = 'rows'")
    assert not catalog.upgrade_triggers(products.conn.cursor(), hook._search_target("shop").project)  # once
    products.execute("UPDATE products SET description = 'a new text' WHERE product_id = 1")
    assert products.execute("SELECT product_id FROM vectorize._pending_shop") == [(1,)]
    assert hook.generate_embeddings("shop", pending_only=True)["embedded"] == 1


def test_a_bulk_insert_is_recorded_once_and_the_realtime_run_scans_for_it(products, hook, monkeypatch):
    """An INSERT of more than BULK_ROWS rows queues no key (that would cost a bulk load ~3× its time): one row
    of vectorize._bulk_<job> says how many; pending counts them, the pending trigger announces them, and the
    next realtime run embeds every row due, then forgets the bulk row."""
    from airflow_vectorize import catalog
    from airflow_vectorize.triggers.pending import _queue_state

    monkeypatch.setattr(catalog, "BULK_ROWS", 5)  # written into the trigger when the project is created
    hook.create_project("shop", "products", "product_id", COLUMNS)
    hook.generate_embeddings("shop")
    products.execute("INSERT INTO products (product_id, name, description)"
                     " SELECT g, 'Gadget ' || g, 'a brand new gadget' FROM generate_series(100, 109) g")
    insert_products(products, 200, 1)  # one row: its key is queued

    assert products.execute("SELECT rows FROM vectorize._bulk_shop") == [(10,)]
    assert products.scalar("SELECT count(*) FROM vectorize._pending_shop") == 1
    assert hook.get_status("shop")["pending"] == 11
    fresh = hook.get_freshness("shop")
    assert fresh["pending"] == 11 and fresh["lag_seconds"] > 0

    async def state():
        import psycopg

        async with await psycopg.AsyncConnection.connect(products.uri, autocommit=True) as conn:
            return await _queue_state(conn, hook._search_target("shop").project)
    pending, newest, lag = asyncio.run(state())
    assert pending == 11 and newest is not None and lag > 0  # the bulk write's rows are the oldest queued

    run = hook.generate_embeddings("shop", pending_only=True)
    assert run["embedded"] == 11 and run["pending_only"] is False  # the bulk row made it look at every row
    assert products.scalar("SELECT count(*) FROM vectorize._bulk_shop") == 0
    assert hook.get_status("shop")["pending"] == 0 and hook.get_status("shop")["missing_rows"] == 0


def test_two_projects_whose_names_differ_only_in_case_each_queue_every_updated_row(products, hook):
    """Each project's update trigger counts a transaction's changed rows in a setting of its own (named by job
    id: PostgreSQL folds setting names to lower case) and queues them key by key below UPDATED_ROWS."""
    from airflow_vectorize.catalog import UPDATED_ROWS

    insert_products(products, 1000, 600)
    for job in ("Shop", "shop"):
        hook.create_project(job, "products", "product_id", COLUMNS, schedule="realtime", embed_existing=True)
    products.execute("UPDATE products SET description = description || ' (revised)'")
    rows = products.scalar("SELECT count(*) FROM products")
    assert UPDATED_ROWS / 2 < rows < UPDATED_ROWS
    for job in ("Shop", "shop"):
        assert products.scalar(f'SELECT count(*) FROM vectorize."_pending_{job}"') == rows, job
        assert products.scalar(f'SELECT count(*) FROM vectorize."_bulk_{job}"') == 0, job
        assert hook.generate_embeddings(job, pending_only=True)["embedded"] == rows, job
        assert hook.get_freshness(job)["stale"] == 0, job
