"""generate_embeddings: what gets embedded, intervals, partitions, the realtime queue, concurrency, resume."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import numpy as np
import pytest
from conftest import concurrently, product_texts, snapshot

from airflow_vectorize import catalog, generation
from airflow_vectorize.exceptions import InvalidInputError, ProjectNotFoundError
from airflow_vectorize.operators import GenerateEmbeddingsOperator

COLUMNS = ["name", "description"]
DAY = datetime(2026, 11, 1, tzinfo=timezone.utc)


def stored(db, job: str = "shop", table_method: str = "join", table: str = "products", key: str = "product_id"):
    """key -> (embedding, updated_at)."""
    if table_method == "join":
        query = f'SELECT {key}, embeddings, updated_at FROM vectorize."_embeddings_{job}"'
    else:
        query = f'SELECT {key}, "{job}_embeddings", "{job}_updated_at" FROM {table} WHERE "{job}_embeddings" IS NOT NULL'
    return {k: (v.to_numpy(), at) for k, v, at in db.execute(query)}


def create_items(db, rows: int) -> None:
    """A larger table of short product-like texts, with an update_col spread over 4 days."""
    db.execute("CREATE TABLE items (id integer PRIMARY KEY, title text, changed_at timestamptz NOT NULL)")
    db.execute(
        "INSERT INTO items SELECT g, 'item ' || g || ' ' || (ARRAY['phone','lamp','boot','kettle'])[g %% 4 + 1],"
        " %s::timestamptz + (g %% 4) * interval '1 day' FROM generate_series(1, %s) g",
        [DAY, rows],
    )


@pytest.mark.parametrize("table_method", ["join", "append"])
def test_embeddings_are_the_models_encoding_of_the_text(products, hook, model, table_method):
    products.execute("UPDATE products SET description = NULL WHERE product_id = 3")
    products.execute("UPDATE products SET description = '' WHERE product_id = 4")
    products.execute("INSERT INTO products (product_id, name, description) VALUES (50, '', NULL), (51, '', '')")
    hook.create_project("shop", "products", "product_id", COLUMNS, table_method=table_method)

    result = hook.generate_embeddings("shop", batch_size=8)

    assert (result["embedded"], result["skipped"], result["batches"]) == (24, 2, 3)
    texts = product_texts(products)
    assert texts[3] == "Galaxy A55"  # NULL column skipped, no dangling separator
    assert texts[4] == "Galaxy Tab S9"  # nor an empty one's: the vectors below are of these texts
    got = stored(products, table_method=table_method)
    assert set(got) == set(range(1, 25))
    ids = sorted(got)
    expected = model.encode([texts[i] for i in ids])
    np.testing.assert_allclose(np.stack([got[i][0] for i in ids]), expected, atol=1e-5)
    status = hook.get_status("shop")
    assert (status["embedded_rows"], status["missing_rows"], status["no_text_rows"], status["pending"]) == (24, 2, 2, 0)
    assert hook.generate_embeddings("shop")["embedded"] == 0  # nothing left to do


@pytest.mark.parametrize("table_method", ["join", "append"])
def test_only_text_changes_are_embedded_again(products, hook, table_method):
    hook.create_project("shop", "products", "product_id", COLUMNS, table_method=table_method, schedule="manual")
    hook.generate_embeddings("shop")
    before = stored(products, table_method=table_method)

    products.execute("UPDATE products SET price = price * 2, category = 'sale'")
    assert hook.generate_embeddings("shop")["embedded"] == 0
    products.execute("UPDATE products SET description = description || ' (2026 model)' WHERE product_id IN (1, 7)")
    result = hook.generate_embeddings("shop")

    assert result["embedded"] == 2
    after = stored(products, table_method=table_method)
    changed = {k for k in after if not np.array_equal(after[k][0], before[k][0])}
    assert changed == {1, 7}
    assert {k for k in after if after[k][1] != before[k][1]} == {1, 7}


@pytest.mark.parametrize("table_method, chunk_size", [("join", None), ("append", None), ("join", 50)])
def test_a_row_whose_text_is_cleared_loses_its_vector(products, hook, table_method, chunk_size):
    """Before, its vector and full-text document stayed: it was still found by the text it no longer has, and
    get_status counted it stale for good while get_freshness did not."""
    hook.create_project("shop", "products", "product_id", COLUMNS, table_method=table_method, chunk_size=chunk_size,
                        embed_existing=True)
    query = product_texts(products)[1]
    assert hook.search("shop", query, num_results=1)[0]["product_id"] == 1
    products.execute("UPDATE products SET name = '', description = NULL WHERE product_id = 1")
    products.execute("UPDATE products SET name = '', description = '' WHERE product_id = 2")  # was ', ': embedded

    run = hook.generate_embeddings("shop", pending_only=True)

    assert (run["embedded"], run["skipped"], run["vectors_emptied"], run["pending_cleared"]) == (0, 2, 2, 2)
    assert not {1, 2} & {r["product_id"] for r in hook.search("shop", query, num_results=24)}
    assert not {1, 2} & {r["product_id"] for r in hook.hybrid_search("shop", query, num_results=24)}
    status = hook.get_status("shop")
    assert (status["embedded_rows"], status["missing_rows"], status["stale_rows"], status["no_text_rows"]) == (22, 2, 0, 2)
    assert (hook.get_freshness("shop")["stale"], hook.generate_embeddings("shop")["vectors_emptied"]) == (0, 0)
    products.execute("UPDATE products SET name = 'Pixel 9' WHERE product_id = 1")  # text again: embedded again
    assert hook.generate_embeddings("shop", pending_only=True)["embedded"] == 1


def test_realtime_queue_drains(products, hook):
    hook.create_project("shop", "products", "product_id", COLUMNS, embed_existing=True)
    products.execute("INSERT INTO products (product_id, name) VALUES (100, 'Foldable phone'), (101, '')")
    products.execute("UPDATE products SET name = 'Pixel 9 Pro' WHERE product_id = 1")
    products.execute("UPDATE products SET name = 'iPhone 16' WHERE product_id = 2")  # same text: queued? no
    assert hook.get_status("shop")["pending"] == 3

    result = hook.generate_embeddings("shop")

    assert (result["embedded"], result["skipped"], result["pending_cleared"]) == (2, 1, 3)
    assert hook.get_status("shop")["pending"] == 0


def test_interval_runs_embed_only_their_rows_and_rerun_is_a_no_op(database, hook):
    create_items(database, 200)
    hook.create_project("items", "items", "id", ["title"], update_col="changed_at")
    database.execute("UPDATE items SET title = title || '!'")  # the realtime triggers queue every row

    first = hook.generate_embeddings("items", since=DAY, until=DAY + timedelta(days=1))
    again = hook.generate_embeddings("items", since=DAY.isoformat(), until=(DAY + timedelta(days=1)).isoformat())

    assert (first["embedded"], again["embedded"]) == (50, 0)
    embedded = {k for k, in database.execute('SELECT id FROM vectorize."_embeddings_items"')}
    assert embedded == {i for i in range(1, 201) if i % 4 == 0}
    assert hook.get_status("items")["pending"] == 200 - 50  # other days stay queued


def test_partitions_are_disjoint_and_complete(database, hook):
    create_items(database, 300)
    hook.create_project("items", "items", "id", ["title"], schedule="manual")
    parts = []
    for index in range(3):
        hook.generate_embeddings("items", partition_index=index, partition_count=3)
        parts.append({k for k, in database.execute('SELECT id FROM vectorize."_embeddings_items"')} - set().union(*parts))

    assert all(60 < len(p) < 140 for p in parts)  # a hash split, roughly even
    assert set().union(*parts) == set(range(1, 301))
    assert sum(map(len, parts)) == 300


@pytest.mark.parametrize("setting, value", [("TimeZone", "Pacific/Chatham"), ("DateStyle", "SQL, DMY")])
def test_partitions_agree_across_workers_session_settings(postgres, database, hook, setting, value):
    """Workers whose connections render times differently (PGTZ, PGDATESTYLE, a connection's ``options``) still
    split a timestamptz key the same way: every row lands in exactly one partition (and a non-ISO DateStyle,
    whose times psycopg cannot read, does not stop the run)."""
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    database.execute("CREATE TABLE events (at timestamptz PRIMARY KEY, title text)")
    database.execute("INSERT INTO events SELECT %s::timestamptz + g * interval '7 hours 13 minutes', 'event ' || g"
                     " FROM generate_series(1, 60) g", [DAY])
    other = f"{database.conn_id}_elsewhere"
    options = f"-c {setting}={value.replace(' ', '')}"
    os.environ[f"AIRFLOW_CONN_{other.upper()}"] = f"{postgres.uri(database.name)}&options={quote(options)}"
    try:
        elsewhere = VectorizeHook(postgres_conn_id=other)
        with elsewhere.connect() as conn:  # the setting reaches the session: the test can fail
            assert conn.execute(f"SHOW {setting}").fetchone()[0] == value
        hook.create_project("events", "events", "at", ["title"], schedule="manual")
        first = hook.generate_embeddings("events", partition_index=0, partition_count=2)
        second = elsewhere.generate_embeddings("events", partition_index=1, partition_count=2)
    finally:
        os.environ.pop(f"AIRFLOW_CONN_{other.upper()}", None)

    assert 0 < first["embedded"] < 60 and first["embedded"] + second["embedded"] == 60
    assert database.scalar('SELECT count(DISTINCT at) FROM vectorize."_embeddings_events"') == 60


def test_concurrent_runs_embed_every_row_once(database, hook):
    create_items(database, 600)
    hook.create_project("items", "items", "id", ["title"], schedule="manual")
    results, errors = concurrently(lambda: hook.generate_embeddings("items", batch_size=32), 2)

    assert errors == []
    assert sum(r["embedded"] for r in results) == 600  # no row embedded twice
    assert database.scalar('SELECT count(DISTINCT id) FROM vectorize."_embeddings_items"') == 600


def test_a_killed_run_keeps_its_batches_and_the_retry_resumes(database, hook, model):
    create_items(database, 1200)
    hook.create_project("items", "items", "id", ["title"], schedule="manual")
    with hook.transaction() as cur:
        project = catalog.find_project(cur, "items")
    calls = 0

    def encode_then_die(texts):
        nonlocal calls
        calls += 1
        if calls == 4:
            raise KeyboardInterrupt("worker killed")
        return model.encode(texts)

    with pytest.raises(KeyboardInterrupt):
        generation.generate(hook.connect, project, generation.Scope(), encode_then_die, batch_size=200)

    kept = database.scalar('SELECT count(*) FROM vectorize."_embeddings_items"')
    assert kept == 600  # three committed batches survive
    assert database.scalar("SELECT to_regclass('vectorize.items_hnsw_cos_idx')") is not None  # index restored
    retry = hook.generate_embeddings("items", batch_size=500)
    assert retry["embedded"] == 1200 - 600
    assert database.scalar('SELECT count(*) FROM vectorize."_embeddings_items"') == 1200


def test_a_run_reads_its_keys_without_holding_a_snapshot(database, hook, model):
    """The rows due are counted and their keys kept by one scan that has committed before the first batch is
    encoded: the session reading them holds no snapshot, which would keep VACUUM from removing dead rows
    anywhere in the database for as long as a backfill lasts (a writer holds one for its batch only)."""
    create_items(database, 1200)
    hook.create_project("items", "items", "id", ["title"], schedule="manual")
    with hook.transaction() as cur:
        project = catalog.find_project(cur, "items")
    seen = []

    def encode_and_look(texts):
        vectors = model.encode(texts)  # meanwhile the run reads its next keys, then waits for this batch
        seen.append(database.execute(
            "SELECT state, backend_xmin FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE %s", ["%vectorize_due_keys%"]))
        return vectors

    summary = generation.generate(hook.connect, project, generation.Scope(), encode_and_look, batch_size=200,
                                  rebuild_index=False)

    assert (summary["embedded"], summary["batches"]) == (1200, 6)
    assert seen == [[("idle", None)]] * 6


@pytest.mark.parametrize(("options", "table", "key"), [
    ({}, "_embeddings_shop", "UNIQUE (product_id)"),
    ({"chunk_size": 64}, "_chunks_shop", "PRIMARY KEY (product_id, chunk_no)"),
], ids=["join", "chunked"])
def test_the_key_index_carries_the_md5_and_an_older_project_gets_it_at_its_next_run(products, hook, options,
                                                                                        table, key):
    """A join project's key on its vectors table carries each row's text md5 (INCLUDE), which the scans for rows
    due read from the index; a project created before, whose key has none, gets it from its next generation
    run under the same constraint name, its vectors untouched."""
    hook.create_project("shop", "products", "product_id", COLUMNS, **options)
    hook.generate_embeddings("shop")
    target = f'vectorize."{table}"'
    keys = f"FROM pg_constraint WHERE conrelid = '{target}'::regclass AND contype IN ('u', 'p')"
    constraint = f"SELECT conname, pg_get_constraintdef(oid) {keys}"
    name = products.scalar(f"SELECT conname {keys}")
    assert products.execute(constraint) == [(name, f"{key} INCLUDE (text_md5)")]
    products.execute(f'ALTER TABLE {target} DROP CONSTRAINT "{name}", ADD CONSTRAINT "{name}" {key}')
    vectors = f"SELECT md5(string_agg(embeddings::text, ',' ORDER BY 1)), count(*) FROM {target}"
    before = products.execute(vectors)

    assert hook.generate_embeddings("shop")["embedded"] == 0

    assert products.execute(constraint) == [(name, f"{key} INCLUDE (text_md5)")]
    assert products.execute(vectors) == before
    index = f"SELECT conindid {keys}"
    upgraded = products.scalar(index)
    assert hook.generate_embeddings("shop")["embedded"] == 0
    assert products.scalar(index) == upgraded  # made once


def test_bulk_load_builds_the_index_once(database, hook):
    create_items(database, 1200)
    hook.create_project("items", "items", "id", ["title"], index_dist_type="pgv_hnsw_l2")

    result = hook.generate_embeddings("items")

    assert (result["embedded"], result["index_rebuilt"]) == (1200, True)
    assert "USING hnsw (embeddings vector_l2_ops)" in database.scalar(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'items_hnsw_l2_idx'")


def test_a_bulk_load_can_keep_the_index(database, hook):
    """rebuild_index=False: every row goes into the graph as it is written; the index is never missing."""
    create_items(database, 1200)
    hook.create_project("items", "items", "id", ["title"])
    before = database.scalar("SELECT 'vectorize.items_hnsw_cos_idx'::regclass::oid")

    result = hook.generate_embeddings("items", rebuild_index=False)

    assert (result["embedded"], result["index_rebuilt"]) == (1200, False) and "index_build" not in result
    assert database.scalar("SELECT 'vectorize.items_hnsw_cos_idx'::regclass::oid") == before  # the same index


def test_encode_uses_the_projects_model(products, hook, model):
    hook.create_project("shop", "products", "product_id", COLUMNS)

    vectors = hook.encode("shop", ["a phone", "a kettle"])

    np.testing.assert_allclose(vectors, model.encode(["a phone", "a kettle"]), atol=1e-6)


def test_operator_runs_a_templated_interval(database):
    create_items(database, 40)
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    VectorizeHook(database.conn_id).create_project("items", "items", "id", ["title"], update_col="changed_at")
    op = GenerateEmbeddingsOperator(task_id="embed", postgres_conn_id=database.conn_id, job_name="items",
                                    since="{{ data_interval_start }}", until="{{ data_interval_end }}")
    op.render_template_fields({"data_interval_start": DAY + timedelta(days=1),
                               "data_interval_end": DAY + timedelta(days=2)})

    result = op.execute(context={})

    assert (result["embedded"], result["since"]) == (10, "2026-11-02 00:00:00+00:00")


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Tokyo"])
def test_a_timestamp_update_col_and_offset_less_bounds_are_read_in_the_connection_s_time_zone(database, hook, zone):
    """A ``timestamp`` (without time zone) column holds what its writers' now() wrote in the database's TimeZone:
    an interval (aware, as Airflow renders it) finds a row by the moment it was written, although a run's own
    sessions are on UTC; a bound without an offset means the same zone there as in the interval check."""
    import psycopg
    from psycopg import sql
    from zoneinfo import ZoneInfo

    database.execute(sql.SQL("ALTER DATABASE {} SET timezone = {}").format(sql.Identifier(database.name),
                                                                           sql.Literal(zone)))
    database.execute("CREATE TABLE notes (id integer PRIMARY KEY, body text, written timestamp NOT NULL)")
    written = {1: datetime(2026, 12, 1, 12, 30, tzinfo=timezone.utc), 2: datetime(2026, 12, 1, 14, 30, tzinfo=timezone.utc)}
    with psycopg.connect(database.uri, autocommit=True) as application:  # its now() at those moments
        for key, moment in written.items():
            application.execute("INSERT INTO notes VALUES (%s, 'a note about trains', %s::timestamptz::timestamp)",
                                [key, moment])
    hook.create_project("notes", "notes", "id", ["body"], update_col="written")
    hour = timedelta(hours=1)
    local = written[1].astimezone(ZoneInfo(zone)).replace(tzinfo=timezone.utc)  # its local time read as UTC
    assert hook.generate_embeddings("notes", since=local.replace(minute=0), until=local.replace(minute=0) + hour
                                    )["embedded"] == 0
    assert hook.generate_embeddings("notes", since=written[1].replace(minute=0),
                                    until=written[1].replace(minute=0) + hour)["embedded"] == 1
    since = written[2].replace(minute=0).astimezone(ZoneInfo(zone)).replace(tzinfo=None)  # no offset: the zone's
    result = hook.generate_embeddings("notes", since=since, until=since + hour)
    assert result["embedded"] == 1 and result["since"] == str(written[2].replace(minute=0))
    assert hook.get_status("notes")["embedded_rows"] == 2


BAD_RUNS = [
    (dict(job_name="ghost"), ProjectNotFoundError, "project 'ghost' not yet initialized"),
    (dict(since=DAY), InvalidInputError, "since/until need an update_col, but project 'shop' was created without"),
    (dict(partition_index=3, partition_count=3), InvalidInputError, "partition_index must be in [0, 3), got 3"),
    (dict(partition_count=0), InvalidInputError, "partition_count must be a positive integer, got 0"),
    (dict(batch_size=0), InvalidInputError, "batch_size must be a positive integer, got 0"),
]


BAD_INTERVALS = [
    # Before: a raw psycopg InvalidDatetimeFormat (a run without a data interval renders 'None')
    (dict(since="None", until="None"), "since must be a timestamp, got 'None': invalid input syntax for type"
     " timestamp with time zone: \"None\" (a rendered '{{ data_interval_start }}' is 'None' in a DAG run without"),
    (dict(until="the day after"), "until must be a timestamp, got 'the day after': invalid input syntax"),
    # Before: these ran and embedded nothing, silently
    (dict(since=DAY, until=DAY), "since must be before until: [2026-11-01 00:00:00+00:00, 2026-11-01 00:00:00+00:00)"
     " holds no time, so the run would embed nothing. A DAG run's data interval is empty with Airflow 3's"),
    (dict(since="2026-11-02", until="2026-11-01"), "since must be before until: [2026-11-02, 2026-11-01)"),
]


@pytest.mark.parametrize("interval, message", BAD_INTERVALS, ids=[m[:20] for _, m in BAD_INTERVALS])
def test_intervals_that_are_no_timestamps_or_empty_are_refused(products, hook, interval, message):
    hook.create_project("shop", "products", "product_id", COLUMNS, update_col="updated_at")
    before = snapshot(products)

    with pytest.raises(InvalidInputError) as error:
        hook.generate_embeddings("shop", **interval)

    assert message in str(error.value)
    assert snapshot(products) == before


@pytest.mark.parametrize("override, error_type, message", BAD_RUNS, ids=[m[:25] for *_, m in BAD_RUNS])
def test_bad_runs_are_rejected_and_change_nothing(products, hook, override, error_type, message):
    hook.create_project("shop", "products", "product_id", COLUMNS)
    before = snapshot(products)

    with pytest.raises(error_type) as error:
        hook.generate_embeddings(**{"job_name": "shop", **override})

    assert message in str(error.value)
    assert snapshot(products) == before
