"""Source tables as ETL treats them (issue 31): a plain TRUNCATE, a full reload (TRUNCATE + INSERT, DELETE +
INSERT in one transaction), DELETE and a changed key, for join, append, chunked and composite-key projects, on
the real database and model. A reload sends the model only the rows whose text changed; vectors of keys that
did not come back are never read and are gone after the next generation run."""

from __future__ import annotations

import re

import pytest
from conftest import snapshot
from psycopg import sql

from airflow_vectorize.example_data import PRODUCTS

# name -> (key columns, create_project arguments)
LAYOUTS = {
    "join": (["id"], {}),
    "append": (["id"], {"table_method": "append"}),
    "chunked": (["id"], {"chunk_size": 12}),
    "composite": (["tenant", "id"], {}),
    "manual": (["id"], {"schedule": "manual"}),  # a DELETE records a marker, not each key
}
ROWS = [(pid % 3, pid, f"{name}. {description}", category) for pid, name, description, category, _ in PRODUCTS]
QUERY = "mobile phone with a good camera"  # rows 1-3 are phones


@pytest.fixture(params=list(LAYOUTS))
def layout(request, database, hook):
    """The table ``docs`` (tenant, id, body, category) with the 24 products, a realtime project ``docs`` over
    ``body`` in the layout, every row embedded."""
    key, arguments = LAYOUTS[request.param]
    database.execute(sql.SQL(
        "CREATE TABLE docs (tenant integer NOT NULL, id integer NOT NULL, body text, category text, PRIMARY KEY ({}))"
    ).format(sql.SQL(", ").join(map(sql.Identifier, key))))
    load(database, ROWS)
    hook.create_project("docs", "docs", key if len(key) > 1 else key[0], ["body"], **arguments)
    assert hook.generate_embeddings("docs")["embedded"] == 24
    database.name, database.key = request.param, key
    return database


def load(db, rows) -> None:
    with db.conn.cursor() as cur:
        cur.executemany("INSERT INTO docs (tenant, id, body, category) VALUES (%s, %s, %s, %s)", rows)


def stored(db) -> dict[int, tuple]:
    """id -> what the project stores for it: (vector, updated_at), or each chunk's (chunk_no, vector)."""
    if db.name == "append":
        query = "SELECT id, docs_embeddings::text, docs_updated_at FROM docs WHERE docs_embeddings IS NOT NULL"
    elif db.name == "chunked":
        query = ("SELECT id, array_agg(chunk_no || ':' || embeddings::text ORDER BY chunk_no), max(updated_at)"
                 " FROM vectorize._chunks_docs GROUP BY id")
    else:
        query = "SELECT id, embeddings::text, updated_at FROM vectorize._embeddings_docs"
    return {row[0]: row[1:] for row in db.execute(query)}


def found(hook, db) -> set[int]:
    """The ids any search returns (vector and hybrid, for the query and for every row's own text)."""
    columns = db.key
    ids = set()
    for query in [QUERY, *(body for _, _, body, _ in ROWS)]:
        ids |= {row["id"] for row in hook.search("docs", query, return_columns=columns, num_results=30)}
    ids |= {row["id"] for row in hook.hybrid_search("docs", QUERY, return_columns=columns, num_results=30)}
    ids |= {row["id"] for row in hook.hybrid_search("docs", "phone", return_columns=columns, num_results=30)}
    return ids


def counts(hook) -> tuple[int, int, int, int]:
    status = hook.get_status("docs")
    return status["total_rows"], status["embedded_rows"], status["pending"], status["failed_rows"]


def queue_and_errors(db) -> tuple[int, int]:
    return (db.scalar("SELECT count(*) FROM vectorize._pending_docs"),
            db.scalar("SELECT count(*) FROM vectorize._errors_docs"))


def changed(rows):
    """The rows reloaded: ids 3 and 4 gone, 5's text changed, 200 new."""
    out = [r for r in rows if r[1] not in (3, 4)]
    out = [(t, i, b + " Now in pink." if i == 5 else b, c) for t, i, b, c in out]
    return [*out, (2, 200, "A brand new garden hose, 30 m, with a spray nozzle", "garden")]


