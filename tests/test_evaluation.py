"""Retrieval evaluation (issue 33): metrics against hand-computed values, the hook on the real database and
model, stored runs, sampled queries, and bad input that changes nothing."""

from __future__ import annotations

import math

import pytest
from conftest import snapshot

from airflow_vectorize.evaluation import query_metrics, text_key
from airflow_vectorize.exceptions import InvalidInputError, ProjectNotFoundError

COLUMNS = ["name", "description"]


def keys(*values) -> list[tuple]:
    return [text_key([v]) for v in values]


# -- each metric by hand ------------------------------------------------------------------------------------
def test_metrics_of_one_query_by_hand():
    got = keys(7, 3, 9, 4, 1)
    relevant = {text_key([3]): 1.0, text_key([4]): 1.0, text_key([8]): 1.0}  # 8 is never returned
    m = query_metrics(got, relevant, (1, 2, 5))
    assert m["reciprocal_rank"] == 0.5  # first relevant at rank 2
    assert (m["recall@1"], m["recall@2"], m["recall@5"]) == (0.0, pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert (m["precision@1"], m["precision@2"], m["precision@5"]) == (0.0, 0.5, 0.4)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)  # ranks 2 and 4
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)  # three relevant, ties in grade: any order is ideal
    assert m["ndcg@10"] == pytest.approx(dcg / ideal)
    assert m["hit"] == 1.0


def test_a_query_with_no_relevant_result_and_graded_relevance():
    none = query_metrics(keys(1, 2, 3), {text_key([5]): 1.0}, (1, 3))
    assert none == {"reciprocal_rank": 0.0, "recall@1": 0.0, "precision@1": 0.0, "recall@3": 0.0,
                    "precision@3": 0.0, "ndcg@10": 0.0, "hit": 0.0}
    graded = query_metrics(keys(2, 1), {text_key([1]): 3.0, text_key([2]): 1.0}, (2,))
    # DCG = 1/log2(2) + 3/log2(3); ideal = 3/log2(2) + 1/log2(3)
    assert graded["ndcg@10"] == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))
    assert graded["recall@2"] == 1.0 and graded["reciprocal_rank"] == 1.0


# -- through the hook ---------------------------------------------------------------------------------------
@pytest.fixture
def shop(products, hook):
    hook.create_project("shop", "products", "product_id", COLUMNS)
    hook.generate_embeddings("shop")
    return hook


