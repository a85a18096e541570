"""ef_search tuned per project (issue 33, point 5): ``tune_search`` against an exact answer computed here with
numpy, the value stored in the catalog and used by searches that give none (this hook, hybrid search, RAG's
retrieval, another long-lived hook), and bad input that changes nothing.

The project: 4,000 random 384-dimension unit vectors imported under an HNSW index, where pgvector's default
ef_search finds about half of the true top-10 (random high-dimensional data is the hardest case for a graph
search: measured here, recall@10 0.23 / 0.56 / 0.95 at ef_search 10 / 40 / 160).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import create_points, fresh_database, snapshot, unit_vectors

from airflow_vectorize import search as searching
from airflow_vectorize import tuning
from airflow_vectorize.exceptions import InvalidInputError, ProjectNotFoundError

ROWS, DIMENSIONS, TOP = 4000, 384, 10


VECTORS = unit_vectors(ROWS, seed=1)
QUERIES = unit_vectors(40, seed=2)


def exact_top(queries: np.ndarray, ids: np.ndarray | None = None) -> list[set[int]]:
    """The exact top-10 ids by cosine similarity (unit vectors: the dot product), among ``ids`` if given."""
    pool = np.arange(ROWS) if ids is None else ids
    scores = queries @ VECTORS[pool].T
    return [{int(pool[i]) + 1 for i in np.argsort(-row)[:TOP]} for row in scores]


def recall_of(found: list[list[int]], exact: list[set[int]]) -> float:
    return float(np.mean([len(set(f) & e) / len(e) for f, e in zip(found, exact)]))


@pytest.fixture(scope="module")
def points(postgres):
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    with fresh_database(postgres) as db:
        hook = VectorizeHook(postgres_conn_id=db.conn_id)
        create_points(db, hook, VECTORS)
        yield db, hook


def searched(hook, queries: np.ndarray, ef_search: int | None = None, filters=None) -> list[list[int]]:
    return [[r["id"] for r in hook.search("points", q, ["id"], TOP, filters, ef_search=ef_search)] for q in queries]


def stored_ef(db) -> int | None:
    return db.scalar("SELECT (params->>'ef_search')::int FROM vectorize.job WHERE name = 'points'")


def test_tune_search_picks_the_smallest_ef_search_reaching_the_target_and_stores_it(points):
    db, hook = points
    hook.set_ef_search("points", None)
    exact = exact_top(QUERIES)
    result = hook.tune_search("points", target_recall=0.95, queries=list(QUERIES))
    chosen = result["ef_search"]
    assert result["reached"] and result["stored"] and result["queries"] == len(QUERIES) and result["rows"] == ROWS
    assert stored_ef(db) == chosen
    # Against numpy's exact answer: the chosen value reaches the target, the grid's value before it does not.
    assert recall_of(searched(hook, QUERIES, chosen), exact) >= 0.95
    position = tuning.GRID.index(chosen)
    assert position > 0, "the data must make the smallest ef_search miss neighbours, or this test shows nothing"
    assert recall_of(searched(hook, QUERIES, tuning.GRID[position - 1]), exact) < 0.95
    # Its curve: each value measured, smallest first, its recall the one numpy gives.
    points_measured = result["curves"][0]["points"]
    assert [p["ef_search"] for p in points_measured] == list(tuning.GRID[: position + 1])
    for point in points_measured:
        assert point["recall"] == pytest.approx(recall_of(searched(hook, QUERIES, point["ef_search"]), exact), abs=1e-4)
        assert point["p50_ms"] > 0


def test_the_stored_value_is_used_when_the_caller_gives_none(points):
    db, hook = points
    hook.set_ef_search("points", 10)
    low = searched(hook, QUERIES)
    assert low == searched(hook, QUERIES, 10)
    hook.set_ef_search("points", 400)
    high = searched(hook, QUERIES)
    assert high == searched(hook, QUERIES, 400) and high != low  # a different value: other rows found
    assert recall_of(high, exact_top(QUERIES)) > recall_of(low, exact_top(QUERIES))
    # hybrid search (and RAG's retrieval, which is search or hybrid_search) builds its statement with it
    target = hook._search_target("points")
    hybrid = searching.hybrid_search_query(target, "point 7", embed=lambda text: QUERIES[0])
    assert hybrid.settings["hnsw.ef_search"] == "400"
    assert searching.vector_search_query(target, QUERIES[0], ef_search=40).settings["hnsw.ef_search"] == "40"
    # an evaluation records the value its searches ran with
    evaluated = hook.evaluate_retrieval("points", [{"query": "point 7", "relevant": [7]}], k=1, store=False)
    assert evaluated["config"]["ef_search"] == 400
    hook.set_ef_search("points", None)
    assert stored_ef(db) is None and searched(hook, QUERIES) == searched(hook, QUERIES, 40)


def test_a_long_lived_hook_follows_a_tuned_value(points, monkeypatch):
    db, hook = points
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    hook.set_ef_search("points", 10)
    other = VectorizeHook(postgres_conn_id=db.conn_id)  # as the api-server's, kept between requests
    low = searched(other, QUERIES)
    hook.set_ef_search("points", 400)
    assert searched(other, QUERIES) == low  # its entry is fresh: no lookup per search
    monkeypatch.setattr(searching, "RECHECK_SECONDS", 0.0)
    assert searched(other, QUERIES) == searched(hook, QUERIES, 400)
    hook.set_ef_search("points", None)


def test_tuning_with_filters_takes_the_value_every_search_needs(points):
    db, hook = points
    hook.set_ef_search("points", None)
    common = [{"part": 3}, {"part": {"in": [1, 2]}}]
    result = hook.tune_search("points", 0.95, queries=list(QUERIES[:20]), filters=common, store=False)
    assert [c["filters"] for c in result["curves"]] == [None, *common]
    assert result["ef_search"] == max(c["ef_search"] for c in result["curves"])
    assert stored_ef(db) is None  # store=False
    # A filtered curve's recall is against the exact answer among the rows the filter keeps.
    part3 = np.arange(ROWS)[np.arange(ROWS) % 10 == 3]
    filtered = result["curves"][1]
    last = filtered["points"][-1]
    found = searched(hook, QUERIES[:20], last["ef_search"], {"part": 3})
    assert last["recall"] == pytest.approx(recall_of(found, exact_top(QUERIES[:20], part3)), abs=1e-4)


def test_text_and_labelled_queries(points):
    db, hook = points
    by_text = hook.tune_search("points", 0.9, queries=["point 12", {"query": "point 40", "relevant": [40]}],
                               store=False)
    assert by_text["queries"] == 2 and by_text["ef_search"] in tuning.GRID


@pytest.mark.parametrize(("arguments", "error", "message"), [
    (dict(target_recall=0), InvalidInputError, "target_recall must be a number in (0, 1], got 0"),
    (dict(target_recall=1.5), InvalidInputError, "target_recall must be a number in (0, 1], got 1.5"),
    (dict(k=0), InvalidInputError, "k must be"),
    (dict(queries=[]), InvalidInputError, "queries must be a non-empty list of query texts"),
    (dict(queries=["  "]), InvalidInputError, "queries[0] must be a non-empty text or a vector"),
    (dict(queries=[[0.1, 0.2]]), InvalidInputError, "expects a query vector of 384 dimensions"),
    (dict(filters=[]), InvalidInputError, "filters must be a filter"),
    (dict(filters={"nope": 1}), InvalidInputError, "nope"),
    (dict(job_name="missing"), ProjectNotFoundError, "project 'missing' not yet initialized"),
])
def test_bad_input_is_refused_and_changes_nothing(points, arguments, error, message):
    db, hook = points
    hook.set_ef_search("points", 120)
    before = snapshot(db)
    call = {"job_name": "points", "queries": list(QUERIES[:3]), **arguments}
    with pytest.raises(error) as raised:
        hook.tune_search(**call)
    assert message in str(raised.value)
    assert snapshot(db) == before and stored_ef(db) == 120
    for bad in (0, 1001, True, "40"):
        with pytest.raises(InvalidInputError, match="ef_search must be an integer from 1 to 1000"):
            hook.set_ef_search("points", bad)
    assert stored_ef(db) == 120
    hook.set_ef_search("points", None)


def test_a_small_chunked_project_has_nothing_to_tune(products, hook):
    hook.create_project("docs", "products", "product_id", ["description"], chunk_size=32)
    hook.generate_embeddings("docs")
    result = hook.tune_search("docs", queries=["a phone"])
    assert result["ef_search"] is None and not result["stored"]
    assert "compares every chunk" in result["reason"]
    assert products.scalar("SELECT params ? 'ef_search' FROM vectorize.job WHERE name = 'docs'") is False


def test_a_chunked_project_on_its_index_is_tuned_against_every_chunk(products, hook, index_path):
    hook.create_project("docs", "products", "product_id", ["description"], chunk_size=32)
    hook.generate_embeddings("docs")
    result = hook.tune_search("docs", 0.99, queries=["a phone with a camera", "coffee", "a bicycle"], k=3)
    assert result["stored"] and result["curves"][0]["points"][-1]["recall"] >= 0.99
    assert products.scalar("SELECT (params->>'ef_search')::int FROM vectorize.job WHERE name = 'docs'") == \
        result["ef_search"]