def test_truncate_works_and_a_reload_embeds_only_what_changed(layout, hook):
    db = layout
    before = stored(db)
    load(db, [(1, 100, "A queued row, not embedded yet", "misc")])  # realtime: queued
    db.execute("INSERT INTO vectorize._errors_docs (tenant, id, error) VALUES (1, 7, 'x')"
               if db.name == "composite" else "INSERT INTO vectorize._errors_docs (id, error) VALUES (7, 'x')")
    assert queue_and_errors(db) == ((0 if db.name == "manual" else 1), 1)

    db.execute("TRUNCATE docs")  # a plain TRUNCATE: no foreign key refuses it

    assert counts(hook) == (0, 0, 0, 0) and queue_and_errors(db) == (0, 0)
    assert found(hook, db) == set()
    if db.name != "append":  # an append project has no view
        assert db.scalar("SELECT count(*) FROM vectorize.docs_view") == 0

    load(db, changed(ROWS))  # the nightly reload
    assert not found(hook, db) & {3, 4}  # keys that did not come back: never in results
    summary = hook.generate_embeddings("docs")

    assert summary["embedded"] == 2  # 5 (text changed) and 200 (new): nothing else sent to the model
    after = stored(db)
    assert set(after) == {i for _, i, _, _ in changed(ROWS)}  # 3 and 4 gone from the project's storage
    unchanged = set(after) - {5, 200}
    assert {i: after[i] for i in unchanged} == {i: before[i] for i in unchanged}  # same vectors, not rewritten
    assert after[5][0] != before[5][0]
    if db.name == "append":
        assert (summary["vectors_restored"], summary["vectors_removed"]) == (21, 3)
    elif db.name == "chunked":
        assert summary["vectors_removed"] == sum(len(before[i][0]) for i in (3, 4))
    else:
        assert summary["vectors_removed"] == 2
    assert counts(hook) == (23, 23, 0, 0) and queue_and_errors(db) == (0, 0)
    assert {1, 2} <= found(hook, db) and not found(hook, db) & {3, 4}


def test_a_reload_under_the_replica_role_is_recorded_as_any_other(layout, hook):
    """session_replication_role = replica (a logical replication subscriber's apply, ETL loads that skip
    foreign-key checks) fires the project's triggers too: the reload is queued, its removed keys go, and
    only what changed is embedded."""
    db = layout
    with db.conn.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("TRUNCATE docs")
        load(db, changed(ROWS))
    realtime = db.name != "manual"  # the realtime run reads the queue
    summary = hook.generate_embeddings("docs", pending_only=realtime)
    assert summary["embedded"] == 2  # 5 (text changed) and 200 (new)
    assert set(stored(db)) == {i for _, i, _, _ in changed(ROWS)}  # 3 and 4 gone from the project's storage
    assert counts(hook) == (23, 23, 0, 0) and queue_and_errors(db) == (0, 0)


def test_delete_and_insert_in_one_transaction_embeds_only_what_changed(layout, hook):
    db = layout
    before = stored(db)
    with db.conn.transaction():
        db.execute("DELETE FROM docs")
        load(db, changed(ROWS))
    summary = hook.generate_embeddings("docs")
    assert summary["embedded"] == 2
    after = stored(db)
    unchanged = set(after) - {5, 200}
    assert set(after) == unchanged | {5, 200} and {i: after[i] for i in unchanged} == {i: before[i] for i in unchanged}
    assert counts(hook) == (23, 23, 0, 0)


def test_a_deleted_row_leaves_search_queue_and_errors_at_once_and_storage_at_the_next_run(layout, hook):
    db = layout
    db.execute("UPDATE docs SET body = body || ' (refurbished)' WHERE id = 1")  # queued
    db.execute("INSERT INTO vectorize._errors_docs (tenant, id, error) VALUES (2, 2, 'x')"
               if db.name == "composite" else "INSERT INTO vectorize._errors_docs (id, error) VALUES (2, 'x')")
    db.execute("DELETE FROM docs WHERE id IN (1, 2, 3)")

    assert queue_and_errors(db) == (0, 0)
    assert counts(hook) == (21, 21, 0, 0)
    assert not found(hook, db) & {1, 2, 3}
    if db.name != "append":  # the vectors stay until the next generation run (append: gone with the rows)
        assert {1, 2, 3} <= set(stored(db))
    summary = hook.generate_embeddings("docs")
    assert summary["embedded"] == 0 and not set(stored(db)) & {1, 2, 3}
    assert summary["vectors_removed"] > 0


def test_a_changed_key_moves_the_row(layout, hook):
    db = layout
    db.execute("UPDATE docs SET id = 300 WHERE id = 1")
    assert 1 not in found(hook, db)
    realtime = db.name != "manual"  # the realtime run reads the queue: the new key was queued
    summary = hook.generate_embeddings("docs", pending_only=realtime)
    assert summary["embedded"] == (0 if db.name == "append" else 1)  # an append row keeps its vector
    assert 1 not in stored(db) and 300 in stored(db)
    assert 300 in {row["id"] for row in hook.search("docs", ROWS[0][2], return_columns=db.key, num_results=3)}
    assert counts(hook) == (24, 24, 0, 0)
    assert full_text_ranks(hook, db)[300] == 1  # its stored full-text document moved with it

    db.execute("INSERT INTO docs (tenant, id, body, category) VALUES (1, 1, 'a garden hose', 'garden')")
    assert full_text_ranks(hook, db).get(1) is None  # the old key's new row is not found by the old row's words


def full_text_ranks(hook, db) -> dict[int, int | None]:
    """id -> full_text_rank of a hybrid search for a word only the first product's text holds."""
    rows = hook.hybrid_search("docs", "Pixel", return_columns=db.key, num_results=30)
    return {row["id"]: row["full_text_rank"] for row in rows}


