"""Vector and hybrid search on the sample catalogue, with the real model and a real PostgreSQL + pgvector."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from decimal import Decimal

import numpy as np
import pytest
from conftest import create_embeddings_table, product_texts, snapshot
from psycopg import sql

from airflow_vectorize import search
from airflow_vectorize.exceptions import DimensionMismatchError, InvalidInputError, ProjectNotFoundError

JOB = "products_search"
SOURCE_COLUMNS = ["product_id", "name", "description", "category", "price", "updated_at"]
# similarity_score from the raw vectors, per index_dist_type (see airflow_vectorize.search)
EXPECTED_SCORE = {
    "pgv_hnsw_cosine": lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
    "pgv_hnsw_l2": lambda a, b: 1 / (1 + float(np.linalg.norm(a - b))),
    "pgv_hnsw_ip": lambda a, b: float(a @ b),
}


def make_project(db, hook, model, **options) -> dict:
    create_embeddings_table(db, model)
    summary = hook.create_project(JOB, "products", "product_id", ["name", "description"], **options)
    hook.import_embeddings(JOB, "product_embeddings", "product_id", "embedding")
    return summary


def plan(hook, query, **settings) -> str:
    """EXPLAIN of exactly the statement search runs, with extra planner settings."""
    q = query(hook._search_target(JOB))
    conn = hook._search_connection()
    with conn.transaction(), conn.cursor() as cur:
        return search.explain(cur, replace(q, settings={**q.settings, **settings}))


@pytest.mark.parametrize("table_method", ["join", "append"])
@pytest.mark.parametrize("index_dist_type", ["pgv_hnsw_cosine", "pgv_hnsw_l2", "pgv_hnsw_ip"])
def test_search_relevance(products, hook, model, table_method, index_dist_type):
    make_project(products, hook, model, table_method=table_method, index_dist_type=index_dist_type)

    phones = hook.search(JOB, "mobile phone", num_results=3)
    assert [r["category"] for r in phones] == ["phones"] * 3
    assert list(phones[0]) == SOURCE_COLUMNS + ["similarity_score"]  # no embeddings/updated_at/md5 columns
    scores = [r["similarity_score"] for r in phones]
    assert scores == sorted(scores, reverse=True)
    vector = model.encode(["mobile phone"])[0]
    text = model.encode([product_texts(products)[phones[0]["product_id"]]])[0]
    expected = EXPECTED_SCORE[index_dist_type](text, vector)
    assert phones[0]["similarity_score"] == pytest.approx(expected, abs=1e-4)

    by_vector = hook.search(JOB, vector.tolist(), num_results=3)  # a vector query needs no model
    assert [r["product_id"] for r in by_vector] == [r["product_id"] for r in phones]

    kitchen = hook.search(JOB, "something to cook with", return_columns=["name", "category"], num_results=2)
    assert [r["category"] for r in kitchen] == ["kitchen", "kitchen"]
    assert list(kitchen[0]) == ["name", "category", "similarity_score"]
    assert len(hook.search(JOB, vector, num_results=30)) == 24


@pytest.mark.parametrize("table_method", ["join", "append"])
def test_search_uses_hnsw_index(products, hook, model, table_method):
    make_project(products, hook, model, table_method=table_method)
    vector = model.encode(["mobile phone"])[0]
    index = f"{JOB}_hnsw_cos_idx"

    # enable_seqscan=off only lifts the 24-row table's preference for a seq scan; a query ordered by a
    # derived score (pg_vectorize's shape) still cannot use the index, ours can.
    explained = plan(hook, lambda target: search.vector_search_query(target, vector, num_results=3),
                     enable_seqscan="off")
    assert f"Index Scan using {index}" in explained, explained
    # A filter on the source: on 24 rows, without a foreign key to tell it that every embedding has its
    # source row, the planner prefers sorting the filtered rows (at 100k rows it takes the index either way).
    filtered = plan(hook, lambda target: search.vector_search_query(
        target, vector, filters={"price": {"lt": 500}}), enable_seqscan="off", enable_sort="off")
    assert f"Index Scan using {index}" in filtered, filtered
    join = table_method == "join"
    emb = "embeddings" if join else f"{JOB}_embeddings"
    target = sql.Identifier("vectorize", f"_embeddings_{JOB}") if join else sql.Identifier("products")
    products.execute("SET enable_seqscan = off")
    control = "\n".join(r[0] for r in products.execute(sql.SQL(
        "EXPLAIN SELECT 1 - ({e} <=> %s) AS s FROM {t} ORDER BY s DESC LIMIT 3").format(
        e=sql.Identifier(emb), t=target), [vector]))
    assert index not in control, control

    # The index path, with a tiny ef_search and a filter, still returns every match (iterative scan).
    q = search.vector_search_query(hook._search_target(JOB), vector, filters={"category": "kitchen"},
                                   ef_search=1)
    rows = search.run(hook._search_connection(), replace(q, settings={**q.settings, "enable_seqscan": "off"}))
    assert sorted(r["product_id"] for r in rows) == [10, 11, 12]


def test_search_filters(products, hook, model):
    make_project(products, hook, model)
    query = "mobile phone"
    assert {r["category"] for r in hook.search(JOB, query, filters={"category": "kitchen"})} == {"kitchen"}
    priced = hook.search(JOB, query, filters={"price": {"gt": 100, "lte": 449}}, num_results=24)
    assert priced and all(100 < r["price"] <= 449 for r in priced)
    assert len(priced) == sum(1 for r in hook.search(JOB, query, num_results=24) if 100 < r["price"] <= 449)
    either = hook.search(JOB, query, filters={"category": {"in": ["phones", "tablets"]}}, num_results=24)
    assert sorted(r["product_id"] for r in either) == [1, 2, 3, 4, 5]
    others = hook.search(JOB, query, filters={"category": {"ne": "phones"}, "product_id": {"gte": 4}})
    assert len(others) == 10 and "phones" not in {r["category"] for r in others}

    # Statements are cached per filter shape: the same shape with other values, and a NULL test, differ.
    for category in ("audio", "kitchen", "audio"):
        assert {r["category"] for r in hook.search(JOB, query, filters={"category": category})} == {category}
    products.execute("UPDATE products SET category = NULL WHERE product_id = 7")
    assert [r["product_id"] for r in hook.search(JOB, query, filters={"category": None})] == [7]
    assert len(hook.search(JOB, query, filters={"category": {"ne": None}}, num_results=24)) == 23


def test_dates_beyond_pythons_come_back_as_postgresql_writes_them(products, hook, model):
    """Before, one row holding 'infinity' failed every search whose answer held it, with "a filter value does
    not fit its column" (no filter given): psycopg cannot read it into a datetime."""
    make_project(products, hook, model)
    products.execute("ALTER TABLE products ADD COLUMN sold date, ADD COLUMN season tstzrange,"
                     " ADD COLUMN seen timestamp[]")
    products.execute("UPDATE products SET updated_at = 'infinity', sold = '-infinity',"
                     " season = '[2024-01-01 00:00:00+00,infinity)', seen = ARRAY['20000-01-01'::timestamp]"
                     " WHERE product_id = 1")

    found = hook.search(JOB, product_texts(products)[1], num_results=1)[0]

    assert (found["product_id"], found["updated_at"], found["sold"], found["seen"]) == (
        1, "infinity", "-infinity", ["20000-01-01 00:00:00"])
    assert found["season"].upper == "infinity"
    assert hook.search(JOB, "phone", filters={"updated_at": {"gt": "2030-01-01"}})[0]["product_id"] == 1


