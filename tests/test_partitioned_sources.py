"""A partitioned source table, on the real database and model: rows written straight into a partition are
queued for a realtime run; a partition truncated, detached or deleted from directly (which fires none of the
partitioned table's statement triggers) leaves no row in search results, and its vectors, queue entries and
errors are gone after the next generation run, which compares the stored keys with the source only when
something says rows went; the project drops clean; older projects get today's triggers."""

from __future__ import annotations

import pytest
from conftest import snapshot
from test_drop_project import without_catalog
from test_realtime import collect

from airflow_vectorize.triggers import PendingRowsTrigger

LAYOUTS = {
    "join": {},
    "append": {"table_method": "append"},
    "chunked": {"chunk_size": 12},
}
TOPICS = ["cats", "dogs", "trains", "rivers"]
NOVEMBER = range(1, 41)  # ids 1-40 in November, 41-80 in December
DECEMBER = range(41, 81)


def create_docs(db) -> None:
    """``docs`` partitioned by month (key: id, day), 80 rows, 40 in each of November and December."""
    db.execute("CREATE TABLE docs (id integer, day date NOT NULL, body text, PRIMARY KEY (id, day))"
               " PARTITION BY RANGE (day)")
    db.execute("CREATE TABLE docs_11 PARTITION OF docs FOR VALUES FROM ('2026-11-01') TO ('2026-12-01')")
    db.execute("CREATE TABLE docs_12 PARTITION OF docs FOR VALUES FROM ('2026-12-01') TO ('2027-01-01')")
    db.execute(
        "INSERT INTO docs SELECT i, CASE WHEN i <= 40 THEN date '2026-11-10' ELSE date '2026-12-10' END,"
        " 'note ' || i || ' about ' || (%s::text[])[1 + i %% 4] || ' and their habits' FROM generate_series(1, 80) i",
        [TOPICS])


@pytest.fixture(params=list(LAYOUTS))
def docs(request, database, hook):
    """``docs`` (``create_docs``) with a realtime project over ``body`` in the layout, every row embedded."""
    create_docs(database)
    hook.create_project("docs", "docs", ["id", "day"], ["body"], **LAYOUTS[request.param])
    assert hook.generate_embeddings("docs")["embedded"] == 80
    database.layout = request.param
    return database


def stored_ids(db) -> set[int]:
    if db.layout == "append":
        return {r[0] for r in db.execute("SELECT id FROM docs WHERE docs_embeddings IS NOT NULL")}
    table = "_chunks_docs" if db.layout == "chunked" else "_embeddings_docs"
    return {r[0] for r in db.execute(f"SELECT DISTINCT id FROM vectorize.{table}")}


def found(hook) -> set[int]:
    """The ids key-only searches return (vector and hybrid), for every topic."""
    ids = set()
    for topic in TOPICS:
        ids |= {r["id"] for r in hook.search("docs", topic, return_columns=["id", "day"], num_results=100)}
        ids |= {r["id"] for r in hook.hybrid_search("docs", topic, return_columns=["id", "day"], num_results=100)}
    return ids


def queued_ids(db) -> set[int]:
    return {r[0] for r in db.execute("SELECT id FROM vectorize._pending_docs")}


def test_rows_written_into_a_partition_are_queued(docs, hook):
    docs.execute("INSERT INTO docs_12 VALUES (500, '2026-12-20', 'a note about trains written to the partition')")
    docs.execute("UPDATE docs_11 SET body = 'a note about rivers, changed in the partition' WHERE id = 7")
    assert queued_ids(docs) == {500, 7}
    assert hook.get_status("docs")["pending"] == 2
    run = hook.generate_embeddings("docs", pending_only=True)
    assert run["embedded"] == 2
    assert queued_ids(docs) == set()
    assert 500 in stored_ids(docs)