def test_an_append_reload_restores_without_the_index_and_builds_it_once(database, hook):
    """A reload of an append project restores the kept vectors of 1,198 of 1,200 rows: the index is dropped
    for that write, the two changed rows are embedded without it, and generation builds it once at the end."""
    db = database
    db.execute("CREATE TABLE items (id bigint PRIMARY KEY, body text)")
    db.execute("INSERT INTO items SELECT g, 'item number ' || g FROM generate_series(1, 1200) g")
    hook.create_project("items", "items", "id", ["body"], table_method="append")
    assert hook.generate_embeddings("items")["embedded"] == 1200
    kept = dict(db.execute("SELECT id, items_embeddings::text FROM items WHERE id > 2"))
    with db.conn.transaction():
        db.execute("TRUNCATE items")
        db.execute("INSERT INTO items SELECT g, CASE WHEN g <= 2 THEN 'a red garden hose ' || g"
                   " ELSE 'item number ' || g END FROM generate_series(1, 1200) g")

    summary = hook.generate_embeddings("items")

    assert (summary["vectors_restored"], summary["embedded"]) == (1198, 2)
    assert summary["index_rebuilt"] and summary["index_build"]["fits"]  # built by the run, after embedding
    assert db.scalar("SELECT array_agg(i.indisvalid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                     " JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = 'items'::regclass AND a.amname = 'hnsw'") == [True]
    assert dict(db.execute("SELECT id, items_embeddings::text FROM items WHERE id > 2")) == kept
    top = hook.search("items", "a red garden hose 1", return_columns=["id"], num_results=1)
    assert top[0]["id"] == 1


def test_a_project_made_with_foreign_keys_moves_to_the_triggers_at_its_next_run(products, hook):
    """A project created before (pg_vectorize's foreign keys, no removal triggers): its next generation run
    drops the foreign keys and adds the triggers; TRUNCATE then works and a reload re-embeds nothing."""
    hook.create_project("shop", "products", "product_id", ["name", "description"])
    hook.generate_embeddings("shop")
    products.execute(
        "DROP TRIGGER vectorize_delete_trigger_shop ON products; DROP TRIGGER vectorize_trunc_trigger_shop ON products;"
        " DROP TRIGGER vectorize_rekey_trigger_shop ON products; DROP FUNCTION vectorize.handle_removal_shop();"
        " DROP TABLE vectorize._removed_shop;"
        " ALTER TABLE vectorize._embeddings_shop ADD FOREIGN KEY (product_id) REFERENCES products ON DELETE CASCADE;"
        " ALTER TABLE vectorize._pending_shop ADD FOREIGN KEY (product_id) REFERENCES products ON DELETE CASCADE;"
        " ALTER TABLE vectorize._errors_shop ADD FOREIGN KEY (product_id) REFERENCES products ON DELETE CASCADE")
    with pytest.raises(Exception, match="cannot truncate a table referenced in a foreign key constraint"):
        products.execute("TRUNCATE products")

    assert hook.generate_embeddings("shop")["embedded"] == 0
    assert products.scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
                           " AND confrelid = 'products'::regclass") == 0
    rows = products.execute("SELECT * FROM products")
    with products.conn.transaction():
        products.execute("TRUNCATE products")
        with products.conn.cursor() as cur:
            cur.executemany("INSERT INTO products VALUES (%s, %s, %s, %s, %s, %s)", rows)
    assert hook.generate_embeddings("shop")["embedded"] == 0
    assert hook.get_status("shop")["embedded_rows"] == 24


def objects_of(db, job: str = "docs") -> list[str]:
    """What a project named ``job`` makes: triggers and functions, tables, views and indexes in ``vectorize``,
    its indexes and (append) columns on any table."""
    return sorted(r[0] for r in db.execute(
        "SELECT tgname::text FROM pg_trigger WHERE tgname LIKE %(like)s"
        " UNION ALL SELECT proname::text FROM pg_proc WHERE proname LIKE %(like)s"
        " UNION ALL SELECT relname::text FROM pg_class WHERE relname LIKE %(like)s"
        "  AND (relnamespace = 'vectorize'::regnamespace OR relname ~ '_(hnsw|fts)_')"
        " UNION ALL SELECT attname::text FROM pg_attribute WHERE attname LIKE %(columns)s AND NOT attisdropped"
        "  AND attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)",
        {"like": f"%{job}%", "columns": f"{job}\\_%"}))


