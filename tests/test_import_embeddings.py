"""import_embeddings: overwrite semantics for join and append, exact counts, pending clean-up, validation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import create_embeddings_table, product_texts, snapshot
from psycopg import sql

from airflow_vectorize import index_build
from airflow_vectorize.exceptions import DimensionMismatchError, InvalidInputError, ProjectNotFoundError

COLUMNS = ["name", "description"]


def as_array(value) -> np.ndarray:
    """A pgvector Vector/HalfVector or a list as a float32 array."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)


def stored(db, job: str, table_method: str) -> dict[int, np.ndarray]:
    """product_id -> stored embedding."""
    if table_method == "join":
        query = f'SELECT product_id, embeddings FROM vectorize."_embeddings_{job}"'
    else:
        query = f'SELECT product_id, "{job}_embeddings" FROM products WHERE "{job}_embeddings" IS NOT NULL'
    return {pid: as_array(vector) for pid, vector in db.execute(query)}


def source_vectors(db, table: str = "product_embeddings") -> dict[int, np.ndarray]:
    return {pid: as_array(v) for pid, v in db.execute(
        sql.SQL("SELECT product_id, embedding FROM {}").format(sql.Identifier(table)))}


def items_with_vectors(db, rows: int) -> None:
    """Table items(id, body) of ``rows`` rows and item_vectors(id, v): a random 384-dim real[] per item."""
    db.execute("CREATE TABLE items (id bigint PRIMARY KEY, body text)")
    db.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, %s) g", [rows])
    db.execute("CREATE TABLE item_vectors AS SELECT id, (SELECT array_agg(random())::real[] FROM"
               " generate_series(1, 384) WHERE g.id > 0) AS v FROM items g")


@pytest.fixture
def project(products, hook, model, request):
    table_method = getattr(request, "param", "join")
    create_embeddings_table(products, model)
    hook.create_project("product_search", "products", "product_id", COLUMNS, table_method=table_method)
    return table_method


@pytest.mark.parametrize("project", ["join", "append"], indirect=True)
def test_import_writes_every_embedding_and_counts_exactly(products, hook, model, project):
    result = hook.import_embeddings("product_search", "product_embeddings", "product_id", "embedding")

    assert {k: result[k] for k in ("imported", "inserted", "updated", "dimensions", "pending_cleared")} == {
        "imported": 24, "inserted": 24, "updated": 0, "dimensions": 384, "pending_cleared": 0}
    got, expected = stored(products, "product_search", project), source_vectors(products)
    assert got.keys() == expected.keys()
    for pid in expected:
        np.testing.assert_allclose(got[pid], expected[pid], rtol=1e-6)
    # The imported vectors are the model's encoding of each row's text.
    texts = product_texts(products)
    np.testing.assert_allclose(got[1], model.encode([texts[1]])[0], atol=1e-5)
    status = hook.get_status("product_search")
    assert (status["total_rows"], status["embedded_rows"], status["missing_rows"], status["stale_rows"]) == (24, 24, 0, 0)


@pytest.mark.parametrize("project", ["join", "append"], indirect=True)
def test_reimport_overwrites_for_join_and_append(products, hook, project):
    hook.import_embeddings("product_search", "product_embeddings", "product_id", "embedding")
    products.execute("CREATE TABLE newer AS SELECT product_id, array_fill(0.5::real, ARRAY[384]) AS embedding"
                     " FROM products WHERE product_id <= 5")

    result = hook.import_embeddings("product_search", "newer", "product_id", "embedding")

    assert (result["imported"], result["inserted"], result["updated"]) == (5, 0, 5)
    got = stored(products, "product_search", project)
    assert all(np.allclose(got[pid], 0.5) for pid in range(1, 6))
    assert not np.allclose(got[6], 0.5)