@pytest.mark.parametrize("removal", ["truncate", "detach", "delete"])
def test_rows_gone_with_a_partition_are_never_found_and_their_vectors_go_at_the_next_run(docs, hook, removal):
    docs.execute("UPDATE docs SET body = body || ' (revised)' WHERE id IN (3, 45)")  # queued, one in each month
    docs.execute("INSERT INTO vectorize._errors_docs (id, day, error, text_md5, attempts)"
                 " VALUES (46, '2026-12-10', 'a failure kept', NULL, 1)")
    if removal == "truncate":
        docs.execute("TRUNCATE docs_12")
    elif removal == "detach":
        docs.execute("ALTER TABLE docs DETACH PARTITION docs_12")
    else:
        docs.execute("DELETE FROM docs_12 WHERE id > 40")
    status = hook.get_status("docs")
    assert (status["total_rows"], status["embedded_rows"]) == (40, 40)
    assert found(hook) == set(NOVEMBER)  # the vectors are still stored, but never returned
    if docs.layout != "append":  # an append project's vectors are in the rows
        assert set(DECEMBER) <= stored_ids(docs)

    run = hook.generate_embeddings("docs")
    assert run["embedded"] == 1  # row 3's new text
    assert stored_ids(docs) == set(NOVEMBER)
    assert queued_ids(docs) == set()
    assert docs.scalar("SELECT count(*) FROM vectorize._errors_docs") == 0
    status = hook.get_status("docs")
    assert (status["total_rows"], status["embedded_rows"], status["pending"], status["failed_rows"]) == (40, 40, 0, 0)
    assert found(hook) == set(NOVEMBER)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_partitioned_source_drops_clean(database, hook, layout):
    create_docs(database)
    before = without_catalog(snapshot(database))
    hook.create_project("docs", "docs", ["id", "day"], ["body"], **LAYOUTS[layout])
    hook.generate_embeddings("docs")
    database.execute("CREATE TABLE docs_01 PARTITION OF docs FOR VALUES FROM ('2027-01-01') TO ('2027-02-01')")
    database.execute("INSERT INTO docs_01 VALUES (500, '2027-01-05', 'a note about trains in January')")
    assert {r[0] for r in database.execute("SELECT tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal")} \
        == {"docs", "docs_11", "docs_12", "docs_01"}  # the row triggers, cloned on every partition

    assert hook.drop_project("docs")["dropped"] is True
    assert database.execute("SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal") == []
    database.execute("DROP TABLE docs_01")
    assert without_catalog(snapshot(database)) == before


def test_an_older_partitioned_project_gets_its_row_insert_trigger_at_its_next_run(docs, hook):
    """A realtime project made before inserts were queued per row on a partitioned table had a statement
    trigger, which an INSERT into a partition does not fire."""
    function = docs.scalar("SELECT tgfoid::regproc::text FROM pg_trigger WHERE tgname = 'vectorize_insert_trigger_docs'"
                           " AND tgrelid = 'docs'::regclass")
    docs.execute("DROP TRIGGER vectorize_insert_trigger_docs ON docs")
    docs.execute(f"CREATE TRIGGER vectorize_insert_trigger_docs AFTER INSERT ON docs REFERENCING NEW TABLE AS"
                 f" vectorize_new_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()")
    docs.execute("INSERT INTO docs_12 VALUES (500, '2026-12-20', 'a note about trains written to the partition')")
    assert queued_ids(docs) == set()  # what an older project missed

    assert hook.generate_embeddings("docs")["embedded"] == 1  # found by its md5, and the trigger made anew
    assert docs.scalar("SELECT tgtype & 1 FROM pg_trigger WHERE tgname = 'vectorize_insert_trigger_docs'"
                       " AND tgrelid = 'docs'::regclass") == 1
    docs.execute("INSERT INTO docs_12 VALUES (501, '2026-12-21', 'another note about trains')")
    assert queued_ids(docs) == {501}