def test_a_rename_swap_keeps_working_and_keeps_unchanged_vectors(layout, hook):
    """ALTER TABLE t RENAME TO t_old; ALTER TABLE t_new RENAME TO t; DROP TABLE t_old — nothing refuses the
    DROP; searches read the new table at once; the next generation run attaches it (the triggers move to it)
    and embeds only its new and changed rows (an append project: every row, its vectors went with t_old)."""
    db = layout
    before = stored(db)
    key = ", ".join(db.key)
    db.execute(f"CREATE TABLE docs_new (LIKE docs INCLUDING DEFAULTS, PRIMARY KEY ({key}))")
    load_into = "INSERT INTO docs_new (tenant, id, body, category) VALUES (%s, %s, %s, %s)"
    with db.conn.cursor() as cur:
        cur.executemany(load_into, changed(ROWS))
    if db.name == "append":
        db.execute("ALTER TABLE docs_new DROP COLUMN docs_embeddings, DROP COLUMN docs_updated_at,"
                   " DROP COLUMN docs_text_md5")
    with db.conn.transaction():
        db.execute("ALTER TABLE docs RENAME TO docs_old; ALTER TABLE docs_new RENAME TO docs; DROP TABLE docs_old")

    assert not found(hook, db) & {3, 4}
    summary = hook.generate_embeddings("docs")
    assert summary["embedded"] == (23 if db.name == "append" else 2)
    after = stored(db)
    assert set(after) == {i for _, i, _, _ in changed(ROWS)}
    if db.name != "append":
        unchanged = set(after) - {5, 200}
        assert {i: after[i] for i in unchanged} == {i: before[i] for i in unchanged}
    assert counts(hook) == (23, 23, 0, 0)
    triggers = db.execute("SELECT tgrelid::regclass::text, count(*) FROM pg_trigger WHERE tgname LIKE '%docs'"
                          " GROUP BY 1")
    realtime = db.name != "manual"  # realtime insert/update and the three removal triggers, on the new table
    assert triggers == [("docs", 5 if realtime else 3)]
    load(db, [(1, 301, "A queued row of the new table", "misc")])
    assert hook.get_status("docs")["pending"] == (1 if realtime else 0)
    if db.name != "append":  # the view, made again on the new table
        assert db.scalar("SELECT count(DISTINCT id) FROM vectorize.docs_view") == 23


def test_rows_deleted_while_the_source_is_renamed_away_go_when_it_comes_back(layout, hook):
    """A maintenance window: the source renamed away, rows deleted there, the table renamed back. The next run
    deletes their vectors (an append project's went with the rows)."""
    db = layout
    with db.conn.transaction():
        db.execute("ALTER TABLE docs RENAME TO docs_maintenance")
        db.execute("DELETE FROM docs_maintenance WHERE id IN (7, 8)")
    db.execute("ALTER TABLE docs_maintenance RENAME TO docs")

    hook.generate_embeddings("docs")
    assert not {7, 8} & set(stored(db))
    assert counts(hook) == (22, 22, 0, 0)
    if db.name not in ("append", "chunked"):  # a chunked project's documents are in its chunk table
        assert db.scalar("SELECT count(*) FROM vectorize._documents_docs WHERE id IN (7, 8)") == 0


def test_an_append_swap_with_a_copy_of_the_table_keeps_one_index(database, hook):
    """A table made LIKE the source INCLUDING ALL copies the append project's columns (with their vectors) and
    its index under another name: attached, it keeps the copied vectors and has only the project's index."""
    db = database
    db.execute("CREATE TABLE t (id int PRIMARY KEY, body text);"
               " INSERT INTO t SELECT g, 'document about topic ' || g FROM generate_series(1, 50) g")
    hook.create_project("ja", "t", "id", ["body"], table_method="append", schedule="manual")
    hook.generate_embeddings("ja")
    db.execute("CREATE TABLE t_new (LIKE t INCLUDING ALL); INSERT INTO t_new SELECT * FROM t;"
               " UPDATE t_new SET body = 'changed ' || id WHERE id <= 5")
    with db.conn.transaction():
        db.execute("ALTER TABLE t RENAME TO t_old; ALTER TABLE t_new RENAME TO t; DROP TABLE t_old")

    assert hook.attach_source("ja")["attached"] is True
    assert hook.generate_embeddings("ja")["embedded"] == 5
    assert db.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a"
                      " ON a.oid = c.relam WHERE i.indrelid = 't'::regclass AND a.amname = 'hnsw'") == [("ja_hnsw_cos_idx",)]


@pytest.mark.parametrize("cascade", ["", " CASCADE"])
def test_a_dropped_source_gives_a_typed_error_and_the_project_drops_cleanly(layout, hook, cascade):
    from airflow_vectorize.exceptions import ProjectConflictError, SourceTableMissingError

    db = layout
    db.execute(f"DROP TABLE docs{cascade}")  # nothing of the project refuses it
    before = snapshot(db)
    for call in (lambda: hook.get_status("docs"), lambda: hook.search("docs", QUERY),
                 lambda: hook.hybrid_search("docs", QUERY), lambda: hook.generate_embeddings("docs")):
        with pytest.raises(SourceTableMissingError, match=r"the source table public\.docs of project 'docs' no"
                           r" longer exists \(dropped, or renamed away\)\. Put a table .*\(drop_project\('docs'\)\)"):
            call()
    assert snapshot(db) == before
    assert issubclass(SourceTableMissingError, ProjectConflictError)  # the HTTP API answers 409
    assert hook.drop_project("docs")["dropped"] is True
    assert objects_of(db) == []


