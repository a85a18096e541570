"""A join project's bulk re-import written into a new table and swapped in once indexed (airflow_vectorize.swap):
searches read the old table and its index meanwhile; what the table had is kept; tables a swap would change
are imported in place, and so is one that stays in use."""

from __future__ import annotations

import logging

import psycopg
from test_import_embeddings import items_with_vectors

from airflow_vectorize import catalog, swap
from airflow_vectorize.hooks.vectorize import VectorizeHook

TABLE = "vectorize._embeddings_items"
NEAREST = f"SELECT id FROM {TABLE} ORDER BY embeddings <=> %s::real[]::vector LIMIT 1"
LEFTOVERS = "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_swap\\_%%'"


def project_with_negated(database, hook, rows: int = 2000, negated: int = 1200) -> list[float]:
    """A project of ``rows`` random vectors, imported, and a table ``negated`` of new vectors (each the
    opposite of its old one) for ids 1..``negated``; returns item 7's old vector."""
    items_with_vectors(database, rows)
    hook.create_project("items", "items", "id", ["body"])
    hook.import_embeddings("items", "item_vectors", "id", "v")
    database.execute("CREATE TABLE negated AS SELECT id, (SELECT array_agg(-x) FROM unnest(v) x)::real[] AS v"
                     " FROM item_vectors WHERE id <= %s", [negated])
    return database.scalar("SELECT v FROM item_vectors WHERE id = 7")


def kept_rows(database) -> list[tuple]:
    return database.execute(f"SELECT id, embeddings, updated_at, text_md5 FROM {TABLE} WHERE id > 1200 ORDER BY id")


def test_a_bulk_reimport_goes_into_a_new_table_while_searches_read_the_old_one(database, hook, monkeypatch):
    old_vector = project_with_negated(database, hook)
    reader = f"reader_{database.name}"
    database.execute(f'CREATE ROLE "{reader}"; GRANT SELECT ON {TABLE} TO "{reader}" WITH GRANT OPTION')
    try:
        searcher = VectorizeHook(postgres_conn_id=database.conn_id)  # long-lived: keeps its statements
        assert searcher.search("items", old_vector, ["id"], 1)[0]["id"] == 7
        before = {"oid": database.scalar(f"SELECT '{TABLE}'::regclass::oid"), "kept": kept_rows(database),
                  "constraint": database.scalar(f"SELECT conname FROM pg_constraint WHERE conrelid = '{TABLE}'"
                                                "::regclass AND contype = 'u'")}
        seen = []
        complete = swap.complete

        def search_then_complete(cur, project, staged):
            with psycopg.connect(database.uri, autocommit=True) as other:
                other.execute("SET lock_timeout = '200ms'; SET enable_seqscan = off")
                plan = "\n".join(r[0] for r in other.execute("EXPLAIN " + NEAREST, [old_vector]))
                seen.append((other.execute(NEAREST, [old_vector]).fetchone()[0], "items_hnsw_cos_idx" in plan,
                             other.execute(LEFTOVERS).fetchone()[0]))  # the staged table is not visible
            return complete(cur, project, staged)

        monkeypatch.setattr(swap, "complete", search_then_complete)
        summary = hook.import_embeddings("items", "negated", "id", "v")  # 60 %: the index is rebuilt

        assert seen == [(7, True, 0)]  # the old vectors, through the old index, without waiting
        assert (summary["table_swapped"], summary["index_rebuilt"], summary["index_build"]["fits"]) == (True, True, True)
        assert (summary["imported"], summary["inserted"], summary["updated"]) == (1200, 0, 1200)
        assert database.scalar(f"SELECT '{TABLE}'::regclass::oid") != before["oid"]
        assert kept_rows(database) == before["kept"]  # vectors, times and md5s of the rows not imported
        assert database.scalar(f"SELECT count(*) FROM {TABLE} e JOIN negated n USING (id)"
                               " WHERE e.embeddings = n.v::vector") == 1200
        assert database.scalar(f"SELECT conname FROM pg_constraint WHERE conrelid = '{TABLE}'::regclass"
                               " AND contype = 'u'") == before["constraint"]
        assert database.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = 'vectorize.items_hnsw_cos_idx'"
                               "::regclass AND indrelid = %s::regclass", [TABLE])
        assert database.scalar("SELECT has_table_privilege(%s, %s, 'SELECT WITH GRANT OPTION')", [reader, TABLE])
        assert database.scalar(LEFTOVERS) == 0
        assert searcher.search("items", old_vector, ["id"], 1)[0]["id"] != 7  # the same hook, the new table
        assert hook.get_status("items")["embedded_rows"] == 2000
    finally:
        database.execute(f'DROP OWNED BY "{reader}"; DROP ROLE "{reader}"')


