"""A half-precision index per project (issue 34, point 3): the index holds ``embeddings::halfvec(n)``, the
table the full vectors; search, hybrid search, import, generation and RAG's retrieval work on it, its recall
stays with the full-precision index's, and values beyond half precision's range are refused."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import create_embeddings_table, snapshot, unit_vectors

from airflow_vectorize.exceptions import InvalidInputError

COLUMNS = ["name", "description"]


def index_definition(db, job: str) -> str:
    return db.scalar("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [f"{job}_hnsw_cos_idx"])


def test_a_half_precision_project_is_indexed_at_half_precision_and_searched(products, hook):
    hook.create_project("half", "products", "product_id", COLUMNS, halfvec_index=True, embed_existing=True)
    hook.create_project("full", "products", "product_id", COLUMNS, embed_existing=True)
    assert "::halfvec(384)" in index_definition(products, "half") and "halfvec_cosine_ops" in index_definition(
        products, "half")
    assert "halfvec" not in index_definition(products, "full")
    assert products.scalar("SELECT params->>'halfvec_index' FROM vectorize.job WHERE name = 'half'") == "true"
    assert products.scalar("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid ="
                           " 'vectorize._embeddings_half'::regclass AND attname = 'embeddings'") == "vector(384)"
    query = "mobile phone with a good camera"
    half, full = hook.search("half", query, num_results=5), hook.search("full", query, num_results=5)
    assert [r["product_id"] for r in half] == [r["product_id"] for r in full]
    for h, f in zip(half, full):  # scored by the full vectors
        assert h["similarity_score"] == pytest.approx(f["similarity_score"], abs=1e-6)
    assert [r["product_id"] for r in hook.hybrid_search("half", query, num_results=3)] == \
        [r["product_id"] for r in hook.hybrid_search("full", query, num_results=3)]
    # The statement reads the half-precision index.
    from airflow_vectorize import search as searching

    target = hook._search_target("half")
    built = searching.vector_search_query(target, np.ones(384, dtype=np.float32) / 20, ["product_id"], 5)
    from pgvector.psycopg import register_vector

    with hook.transaction() as cur:
        register_vector(cur.connection)
        with cur.connection.cursor() as typed:  # a cursor made after the vector types were registered
            typed.execute("SET LOCAL enable_seqscan = off")
            assert "half_hnsw_cos_idx" in searching.explain(typed, built)


def test_import_converts_full_vectors_and_refuses_values_beyond_half_precision(products, hook, model):
    create_embeddings_table(products, model)
    hook.create_project("half", "products", "product_id", COLUMNS, halfvec_index=True, schedule="manual")
    result = hook.import_embeddings("half", "product_embeddings", "product_id", "embedding")
    assert result["imported"] == 24
    found = hook.search("half", "mobile phone with a good camera", ["product_id"], 1)
    assert found[0]["product_id"] == 1
    products.execute("UPDATE product_embeddings SET embedding[1] = 70000 WHERE product_id = 3")
    before = snapshot(products)
    with pytest.raises(InvalidInputError, match="values beyond the range of halfvec, which the project's index holds"):
        hook.import_embeddings("half", "product_embeddings", "product_id", "embedding")
    assert snapshot(products) == before
    with pytest.raises(InvalidInputError, match="beyond the range of halfvec"):
        hook.search("half", [70000.0] + [0.0] * 383)


def test_recall_stays_with_the_full_precision_index(database, hook):
    """On 3,000 random unit vectors at ef_search 40: the half-precision index finds within half a point of
    what the full one finds of the exact top-10 (bench/halfvec.py measures it at 100k)."""
    from conftest import create_points

    vectors = unit_vectors(3000, seed=8)
    create_points(database, hook, vectors)  # project "points", a full-precision index
    database.execute("CREATE TABLE half_points AS SELECT * FROM points; ALTER TABLE half_points ADD PRIMARY KEY (id)")
    hook.create_project("half_points", "half_points", "id", ["body"], schedule="manual", halfvec_index=True)
    hook.import_embeddings("half_points", "point_vectors", "id", "embedding")
    queries = unit_vectors(50, seed=9)
    exact = [set((np.argsort(-(vectors @ q))[:10] + 1).tolist()) for q in queries]

    def recall(job: str) -> float:
        return float(np.mean([len({r["id"] for r in hook.search(job, q, ["id"], 10, ef_search=100)} & e) / 10
                              for q, e in zip(queries, exact)]))

    full, half = recall("points"), recall("half_points")
    assert full > 0.5 and half >= full - 0.05, (full, half)  # at 50 queries, one miss in 500 is 0.002
    # tune_search measures a half-precision project against the exact answer of the full vectors (numpy's)
    tuned = hook.tune_search("half_points", 0.9, queries=list(queries), store=False)
    last = tuned["curves"][0]["points"][-1]
    found = [{r["id"] for r in hook.search("half_points", q, ["id"], 10, ef_search=last["ef_search"])} for q in queries]
    assert last["recall"] == pytest.approx(float(np.mean([len(f & e) / 10 for f, e in zip(found, exact)])), abs=1e-4)


def index_oid(db, job: str) -> int:
    return db.scalar("SELECT to_regclass(%s)::oid", [f"vectorize.{job}_hnsw_cos_idx"])


@pytest.mark.parametrize("table_method", ["join", "append"])
def test_a_half_index_is_refused_over_stored_values_beyond_half_precision(products, hook, model, table_method):
    """An import into a full-precision project takes any real; alter_project(halfvec_index=True) then refuses
    those values as an import into a half-precision project does (before: a raw NumericValueOutOfRange)."""
    create_embeddings_table(products, model)
    products.execute("UPDATE product_embeddings SET embedding[1] = 70000 WHERE product_id IN (3, 5)")
    hook.create_project("full", "products", "product_id", COLUMNS, schedule="manual", table_method=table_method)
    hook.import_embeddings("full", "product_embeddings", "product_id", "embedding")
    before = snapshot(products)

    with pytest.raises(InvalidInputError) as raised:
        hook.alter_project("full", halfvec_index=True, schedule="realtime")

    assert str(raised.value) == (
        "project 'full' cannot have halfvec_index=True: 2 row(s) hold vectors with values beyond the range of"
        " halfvec (|x| > 65504), which its index would hold; e.g. keys ['3', '5']. Nothing was changed.")
    assert snapshot(products) == before
    products.execute("UPDATE product_embeddings SET embedding[1] = 0.01 WHERE product_id IN (3, 5)")
    hook.import_embeddings("full", "product_embeddings", "product_id", "embedding")
    assert hook.alter_project("full", halfvec_index=True)["changed"] == {"halfvec_index": [False, True]}


def test_a_chunked_projects_index_is_half_precision_whatever_halfvec_index_says(products, hook):
    """Stating a chunked project's halfvec index is its configuration (before: a conflict at create, and an alter
    that reported a change and built the same index again)."""
    options = {"chunk_size": 64, "schedule": "manual"}
    hook.create_project("chunks", "products", "product_id", COLUMNS, embed_existing=True, **options)
    oid = index_oid(products, "chunks")
    before = snapshot(products)

    assert hook.create_project("chunks", "products", "product_id", COLUMNS, halfvec_index=True, **options)[
        "created"] is False
    assert hook.alter_project("chunks", halfvec_index=True) == {"job_name": "chunks", "changed": {}}
    assert hook.alter_project("chunks", hnsw_m=16) == {"job_name": "chunks", "changed": {}}  # pgvector's default
    assert hook.create_project("chunks", "products", "product_id", COLUMNS, **options)["created"] is False

    assert index_oid(products, "chunks") == oid  # not built again
    assert snapshot(products) == before


@pytest.mark.parametrize("table_method", ["join", "append"])
def test_source_columns_named_like_the_searchs_own_names_are_returned(database, hook, table_method):
    """The half-precision search reads its candidates in a subquery: source columns named like its distance
    (``vectorize_d``, before: AmbiguousColumn) or its positional names come back as they are."""
    database.execute("CREATE TABLE notes (id int PRIMARY KEY, body text, vectorize_d text, d int, c0 text);"
                     " INSERT INTO notes VALUES (1, 'a phone with a camera', 'x', 10, 'y'),"
                     " (2, 'a garden hose', 'z', 20, 'w')")
    hook.create_project("half", "notes", "id", ["body"], halfvec_index=True, table_method=table_method,
                        embed_existing=True)

    rows = hook.search("half", "phone", num_results=2)
    assert [{k: v for k, v in r.items() if k != "similarity_score"} for r in rows] == [
        {"id": 1, "body": "a phone with a camera", "vectorize_d": "x", "d": 10, "c0": "y"},
        {"id": 2, "body": "a garden hose", "vectorize_d": "z", "d": 20, "c0": "w"}]
    assert rows[0]["similarity_score"] > rows[1]["similarity_score"]
    assert [list(r) for r in hook.search("half", "phone", ["vectorize_d", "c0", "id"], 1)] == [
        ["vectorize_d", "c0", "id", "similarity_score"]]


TINY = [1e-8] * 384  # non-zero, but 0 as halfvec (below half precision's smallest subnormal, 2^-24)


@pytest.mark.parametrize("halfvec_index", [False, True])
def test_cosine_queries_without_a_direction_are_refused(products, hook, halfvec_index):
    """A zero query vector (or, for a half-precision index, one that is zero as halfvec) has no cosine distance:
    before, such a search returned arbitrary rows with a NaN similarity."""
    hook.create_project("shop", "products", "product_id", COLUMNS, halfvec_index=halfvec_index, embed_existing=True)
    held = (" as halfvec, in which project 'shop' is indexed (every |x| <= 2.98e-08)" if halfvec_index else "")
    before = snapshot(products)
    for query in ([0.0] * 384, *([TINY] if halfvec_index else [])):
        with pytest.raises(InvalidInputError) as raised:
            hook.search("shop", query, num_results=3)
        assert str(raised.value) == (f"query vector is zero{held}: it has no cosine distance to any vector"
                                     " (project 'shop' searches by cosine); give a non-zero vector")
    assert snapshot(products) == before
    if not halfvec_index:  # non-zero at full precision: searched
        assert len(hook.search("shop", TINY, num_results=3)) == 3
    hook.create_project("shop_l2", "products", "product_id", COLUMNS, index_dist_type="pgv_hnsw_l2",
                        halfvec_index=halfvec_index, embed_existing=True)
    assert len(hook.search("shop_l2", [0.0] * 384, num_results=3)) == 3  # a distance for L2


@pytest.mark.parametrize("column_type", ["vector(384)", "real[]"])
def test_imported_vectors_that_are_zero_at_half_precision_are_refused(products, hook, model, column_type):
    """As zero vectors are in a cosine project: with a half-precision index the index holds them as halfvec,
    where such a vector is zero (before: imported, and never found)."""
    from psycopg import sql

    create_embeddings_table(products, model, column_type=sql.SQL(column_type))
    products.execute("UPDATE product_embeddings SET embedding = %s WHERE product_id IN (4, 7)",
                     [np.array(TINY, dtype=np.float32) if column_type.startswith("vector") else TINY])
    hook.create_project("half", "products", "product_id", COLUMNS, halfvec_index=True, schedule="manual")
    hook.create_project("full", "products", "product_id", COLUMNS, schedule="manual")
    before = snapshot(products)

    with pytest.raises(InvalidInputError) as raised:
        hook.import_embeddings("half", "product_embeddings", "product_id", "embedding")

    assert str(raised.value) == (
        "cannot import embeddings into project 'half' from \"public\".\"product_embeddings\" (key 'product_id',"
        " embeddings 'embedding'): 2 row(s) with zero vectors as the project's half-precision index holds them"
        " (every |x| <= 2.98e-08), which have no cosine distance; e.g. keys ['4', '7']. Nothing was written.")
    assert snapshot(products) == before
    assert hook.import_embeddings("full", "product_embeddings", "product_id", "embedding")["imported"] == 24