def test_a_source_renamed_away_is_missing_and_the_project_drops_from_where_it_went(layout, hook):
    from airflow_vectorize.exceptions import SourceTableMissingError

    db = layout
    db.execute("ALTER TABLE docs RENAME TO archived")
    missing = ("the source table public.docs of project 'docs' no longer exists (dropped, or renamed away)."
               f" Put a table with its key ({', '.join(db.key)}) and columns (body) under that name and run"
               " generation (or VectorizeHook.attach_source('docs')) to attach it, keeping the vectors of its"
               " unchanged rows; or drop the project (drop_project('docs')).")
    with pytest.raises(SourceTableMissingError, match=f"^{re.escape(missing)}$"):
        hook.search("docs", QUERY)
    assert hook.drop_project("docs")["dropped"] is True
    assert objects_of(db) == [] and db.scalar("SELECT count(*) FROM archived") == 24
    assert db.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'archived'::regclass AND NOT tgisinternal") == []


@pytest.mark.parametrize("swapped", [True, False], ids=["swapped out", "renamed away"])
def test_a_table_that_left_the_sources_name_stays_the_applications(layout, hook, swapped):
    """Before, the project's triggers, still on it, named the source: a key UPDATE, a DELETE (join, a queue
    waiting) or a TRUNCATE (append) of it failed; an append project's get_status failed untyped after a swap,
    and its drop_project failed (its columns looked for on the new table)."""
    from airflow_vectorize.exceptions import SourceTableMissingError

    db = layout
    hook.generate_embeddings("docs")
    db.execute("UPDATE docs SET body = body || '!' WHERE id = 5")  # a queue waiting (realtime layouts)
    db.execute("ALTER TABLE docs RENAME TO docs_old")
    if swapped:
        db.execute(f"CREATE TABLE docs (LIKE docs_old INCLUDING DEFAULTS, PRIMARY KEY ({', '.join(db.key)}))")
        if db.name == "append":
            db.execute("ALTER TABLE docs DROP COLUMN docs_embeddings, DROP COLUMN docs_updated_at,"
                       " DROP COLUMN docs_text_md5")
        load(db, ROWS)
    db.execute("UPDATE docs_old SET id = id + 1000 WHERE id = 1; DELETE FROM docs_old WHERE id = 2;"
               " TRUNCATE docs_old")  # the application's table now: nothing of the project refuses these

    if swapped and db.name == "append":
        with pytest.raises(SourceTableMissingError, match="the table now named public.docs is not the source of"
                           " append project 'docs' .* Run generation .*attach_source"):
            hook.get_status("docs")
    elif swapped:
        assert hook.get_status("docs")["total_rows"] == 24
    assert hook.drop_project("docs")["dropped"] is True
    assert objects_of(db) == []


def test_a_swap_that_keeps_the_old_table_attaches_with_the_projects_index(layout, hook):
    """Before, an append project's old table kept its columns and their index, whose name the new table's
    index needs: the new table got none (every search an exact scan), and after drop_project the leftovers
    made create_project refuse the name."""
    db = layout
    db.execute("ALTER TABLE docs RENAME TO docs_old")
    db.execute(f"CREATE TABLE docs (LIKE docs_old INCLUDING DEFAULTS, PRIMARY KEY ({', '.join(db.key)}))")
    if db.name == "append":
        db.execute("ALTER TABLE docs DROP COLUMN docs_embeddings, DROP COLUMN docs_updated_at, DROP COLUMN docs_text_md5")
    load(db, ROWS)

    assert hook.attach_source("docs")["attached"] is True
    hook.generate_embeddings("docs")

    storage = "docs" if db.name == "append" else "vectorize._chunks_docs" if db.name == "chunked" \
        else "vectorize._embeddings_docs"
    index = "public.docs_hnsw_cos_idx" if db.name == "append" else "vectorize.docs_hnsw_cos_idx"
    assert db.scalar("SELECT indrelid::regclass::text FROM pg_index WHERE indexrelid = to_regclass(%s)", [index]) \
        == storage
    assert counts(hook) == (24, 24, 0, 0)
    assert db.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'docs_old'::regclass AND attname LIKE"
                      " 'docs\\_%%' AND NOT attisdropped") == []  # the old table is the application's
    assert db.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'docs_old'::regclass AND NOT tgisinternal") == []
    assert hook.drop_project("docs")["dropped"] is True and objects_of(db) == []