@pytest.mark.parametrize("table_method", ["join", "append"])
def test_key_only_search_never_returns_a_removed_row(products, hook, model, table_method):
    make_project(products, hook, model, table_method=table_method)
    vector = model.encode(["mobile phone"])[0]
    full = hook.search(JOB, vector, num_results=5)
    keys = hook.search(JOB, vector, return_columns=["product_id"], num_results=5)
    assert keys == [{"product_id": r["product_id"], "similarity_score": r["similarity_score"]} for r in full]

    # A deleted row's vectors stay in a join project's table until the next generation run: the search
    # joins the source even for the key alone, so it is never returned.
    products.execute("DELETE FROM products WHERE product_id = %s", [keys[0]["product_id"]])
    after = hook.search(JOB, vector, return_columns=["product_id"], num_results=5)
    assert after == keys[1:] + after[4:] and len(after) == 5


def test_search_rejects_bad_input(products, hook, model):
    make_project(products, hook, model)
    before = snapshot(products)
    cases = [
        (dict(filters={"colour": "red"}),
         "filter column 'colour' does not exist .* allowed columns: product_id, name, description, category"),
        (dict(filters={"price": {"between": [1, 2]}}),
         "operator 'between' on column 'price' is unknown; allowed operators: eq, ne, gt, gte, lt, lte, in"),
        (dict(filters={"category": {"in": "phones"}}), "'in' on column 'category' takes a list"),
        (dict(return_columns=["name", "embeddings"]), r"unknown: embeddings\); choose distinct columns"),
        (dict(num_results=0), "num_results must be an integer >= 1"),
        (dict(ef_search=5000), "ef_search must be an integer from 1 to 1000"),
        (dict(filters={"price": {"gt": "cheap"}}), "a filter value does not fit its column"),
        (dict(filters={"price": object()}), "^filter value <object object at 0x[0-9a-f]+> on column 'price' is a"
         " object, which cannot be sent to PostgreSQL; give a str, int, float, bool, Decimal, date, time,"
         " datetime, UUID, a list of them or None$"),  # was a raw ProgrammingError
        (dict(filters={"category": {"in": ["phones", object()]}}), "on column 'category' is a object, which cannot"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidInputError, match=message):
            hook.search(JOB, "phone", **kwargs)
    with pytest.raises(DimensionMismatchError, match="expects a query vector of 384 dimensions, got shape"):
        hook.search(JOB, [0.1, 0.2, 0.3])
    with pytest.raises(InvalidInputError, match="non-empty text query"):
        hook.hybrid_search(JOB, [0.1] * 384)
    with pytest.raises(ProjectNotFoundError, match="'nope' not yet initialized"):
        hook.search("nope", "phone")
    with pytest.raises(ProjectNotFoundError, match="'nope' not yet initialized"):
        hook.hybrid_search("nope", "phone")
    assert snapshot(products) == before


@pytest.mark.parametrize("table_method", ["join", "append"])
def test_stored_documents_rank_as_parsed_texts_did_and_old_projects_move_to_them(products, hook, model,
                                                                                 table_method):
    """A project made before the documents table (its full-text index on the source's text) searches by
    parsing its matches' texts; its next generation run stores the documents, moves the index beside the
    project, and hybrid search then answers exactly as before."""
    from airflow_vectorize.expressions import fts_document
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    make_project(products, hook, model, table_method=table_method)
    project = hook._search_target(JOB).project
    products.execute(sql.SQL("DROP TABLE vectorize.{}; CREATE INDEX {} ON products USING gin (({}))").format(
        sql.Identifier(f"_documents_{JOB}"), sql.Identifier(f"{JOB}_fts_idx"), fts_document(project)))
    old = VectorizeHook(postgres_conn_id=hook.postgres_conn_id)
    queries = ["hydraulic disc brakes", "bluetooth battery", "phone", "kitchen knife for vegetables"]
    before = [old.hybrid_search(JOB, q, num_results=10, return_columns=["product_id"]) for q in queries]
    assert before[0][0]["product_id"] == 15

    assert hook.generate_embeddings(JOB)["embedded"] == 0  # stores the documents, embeds nothing
    assert products.scalar(f"SELECT count(*) FROM vectorize._documents_{JOB}") == 24
    assert products.scalar("SELECT count(*) FROM pg_indexes WHERE indexname = %s AND schemaname = %s",
                           [f"{JOB}_fts_idx", "public"]) == 0
    after = [VectorizeHook(postgres_conn_id=hook.postgres_conn_id).hybrid_search(
        JOB, q, num_results=10, return_columns=["product_id"]) for q in queries]
    assert after == before


@pytest.mark.parametrize("table_method", ["join", "append"])
def test_hybrid_search(products, hook, model, table_method):
    summary = make_project(products, hook, model, table_method=table_method)
    # The rows' full-text documents are stored beside the project, indexed there: none on the source.
    assert {f"vectorize.{JOB}_fts_idx", f"vectorize._documents_{JOB}"} <= set(summary["objects"])
    assert products.scalar(f"SELECT count(*) FROM vectorize._documents_{JOB}") == 24

    rows = hook.hybrid_search(JOB, "hydraulic disc brakes", num_results=5)
    assert rows[0]["name"] == "Mountain bike" and rows[0]["full_text_rank"] == 1
    assert list(rows[0]) == SOURCE_COLUMNS + ["rrf_score", "semantic_rank", "full_text_rank",
                                              "similarity_score"]
    for row in rows:
        expected = sum(1 / (60 + rank) for rank in (row["semantic_rank"], row["full_text_rank"]) if rank)
        assert row["rrf_score"] == pytest.approx(expected)
        assert row["similarity_score"] is not None
    assert [r["rrf_score"] for r in rows] == sorted((r["rrf_score"] for r in rows), reverse=True)
    assert all(r["full_text_rank"] is None for r in rows[1:])  # only one product mentions these words

    semantic_only = hook.hybrid_search(JOB, "mobile phone", num_results=3, full_text_weight=0)
    vector_only = hook.search(JOB, "mobile phone", num_results=3)
    assert [r["product_id"] for r in semantic_only] == [r["product_id"] for r in vector_only]
    filtered = hook.hybrid_search(JOB, "bluetooth battery", filters={"category": "audio"},
                                  return_columns=["name"])
    assert [set(r) for r in filtered] == [{"name", "rrf_score", "semantic_rank", "full_text_rank",
                                           "similarity_score"}] * 2

    explained = plan(hook, lambda target: search.hybrid_search_query(target, "hydraulic disc brakes",
                                                                       embed=hook._embed_query(target.project)),
                     enable_seqscan="off")
    assert f"Bitmap Index Scan on {JOB}_fts_idx" in explained, explained
    assert f"Index Scan using {JOB}_hnsw_cos_idx" in explained, explained

    index_exists = "SELECT count(*) FROM pg_indexes WHERE schemaname = 'vectorize' AND indexname = %s"
    assert products.scalar(index_exists, [f"{JOB}_fts_idx"]) == 1
    hook.drop_project(JOB)
    assert products.scalar(index_exists, [f"{JOB}_fts_idx"]) == 0


def test_search_operator(products, hook, model):
    from airflow_vectorize.operators import VectorSearchOperator

    make_project(products, hook, model)
    for hybrid in (False, True):
        operator = VectorSearchOperator(
            task_id="search", job_name=JOB, query="mobile phone", num_results=2, hybrid=hybrid,
            filters={"price": {"lt": 1000}}, postgres_conn_id=products.conn_id,
        )
        rows = operator.execute(context={})
        assert len(rows) == 2 and rows[0]["category"] == "phones"
        assert json.loads(json.dumps(rows)) == rows
        assert isinstance(rows[0]["price"], float) and isinstance(rows[0]["updated_at"], str)
        assert not any(isinstance(v, list) for row in rows for v in row.values())
    assert {"job_name", "query", "filters", "return_columns"} <= set(VectorSearchOperator.template_fields)
    assert math.isfinite(rows[0]["rrf_score"])

    # Strict JSON, and no number a float would change (before: NaN reached XCom, and a numeric key came back
    # as 1.2345678901234567e+19, which names no row).
    products.execute("ALTER TABLE products ADD COLUMN rating float8, ADD COLUMN code numeric")
    products.execute("UPDATE products SET rating = 'NaN', code = 12345678901234567890.12345 WHERE product_id = 1")
    products.execute("UPDATE products SET rating = '-Infinity', code = 'NaN' WHERE product_id = 2")
    operator = VectorSearchOperator(task_id="search", job_name=JOB, query="iPhone", num_results=24,
                                    postgres_conn_id=products.conn_id)
    rows = {row["product_id"]: row for row in operator.execute(context={})}
    json.dumps(list(rows.values()), allow_nan=False)
    assert (rows[1]["rating"], rows[1]["code"], rows[2]["rating"], rows[2]["code"]) == (
        None, "12345678901234567890.12345", None, None)
    assert rows[3]["price"] == float(products.scalar("SELECT price FROM products WHERE product_id = 3"))


def test_a_recreated_project_is_searched_as_it_now_is(products, hook, model):
    make_project(products, hook, model)
    assert hook.search(JOB, "mobile phone", num_results=1)[0]["category"] == "phones"
    hook.drop_project(JOB)
    hook.create_project(JOB, "products", "product_id", ["name"], table_method="append")  # new job_id

    assert hook.search(JOB, "mobile phone") == []  # nothing embedded yet in the new layout
    hook.generate_embeddings(JOB)
    assert hook.search(JOB, "mobile phone", num_results=1)[0]["category"] == "phones"
    hook.drop_project(JOB)
    with pytest.raises(ProjectNotFoundError):
        hook.search(JOB, "mobile phone")


def test_search_survives_a_change_of_a_source_column_type(products, hook, model):
    make_project(products, hook, model, table_method="append")  # a join project's view forbids the change
    for _ in range(6):  # psycopg prepares a statement from its 5th execution
        assert hook.search(JOB, "mobile phone", num_results=1)[0]["price"] == Decimal("449.00")
    products.execute("ALTER TABLE products ALTER COLUMN price TYPE float8")

    assert hook.search(JOB, "mobile phone", num_results=1)[0]["price"] == 449.0


def test_cosine_queries_that_single_precision_sums_make_zero_or_infinite_are_refused(products, hook, model):
    """pgvector sums a vector's squares in single precision: a query of values that all square to 0
    (|x| <= 2^-75) or whose sum is beyond real's range has a NaN cosine distance to every row, and was
    answered with arbitrary rows all scored 1, -1, 0 or NaN."""
    make_project(products, hook, model)
    before = snapshot(products)
    cases = [([1e-25] * 384, "every |x| <= 2.6e-23: its sum of squares is 0"),
             ([1e20] * 384, "its sum of squares is beyond 3.4e+38"),
             ([0.1] * 383 + [-2e19], "its sum of squares is beyond 3.4e+38")]
    for query, found in cases:
        with pytest.raises(InvalidInputError) as raised:
            hook.search(JOB, query, num_results=3)
        assert str(raised.value) == (
            f"query vector has no cosine distance as pgvector computes it in single precision ({found}); project"
            f" {JOB!r} searches by cosine: give a vector of ordinary magnitude (e.g. normalised to length 1)")
    assert snapshot(products) == before
    query = np.asarray(model.encode(["phone"])[0], dtype=np.float32)
    expected = [r["product_id"] for r in hook.search(JOB, query.tolist(), num_results=5)]
    for scale in (2.0 ** -50, 2.0 ** 55):  # small or large (exact scalings), with a sum of squares: the same answer
        assert [r["product_id"] for r in hook.search(JOB, (query * scale).tolist(), num_results=5)] == expected