def test_a_run_compares_the_stored_keys_only_when_rows_may_have_gone_without_a_trace(docs, hook):
    """A row deleted behind the project's back (its triggers off) keeps its vector until a run has a reason to
    compare: a DELETE naming a partition (its row trigger), or a partition truncated, detached or dropped."""
    if docs.layout == "append":
        pytest.skip("an append project's vectors are in the rows")

    def behind_its_back(key: int) -> None:
        trigger = "vectorize_delete_trigger_docs"  # the partition's clone of it: off (it fires in every session)
        docs.execute(f"ALTER TABLE docs_11 DISABLE TRIGGER {trigger}")
        docs.execute("DELETE FROM docs_11 WHERE id = %s", [key])
        docs.execute(f"ALTER TABLE docs_11 ENABLE ALWAYS TRIGGER {trigger}")

    behind_its_back(1)
    hook.generate_embeddings("docs")
    assert 1 in stored_ids(docs)  # nothing said rows went: the run did not compare

    docs.execute("DELETE FROM docs_12 WHERE id = 80")
    hook.generate_embeddings("docs")
    assert stored_ids(docs) == set(range(2, 80))
    behind_its_back(2)
    docs.execute("DELETE FROM docs_11 WHERE id = 2")  # gone already: a row trigger fires for no row
    hook.generate_embeddings("docs")
    assert 2 in stored_ids(docs)
    docs.execute("TRUNCATE docs_12")
    hook.generate_embeddings("docs")
    assert stored_ids(docs) == set(range(3, 41))


def test_an_older_partitioned_project_gets_its_row_delete_trigger_at_its_next_run(docs, hook):
    """A project made before a partitioned source's DELETE trigger was a row trigger had a statement trigger,
    which a DELETE naming a partition does not fire."""
    function = docs.scalar("SELECT tgfoid::regproc::text FROM pg_trigger WHERE tgname = 'vectorize_delete_trigger_docs'"
                           " AND tgrelid = 'docs'::regclass")
    docs.execute("DROP TRIGGER vectorize_delete_trigger_docs ON docs")
    docs.execute(f"CREATE TRIGGER vectorize_delete_trigger_docs AFTER DELETE ON docs FOR EACH STATEMENT"
                 f" EXECUTE FUNCTION {function}()")
    hook.generate_embeddings("docs")
    assert docs.scalar("SELECT tgtype & 1 FROM pg_trigger WHERE tgname = 'vectorize_delete_trigger_docs'"
                       " AND tgrelid = 'docs'::regclass") == 1
    docs.execute("DELETE FROM docs_12 WHERE id = 80")
    assert docs.scalar("SELECT count(*) FROM vectorize._removed_docs") == 1  # a marker, or the row's vector
    hook.generate_embeddings("docs")
    assert stored_ids(docs) == set(range(1, 80))


def test_rows_deleted_from_a_partition_and_loaded_again_keep_their_vectors(docs, hook):
    """A reload of a partition (DELETE naming it, then INSERT of the same rows, one transaction) sends the
    model only the row whose text changed: a join project keeps the vectors, an append project's row trigger
    kept them and the run writes them back."""
    with docs.conn.transaction():
        docs.execute("CREATE TEMP TABLE december AS SELECT id, day, body FROM docs_12")
        docs.execute("DELETE FROM docs_12")
        docs.execute("INSERT INTO docs SELECT id, day, CASE WHEN id = 50 THEN body || ' (revised)' ELSE body END"
                     " FROM december")
    assert docs.scalar("SELECT count(*) FROM docs") == 80
    run = hook.generate_embeddings("docs")
    assert run["embedded"] == 1
    if docs.layout == "append":
        assert run["vectors_restored"] == 39
    assert stored_ids(docs) == set(range(1, 81))
    assert found(hook) == set(range(1, 81))