def test_a_renamed_column_gives_a_typed_error_changes_nothing_and_renaming_it_back_resumes(layout, hook):
    """A text or key column renamed (or dropped): every call that reads it raises SourceColumnsMissingError
    naming it; searches keep working while their key is there; drop_project always succeeds."""
    import psycopg

    from airflow_vectorize.exceptions import ProjectConflictError, SourceColumnsMissingError

    db = layout
    db.execute("ALTER TABLE docs RENAME COLUMN body TO description")
    before = snapshot(db)
    reads = [*db.key, "body"]
    realtime = db.name != "manual"  # its update trigger proves the rename: generation follows it
    follows = (" The source says 'body' is now 'description': the next generation run, or attach_source('docs'),"
               " follows it.") if realtime else ""
    missing = ("the source table public.docs of project 'docs' has no column 'body' any more (renamed or dropped);"
               f" the project reads {', '.join(map(repr, reads))}.{follows} Rename it back (ALTER TABLE ... RENAME"
               " COLUMN <new name> TO <old name>), give the project a text or update column's new name"
               " (alter_project('docs', columns=[...], update_col=...)), or drop the project (drop_project('docs')).")
    calls = [lambda: hook.get_status("docs"), lambda: hook.get_freshness("docs")]
    for call in calls + ([] if realtime else [lambda: hook.generate_embeddings("docs"),
                                              lambda: hook.attach_source("docs")]):
        with pytest.raises(SourceColumnsMissingError, match=f"^{re.escape(missing)}$"):
            call()
    assert snapshot(db) == before
    assert issubclass(SourceColumnsMissingError, ProjectConflictError)  # the HTTP API answers 409
    assert 1 in {row["id"] for row in hook.search("docs", QUERY, return_columns=db.key)}  # key and vectors there
    if realtime:  # followed: the same values, the same md5s
        assert hook.generate_embeddings("docs")["embedded"] == 0
        assert hook.get_project("docs")["params"]["columns"] == ["description"] and counts(hook) == (24, 24, 0, 0)
        db.execute("UPDATE docs SET description = 'A queued change' WHERE id = 7")
        assert hook.get_status("docs")["pending"] == 1  # the update trigger on the renamed column

    db.execute("ALTER TABLE docs RENAME COLUMN description TO body")
    if realtime:
        hook.attach_source("docs")  # follows it back
    assert hook.generate_embeddings("docs")["embedded"] == int(realtime) and counts(hook) == (24, 24, 0, 0)

    other = type(hook)(postgres_conn_id=hook.postgres_conn_id)  # another process's hook, its searches built
    assert 1 in {row["id"] for row in other.search("docs", QUERY, return_columns=db.key)}
    vectors = stored_vectors(db)
    db.execute("ALTER TABLE docs RENAME COLUMN id TO doc_id")
    key = [{"id": "doc_id"}.get(column, column) for column in db.key]
    for call in (lambda: hook.search("docs", QUERY), lambda: hook.hybrid_search("docs", QUERY),
                 lambda: hook.get_status("docs")):
        with pytest.raises(SourceColumnsMissingError, match=r"^the source table public\.docs of project 'docs'"
                           r" has no column 'id' any more \(renamed or dropped\); .* The source says 'id' is now"
                           r" 'doc_id': the next generation run, or attach_source\('docs'\), follows it\."):
            call()
    if db.name != "manual":  # README: the realtime trigger function names the key; writes fail until followed
        with pytest.raises(psycopg.errors.UndefinedColumn, match="function vectorize.handle_update_docs"):
            db.execute("INSERT INTO docs (tenant, doc_id, body) VALUES (1, 300, 'Written after the rename')")

    hook.attach_source("docs")  # follows the rename (as the next generation run would)
    assert hook.get_project("docs")["params"]["primary_key"] == (key[0] if len(key) == 1 else key)
    assert stored_vectors(db) == vectors and counts(hook) == (24, 24, 0, 0)  # nothing to embed again
    assert 1 in {row["doc_id"] for row in other.hybrid_search("docs", QUERY)}  # its statement named "id": again
    assert 1 in {row["doc_id"] for row in other.search("docs", QUERY, return_columns=key)}
    db.execute("INSERT INTO docs (tenant, doc_id, body) VALUES (1, 300, 'A kettle that whistles')")
    assert hook.generate_embeddings("docs")["embedded"] == 1
    found_first = hook.search("docs", "whistling kettle", return_columns=key, num_results=1)
    assert [row["doc_id"] for row in found_first] == [300]
    db.execute("DELETE FROM docs WHERE doc_id = 300")
    assert 300 not in {row["doc_id"] for row in hook.search("docs", "whistling kettle", return_columns=key)}
    assert hook.drop_project("docs")["dropped"] is True
    assert objects_of(db) == [] and db.scalar("SELECT count(*) FROM docs") == 24


def stored_vectors(db) -> list[tuple]:
    """Every vector the project stores, as text, in order (its rows' or chunks')."""
    if db.name == "append":
        query = "SELECT docs_embeddings::text FROM docs WHERE docs_embeddings IS NOT NULL ORDER BY 1"
    else:
        table = "_chunks_docs" if db.name == "chunked" else "_embeddings_docs"
        query = f"SELECT embeddings::text FROM vectorize.{table} ORDER BY 1"
    return db.execute(query)