@pytest.mark.parametrize("column_type", ["vector(384)", "vector", "halfvec(384)", "double precision[]"])
def test_vector_halfvec_and_array_sources(products, hook, model, column_type):
    create_embeddings_table(products, model, column_type=sql.SQL(column_type))
    hook.create_project("product_search", "products", "product_id", COLUMNS)

    result = hook.import_embeddings("product_search", "product_embeddings", "product_id", "embedding")

    assert result["imported"] == 24
    got = stored(products, "product_search", "join")
    np.testing.assert_allclose(got[3], source_vectors(products)[3], atol=1e-3)  # halfvec rounds


def test_pending_work_is_cleared_only_for_imported_keys(products, hook, project):
    products.execute("INSERT INTO products (product_id, name) VALUES (100, 'new phone'), (101, 'new tablet')")
    products.execute("UPDATE products SET description = 'refurbished' WHERE product_id IN (1, 2)")
    products.execute("CREATE TABLE partial AS SELECT product_id, embedding FROM product_embeddings"
                     " WHERE product_id IN (1, 3)")

    result = hook.import_embeddings("product_search", "partial", "product_id", "embedding")

    assert (result["imported"], result["pending_cleared"]) == (2, 1)
    assert [r[0] for r in products.execute(
        'SELECT product_id FROM vectorize."_pending_product_search" ORDER BY 1')] == [2, 100, 101]
    assert hook.get_status("product_search")["pending"] == 3