def test_a_partition_attached_is_seen_by_the_watcher_and_embedded_by_the_next_realtime_run(docs, hook):
    """ATTACH PARTITION fires no trigger and queues no row: the watcher sees the partitions change at its next
    poll, and realtime runs look at every row until one has embedded the attached rows."""
    docs.execute("CREATE TABLE docs_01 (LIKE docs)")  # an append project's columns too, as ATTACH needs
    docs.execute("INSERT INTO docs_01 (id, day, body) SELECT i, date '2027-01-10', 'a January note about trains'"
                 " FROM generate_series(81, 90) i")
    trigger = PendingRowsTrigger("docs", docs.conn_id, poll_interval=0.3, debounce=0)

    events = collect(trigger, 3.0, [(0.5, lambda: docs.execute(
        "ALTER TABLE docs ATTACH PARTITION docs_01 FOR VALUES FROM ('2027-01-01') TO ('2027-02-01')"))])

    assert [payload for _, payload in events] == [{"job_name": "docs", "pending": 0, "partitions_changed": True}]
    assert queued_ids(docs) == set()
    assert hook.generate_embeddings("docs", pending_only=True)["embedded"] == 10
    assert set(range(81, 91)) <= stored_ids(docs) and set(range(81, 91)) <= found(hook)
    assert docs.scalar("SELECT count(*) FROM vectorize._bulk_docs") == 0  # done: the next runs read the queue
    assert hook.get_status("docs")["pending"] == 0


def test_realtime_paused_and_resumed_on_a_partitioned_source(docs, hook):
    """alter_project's triggers on a partitioned table: dropped from every partition, and put back on every
    partition (a partition made meanwhile included)."""
    clones = "SELECT count(*) FROM pg_trigger WHERE tgname = 'vectorize_insert_trigger_docs'"
    assert docs.scalar(clones) == 3  # the parent's and its two partitions' clones
    hook.alter_project("docs", schedule="manual")
    assert docs.scalar(clones) == 0
    docs.execute("CREATE TABLE docs_01 PARTITION OF docs FOR VALUES FROM ('2027-01-01') TO ('2027-02-01')")
    docs.execute("INSERT INTO docs_01 VALUES (600, '2027-01-05', 'a note about dogs, written while paused')")
    assert queued_ids(docs) == set() and hook.get_status("docs")["pending"] == 0
    hook.alter_project("docs", schedule="realtime")
    assert docs.scalar(clones) == 4
    assert hook.get_status("docs")["pending"] == 1  # the row written while paused
    assert hook.generate_embeddings("docs", pending_only=True)["embedded"] == 1
    docs.execute("INSERT INTO docs_01 VALUES (601, '2027-01-06', 'a note about cats, queued')")
    assert queued_ids(docs) == {601}


def test_the_index_is_built_again_on_a_partitioned_source(docs, hook):
    """alter_project's index settings: an append project's index is on the partitioned source, which cannot
    build concurrently (one transaction instead); a join project's is on its own table."""
    before = stored_ids(docs), found(hook)
    summary = hook.alter_project("docs", hnsw_m=8)
    assert summary["changed"] == {"hnsw_m": [None, 8]} and summary["index"]["rebuilt"]
    indexes = docs.execute("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE indexdef LIKE '%%USING hnsw%%'"
                           " ORDER BY 1")
    tables = ["docs", "docs_11", "docs_12"] if docs.layout == "append" else [
        "_chunks_docs" if docs.layout == "chunked" else "_embeddings_docs"]
    assert [table for table, _, _ in indexes] == tables  # one each: the parent's and its partitions'
    assert all("m='8'" in definition for _, _, definition in indexes)
    assert indexes[0][1] == "docs_hnsw_cos_idx"
    assert (stored_ids(docs), found(hook)) == before


def test_a_deletion_is_recorded_for_each_of_two_projects_whose_names_differ_only_in_case(database, hook):
    """Each join project's DELETE trigger on a partitioned source is skipped once its own marker is written
    (a transaction-local setting): PostgreSQL folds setting names to lower case, so they are named by job id."""
    create_docs(database)
    for job in ("Docs", "docs"):
        hook.create_project(job, "docs", ["id", "day"], ["body"])
        assert hook.generate_embeddings(job)["embedded"] == 80
    database.execute("DELETE FROM docs_12 WHERE id > 77")
    for job in ("Docs", "docs"):
        assert database.scalar(f'SELECT count(*) FROM vectorize."_removed_{job}"') == 1, job
        assert hook.generate_embeddings(job)["vectors_removed"] == 3, job
        assert database.scalar(f'SELECT count(*) FROM vectorize."_embeddings_{job}"') == 77, job