def test_a_table_a_swap_would_change_is_imported_in_place(database, hook, caplog):
    project_with_negated(database, hook)
    database.execute(f"CREATE VIEW item_keys AS SELECT id FROM {TABLE}")
    caplog.set_level(logging.INFO)

    summary = hook.import_embeddings("items", "negated", "id", "v")

    assert (summary["table_swapped"], summary["index_rebuilt"], summary["updated"]) == (False, True, 1200)
    assert "views, rules, triggers, policies, publications or statistics depend on it" in caplog.text
    assert database.scalar("SELECT count(*) FROM item_keys") == 2000


def test_a_table_that_stays_in_use_is_imported_in_place(database, hook, monkeypatch):
    """A session holding the table (as a generation run's key stream does for its whole run) keeps the swap
    from taking it: after its attempts, the import is written in place, and nothing staged is left."""
    project_with_negated(database, hook)
    monkeypatch.setattr(swap, "SWAP_LOCK_ATTEMPTS", 2)
    monkeypatch.setattr(swap, "SWAP_LOCK_TIMEOUT", "100ms")
    with psycopg.connect(database.uri) as holder:
        holder.execute(f"SELECT count(*) FROM {TABLE}")  # its transaction stays open

        summary = hook.import_embeddings("items", "negated", "id", "v")

        # in place, and its index kept: dropping it would have waited for the holder too
        assert (summary["table_swapped"], summary["index_rebuilt"], summary["updated"]) == (False, False, 1200)
    assert database.scalar(f"SELECT count(*) FROM {TABLE} e JOIN negated n USING (id)"
                           " WHERE e.embeddings = n.v::vector") == 1200
    assert database.scalar(LEFTOVERS) == 0
    # the swap's lock_timeout is its savepoint's only: the caller's transaction keeps its own, the session too
    with database.conn.transaction(), database.conn.cursor() as cur:
        cur.execute("SET LOCAL lock_timeout = '5s'")
        with catalog.lock_timeout(cur, "100ms"):
            assert cur.execute("SHOW lock_timeout").fetchone()[0] == "100ms"
            cur.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        assert cur.execute("SHOW lock_timeout").fetchone()[0] == "5s"
    assert database.scalar("SHOW lock_timeout") == "0"


def test_a_composite_key_and_a_half_precision_index_are_swapped_alike(database, hook):
    database.execute("CREATE TABLE pairs (a int, b text, body text, PRIMARY KEY (a, b));"
                     " INSERT INTO pairs SELECT g % 50, 'k' || (g / 50), 'pair ' || g FROM generate_series(0, 1999) g;"
                     " CREATE TABLE pair_vectors AS SELECT a, b, (SELECT array_agg(random())::real[]"
                     "  FROM generate_series(1, 384) WHERE p.a >= 0) AS v FROM pairs p;"
                     " CREATE TABLE new_pair_vectors AS SELECT a, b, (SELECT array_agg(-x) FROM unnest(v) x)::real[] AS v"
                     "  FROM pair_vectors WHERE a < 30")
    hook.create_project("pairs", "pairs", ["a", "b"], ["body"], halfvec_index=True)
    hook.import_embeddings("pairs", "pair_vectors", ["a", "b"], "v")

    summary = hook.import_embeddings("pairs", "new_pair_vectors", ["a", "b"], "v")

    assert (summary["table_swapped"], summary["imported"], summary["updated"]) == (True, 1200, 1200)
    table = "vectorize._embeddings_pairs"
    assert database.scalar(f"SELECT count(*) FROM {table} e JOIN new_pair_vectors n USING (a, b)"
                           " WHERE e.embeddings = n.v::vector") == 1200
    assert "halfvec" in database.scalar("SELECT indexdef FROM pg_indexes WHERE indexname = 'pairs_hnsw_cos_idx'")
    assert database.scalar(f"SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = '{table}'::regclass"
                           " AND contype = 'u'") == "UNIQUE (a, b) INCLUDE (text_md5)"
    nearest = hook.search("pairs", database.scalar("SELECT v FROM pair_vectors WHERE a = 40 AND b = 'k3'"),
                          ["a", "b"], 1)
    assert nearest[0] | {"similarity_score": None} == {"a": 40, "b": "k3", "similarity_score": None}