def test_bulk_import_rebuilds_the_index(database, hook):
    items_with_vectors(database, 1500)
    hook.create_project("items", "items", "id", ["body"], index_dist_type="pgv_hnsw_ip")

    result = hook.import_embeddings("items", "item_vectors", "id", "v")

    assert (result["imported"], result["index_rebuilt"]) == (1500, True)
    assert "USING hnsw (embeddings vector_ip_ops)" in database.scalar(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'items_hnsw_ip_idx'")
    # a build's maintenance_work_mem, sized for its rows (100,000: past the session's 64MB), is its
    # transaction's only
    memory = "SELECT pg_size_bytes(current_setting('maintenance_work_mem'))"
    with database.conn.transaction(), database.conn.cursor() as cur:
        index_build.build(cur, sql.SQL("CREATE INDEX ON items (body)"), "items", 100_000, 384, None, False,
                          index_build.AUTO_CAP)
        assert cur.execute(memory).fetchone()[0] // 1024 == \
            index_build.build_memory(100_000, 384, None, False, index_build.AUTO_CAP) // 1024
    assert database.scalar("SHOW maintenance_work_mem") == "64MB"
    small = hook.import_embeddings("items", "item_vectors", "id", "v")  # 100 % again: rebuild again
    assert (small["updated"], small["index_rebuilt"]) == (1500, True)
    # the stored full-text documents, computed in bulk (a CREATE TABLE AS) and upserted: one per row, current
    database.execute("UPDATE items SET body = 'changed ' || id WHERE id <= 1000")
    hook.import_embeddings("items", "item_vectors", "id", "v")
    assert database.scalar("SELECT count(*) FROM vectorize._documents_items d JOIN items i USING (id)"
                           " WHERE d.document = to_tsvector('english', i.body)") == 1500
    matched = [r for r in hook.hybrid_search("items", "changed", num_results=20) if r["full_text_rank"] is not None]
    assert matched and all(r["id"] <= 1000 for r in matched)  # found by the new documents only



def test_a_bulk_import_builds_the_full_text_index_again_unless_the_documents_are_in_use(database, hook):
    """An import that rebuilds the HNSW index, of at least FTS_REBUILD_SHARE of the stored documents, writes
    them without their GIN index and builds it again in its transaction; a smaller one keeps it, and so do one
    that keeps the HNSW index (searches are not to wait) and one that finds another session reading the
    documents (it does not wait: a hybrid search holding them may be waiting for the import's vectors)."""
    import threading

    import psycopg

    items_with_vectors(database, 4000)
    hook.create_project("items", "items", "id", ["body"])
    # a view on the embeddings table: its bulk imports rebuild the index in place (no swap, see test_swap)
    database.execute("CREATE VIEW item_keys AS SELECT id FROM vectorize._embeddings_items")
    fts_index = "SELECT to_regclass('vectorize.items_fts_idx')::oid"
    database.execute("CREATE TABLE few AS SELECT * FROM item_vectors WHERE id <= 1000;"
                     " CREATE TABLE half AS SELECT * FROM item_vectors WHERE id <= 2000")
    created = database.scalar(fts_index)

    hook.import_embeddings("items", "item_vectors", "id", "v")
    rebuilt = database.scalar(fts_index)
    assert rebuilt not in (None, created)
    database.execute("UPDATE items SET body = 'changed ' || id WHERE id <= 1000")
    hook.import_embeddings("items", "few", "id", "v")  # 1,000 of 5,000: inserted into the index
    assert database.scalar(fts_index) == rebuilt
    hook.import_embeddings("items", "half", "id", "v", rebuild_index=False)
    assert database.scalar(fts_index) == rebuilt

    with psycopg.connect(database.uri) as reader:  # a transaction that has read the documents, still open
        reader.execute("SELECT count(*) FROM vectorize._documents_items")
        done = threading.Event()
        importing = threading.Thread(target=lambda: (hook.import_embeddings("items", "half", "id", "v"), done.set()))
        importing.start()
        importing.join(60)
        assert done.is_set()  # it did not wait for the reader
    assert database.scalar(fts_index) == rebuilt

    assert database.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = 'vectorize.items_fts_idx'::regclass")
    assert database.scalar("SELECT count(*) FROM vectorize._documents_items d JOIN items i USING (id)"
                           " WHERE d.document = to_tsvector('english', i.body)") == 4000
    matched = [r["id"] for r in hook.hybrid_search("items", "changed", num_results=20) if r["full_text_rank"]]
    assert matched and max(matched) <= 1000  # found by the new documents only


def test_the_index_is_rebuilt_from_a_tenth_of_the_rows(database, hook, monkeypatch):
    """The rule measured in bench-million: a write of at least 10 % of the rows drops and rebuilds the index."""
    from airflow_vectorize import storage

    items_with_vectors(database, 1500)
    hook.create_project("items", "items", "id", ["body"])
    hook.import_embeddings("items", "item_vectors", "id", "v")
    monkeypatch.setattr(storage, "REBUILD_INDEX_MIN_ROWS", 10)
    database.execute("CREATE TABLE tenth AS SELECT * FROM item_vectors WHERE id <= 150;"
                     " CREATE TABLE less AS SELECT * FROM item_vectors WHERE id <= 149")

    assert hook.import_embeddings("items", "less", "id", "v")["index_rebuilt"] is False
    assert hook.import_embeddings("items", "tenth", "id", "v")["index_rebuilt"] is True
    # or as the caller says
    assert hook.import_embeddings("items", "tenth", "id", "v", rebuild_index=False)["index_rebuilt"] is False
    assert hook.import_embeddings("items", "less", "id", "v", rebuild_index=True)["index_rebuilt"] is True

    before = snapshot(database)
    for call in (lambda: hook.import_embeddings("items", "tenth", "id", "v", rebuild_index="yes"),
                 lambda: hook.generate_embeddings("items", rebuild_index=1)):
        with pytest.raises(InvalidInputError, match=r"rebuild_index must be True, False or None \(rebuild when it"
                                                    r" is faster\), got ('yes'|1)"):
            call()
    assert snapshot(database) == before


def test_searches_do_not_wait_for_the_rebuild(database, hook, monkeypatch):
    """The write commits before the index is built: a search while it is being built is answered at once
    (exactly, without the index) from the new vectors, not queued behind the build's transaction."""
    import psycopg

    from airflow_vectorize import storage

    items_with_vectors(database, 1200)
    hook.create_project("items", "items", "id", ["body"])
    target = database.scalar("SELECT v FROM item_vectors WHERE id = 7")
    seen = []
    build = storage.build_index

    def search_then_build(cur, project, build_cap):
        with psycopg.connect(database.uri, autocommit=True) as other:
            other.execute("SET lock_timeout = '200ms'")
            seen.append(other.execute("SELECT id, to_regclass('vectorize.items_hnsw_cos_idx') IS NOT NULL FROM"
                                      " vectorize._embeddings_items ORDER BY embeddings <=> %s::real[]::vector"
                                      " LIMIT 1", [target]).fetchone())
        return build(cur, project, build_cap)

    monkeypatch.setattr(storage, "build_index", search_then_build)
    summary = hook.import_embeddings("items", "item_vectors", "id", "v")

    assert summary["index_rebuilt"] and summary["index_build"]["fits"]
    assert seen == [(7, False)]  # the new vectors, no index yet, and no lock wait
    assert database.scalar("SELECT to_regclass('vectorize.items_hnsw_cos_idx') IS NOT NULL")



def test_a_project_dropped_between_the_write_and_the_build_is_left_dropped(database, hook, monkeypatch):
    from airflow_vectorize import storage

    items_with_vectors(database, 1200)
    hook.create_project("items", "items", "id", ["body"])
    build = storage.build_index

    def drop_then_build(cur, project, build_cap):
        hook.drop_project("items")
        return build(cur, project, build_cap)

    monkeypatch.setattr(storage, "build_index", drop_then_build)
    summary = hook.import_embeddings("items", "item_vectors", "id", "v")

    assert summary["imported"] == 1200 and summary["index_rebuilt"] and "index_build" not in summary
    assert database.scalar("SELECT to_regclass('vectorize._embeddings_items')") is None



def test_an_import_builds_the_index_a_killed_run_left_missing(products, hook, project):
    products.execute("DROP INDEX vectorize.product_search_hnsw_cos_idx")  # as a run killed after its drop leaves it
    products.execute("CREATE TABLE few AS SELECT * FROM product_embeddings WHERE product_id <= 3")

    summary = hook.import_embeddings("product_search", "few", "product_id", "embedding")

    assert not summary["index_rebuilt"] and summary["index_build"]["fits"]  # not dropped by it, built after it
    assert products.scalar("SELECT to_regclass('vectorize.product_search_hnsw_cos_idx') IS NOT NULL")


def bad_source(db, ddl: str) -> None:
    db.execute("CREATE TABLE bad AS SELECT product_id, embedding FROM product_embeddings; " + ddl)


NO_COSINE = ("zero vectors, or vectors whose sum of squares pgvector's single-precision arithmetic makes 0"
             " (every |x| <= 2.6e-23) or infinite (above 3.4e+38), which have no cosine distance")
BAD_IMPORTS = [
    (dict(job_name="nope"), "", ProjectNotFoundError, "project 'nope' not yet initialized"),
    (dict(src_table="missing"), "", InvalidInputError, 'src_table table "public"."missing" does not exist'),
    (dict(src_schema="elsewhere"), "", InvalidInputError, 'src_table table "elsewhere"."bad" does not exist'),
    (dict(src_primary_key="id"), "", InvalidInputError, "src_primary_key column 'id' does not exist"),
    (dict(src_embeddings_col="vec"), "", InvalidInputError, "src_embeddings_col column 'vec' does not exist"),
    ({}, "ALTER TABLE bad ALTER embedding TYPE text", InvalidInputError,
     "src_embeddings_col 'embedding' of \"public\".\"bad\" is text; expected vector, halfvec, real[]"),
    ({}, "ALTER TABLE bad ALTER product_id TYPE text", InvalidInputError,
     "src_primary_key 'product_id' of \"public\".\"bad\" is text, but the key 'product_id' of project"),
    ({}, "ALTER TABLE bad ALTER embedding TYPE vector(3) USING embedding[1:3]::vector", DimensionMismatchError,
     "expects 384 dimensions, but column 'embedding' of \"public\".\"bad\" is vector(3) (found 3); e.g. keys"),
    ({}, "UPDATE bad SET embedding = embedding[1:100] WHERE product_id IN (4, 7)", DimensionMismatchError,
     "expects 384 dimensions, but 2 row(s) of \"public\".\"bad\".embedding have [100]; e.g. keys"),
    ({}, "UPDATE bad SET embedding = NULL WHERE product_id = 5", InvalidInputError,
     "1 row(s) with NULL embeddings; e.g. keys ['5']"),
    ({}, "UPDATE bad SET embedding[7] = 'NaN' WHERE product_id = 6", InvalidInputError,
     "1 row(s) with NaN or infinite values; e.g. keys ['6']"),
    ({}, "UPDATE bad SET embedding[9] = '-Infinity' WHERE product_id = 8", InvalidInputError,
     "1 row(s) with NaN or infinite values; e.g. keys ['8']"),
    ({}, "UPDATE bad SET embedding[2] = NULL WHERE product_id = 9", InvalidInputError,
     "1 row(s) with NULL elements in embeddings; e.g. keys ['9']"),
    ({}, "INSERT INTO bad SELECT * FROM bad WHERE product_id IN (2, 3)", InvalidInputError,
     "2 duplicate key value(s); e.g. keys"),
    ({}, "INSERT INTO bad SELECT 999, embedding FROM bad WHERE product_id = 1", InvalidInputError,
     "1 row(s) with keys not found in the project's table; e.g. keys ['999']"),
    ({}, "INSERT INTO bad VALUES (NULL, NULL)", InvalidInputError, "1 row(s) with NULL keys"),
    ({}, "UPDATE bad SET embedding = ARRAY[embedding] WHERE product_id = 10", InvalidInputError,  # was untyped
     "1 row(s) with arrays of more than one dimension; e.g. keys ['10']"),
    ({}, "UPDATE bad SET embedding = array_fill(0::real, ARRAY[384]) WHERE product_id = 11", InvalidInputError,
     f"1 row(s) with {NO_COSINE}; e.g. keys ['11']"),  # were never found
    ({}, "ALTER TABLE bad ALTER embedding TYPE vector(384) USING embedding::vector;"
         " UPDATE bad SET embedding = array_fill(0::real, ARRAY[384])::vector WHERE product_id = 12", InvalidInputError,
     f"1 row(s) with {NO_COSINE}; e.g. keys ['12']"),
    # Not zero as given, but as pgvector stores (real) and computes (single-precision sums): each was imported,
    # then never found, or found first for any query with a score of 1, -1 or NaN.
    ({}, "ALTER TABLE bad ALTER embedding TYPE double precision[];"
         " UPDATE bad SET embedding = array_fill(1e-50::float8, ARRAY[384]) WHERE product_id = 13", InvalidInputError,
     f"1 row(s) with {NO_COSINE}; e.g. keys ['13']"),  # 0 as real
    ({}, "ALTER TABLE bad ALTER embedding TYPE vector(384) USING embedding::vector;"
         " UPDATE bad SET embedding = array_fill(1e-25::real, ARRAY[384])::vector WHERE product_id = 14",
     InvalidInputError, f"1 row(s) with {NO_COSINE}; e.g. keys ['14']"),  # squares 0 as real
    ({}, "UPDATE bad SET embedding = array_fill(1e19::real, ARRAY[384]) WHERE product_id IN (15, 16)", InvalidInputError,
     f"2 row(s) with {NO_COSINE}; e.g. keys ['15', '16']"),  # sum of squares infinite as real
]


@pytest.mark.parametrize("override, ddl, error_type, message", BAD_IMPORTS,
                         ids=[m[:30] for *_, m in BAD_IMPORTS])
def test_bad_import_is_rejected_and_changes_nothing(products, hook, project, override, ddl, error_type, message):
    hook.import_embeddings("product_search", "product_embeddings", "product_id", "embedding")
    products.execute("INSERT INTO products (product_id, name) VALUES (100, 'queued')")
    bad_source(products, ddl)
    before = snapshot(products)
    args = dict(job_name="product_search", src_table="bad", src_primary_key="product_id",
                src_embeddings_col="embedding")
    args.update(override)

    with pytest.raises(error_type) as error:
        hook.import_embeddings(**args)

    assert message in str(error.value)
    assert snapshot(products) == before


def test_several_problems_are_reported_together(products, hook, project):
    bad_source(products, "UPDATE bad SET embedding = NULL WHERE product_id = 5;"
                         " INSERT INTO bad SELECT 999, embedding FROM bad WHERE product_id = 1;"
                         " INSERT INTO bad SELECT * FROM bad WHERE product_id = 2")

    before = snapshot(products)
    with pytest.raises(InvalidInputError) as error:
        hook.import_embeddings("product_search", "bad", "product_id", "embedding")

    message = str(error.value)
    assert "keys not found in the project's table; e.g. keys ['999']" in message
    assert "1 row(s) with NULL embeddings" in message and "1 duplicate key value(s); e.g. keys ['2']" in message
    assert message.endswith("Nothing was written.")
    assert snapshot(products) == before


def test_bulk_reimport_rewrites_and_keeps_untouched_rows(database, hook):
    database.execute("CREATE TABLE items (id bigint PRIMARY KEY, body text);"
                     " INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 2000) g;"
                     " CREATE TABLE v1 AS SELECT id, array_fill(0.25::real, ARRAY[384]) AS v FROM items;"
                     " CREATE TABLE v2 AS SELECT id, array_fill(0.75::real, ARRAY[384]) AS v FROM items"
                     " WHERE id <= 1200")
    hook.create_project("items", "items", "id", ["body"])
    hook.import_embeddings("items", "v1", "id", "v")
    kept_before = database.execute('SELECT id, embeddings, updated_at, text_md5 FROM vectorize."_embeddings_items"'
                                   " WHERE id > 1200 ORDER BY id")

    result = hook.import_embeddings("items", "v2", "id", "v")  # 60 %: index rebuilt, table rewritten

    assert (result["imported"], result["inserted"], result["updated"], result["index_rebuilt"]) == (1200, 0, 1200, True)
    assert database.execute('SELECT id, embeddings, updated_at, text_md5 FROM vectorize."_embeddings_items"'
                            " WHERE id > 1200 ORDER BY id") == kept_before
    values = dict(database.execute('SELECT id <= 1200, array_agg(DISTINCT (embeddings::real[])[1])'
                                   ' FROM vectorize."_embeddings_items" GROUP BY 1'))
    assert values == {True: [0.75], False: [0.25]}
    assert hook.get_status("items")["embedded_rows"] == 2000


def test_an_import_key_of_another_collation_is_refused_naming_both(database, hook):
    """Keys are matched by the project's key's collation: an import key of another one was a raw
    IndeterminateCollation; a view giving it the project's collation imports."""
    database.execute('CREATE TABLE t (k text COLLATE "C" PRIMARY KEY, body text);'
                     " INSERT INTO t VALUES ('a', 'alpha'), ('B', 'beta');"
                     ' CREATE TABLE s (k text COLLATE "C.utf8", e real[]);'
                     " INSERT INTO s SELECT k, array_fill(0.5::real, ARRAY[384]) FROM t")
    hook.create_project("t", "t", "k", ["body"], schedule="manual")
    before = snapshot(database)

    with pytest.raises(InvalidInputError) as error:
        hook.import_embeddings("t", "s", "k", "e")

    assert str(error.value) == (
        "src_primary_key 'k' of \"public\".\"s\" has collation \"C.utf8\", but the key 'k' of project 't' has \"C\":"
        " keys are matched by the project's collation; import from a view selecting \"k\" COLLATE \"C\"")
    assert snapshot(database) == before
    database.execute('CREATE VIEW s_c AS SELECT k COLLATE "C" AS k, e FROM s')
    assert hook.import_embeddings("t", "s_c", "k", "e")["imported"] == 2