def test_evaluate_retrieval_scores_the_project_s_answers_and_keeps_them(products, shop):
    query_a, query_b = "mobile phone with a good camera", "something to make coffee"
    top_a = [r["product_id"] for r in shop.search("shop", query_a, num_results=24)]
    top_b = [r["product_id"] for r in shop.search("shop", query_b, num_results=24)]
    queries = [
        {"query": query_a, "relevant": [top_a[0]]},  # found first
        {"query": query_b, "relevant": {str(top_b[2]): 2, top_b[-1]: 1}},  # third, and one never in the top 10
    ]
    result = shop.evaluate_retrieval("shop", queries, k=(1, 5, 10), label="baseline")
    m = result["metrics"]
    assert m["recall@1"] == pytest.approx((1 + 0) / 2)
    assert m["recall@10"] == pytest.approx((1 + 0.5) / 2)
    assert m["precision@5"] == pytest.approx((1 / 5 + 1 / 5) / 2)
    assert m["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    ndcg_b = (2 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((1 + ndcg_b) / 2, abs=1e-6)
    assert m["hit_rate"] == 1.0 and m["no_relevant"] == 0.0
    assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"]
    assert [w["query"] for w in result["worst"]] == [query_b]
    assert result["worst"][0]["got"][2] == top_b[2]  # keys as the source holds them
    assert result["config"]["rows"] == 24 and result["config"]["mode"] == "vector"

    stored = products.execute("SELECT job_name, label, metrics->>'mrr', jsonb_array_length(per_query),"
                              " config->>'transformer' FROM vectorize.evaluations WHERE id = %s",
                              [result["evaluation_id"]])
    assert stored == [("shop", "baseline", str(m["mrr"]), 2, "sentence-transformers/all-MiniLM-L6-v2")]

    hybrid = shop.evaluate_retrieval("shop", queries, k=5, mode="hybrid", store=False)
    assert "evaluation_id" not in hybrid and hybrid["config"]["mode"] == "hybrid"
    assert set(hybrid["metrics"]) >= {"recall@5", "precision@5", "mrr", "ndcg@10", "hit_rate"}


def test_ndcg_at_10_is_the_same_whatever_k_is(products, shop):
    """nDCG@10 was computed on the max(k) results searched: with k=(1, 3) it was nDCG@3 under the name nDCG@10,
    and a gate compared it with runs of k=10. Every evaluation now reads 10 results at least; the reciprocal
    rank and the hit still look at the first max(k)."""
    ranked = [r["product_id"] for r in shop.search("shop", "mobile phone", num_results=24)]
    queries = [{"query": "mobile phone", "relevant": {ranked[1]: 3, ranked[4]: 1}}]  # ranks 2 and 5
    expected = (3 / math.log2(3) + 1 / math.log2(6)) / (3 + 1 / math.log2(3))

    short = shop.evaluate_retrieval("shop", queries, k=(1, 3), store=False)["metrics"]
    long = shop.evaluate_retrieval("shop", queries, k=(1, 10), store=False)["metrics"]

    assert short["ndcg@10"] == long["ndcg@10"] == pytest.approx(expected, abs=1e-6)  # before: 0.521296 for k=(1, 3)
    assert (short["mrr"], short["recall@3"], short["hit_rate"]) == (0.5, 0.5, 1.0)
    beyond = [{"query": "mobile phone", "relevant": [ranked[6]]}]  # rank 7: beyond k=3
    assert shop.evaluate_retrieval("shop", beyond, k=3, store=False)["metrics"]["mrr"] == 0.0


def keyed_project(products, hook, name: str, key_select: str, key: list[str]) -> dict:
    """A copy of the products keyed by ``key`` (``key_select`` makes its columns), embedded; the key of its
    best row for "ride to work"."""
    products.execute(f"CREATE TABLE {name} AS SELECT {key_select}, name, description FROM products;"
                     f" ALTER TABLE {name} ADD PRIMARY KEY ({', '.join(key)})")
    hook.create_project(name, name, key, COLUMNS)
    hook.generate_embeddings(name)
    return hook.search(name, "ride to work", return_columns=key, num_results=1)[0]


def test_composite_keys_are_evaluated(products, hook):
    best = keyed_project(products, hook, "pairs", "product_id % 2 AS part, product_id", ["part", "product_id"])
    result = hook.evaluate_retrieval("pairs", [{"query": "ride to work",
                                                "relevant": [[best["part"], best["product_id"]]]}], k=1)
    assert result["metrics"]["recall@1"] == 1.0
    # ... and kept in a table: one column per key column
    products.execute("CREATE TABLE judged (query text, part int, product_id int)")
    products.execute("INSERT INTO judged VALUES ('ride to work', %s, %s)", [best["part"], best["product_id"]])
    assert hook.evaluate_retrieval("pairs", "judged", k=1, store=False)["metrics"]["recall@1"] == 1.0


def test_queries_kept_in_a_table_one_row_per_relevant_key(products, shop):
    """qrels' layout: (query, key, grade); the same result as the list form; a view works too."""
    top = [r["product_id"] for r in shop.search("shop", "something to make coffee", num_results=3)]
    products.execute("CREATE SCHEMA judged; CREATE TABLE judged.qrels (query text, product_id bigint, grade real)")
    products.execute("INSERT INTO judged.qrels VALUES ('something to make coffee', %s, 2), ('something to make coffee',"
                     " %s, NULL), ('mobile phone with a good camera', %s, 1)", [top[2], top[0], top[1]])
    from_table = shop.evaluate_retrieval("shop", "judged.qrels", k=(1, 3), store=False)
    listed = shop.evaluate_retrieval("shop", [
        {"query": "mobile phone with a good camera", "relevant": [top[1]]},  # ORDER BY query
        {"query": "something to make coffee", "relevant": {top[2]: 2, top[0]: 1}}], k=(1, 3), store=False)
    assert from_table["metrics"] | {"latency_p50_ms": 0, "latency_p95_ms": 0} == \
        listed["metrics"] | {"latency_p50_ms": 0, "latency_p95_ms": 0}
    assert from_table["config"]["queries"] == listed["config"]["queries"]  # the same query set
    products.execute("CREATE VIEW coffee AS SELECT query, product_id FROM judged.qrels WHERE query LIKE '%%coffee'")
    assert shop.evaluate_retrieval("shop", "coffee", k=3, store=False)["metrics"]["recall@3"] == 1.0


def test_keys_are_read_as_the_source_row_s_key(products, hook):
    """A numeric and a boolean key column: the relevant keys in any spelling the column reads name its rows."""
    best = keyed_project(products, hook, "priced", "product_id % 2 = 0 AS even, price", ["even", "price"])
    price = best["price"]  # a Decimal, e.g. 1299.00
    spellings = [[best["even"], float(price)], [str(best["even"]).lower(), str(price)],
                 ["t" if best["even"] else "f", f"{price:.4f}"]]
    for key in spellings:
        result = hook.evaluate_retrieval("priced", [{"query": "ride to work", "relevant": [key]}], k=1, store=False)
        assert result["metrics"]["recall@1"] == 1.0, key
    both = hook.evaluate_retrieval("priced", [{"query": "ride to work", "relevant": {tuple(spellings[0]): 1,
                                                                                  tuple(spellings[1]): 2}}],
                                   k=1, store=False)
    assert both["metrics"]["ndcg@10"] == 1.0  # one row, named twice: its higher grade


@pytest.mark.parametrize(("table", "message"), [
    ("nowhere.qrels", 'queries table "nowhere"."qrels" does not exist'),
    ("no_key", "queries column 'product_id' does not exist in table \"public\".\"no_key\"; its columns are: query, id"),
    ("empty_qrels", 'queries table "public"."empty_qrels" holds no rows'),
    ("null_key", "queries table \"public\".\"null_key\" has a row with a NULL query or key: ['x', None]"),
    ("unknown_key", "1 relevant key(s) are not rows of public.products: 999"),
    ("bad_grade", 'queries table "public"."bad_grade": column grade must hold finite numbers > 0, got 0'),
    ("text_grade", 'queries table "public"."text_grade": column grade must hold finite numbers > 0, got \'high\''),
    ("infinite_grade", "column grade must hold finite numbers > 0, got inf"),  # was a NaN nDCG, then untyped
    ("", "queries must be labelled queries or the name of a table holding them"),
])
def test_a_bad_queries_table_is_refused_and_changes_nothing(products, shop, table, message):
    products.execute("CREATE TABLE no_key (query text, id int); CREATE TABLE empty_qrels (query text, product_id int);"
                     " CREATE TABLE null_key (query text, product_id int); INSERT INTO null_key VALUES ('x', NULL);"
                     " CREATE TABLE unknown_key (query text, product_id int); INSERT INTO unknown_key VALUES ('x', 999);"
                     " CREATE TABLE bad_grade (query text, product_id int, grade int);"
                     " INSERT INTO bad_grade VALUES ('x', 1, 0);"
                     " CREATE TABLE text_grade (query text, product_id int, grade text);"  # was a bare ValueError
                     " INSERT INTO text_grade VALUES ('x', 1, 'high');"
                     " CREATE TABLE infinite_grade (query text, product_id int, grade float8);"
                     " INSERT INTO infinite_grade VALUES ('x', 1, 'Infinity')")
    shop.evaluate_retrieval("shop", [{"query": "phone", "relevant": [1]}], k=1)  # the table exists
    before = snapshot(products)
    count = products.scalar("SELECT count(*) FROM vectorize.evaluations")
    with pytest.raises(InvalidInputError) as raised:
        shop.evaluate_retrieval("shop", table, k=1)
    assert message in str(raised.value)
    assert snapshot(products) == before
    assert products.scalar("SELECT count(*) FROM vectorize.evaluations") == count


@pytest.mark.parametrize(("arguments", "error", "message"), [
    (dict(queries=[]), InvalidInputError, "queries must be a non-empty list"),
    (dict(queries=[{"query": "x", "relevant": [999]}]), InvalidInputError,
     "1 relevant key(s) are not rows of public.products: 999"),
    (dict(queries=[{"query": "x", "relevant": ["abc"]}]), InvalidInputError,
     'a relevant key is not a value of the key column(s) product_id: invalid input syntax for type integer: "abc"'),
    (dict(queries=[{"query": "x", "relevant": []}]), InvalidInputError, "queries[0]: 'relevant' must name at least"),
    (dict(queries=[{"query": "", "relevant": [1]}]), InvalidInputError, "queries[0] must be {'query': a non-empty"),
    (dict(queries=[{"query": "x", "relevant": {1: 0}}]), InvalidInputError, "the grade of key 1 must be a finite number > 0"),
    (dict(queries=[{"query": "x", "relevant": {1: float("inf")}}]), InvalidInputError,
     "the grade of key 1 must be a finite number > 0, got inf"),
    (dict(queries=[{"query": "x", "relevant": [[1, 2]]}]), InvalidInputError, "must have 1 value(s)"),
    (dict(k=0), InvalidInputError, "k must be a positive integer or a list of them, got 0"),
    (dict(k=[5, -1]), InvalidInputError, "k must be a positive integer"),
    (dict(mode="sparse"), InvalidInputError, "mode must be one of 'vector', 'hybrid', got 'sparse'"),
    (dict(job_name="nope"), ProjectNotFoundError, "project 'nope' not yet initialized"),
])
def test_bad_input_is_refused_and_changes_nothing(products, shop, arguments, error, message):
    shop.evaluate_retrieval("shop", [{"query": "phone", "relevant": [1]}], k=1)  # the table exists
    before = snapshot(products)
    count = products.scalar("SELECT count(*) FROM vectorize.evaluations")
    call = {"job_name": "shop", "queries": [{"query": "phone", "relevant": [1]}], **arguments}
    with pytest.raises(error) as raised:
        shop.evaluate_retrieval(**call)
    assert message in str(raised.value)
    assert snapshot(products) == before
    assert products.scalar("SELECT count(*) FROM vectorize.evaluations") == count


def test_sampled_queries_are_sentences_of_their_row_and_reproducible(products, hook):
    products.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    products.execute(
        "INSERT INTO docs SELECT g, 'Short intro. This sentence about topic number ' || g || ' has more than twelve"
        " words in it for sure. Another sentence on subject ' || g || ' that also holds more than twelve words"
        " in total. End.' FROM generate_series(1, 30) g")
    products.execute("INSERT INTO docs VALUES (31, 'Too short to sample. Nothing here.')")
    shared = "This boilerplate sentence is shared by two of the rows and so says nothing about either one."
    products.execute("INSERT INTO docs VALUES (32, %s), (33, %s), (34, %s)",
                     [shared, shared, " ".join(["word"] * 61) + "."])  # 34: one run-on sentence of 62 words
    hook.create_project("docs", "docs", "id", ["body"])
    sampled = hook.sample_queries("docs", n=10, seed=7)
    assert len(sampled) == 10 and sampled == hook.sample_queries("docs", n=10, seed=7)
    assert sampled != hook.sample_queries("docs", n=10, seed=8)
    texts = dict(products.execute("SELECT id, body FROM docs"))
    for item in sampled:
        (key,) = item["relevant"]
        assert key not in (31, 34) and item["query"] in texts[key] and 12 <= len(item["query"].split()) <= 60
    firsts = hook.sample_queries("docs", n=5, seed=7, position="first")
    assert len(firsts) == 5 and all(q["query"].startswith("This sentence") for q in firsts)
    every = hook.sample_queries("docs", n=100)
    assert len(every) == 31  # rows with a sentence of 12-60 words, the shared one taken once
    assert sum(q["query"] == shared for q in every) == 1
    with pytest.raises(InvalidInputError, match="position must be one of 'any', 'first', 'last', got 'middle'"):
        hook.sample_queries("docs", n=5, position="middle")
    with pytest.raises(InvalidInputError, match="n must be a positive integer, got 0"):
        hook.sample_queries("docs", n=0)
    hook.generate_embeddings("docs")
    assert hook.evaluate_retrieval("docs", sampled, k=(1, 10), store=False)["metrics"]["recall@10"] > 0.5


def test_the_gate_fails_below_a_minimum_or_on_a_drop_and_keeps_the_run(products, shop):
    from airflow_vectorize.exceptions import RetrievalRegressionError

    first = shop.search("shop", "ride to work", num_results=24)
    good = [{"query": "ride to work", "relevant": [first[0]["product_id"]]}]
    bad = [{"query": "ride to work", "relevant": [first[-1]["product_id"]]}]  # never in the top 10
    passed = shop.evaluate_retrieval("shop", good, k=10, min_metrics={"recall@10": 0.9}, max_drop={"mrr": 0.1})
    assert passed["gate"]["passed"] is True and passed["gate"]["previous"] is None

    with pytest.raises(RetrievalRegressionError) as failed:
        shop.evaluate_retrieval("shop", bad, k=10, min_metrics={"recall@10": 0.9}, max_drop={"mrr": 0.1})
    assert "recall@10 0.0000 is below the minimum 0.9" in str(failed.value)
    assert "mrr 0.0000 is 1.0000 worse than the last run's 1.0000 (allowed: 0.1)" in str(failed.value)
    kept = products.execute("SELECT passed FROM vectorize.evaluations ORDER BY id")
    assert kept == [(True,), (False,)]
    # the next run compares with the last run that passed, not the failed one
    again = shop.evaluate_retrieval("shop", good, k=10, max_drop={"mrr": 0.0})
    assert again["gate"]["previous"]["evaluation_id"] == passed["evaluation_id"]
    # a maximum for what is better low
    count = products.scalar("SELECT count(*) FROM vectorize.evaluations")
    with pytest.raises(RetrievalRegressionError, match="no_relevant 1.0000 is above the maximum 0.5"):
        shop.evaluate_retrieval("shop", bad, k=10, min_metrics={"no_relevant": 0.5}, store=False)
    assert products.scalar("SELECT count(*) FROM vectorize.evaluations") == count  # store=False: not kept


@pytest.mark.parametrize(("arguments", "message"), [
    (dict(min_metrics={"recall@3": 0.5}), "min_metrics: unknown metric 'recall@3'; the evaluation reports"),
    (dict(max_drop={"mrr": -0.1}), "max_drop['mrr'] must be a finite number >= 0, got -0.1"),
    (dict(min_metrics={"mrr": float("nan")}), "min_metrics['mrr'] must be a finite number >= 0, got nan"),  # was: no gate
    (dict(min_metrics=[0.5]), "min_metrics must be a mapping of metric to number"),
])
def test_bad_gate_thresholds_are_refused_before_any_search(products, shop, arguments, message):
    shop.evaluate_retrieval("shop", [{"query": "phone", "relevant": [1]}], k=1)
    before = snapshot(products)
    count = products.scalar("SELECT count(*) FROM vectorize.evaluations")
    with pytest.raises(InvalidInputError) as raised:
        shop.evaluate_retrieval("shop", [{"query": "phone", "relevant": [1]}], k=(1, 10), **arguments)
    assert message in str(raised.value)
    assert snapshot(products) == before and products.scalar("SELECT count(*) FROM vectorize.evaluations") == count


def test_compare_two_projects_on_the_same_queries(products, hook, tmp_path):
    """A project on the name alone against one on name and description: each one's metrics, B − A, the paired
    check, a chart; then the same comparison from the two kept runs."""
    hook.create_project("names", "products", "product_id", ["name"])
    hook.create_project("full", "products", "product_id", COLUMNS)
    hook.generate_embeddings("names")
    hook.generate_embeddings("full")
    texts = dict(products.execute("SELECT product_id, description FROM products"))
    queries = [{"query": text, "relevant": [key]} for key, text in sorted(texts.items())]  # the description

    compared = hook.compare("names", "full", queries, k=(1, 5, 10), chart_path=str(tmp_path / "recall.png"))
    a, b = compared["a"]["metrics"], compared["b"]["metrics"]
    assert compared["difference"]["mrr"] == pytest.approx(b["mrr"] - a["mrr"], abs=1e-6)
    paired = compared["paired"]
    assert paired["queries"] == 24 and paired["wins"] + paired["losses"] + paired["ties"] == 24
    assert paired["mean_difference"] == pytest.approx(b["mrr"] - a["mrr"], abs=1e-5)
    low, high = paired["bootstrap_ci95"]
    assert low <= paired["mean_difference"] <= high
    assert b["mrr"] > a["mrr"] and paired["wins"] > paired["losses"]  # the description finds its own row
    assert 0 <= paired["sign_test_p"] < 0.05
    assert (tmp_path / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = hook.compare(evaluation_ids=[compared["a"]["evaluation_id"], compared["b"]["evaluation_id"]])
    assert again["paired"] == paired and again["difference"] == compared["difference"]


def test_a_refused_compare_keeps_no_run(products, hook):
    """Before, A's run was kept when B was unknown, or refused the queries (another key type here)."""
    hook.create_project("names", "products", "product_id", ["name"], embed_existing=True)
    products.execute("CREATE TABLE by_name (name text PRIMARY KEY, description text)")
    products.execute("INSERT INTO by_name SELECT name, description FROM products")
    hook.create_project("by_name", "by_name", "name", ["description"], embed_existing=True)
    hook.evaluate_retrieval("names", [{"query": "phone", "relevant": [1]}], k=1)  # the table exists
    before = snapshot(products)
    for job_b, error in (("nope", ProjectNotFoundError), ("by_name", InvalidInputError)):
        with pytest.raises(error):
            hook.compare("names", job_b, [{"query": "phone", "relevant": [1]}])
        assert snapshot(products) == before, job_b


def test_keys_resolve_on_a_source_with_a_not_null_domain_column(products, hook):
    """The keys are read into the source's row type from one of its rows: from NULL, a NOT NULL domain column
    failed the whole evaluation (and a composite key's batches) with an untyped error."""
    products.execute("CREATE DOMAIN label AS text NOT NULL; ALTER TABLE products ADD COLUMN tag label DEFAULT 'x';"
                     " CREATE UNIQUE INDEX ON products (product_id, name)")
    hook.create_project("tagged", "products", ["product_id", "name"], COLUMNS, embed_existing=True)
    products.execute("UPDATE products SET description = description || '!' WHERE product_id = 1")
    assert hook.generate_embeddings("tagged", pending_only=True)["embedded"] == 1
    name = products.scalar("SELECT name FROM products WHERE product_id = 1")
    result = hook.evaluate_retrieval("tagged", [{"query": name, "relevant": [[1, name]]}], k=1, store=False)
    assert result["metrics"]["recall@1"] == 1.0


def test_sign_test_and_bootstrap_by_hand():
    from airflow_vectorize.evaluation import paired

    result = paired([0.0] * 6 + [0.5, 1.0], [1.0] * 6 + [0.5, 0.5])  # 6 wins, 1 loss, 1 tie
    # two-sided sign test, n = 7: 2 * P(X <= 1) = 2 * (1 + 7) / 128
    assert (result["wins"], result["losses"], result["ties"]) == (6, 1, 1)
    assert result["sign_test_p"] == pytest.approx(16 / 128)
    assert result["mean_difference"] == pytest.approx((6 - 0.5) / 8)
    assert result["bootstrap_ci95"][0] < result["mean_difference"] < result["bootstrap_ci95"][1]
    assert paired([1.0, 0.5], [1.0, 0.5])["sign_test_p"] == 1.0


def test_runs_of_other_queries_are_not_compared(products, shop):
    a = shop.evaluate_retrieval("shop", [{"query": "phone", "relevant": [1]}], k=1)
    b = shop.evaluate_retrieval("shop", [{"query": "coffee", "relevant": [10]}], k=1)
    with pytest.raises(InvalidInputError, match=f"evaluations {a['evaluation_id']} and {b['evaluation_id']} were not"
                                                " run on the same queries"):
        shop.compare(evaluation_ids=[a["evaluation_id"], b["evaluation_id"]])
    with pytest.raises(InvalidInputError, match="there is no evaluation 999"):
        shop.compare(evaluation_ids=[a["evaluation_id"], 999])


def test_a_run_without_a_label_is_compared_with_runs_without_one_only(products, shop):
    """A label=None run was compared with the last passing run of any label (another query set's numbers)."""
    first = shop.search("shop", "ride to work", num_results=24)
    easy = [{"query": "ride to work", "relevant": [first[0]["product_id"]]}]
    hard = [{"query": "ride to work", "relevant": [first[5]["product_id"]]}]  # mrr 1/6
    labelled = shop.evaluate_retrieval("shop", easy, k=10, label="easy_set", max_drop={"mrr": 0.05})

    unlabelled = shop.evaluate_retrieval("shop", hard, k=10, max_drop={"mrr": 0.05})  # before: 0.83 worse

    assert unlabelled["gate"] == {"passed": True, "failures": [], "previous": None}
    again = shop.evaluate_retrieval("shop", hard, k=10, max_drop={"mrr": 0.05})
    assert again["gate"]["previous"]["evaluation_id"] == unlabelled["evaluation_id"]
    same_label = shop.evaluate_retrieval("shop", easy, k=10, label="easy_set", max_drop={"mrr": 0.05})
    assert same_label["gate"]["previous"]["evaluation_id"] == labelled["evaluation_id"]