def test_an_embedded_column_changes_type_with_the_update_trigger_dropped_and_put_back(layout, hook):
    """PostgreSQL refuses to change the type of a column a realtime project's update trigger depends on; the
    README's recipe: drop the trigger in the ALTER's transaction, then attach_source (or the next generation
    run) puts it back and queues the rows changed meanwhile."""
    import psycopg

    db = layout
    alter = "ALTER TABLE docs ALTER COLUMN body TYPE varchar(500)"
    if db.name == "manual":  # no update trigger: nothing refuses it
        db.execute(alter)
        assert hook.attach_source("docs")["attached"] is False
        assert hook.generate_embeddings("docs")["embedded"] == 0
        return
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="trigger vectorize_update_trigger_docs on table"
                       " docs depends on column \"body\""):
        db.execute(alter)
    with db.conn.transaction():
        db.execute("DROP TRIGGER vectorize_update_trigger_docs ON docs")
        db.execute(alter)
    db.execute("UPDATE docs SET body = body || ' Now in pink.' WHERE id = 5")  # not queued: no trigger
    assert hook.get_status("docs")["pending"] == 0

    assert hook.attach_source("docs")["attached"] is True
    assert hook.get_status("docs")["pending"] == 1
    assert hook.generate_embeddings("docs", pending_only=True)["embedded"] == 1
    db.execute("UPDATE docs SET body = body || ' And blue.' WHERE id = 6")  # queued again
    assert hook.get_status("docs")["pending"] == 1 and hook.attach_source("docs")["attached"] is False
    assert db.scalar("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'docs'::regclass"
                     " AND attname = 'body'") == "character varying(500)"


def test_the_view_takes_the_source_columns_again_at_the_next_run(layout, hook, caplog):
    """pg_vectorize's view lists the source's columns as they were when it was made: a column dropped or renamed
    since makes it fail until the next generation run (or attach_source) makes it again on today's columns."""
    import logging

    import psycopg

    db = layout
    db.execute("ALTER TABLE docs DROP COLUMN category, ADD COLUMN tags text")
    if db.name == "append":  # no view: its columns are in the source
        assert hook.generate_embeddings("docs")["embedded"] == 0
        return
    with pytest.raises(psycopg.errors.UndefinedColumn, match="column s.category does not exist"):
        db.execute("SELECT count(*) FROM vectorize.docs_view")

    if db.name == "manual":
        assert hook.attach_source("docs")["attached"] is False
    else:
        assert hook.generate_embeddings("docs")["embedded"] == 0
    columns = [name for (name,) in db.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'vectorize.docs_view'::regclass AND attnum > 0"
        " ORDER BY attnum")]
    chunk = ["chunk_no", "chunk"] if db.name == "chunked" else []
    assert columns == ["tenant", "id", "body", "tags", *chunk, "embeddings", "embeddings_updated_at"]
    assert db.scalar("SELECT count(DISTINCT id) FROM vectorize.docs_view") == 24

    db.execute("CREATE VIEW mine AS SELECT id FROM vectorize.docs_view")  # the user's: the view stays as it is
    db.execute("ALTER TABLE docs DROP COLUMN tags")
    with caplog.at_level(logging.WARNING):
        assert hook.generate_embeddings("docs")["embedded"] == 0
    assert "its view \"vectorize\".\"docs_view\" does not have the source's columns any more" in caplog.text
    assert hook.get_status("docs")["embedded_rows"] == 24


def test_a_removal_function_of_an_earlier_version_is_written_again_by_the_next_run(products, hook):
    """A project keeps its trigger function until something writes it again: an earlier version's (without
    today's guards for a table that left the source's name) is replaced by the next generation run."""
    hook.create_project("shop", "products", "product_id", ["name"], schedule="manual")
    source = "SELECT prosrc FROM pg_proc WHERE oid = 'vectorize.handle_removal_shop()'::regprocedure"
    today = products.scalar(source)
    products.execute("CREATE OR REPLACE FUNCTION vectorize.handle_removal_shop() RETURNS trigger LANGUAGE plpgsql"
                     " AS 'BEGIN RETURN NULL; END'")

    hook.generate_embeddings("shop")

    assert products.scalar(source) == today and "TG_RELID" in today


def test_triggers_of_an_earlier_version_fire_always_from_the_next_run(products, hook):
    """A project whose triggers fire only in origin sessions (made by an earlier version) gets them firing in
    every session from its next generation run; a trigger the user disabled stays disabled."""
    hook.create_project("shop", "products", "product_id", ["name"], schedule="realtime")
    enabled = "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'products'::regclass AND NOT tgisinternal"
    assert {state for _, state in products.execute(enabled)} == {"A"}
    products.execute("ALTER TABLE products ENABLE TRIGGER USER;"
                     " ALTER TABLE products DISABLE TRIGGER vectorize_update_trigger_shop")

    hook.generate_embeddings("shop")

    assert dict(products.execute(enabled)) == {
        "vectorize_insert_trigger_shop": "A", "vectorize_update_trigger_shop": "D", "vectorize_delete_trigger_shop": "A",
        "vectorize_trunc_trigger_shop": "A", "vectorize_rekey_trigger_shop": "A"}


def test_a_key_no_longer_unique_gives_a_typed_error_and_changes_nothing(layout, hook):
    """The source's primary key replaced by a wider one (create_project's uniqueness no longer holds): searches,
    status and runs raise ProjectConflictError naming the key, instead of answering one row with another's vector
    or failing with PostgreSQL's errors; putting a unique key back resumes."""
    from airflow_vectorize.exceptions import ProjectConflictError

    db = layout
    key = ", ".join(db.key)
    db.execute("ALTER TABLE docs DROP CONSTRAINT docs_pkey; ALTER TABLE docs ADD PRIMARY KEY (tenant, id, category)")
    db.execute("INSERT INTO docs SELECT tenant, id, body || ' En français.', 'fr' FROM docs WHERE id = 1")
    before = snapshot(db)
    message = (f"the key ({key}) of project 'docs' is no longer unique in public.docs: no primary key or unique"
               " index is on exactly these columns now (dropped, or replaced by a wider one).")
    fresh = type(hook)(postgres_conn_id=hook.postgres_conn_id)  # no project looked up yet
    for call in (lambda: hook.get_status("docs"), lambda: hook.get_freshness("docs"),
                 lambda: hook.generate_embeddings("docs"), lambda: hook.attach_source("docs"),
                 lambda: fresh.search("docs", QUERY), lambda: fresh.hybrid_search("docs", QUERY)):
        with pytest.raises(ProjectConflictError, match=f"^{re.escape(message)} .*put a primary key or unique index"
                           rf" on \({re.escape(key)}\) back .*\(drop_project\('docs'\)\)\.$"):
            call()
    assert snapshot(db) == before

    db.execute("DELETE FROM docs WHERE category = 'fr'")
    db.execute(sql.SQL("CREATE UNIQUE INDEX docs_key ON docs ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, db.key))))
    assert hook.generate_embeddings("docs")["embedded"] == 0 and counts(hook)[:2] == (24, 24)
    assert 1 in {row["id"] for row in fresh.search("docs", QUERY, return_columns=db.key)}


@pytest.mark.parametrize("alter, back, message", [
    ("ALTER COLUMN body TYPE jsonb USING body::jsonb", "ALTER COLUMN body TYPE text",
     ("column 'body' of public.notes, embedded by project 'notes', is jsonb now: columns to embed must be text-like"
      " (text, varchar, char). Change it back (ALTER TABLE public.notes ALTER COLUMN body TYPE text), or embed other"
      " columns (alter_project('notes', columns=[...])).")),
    ("ALTER COLUMN updated_at TYPE text", "ALTER COLUMN updated_at TYPE timestamptz USING updated_at::timestamptz",
     ("update_col 'updated_at' of public.notes (project 'notes') is text now: it must be timestamp or timestamptz."
      " Change it back (ALTER TABLE public.notes ALTER COLUMN updated_at TYPE timestamptz USING ...), or give the"
      " project another update column, or none (alter_project('notes', update_col=...)).")),
], ids=["embedded column", "update column"])
def test_a_column_retyped_to_a_type_the_project_refuses_gives_a_typed_error(database, hook, alter, back, message):
    """An embedded column or the update column changed in place to a type create_project refuses (a manual
    project has no trigger that stops the ALTER): status, freshness and runs raise ProjectConflictError naming
    the column, its type and what the project needs, and write nothing; changed back, the project resumes."""
    from airflow_vectorize.exceptions import ProjectConflictError

    database.execute("CREATE TABLE notes (id integer PRIMARY KEY, body text, updated_at timestamptz NOT NULL"
                     " DEFAULT now())")
    database.execute("""INSERT INTO notes (id, body) SELECT g, '{"title": "note ' || g || '"}'"""
                     " FROM generate_series(1, 5) g")
    hook.create_project("notes", "notes", "id", ["body"], update_col="updated_at", schedule="manual")
    assert hook.generate_embeddings("notes")["embedded"] == 5
    database.execute("ALTER TABLE notes " + alter)
    before = snapshot(database)
    for call in (lambda: hook.get_status("notes"), lambda: hook.get_freshness("notes"),
                 lambda: hook.generate_embeddings("notes"), lambda: hook.attach_source("notes"),
                 lambda: hook.generate_embeddings("notes", since="2020-01-01T00:00:00Z",
                                                  until="2100-01-01T00:00:00Z")):
        with pytest.raises(ProjectConflictError, match=f"^{re.escape(message)}$"):
            call()
    assert snapshot(database) == before
    assert len(hook.search("notes", "note 3", num_results=2)) == 2  # searches read the key and vectors only

    database.execute("ALTER TABLE notes " + back)
    assert hook.generate_embeddings("notes")["embedded"] == 0 and hook.get_status("notes")["embedded_rows"] == 5
