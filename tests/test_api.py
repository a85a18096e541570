"""The standalone HTTP API (``python -m airflow_vectorize.api``) against a real server process, with a real
HTTP client: pg_vectorize's routes and ours, its filter grammar, error codes, hostile input, tokens, and 32
concurrent clients. The server starts once for the module, on its own database of the session's PostgreSQL;
its connections: ``api_db`` (the data), ``chat`` (the real chat server, through the recording and, on request,
misbehaving server), ``down`` (a database nobody listens for), ``nowhere`` (a chat server nobody listens for).
``openai_default`` is defined in its environment but not served (not in ``VECTORIZE_API_CONN_IDS``). The same
app mounted in Airflow's api-server is tested in ``test_deployment_api.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from scripts.api_server import ApiServer
from scripts.server_process import free_port
from tests.conftest import Database, create_points, create_products, fresh_database, snapshot, unit_vectors

WRITE_TOKEN = secrets.token_urlsafe(24)
READ_TOKEN = secrets.token_urlsafe(24)
SEARCH = "/api/v1/search"


@dataclass
class Api:
    server: ApiServer
    db: Database
    client: httpx.Client  # may write
    reader: httpx.Client  # read-only token
    anonymous: httpx.Client  # no token


@pytest.fixture(scope="module")
def api(postgres, model, embedding_server_session, chat_server):
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    with fresh_database(postgres) as db:
        create_products(db)
        # A boolean and an integer column for the filter grammar's typed values.
        db.execute("ALTER TABLE products ADD COLUMN in_stock boolean NOT NULL DEFAULT true,"
                   " ADD COLUMN stock integer")
        db.execute("UPDATE products SET in_stock = product_id % 3 <> 0, stock = product_id * 10")
        hook = VectorizeHook(postgres_conn_id=db.conn_id)
        hook.create_project("products", "products", "product_id", ["name", "description"], embed_existing=True)
        hook.create_project("products_chunked", "products", "product_id", ["description"], chunk_size=8,
                            embed_existing=True)
        embedding_server_session.chat_upstream = chat_server.url  # chat requests go on to the real chat server
        server = ApiServer(
            {"api_db": db.uri,
             "down": f"postgresql://postgres:@127.0.0.1:{free_port()}/postgres",
             "chat": {"conn_type": "openai", "host": embedding_server_session.url,
                      "password": embedding_server_session.api_key,
                      "extra": {"max_retries": 1, "retry_initial_delay": 0.05, "timeout": 3}},
             # the page's RAG box asks without max_tokens: the tiny chat model may take longer than 3 s
             "chat_patient": {"conn_type": "openai", "host": embedding_server_session.url,
                              "password": embedding_server_session.api_key, "extra": {"timeout": 60}},
             "nowhere": {"conn_type": "openai", "host": f"http://127.0.0.1:{free_port()}/v1",
                         "password": "sk-nowhere", "extra": {"max_retries": 0, "timeout": 2}}},
            tokens=[WRITE_TOKEN], read_tokens=[READ_TOKEN], env={
                "VECTORIZE_API_POOL_SIZE": "4",
                # defined (as a secrets backend would have it), not served: not in VECTORIZE_API_CONN_IDS
                "AIRFLOW_CONN_OPENAI_DEFAULT": json.dumps({
                    "conn_type": "openai", "host": embedding_server_session.url,
                    "password": embedding_server_session.api_key, "extra": {"max_retries": 0}})},
        ).start()
        try:
            server.wait(120)
            clients = [httpx.Client(base_url=server.url, timeout=60,
                                    headers={"Authorization": f"Bearer {t}"} if t else {})
                       for t in (WRITE_TOKEN, READ_TOKEN, None)]
            yield Api(server, db, *clients)
            for client in clients:
                client.close()
        finally:
            server.stop()


def search(api: Api, **params) -> httpx.Response:
    return api.client.get(SEARCH, params={"conn_id": "api_db", **params})


def ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [row["product_id"] for row in response.json()]


def assert_error(response: httpx.Response, status: int, kind: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == kind, body
    for fragment in fragments:
        assert fragment in body["detail"], body


# -- search ------------------------------------------------------------------------------------------------
def test_get_search_is_hybrid_by_default(api):
    response = search(api, job_name="products", query="mobile phone with a good camera", limit=3)
    rows = response.json()
    assert ids(response)[0] == 1  # "Pixel 9 smartphone ... 50 MP camera"
    assert len(rows) == 3
    for row in rows:
        assert {"product_id", "name", "description", "category", "price", "updated_at", "in_stock", "stock",
                "rrf_score", "semantic_rank", "fts_rank", "similarity_score"} <= row.keys()
        assert "embeddings" not in row and "full_text_rank" not in row
    assert rows[0]["rrf_score"] >= rows[1]["rrf_score"] >= rows[2]["rrf_score"]
    assert rows[0]["price"] == 799.0  # numeric as a JSON number


def test_search_uses_the_project_s_tuned_ef_search(api):
    """The server's first lookup of a project reads its ef_search (a hook of its own looks it up again within
    search.RECHECK_SECONDS: tests/test_tuning.py); a request's ef_search still wins."""
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    hook = VectorizeHook(postgres_conn_id=api.db.conn_id)
    create_points(api.db, hook, unit_vectors(3000, seed=5))
    try:
        hook.set_ef_search("points", 10)
        queries = ["point 12", "a quiet evening", "the 7th of march", "stock prices fell"]
        for query in queries:
            response = search(api, job_name="points", query=query, limit=10, mode="vector", return_columns="id")
            assert [r["id"] for r in response.json()] == found_at(hook, query, 10), query
            explicit = search(api, job_name="points", query=query, limit=10, mode="vector", return_columns="id",
                              ef_search=400)
            assert [r["id"] for r in explicit.json()] == found_at(hook, query, 400), query
        assert any(found_at(hook, q, 10) != found_at(hook, q, 400) for q in queries)  # the value matters
    finally:
        hook.drop_project("points")
        api.db.execute("DROP TABLE points, point_vectors")


def found_at(hook, query: str, ef_search: int) -> list[int]:
    return [r["id"] for r in hook.search("points", query, ["id"], 10, ef_search=ef_search)]


def test_vector_mode_and_return_columns(api):
    response = search(api, job_name="products", query="mobile phone with a good camera", limit=2, mode="vector",
                      return_columns="product_id,name")
    rows = response.json()
    assert ids(response) == [1, 3]
    assert set(rows[0]) == {"product_id", "name", "similarity_score"}
    assert rows[0]["similarity_score"] > rows[1]["similarity_score"]


def test_post_search_with_both_filter_forms(api):
    body = {"job_name": "products", "query": "phone", "limit": 10, "mode": "vector",
            "filters": {"price": {"lt": 800}, "category": {"in": ["phones", "tablets"]}, "stock": "gte.20"}}
    response = api.client.post(SEARCH, params={"conn_id": "api_db"}, json=body)
    assert set(ids(response)) == {3, 4, 5}  # 2 costs 829, 1 has 10 in stock


def test_hybrid_window_rrf_k_and_weights(api):
    base = {"job_name": "products", "query": "laptop battery", "limit": 3}
    default = search(api, **base).json()
    tuned = search(api, **base, rrf_k=1, semantic_wt=0, fts_wt=1, window_size=5).json()
    # Only the full-text side counts (k = 1): the one row with both words first, the others score 0.
    assert tuned[0]["product_id"] == 7 and tuned[0]["fts_rank"] == 1
    assert tuned[0]["rrf_score"] == pytest.approx(1 / (1 + 1))
    assert len(tuned) == 3 and all(row["rrf_score"] == 0 and row["fts_rank"] is None for row in tuned[1:])
    assert default[0]["rrf_score"] == pytest.approx(
        sum(1 / (60 + r) for r in (default[0]["semantic_rank"], default[0]["fts_rank"]) if r is not None))


def test_chunked_project_rows_carry_their_chunk(api):
    rows = search(api, job_name="products_chunked", query="50 MP camera", limit=2, mode="vector").json()
    assert rows[0]["product_id"] == 1
    assert "camera" in rows[0]["chunk"]
    hybrid = search(api, job_name="products_chunked", query="camera", limit=2).json()
    assert hybrid[0]["chunk"] and hybrid[0]["fts_rank"] == 1


def test_unknown_project_is_404(api):
    assert_error(search(api, job_name="nothing_here", query="x"), 404, "ProjectNotFoundError", "nothing_here")
    assert_error(api.client.get("/api/v1/projects/nothing_here", params={"conn_id": "api_db"}), 404,
                 "ProjectNotFoundError")


def embedded_project_of_new_table(api: Api, *alterations: str) -> str:
    """A new table of the products changed by ``alterations`` (SQL, ``{t}`` the table), and a project of the
    same name over name and description, embedded; returns the name."""
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    table = new_table(api)
    for statement in alterations:
        api.db.execute(statement.format(t=table))
    VectorizeHook(postgres_conn_id=api.db.conn_id).create_project(
        table, table, "product_id", ["name", "description"], embed_existing=True)
    return table


def strict_json(text: str):
    """``text`` read as JSON (RFC 8259): NaN, Infinity and -Infinity are not JSON."""
    def refuse(constant: str):
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_infinity_are_answered_as_null(api):
    """Floats and numerics may hold NaN and ±Infinity (arrays of them too): JSON has no such numbers, so the
    answer has null for them, and stays JSON a browser can read."""
    table = embedded_project_of_new_table(
        api, "ALTER TABLE {t} ADD COLUMN rating double precision, ADD COLUMN scores float8[]",
        "UPDATE {t} SET rating = product_id / 4.0, scores = ARRAY[product_id, 'NaN', '-Infinity']::float8[]",
        "UPDATE {t} SET rating = 'NaN', price = 'NaN' WHERE product_id = 1",
        "UPDATE {t} SET rating = 'Infinity' WHERE product_id = 2")
    try:
        for mode in ("vector", "hybrid"):
            for response in (search(api, job_name=table, query="phone", limit=24, mode=mode,
                                    return_columns="product_id,price,rating,scores"),
                             api.client.post(SEARCH, params={"conn_id": "api_db"}, json={
                                 "job_name": table, "query": "phone", "limit": 24, "mode": mode,
                                 "return_columns": ["product_id", "price", "rating", "scores"]})):
                assert response.status_code == 200, response.text
                rows = {row["product_id"]: row for row in strict_json(response.text)}
                assert len(rows) == 24, mode
                assert rows[1]["rating"] is None and rows[1]["price"] is None and rows[2]["rating"] is None
                assert rows[3]["rating"] == 0.75 and rows[3]["price"] == 449.0
                assert rows[3]["scores"] == [3.0, None, None]
    finally:
        assert api.client.delete(f"/api/v1/table/{table}", params={"conn_id": "api_db"}).status_code == 200


def test_a_source_column_named_fts_rank_is_refused_in_hybrid_answers(api):
    """Hybrid answers name the full-text rank fts_rank, as pg_vectorize's server: a source column of that name
    asked for is refused by name (not silently replaced by the rank); a vector search returns it."""
    table = embedded_project_of_new_table(api, "ALTER TABLE {t} ADD COLUMN fts_rank text",
                                          "UPDATE {t} SET fts_rank = 'source-' || product_id")
    try:
        before = snapshot(api.db)
        message = "return_columns: 'fts_rank' is the name of a key that hybrid search answers add"
        assert_error(search(api, job_name=table, query="phone", return_columns="product_id,fts_rank"), 400,
                     "InvalidInputError", message, "mode=vector")
        assert_error(api.client.post(SEARCH, params={"conn_id": "api_db"}, json={
            "job_name": table, "query": "phone", "return_columns": ["product_id", "fts_rank"]}),
            400, "InvalidInputError", message)
        vector = search(api, job_name=table, query="phone", mode="vector", return_columns="product_id,fts_rank")
        assert all(row["fts_rank"] == f"source-{row['product_id']}" for row in vector.json()), vector.text
        rows = search(api, job_name=table, query="phone", limit=24).json()  # every column: the rank's
        assert all(row["fts_rank"] is None or isinstance(row["fts_rank"], int) for row in rows)
        assert any(isinstance(row["fts_rank"], int) for row in rows)
        assert snapshot(api.db) == before
    finally:
        assert api.client.delete(f"/api/v1/table/{table}", params={"conn_id": "api_db"}).status_code == 200


def test_a_window_size_below_limit_is_searched(api):
    """As pg_vectorize's server: window_size rows per side, the fused list cut at limit (before, it was refused
    naming the hook's 'candidates')."""
    base = {"job_name": "products", "query": "laptop battery"}
    small = search(api, **base, limit=10, window_size=2)
    assert small.status_code == 200, small.text
    rows = small.json()
    assert 2 <= len(rows) <= 4 and all((r["semantic_rank"] or 0) <= 2 and (r["fts_rank"] or 0) <= 2 for r in rows)
    posted = api.client.post(SEARCH, params={"conn_id": "api_db"}, json={**base, "limit": 3, "window_size": 1})
    assert posted.status_code == 200 and 1 <= len(posted.json()) <= 2, posted.text
    assert search(api, **base, limit=3, window_size=0).status_code == 422  # window_size >= 1, by name
    assert "window_size" in search(api, **base, limit=3, window_size=0).text


def test_alter_without_a_field_names_the_api_s_fields(api):
    before = snapshot(api.db)
    for body in ({}, {"schedule": None, "src_columns": None, "halfvec_index": None}):
        response = api.client.patch("/api/v1/table/products", params={"conn_id": "api_db"}, json=body)
        assert_error(response, 400, "InvalidInputError", "nothing to alter: give schedule, src_columns,"
                     " update_time_col and/or the index's hnsw_m, hnsw_ef_construction, halfvec_index")
    assert snapshot(api.db) == before


def test_create_table_of_a_missing_table_schema_or_update_column_is_404(api):
    """As pg_vectorize's server ("schema, table or column NOT FOUND"), with the project's own message; other
    refusals stay 400."""
    table = new_table(api)
    body = {"job_name": table, "src_table": table, "src_columns": ["name"], "primary_key": "product_id",
            "update_time_col": "updated_at"}
    before = snapshot(api.db)

    def create(**changes) -> httpx.Response:
        return api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json={**body, **changes})

    assert_error(create(src_table="nosuch"), 404, "SourceNotFoundError", 'source table "public"."nosuch" does not exist')
    assert_error(create(src_schema="nosuch"), 404, "SourceNotFoundError", f'source table "nosuch"."{table}" does not exist')
    assert_error(create(update_time_col="nosuch"), 404, "SourceNotFoundError",
                 f"update_col column 'nosuch' does not exist in table \"public\".\"{table}\"")
    assert_error(create(update_time_col="name"), 400, "InvalidInputError", "it must be timestamp")
    assert_error(create(src_columns=["colour"]), 400, "InvalidInputError", "text column 'colour' does not exist")
    assert_error(create(job_name="bad name", src_table="nosuch"), 400, "InvalidInputError", "[A-Za-z0-9_]+")
    assert_error(create(src_table="no\x00such"), 400, "InvalidInputError", "NUL")
    assert snapshot(api.db) == before


def test_a_search_deadlocked_by_a_concurrent_change_is_a_409_without_sql(api):
    """A search holding the embeddings table while it waits for the source, and a change of the project holding
    the source while it waits for the embeddings table (DELETE or POST /api/v1/table racing searches):
    PostgreSQL ends the search's statement. The hook runs a search that lost a deadlock once more; when that
    loses one too, the answer is a conflict to retry, PostgreSQL's text (statement, processes) in the log."""
    import threading

    import psycopg

    table = project_of_new_table(api)
    source, embeddings = f"public.{table}", f"vectorize._embeddings_{table}"
    answers: list[httpx.Response] = []
    with psycopg.connect(api.db.uri) as change:

        def wait_until_the_search_waits_for(relation: str) -> None:
            deadline = time.monotonic() + 30
            while not change.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass"
                                     " AND pid <> pg_backend_pid()", [relation]).fetchone()[0]:
                assert time.monotonic() < deadline and searching.is_alive(), answers
                time.sleep(0.05)

        change.execute(f"LOCK TABLE {source} IN ACCESS EXCLUSIVE MODE")
        searching = threading.Thread(target=lambda: answers.append(
            search(api, job_name=table, query="phone", mode="vector")))
        searching.start()
        for attempt in range(2):  # the search, then the hook's second run of it
            wait_until_the_search_waits_for(source)  # holding the embeddings table
            change.execute("SAVEPOINT cycle")
            change.execute(f"LOCK TABLE {embeddings} IN ACCESS EXCLUSIVE MODE")  # the cycle: the search loses
            if attempt == 0:
                wait_until_the_search_waits_for(embeddings)  # its second run
                change.execute("ROLLBACK TO SAVEPOINT cycle")
        change.rollback()
    searching.join()
    assert_error(answers[0], 409, "LockConflictError", "conflicted with another one changing the same project",
                 "a deadlock", "send it again")
    assert not any(word in answers[0].json()["detail"] for word in ("LINE", "SELECT", "Process", "relation"))
    assert answers[0].headers["retry-after"] == "1"
    assert search(api, job_name=table, query="phone", mode="vector").status_code == 200
    assert api.client.delete(f"/api/v1/table/{table}", params={"conn_id": "api_db"}).status_code == 200


# -- pg_vectorize's filter grammar (GET) ----------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    ("gt.1099", {6, 15}),  # 1899, 1299
    ("gte.1099", {6, 7, 15}),
    ("lt.45", {14, 21}),  # 39, 14
    ("lte.45", {12, 14, 21}),
    ("eq.799", {1}),
    ("799", {1}),  # no operator: eq
    ("eq.1099.0", {7}),  # a float
])
def test_filter_operators(api, value, expected):
    assert set(ids(search(api, job_name="products", query="anything", limit=50, mode="vector", price=value))) \
        == expected


def test_filter_boolean_integer_and_text_values(api):
    out_of_stock = {i for i in range(1, 25) if i % 3 == 0}
    assert set(ids(search(api, job_name="products", query="x", limit=50, in_stock="false"))) == out_of_stock
    assert set(ids(search(api, job_name="products", query="x", limit=50, in_stock="eq.true"))) \
        == set(range(1, 25)) - out_of_stock
    assert ids(search(api, job_name="products", query="x", limit=50, stock="eq.70")) == [7]  # an integer
    assert set(ids(search(api, job_name="products", query="x", limit=50, category="kitchen"))) == {10, 11, 12}
    assert set(ids(search(api, job_name="products", query="x", limit=50, category="kitchen", stock="lt.115"))) \
        == {10, 11}  # several filters: all of them


def test_filter_grammar_errors(api):
    assert_error(search(api, job_name="products", query="x", price="between.1"), 400, "InvalidInputError",
                 "Unknown operator: between")
    assert_error(search(api, job_name="products", query="x", price="3.5"), 400, "InvalidInputError",
                 "Unknown operator: 3", "price=eq.3.5")
    assert_error(search(api, job_name="products", query="x", price="GT.5"), 400, "InvalidInputError",
                 "Unknown operator: GT")  # case-sensitive, as pg_vectorize
    assert_error(search(api, job_name="products", query="x", price="lt.cheap"), 400, "InvalidInputError",
                 "require numeric values", "cheap")
    assert_error(search(api, job_name="products", query="x", price="gt.nan"), 400, "InvalidInputError",
                 "not a finite number")
    assert_error(search(api, job_name="products", query="x", colour="red"), 400, "InvalidInputError",
                 "filter column 'colour' does not exist")
    assert_error(api.client.get(SEARCH, params=[("conn_id", "api_db"), ("job_name", "products"), ("query", "x"),
                                                ("price", "gt.1"), ("price", "lt.9")]),
                 400, "InvalidInputError", "given twice")
    assert_error(api.client.get(SEARCH, params=[("conn_id", "api_db"), ("job_name", "products"), ("query", "x"),
                                                ("limit", "1"), ("limit", "2")]),  # before: the last one won
                 400, "InvalidInputError", "parameter 'limit' is given twice; give it once")
    assert_error(search(api, job_name="products", query="x", category="gt.5"), 400, "InvalidInputError",
                 "does not fit its column")  # a number against a text column


def test_a_filter_value_of_another_type_than_its_column_is_refused_naming_column_type_and_value(api):
    """PostgreSQL's refusal (a text value for an integer, boolean or timestamp column, a number against a text
    column) is answered with its first line, and the column, its type and the value: not its statement."""
    before = snapshot(api.db)
    cases = [
        ({"stock": {"eq": "abc"}}, "column 'stock' (integer) eq 'abc'", 'invalid input syntax for type integer: "abc"'),
        ({"category": {"gt": 5}, "stock": {"gt": 1}}, "column 'category' (character varying(40)) gt 5",
         "operator does not exist: character varying > "),
        ({"in_stock": {"eq": "maybe"}, "price": {"gt": 1}}, "column 'in_stock' (boolean) eq 'maybe'",
         'invalid input syntax for type boolean: "maybe"'),
        ({"updated_at": "yesterday-ish"}, "column 'updated_at' (timestamp with time zone) eq 'yesterday-ish'",
         "invalid input syntax for type timestamp with time zone"),
    ]
    for filters, named, problem in cases:
        for mode in ("vector", "hybrid"):
            response = api.client.post(SEARCH, params={"conn_id": "api_db"}, json={
                "job_name": "products", "query": "phone", "mode": mode, "filters": filters})
            assert_error(response, 400, "InvalidInputError", "a filter value does not fit its column: " + named,
                         problem)
            detail = response.json()["detail"]
            assert not any(word in detail for word in ("LINE", "HINT", "SELECT", "^")), detail
            assert detail.count("column '") == 1, detail  # the filter at fault, not the others
    got = search(api, job_name="products", query="x", category="gt.5")  # pg_vectorize's grammar, GET
    assert_error(got, 400, "InvalidInputError", "column 'category' (character varying(40)) gt 5")
    assert "LINE" not in got.text
    assert_error(rag(api, chat_model="openai/x", chat_conn_id="chat", filters={"stock": "eq.abc"}), 400,
                 "InvalidInputError", "column 'stock' (integer) eq 'abc'")
    assert snapshot(api.db) == before


# -- projects: create, re-create, conflict, drop --------------------------------------------------------------
def new_table(api: Api) -> str:
    table = f"t_{uuid.uuid4().hex[:8]}"
    create_products(api.db, table=table)
    return table


def test_create_table_is_idempotent_and_conflicts_name_fields(api):
    table = new_table(api)
    body = {"job_name": table, "src_table": table, "src_schema": "public", "src_columns": ["name", "description"],
            "primary_key": "product_id", "update_time_col": "updated_at",
            "model": "sentence-transformers/all-MiniLM-L6-v2"}
    created = api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json=body)
    assert created.status_code == 200, created.text
    assert created.json()["created"] is True and created.json()["dimensions"] == 384
    assert isinstance(created.json()["id"], int)
    before = snapshot(api.db)
    again = api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json=body)
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["id"] == created.json()["id"]
    conflict = api.client.post("/api/v1/table", params={"conn_id": "api_db"},
                               json={**body, "src_columns": ["name"], "index_dist_type": "pgv_hnsw_l2"})
    assert_error(conflict, 409, "ProjectConflictError", "columns", "index_dist_type")
    assert snapshot(api.db) == before
    listed = api.client.get("/api/v1/projects/" + table, params={"conn_id": "api_db"}).json()
    assert listed["params"]["columns"] == ["name", "description"]
    assert listed["status"]["total_rows"] == 24 and listed["status"]["embedded_rows"] == 0
    assert listed["freshness"]["stale"] == 24


def test_create_table_keeps_the_encoding_and_searches_with_the_query_prompt(api, model):
    table = new_table(api)
    body = {"job_name": table, "src_table": table, "src_columns": ["name", "description"],
            "primary_key": "product_id", "document_prompt": "passage: ", "query_prompt": "query: "}
    assert api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json=body).status_code == 200
    listed = api.client.get("/api/v1/projects/" + table, params={"conn_id": "api_db"}).json()
    assert listed["params"]["encoding"] == {"document_prompt": "passage: ", "query_prompt": "query: "}
    conflict = api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json={**body, "query_prompt": ""})
    assert_error(conflict, 409, "ProjectConflictError", "encoding")
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    VectorizeHook(postgres_conn_id=api.db.conn_id).generate_embeddings(table)
    rows = api.client.get("/api/v1/search", params={"conn_id": "api_db", "job_name": table, "mode": "vector",
                                                    "query": "something to make coffee", "limit": 3}).json()
    vectors = {k: v.to_numpy() for k, v in api.db.execute(f"SELECT product_id, embeddings FROM vectorize._embeddings_{table}")}
    query = model.encode(["query: something to make coffee"], normalize_embeddings=True, show_progress_bar=False)[0]
    best = max(vectors, key=lambda k: float(query @ vectors[k] / np.linalg.norm(vectors[k])))
    assert rows[0]["product_id"] == best


def test_create_table_bad_input_changes_nothing(api):
    table = new_table(api)
    before = snapshot(api.db)
    body = {"job_name": table, "src_table": table, "src_columns": ["name", "colour"], "primary_key": "product_id"}
    assert_error(api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json=body), 400,
                 "InvalidInputError", "colour")
    bad_name = {**body, "job_name": "x; DROP TABLE products", "src_columns": ["name"]}
    assert_error(api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json=bad_name), 400,
                 "InvalidInputError", "[A-Za-z0-9_]+")
    missing_field = {k: v for k, v in body.items() if k != "primary_key"}
    response = api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json=missing_field)
    assert response.status_code == 422 and "primary_key" in response.text
    assert snapshot(api.db) == before


def test_delete_table_then_404(api):
    table = new_table(api)
    body = {"job_name": table, "src_table": table, "src_columns": ["name"], "primary_key": "product_id"}
    assert api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json=body).status_code == 200
    deleted = api.client.delete(f"/api/v1/table/{table}", params={"conn_id": "api_db"})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["job_name"] == table and deleted.json()["dropped"] is True
    assert api.db.scalar("SELECT count(*) FROM vectorize.job WHERE name = %s", [table]) == 0
    assert api.db.scalar("SELECT count(*) FROM " + table) == 24  # the source stays
    assert_error(api.client.delete(f"/api/v1/table/{table}", params={"conn_id": "api_db"}), 404,
                 "ProjectNotFoundError", table)


def test_alter_pauses_and_resumes_a_project_and_refuses_bad_input_with_its_message(api):
    table = project_of_new_table(api)
    url, params = f"/api/v1/table/{table}", {"conn_id": "api_db"}
    paused = api.client.patch(url, params=params, json={"schedule": "manual"})
    assert paused.status_code == 200, paused.text
    assert paused.json() == {"job_name": table, "changed": {"schedule": ["realtime", "manual"]}}
    altered = api.client.patch(url, params=params, json={"src_columns": ["name", "description"],
                                                         "update_time_col": "updated_at"}).json()
    assert altered["changed"] == {"src_columns": [["name"], ["name", "description"]],  # the body's names
                                  "update_time_col": [None, "updated_at"]}
    assert api.client.patch(url, params=params, json={"update_time_col": None}).json()["changed"] == {
        "update_time_col": ["updated_at", None]}
    reindexed = api.client.patch(url, params=params, json={"hnsw_m": 8, "halfvec_index": True}).json()
    assert reindexed["changed"] == {"hnsw_m": [None, 8], "halfvec_index": [False, True]}
    assert reindexed["index"]["rebuilt"]
    assert api.client.patch(url, params=params, json={"hnsw_m": None}).json()["changed"] == {"hnsw_m": [8, None]}
    before = snapshot(api.db)
    assert_error(api.client.patch(url, params=params, json={"hnsw_m": 40}), 400, "InvalidInputError",
                 "hnsw_ef_construction (64, the default) must be at least 2 × hnsw_m (80)")
    assert_error(api.client.patch(url, params=params, json={"hnsw_m": 1}), 422, "RequestValidationError")
    assert_error(api.client.patch(url, params=params, json={"src_columns": ["colour"]}), 400, "InvalidInputError",
                 "text column 'colour' does not exist")
    assert_error(api.client.patch(url, params=params, json={"schedule": "hourly"}), 400, "InvalidInputError",
                 "schedule 'hourly' is not supported")
    assert_error(api.client.patch(url, params=params, json={"model": "openai/x"}), 422, "RequestValidationError")
    assert_error(api.client.patch("/api/v1/table/nope", params=params, json={"schedule": "manual"}), 404,
                 "ProjectNotFoundError")
    assert snapshot(api.db) == before
    assert api.client.delete(url, params=params).status_code == 200


def test_list_projects_with_status(api):
    projects = {p["name"]: p for p in api.reader.get("/api/v1/projects", params={"conn_id": "api_db"}).json()}
    assert projects["products"]["status"]["embedded_rows"] == 24
    assert projects["products_chunked"]["status"]["chunks"] >= 24
    assert projects["products"]["freshness"]["pending"] == 0
    light = api.reader.get("/api/v1/projects", params={"conn_id": "api_db", "status": "false"}).json()
    assert "status" not in light[0] and {p["name"] for p in light} >= {"products", "products_chunked"}


def project_of_new_table(api) -> str:
    """A new table of the products and a project of the same name over ``name``; returns the name."""
    table = new_table(api)
    body = {"job_name": table, "src_table": table, "src_columns": ["name"], "primary_key": "product_id"}
    assert api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json=body).status_code == 200
    return table


def listed(api) -> dict[str, dict]:
    return {p["name"]: p for p in api.reader.get("/api/v1/projects", params={"conn_id": "api_db"}).json()}


def test_a_project_whose_source_is_gone_is_listed_with_the_reason_and_answers_409(api):
    table = project_of_new_table(api)
    api.db.execute(f"DROP TABLE {table}")
    projects = listed(api)
    assert projects[table]["status"] is None and "no longer exists" in projects[table]["error"]
    assert projects["products"]["status"]["embedded_rows"] == 24  # the others as ever
    assert_error(search(api, job_name=table, query="phone"), 409, "SourceTableMissingError",
                 f"the source table public.{table} of project '{table}' no longer exists")
    assert api.client.delete(f"/api/v1/table/{table}", params={"conn_id": "api_db"}).status_code == 200


def test_a_project_whose_source_columns_changed_is_listed_with_the_reason_and_answers_409(api):
    table = project_of_new_table(api)
    api.db.execute(f"ALTER TABLE {table} RENAME COLUMN name TO title")
    assert "has no column 'name' any more" in listed(api)[table]["error"]
    api.db.execute(f"ALTER TABLE {table} RENAME COLUMN title TO name; CREATE TABLE {table}_child () INHERITS ({table})")
    projects = listed(api)
    assert projects[table]["status"] is None and "has child tables through INHERITS now" in projects[table]["error"]
    assert projects["products"]["status"]["embedded_rows"] == 24  # the others as ever
    api.db.execute(f"DROP TABLE {table}_child; ALTER TABLE {table} RENAME COLUMN product_id TO id")
    assert_error(search(api, job_name=table, query="phone"), 409, "SourceColumnsMissingError",
                 f"the source table public.{table} of project '{table}' has no column 'product_id' any more")
    assert api.client.delete(f"/api/v1/table/{table}", params={"conn_id": "api_db"}).status_code == 200


def test_a_project_of_an_earlier_version_is_listed_with_its_status_and_can_be_paused(api):
    """A project made before the errors and bulk tables (2026-11-24) made the whole list answer 500 (a raw
    UndefinedTable), hiding every project of the connection, and PATCH's pause a 500 too: it is listed with
    its counts, its own entry answers, and PATCH moves it to today's layout and pauses it."""
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    table = embedded_project_of_new_table(api)
    VectorizeHook(postgres_conn_id=api.db.conn_id).alter_project(table, schedule="realtime")
    api.db.execute(f"DROP TABLE vectorize._errors_{table}, vectorize._bulk_{table};"
                   f" UPDATE {table} SET description = 'a garden hose' WHERE product_id = 1")

    answer = api.reader.get("/api/v1/projects", params={"conn_id": "api_db"})
    one = api.reader.get(f"/api/v1/projects/{table}", params={"conn_id": "api_db"})
    paused = api.client.patch(f"/api/v1/table/{table}", params={"conn_id": "api_db"}, json={"schedule": "manual"})

    assert answer.status_code == 200, answer.text
    projects = {p["name"]: p for p in answer.json()}
    assert projects[table]["status"]["pending"] == 1 and projects[table]["freshness"]["failed"] == 0
    assert projects["products"]["status"]["embedded_rows"] == 24
    assert one.status_code == 200 and one.json()["freshness"]["stale"] == 1, one.text
    assert paused.status_code == 200 and paused.json()["changed"] == {"schedule": ["realtime", "manual"]}, paused.text
    assert api.db.scalar(f"SELECT to_regclass('vectorize._errors_{table}') IS NOT NULL")
    assert api.client.delete(f"/api/v1/table/{table}", params={"conn_id": "api_db"}).status_code == 200


def test_a_defect_of_one_project_is_listed_with_it_not_a_500_of_the_list(api):
    """Any error of one project's status (here its queue table renamed by hand: a raw UndefinedTable) is listed
    with that project, its details only in the server's log; the list answered 500, hiding every project."""
    table = project_of_new_table(api)
    api.db.execute(f"ALTER TABLE vectorize._pending_{table} RENAME TO _aside_{table}")

    answer = api.reader.get("/api/v1/projects", params={"conn_id": "api_db"})

    assert answer.status_code == 200, answer.text
    projects = {p["name"]: p for p in answer.json()}
    assert projects[table]["status"] is None
    assert projects[table]["error"] == "internal error (UndefinedTable); the server's log has the details"
    assert projects["products"]["status"]["embedded_rows"] == 24  # the others as ever
    assert api.reader.get(f"/api/v1/projects/{table}", params={"conn_id": "api_db"}).status_code == 500
    api.db.execute(f"ALTER TABLE vectorize._aside_{table} RENAME TO _pending_{table}")
    assert api.client.delete(f"/api/v1/table/{table}", params={"conn_id": "api_db"}).status_code == 200


def test_a_database_that_cannot_serve_still_fails_the_list():
    """Only a database that cannot serve fails the whole list (503), not one project's error."""
    import psycopg

    from airflow_vectorize.api.routes import _with_status
    from airflow_vectorize.exceptions import DatabaseConnectionError

    class Failing:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def get_status(self, name: str) -> dict:
            raise self.error

    for down in (DatabaseConnectionError("down"), psycopg.OperationalError("connection refused")):
        with pytest.raises(type(down)):
            _with_status(Failing(down), {"name": "shop"}, listing=True)


def test_health(api):
    health = api.reader.get("/health", params={"conn_id": "api_db"})
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["status"] == "ok" and body["database"]["reachable"] and body["database"]["pgvector"]
    assert body["auth"] == "tokens"
    down = api.reader.get("/health", params={"conn_id": "down"})
    assert down.status_code == 503 and down.json()["database"]["reachable"] is False


def test_the_standalone_server_warms_up_as_it_starts(api, embedding_server_session):
    """One search in each project of the connections it serves, so the first request finds the model loaded;
    a connection it cannot read is reported (never with its secret), not fatal."""
    deadline = time.monotonic() + 120
    while (warm := api.reader.get("/health", params={"conn_id": "api_db"}).json()["warm_up"])["state"] != "done":
        assert warm["state"] == "running" and time.monotonic() < deadline, warm
        time.sleep(0.2)
    assert {"api_db/products", "api_db/products_chunked"} <= set(warm["searched"]) and not warm["skipped"]
    assert any(error.startswith("down: ") for error in warm["errors"]), warm["errors"]
    assert embedding_server_session.api_key not in str(warm)  # "chat" is an OpenAI connection, not a database
    health = api.reader.get("/health", params={"conn_id": "api_db"}).json()
    assert any(name.startswith("sentence-transformers/all-MiniLM-L6-v2") for name in health["models"])


def test_warm_up_of_a_connection_goes_on_while_another_database_does_not_answer(products, hook, monkeypatch):
    """A thread per connection: a database that accepts connections and never answers holds up no other; the
    warm-up is done (with its error) once that connection fails."""
    import socket
    import threading

    from airflow_vectorize.api.pool import Hooks
    from airflow_vectorize.api.warm_up import WarmUp

    hook.create_project("shop", "products", "product_id", ["name", "description"])
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    monkeypatch.setenv("AIRFLOW_CONN_SILENT", f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/postgres")
    hooks, warm = Hooks(2), WarmUp()
    try:
        warm.start(hooks, ["silent", products.conn_id])
        deadline = time.monotonic() + 60
        while f"{products.conn_id}/shop" not in warm.searched:
            assert time.monotonic() < deadline and not warm.errors, warm
            time.sleep(0.1)
        assert warm.state == "running" and accepted  # the silent database still holds its thread
        for sock in (*accepted, listener):
            sock.close()
        while warm.state != "done":
            assert time.monotonic() < deadline, warm
            time.sleep(0.1)
        assert [error.split(":")[0] for error in warm.errors] == ["silent"]
    finally:
        hooks.close()


def test_the_app_warms_up_as_it_starts_and_closes_its_search_sessions_as_it_stops(products, hook):
    """The app's lifespan, in this process: started, it warms up (a search session opens); stopped, the idle
    sessions are closed — the database sees them go while the process lives on."""
    from fastapi.testclient import TestClient

    from airflow_vectorize.api.app import create_app
    from airflow_vectorize.api.auth import TokenAuth
    from airflow_vectorize.api.pool import Hooks

    hook.create_project("shop", "products", "product_id", ["name", "description"])
    token, hooks = secrets.token_urlsafe(24), Hooks(2)
    app = create_app(TokenAuth({token: False}, frozenset({products.conn_id})), hooks, warm=[products.conn_id])
    sessions = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while app.state.vectorize.warm_up.state != "done":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert app.state.vectorize.warm_up.searched == [f"{products.conn_id}/shop"]
        health = client.get("/health", params={"conn_id": products.conn_id},
                            headers={"Authorization": f"Bearer {token}"}).json()
        assert health["search_sessions"][products.conn_id]["sessions"] == 1
        deadline = time.monotonic() + 10
        while products.scalar(sessions) != 1:  # the backends of connections closed a moment ago may linger
            assert time.monotonic() < deadline, products.scalar(sessions)
            time.sleep(0.05)
    assert hooks.stats()[products.conn_id]["sessions"] == 0
    deadline = time.monotonic() + 10
    while products.scalar(sessions):  # the backend ends as the session's connection closes
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_warm_up_is_on_unless_turned_off_and_searches_only_models_computed_here():
    from airflow_vectorize.api import warm_up

    assert warm_up.enabled({}) and warm_up.enabled({"VECTORIZE_API_WARM_UP": "1"})
    assert not any(warm_up.enabled({"VECTORIZE_API_WARM_UP": v}) for v in ("0", "false", "No", " off "))
    local = {"transformer": "sentence-transformers/all-MiniLM-L6-v2", "params": {}}
    assert warm_up.computed_here(local)
    assert not warm_up.computed_here({**local, "params": {"model_conn_id": "tei"}})  # a self-hosted server's
    assert not warm_up.computed_here({"transformer": "openai/text-embedding-3-small", "params": {}})


# -- RAG ---------------------------------------------------------------------------------------------------
def rag(api: Api, **body) -> httpx.Response:
    return api.client.post("/api/v1/rag", params={"conn_id": "api_db"},
                           json={"job_name": "products", "query": "Which phone has a good camera?", **body})


def test_rag_answers_with_context(api, chat_server, embedding_server_session):
    embedding_server_session.reset()
    response = rag(api, chat_model=f"openai/{chat_server.model}", chat_conn_id="chat", num_context=2,
                   max_tokens=8)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["context"][0]["record_id"] == 1
    assert answer["chat_response"] is not None and answer["usage"]["completion_tokens"] >= 1
    assert answer["context"][0]["similarity_score"] > 0 and answer["context"][0]["token_ct"] > 0
    assert answer["finish_reason"] in ("stop", "length")  # why the model stopped: 'length' is a cut answer
    embedding_server_session.reset(faults=[("chat_answer", "", "content_filter")])
    assert_error(rag(api, chat_model=f"openai/{chat_server.model}", chat_conn_id="chat", num_context=1), 502,
                 "ModelResponseError", "'chat'", "finish_reason 'content_filter'")


def test_rag_model_failures_name_connection_and_model(api, chat_server, embedding_server_session):
    model = f"openai/{chat_server.model}"
    embedding_server_session.reset(default=("status", 500, None, "upstream exploded"))
    assert_error(rag(api, chat_model=model, chat_conn_id="chat"), 502, "ModelRequestError",
                 "'chat'", "upstream exploded")
    embedding_server_session.reset(default=("slow", 5))
    assert_error(rag(api, chat_model=model, chat_conn_id="chat"), 504, "ModelTimeoutError", "'chat'")
    embedding_server_session.reset(default=("status", 429, 3600, "Rate limit reached for requests"))
    assert_error(rag(api, chat_model=model, chat_conn_id="chat"), 503, "ModelRateLimitError", "'chat'",
                 "Rate limit reached", "3600 s")
    embedding_server_session.reset()
    assert_error(rag(api, chat_model="openai/gpt-x", chat_conn_id="nowhere"), 503, "ModelConnectionError",
                 "'nowhere'", "gpt-x")
    embedding_server_session.reset(default=("status", 401, None, "Incorrect API key provided: sk-test-0123"))
    response = rag(api, chat_model=model, chat_conn_id="chat")
    assert_error(response, 502, "ModelAuthenticationError", "'chat'")
    assert embedding_server_session.api_key not in response.text and "sk-nowhere" not in response.text
    embedding_server_session.reset()
    assert_error(rag(api, chat_model="cohere/command", chat_conn_id="chat"), 400, "InvalidInputError", "cohere")


def test_a_database_connection_is_no_model_connection(api, chat_server, embedding_server_session):
    """A connection of another type than a model's (here the served database's, whose password is the
    database's) named as chat or model connection is refused by name and type: it is never sent anywhere."""
    embedding_server_session.reset()
    table = new_table(api)
    before = snapshot(api.db)
    response = rag(api, chat_model=f"openai/{chat_server.model}", chat_conn_id="api_db", max_tokens=4)
    assert_error(response, 400, "InvalidInputError", "connection 'api_db' is of type 'postgres', not a model"
                 " connection", "type 'openai'")
    body = {"job_name": table, "src_table": table, "src_columns": ["name"], "primary_key": "product_id",
            "model": "openai/text-embedding-3-small", "model_conn_id": "api_db"}
    created = api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json=body)
    assert_error(created, 400, "InvalidInputError", "'api_db' is of type 'postgres'")
    assert_error(api.client.post("/api/v1/table", params={"conn_id": "api_db"},
                                 json={**body, "model": "cohere/embed-english-v3.0"}),
                 400, "InvalidInputError", "'api_db' is of type 'postgres'", "type 'cohere'")
    assert embedding_server_session.requests == []
    assert snapshot(api.db) == before


# -- authentication and authorization ----------------------------------------------------------------------
def test_a_default_model_connection_is_authorized_as_a_named_one(api, chat_server, embedding_server_session):
    """openai_default is defined in the server's environment but not served: a request that would use it —
    naming it, or leaving chat_conn_id / model_conn_id out — is refused alike, before anything reaches it."""
    embedding_server_session.reset()
    table = new_table(api)
    before = snapshot(api.db)
    model = f"openai/{chat_server.model}"
    for named in ({"chat_conn_id": "openai_default"}, {}):
        for client in (api.client, api.reader):
            response = client.post("/api/v1/rag", params={"conn_id": "api_db"}, json={
                "job_name": "products", "query": "Which phone has a good camera?", "chat_model": model,
                "max_tokens": 4, **named})
            assert_error(response, 403, "Forbidden", "'openai_default' is not served here")
    body = {"job_name": table, "src_table": table, "src_columns": ["name"], "primary_key": "product_id",
            "model": "openai/text-embedding-3-small", "dimensions": 8}
    for named in ({"model_conn_id": "openai_default"}, {}):
        created = api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json={**body, **named})
        assert_error(created, 403, "Forbidden", "'openai_default' is not served here")
    ollama = api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json={**body, "model": "ollama/x"})
    assert_error(ollama, 403, "Forbidden", "'ollama_default' is not served here")  # each provider's default
    assert embedding_server_session.requests == []
    assert snapshot(api.db) == before
    # a served one is used as ever; a local model needs none
    assert rag(api, chat_model=model, chat_conn_id="chat_patient", max_tokens=4).status_code == 200
    local = api.client.post("/api/v1/table", params={"conn_id": "api_db"},
                            json={**body, "model": "sentence-transformers/all-MiniLM-L6-v2", "dimensions": None})
    assert local.status_code == 200, local.text
    assert api.client.delete(f"/api/v1/table/{table}", params={"conn_id": "api_db"}).status_code == 200


def every_route(api: Api) -> list[tuple[str, str]]:
    """(method, path) of every route in the OpenAPI document (path parameters filled in)."""
    paths = api.anonymous.get("/openapi.json").json()["paths"]
    return [(method.upper(), path.replace("{job_name}", "products"))
            for path, methods in paths.items() for method in methods] + [("GET", "/ui")]


def test_every_route_refuses_a_missing_or_bad_token(api):
    routes = every_route(api)
    assert len(routes) == 10  # the 9 of the OpenAPI document and the page
    for method, path in routes:
        for client, headers in ((api.anonymous, {}), (api.anonymous, {"Authorization": "Bearer not-a-token"}),
                                (api.anonymous, {"Authorization": f"Basic {WRITE_TOKEN}"})):
            response = client.request(method, path, params={"conn_id": "api_db"}, headers=headers,
                                      json={"job_name": "products"} if method in ("POST", "PATCH") else None)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    assert api.db.scalar("SELECT count(*) FROM vectorize.job WHERE name = 'products'") == 1


def test_read_token_cannot_write_and_connections_are_allow_listed(api):
    table = new_table(api)
    body = {"job_name": table, "src_table": table, "src_columns": ["name"], "primary_key": "product_id"}
    before = snapshot(api.db)
    assert_error(api.reader.post("/api/v1/table", params={"conn_id": "api_db"}, json=body), 403, "Forbidden",
                 "read-only")
    assert_error(api.reader.delete("/api/v1/table/products", params={"conn_id": "api_db"}), 403, "Forbidden")
    assert_error(api.reader.patch("/api/v1/table/products", params={"conn_id": "api_db"},
                                  json={"schedule": "manual"}), 403, "Forbidden", "creating, altering and dropping")
    assert snapshot(api.db) == before
    assert search(api, job_name="products", query="x").status_code == 200
    assert_error(api.client.get(SEARCH, params={"job_name": "products", "query": "x", "conn_id": "other"}), 403,
                 "Forbidden", "'other'", "not served here")
    assert_error(api.client.get(SEARCH, params={"job_name": "products", "query": "x"}), 403, "Forbidden",
                 "postgres_default")  # the default connection is not in this server's list


def test_the_user_cache_keeps_users_for_its_time_and_never_past_the_token_s_expiry():
    from airflow_vectorize.api.auth import UserCache

    cache = UserCache(seconds=60, size=2)
    cache.put(b"a", "alice", time.time() + 3600)
    cache.put(b"b", "bob", time.time() - 1)  # the token expired: not kept
    assert cache.get(b"a") == "alice" and cache.get(b"b") is None
    cache.put(b"c", "carol", time.time() + 3600)
    cache.put(b"d", "dave", time.time() + 3600)  # full: the oldest goes
    assert [cache.get(k) for k in (b"a", b"c", b"d")] == [None, "carol", "dave"]
    short = UserCache(seconds=0.2)
    short.put(b"a", "alice", time.time() + 3600)
    assert short.get(b"a") == "alice"
    time.sleep(0.25)
    assert short.get(b"a") is None
    never = UserCache(seconds=0)
    never.put(b"a", "alice", time.time() + 3600)
    assert never.get(b"a") is None


def test_a_cache_time_that_is_not_a_number_is_refused_by_name(monkeypatch):
    from airflow_vectorize.api.auth import AirflowAuth

    monkeypatch.setenv("VECTORIZE_API_AUTH_CACHE_SECONDS", "5s")
    with pytest.raises(ValueError, match=r"VECTORIZE_API_AUTH_CACHE_SECONDS must be a number of seconds .* '5s'"):
        AirflowAuth()
    monkeypatch.setenv("VECTORIZE_API_AUTH_CACHE_SECONDS", "0.5")
    assert AirflowAuth().users.seconds == 0.5


def test_the_page_is_served_behind_the_token(api):
    page = api.reader.get("/ui")
    assert page.status_code == 200 and "<title>Vectorize</title>" in page.text
    form = api.anonymous.get("/ui")
    assert form.status_code == 401 and "token" in form.text
    with_cookie = api.anonymous.get("/ui", cookies={"vectorize_token": READ_TOKEN})
    assert with_cookie.status_code == 200


def test_openapi_document_describes_every_route(api):
    document = api.anonymous.get("/openapi.json").json()
    assert set(document["paths"]) == {"/api/v1/search", "/api/v1/rag", "/api/v1/table", "/api/v1/table/{job_name}",
                                      "/api/v1/projects", "/api/v1/projects/{job_name}", "/health"}
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {"get", "post"} <= set(document["paths"]["/api/v1/search"])
    assert "404" in document["paths"]["/api/v1/search"]["get"]["responses"]
    assert "finish_reason" in document["components"]["schemas"]["RagAnswer"]["properties"]


# -- hostile input -----------------------------------------------------------------------------------------
def test_hostile_input_is_refused_and_changes_nothing(api):
    before = snapshot(api.db)
    injection = "products'; DROP TABLE products; --"
    assert_error(search(api, job_name=injection, query="x"), 400, "InvalidInputError", "[A-Za-z0-9_]+")
    assert_error(api.client.delete(f"/api/v1/table/{injection}", params={"conn_id": "api_db"}), 400,
                 "InvalidInputError")
    assert_error(search(api, job_name="products", query="x", **{"price; DROP TABLE products": "1"}), 400,
                 "InvalidInputError", "does not exist")
    assert_error(search(api, job_name="products", query="x", price="eq.1; DROP TABLE products"), 400,
                 "InvalidInputError", "does not fit its column")
    # A value is a bound parameter: compared as the text it is, it matches no row.
    assert search(api, job_name="products", query="x", category="x' OR '1'='1").json() == []
    statuses = [
        search(api, job_name="products", query="x", limit=10 ** 9).status_code,
        search(api, job_name="products", query="x", limit=0).status_code,
        search(api, job_name="products", query="x", mode="drop").status_code,
        api.client.post(SEARCH, params={"conn_id": "api_db"},
                        json={"job_name": "products", "query": "x" * 1_000_000}).status_code,
        api.client.post(SEARCH, params={"conn_id": "api_db"}, json=["job_name", "products"]).status_code,
        api.client.post(SEARCH, params={"conn_id": "api_db"},
                        json={"job_name": "products", "query": {"$ne": 1}}).status_code,
        api.client.post(SEARCH, params={"conn_id": "api_db"},
                        json={"job_name": "products", "query": "x", "surprise": 1}).status_code,
        api.client.post(SEARCH, params={"conn_id": "api_db"}, content=b'{"job_name": "products", "query": "\xff"}',
                        headers={"Content-Type": "application/json"}).status_code,
        api.client.post(SEARCH, params={"conn_id": "api_db"}, content=b"not json",
                        headers={"Content-Type": "application/json"}).status_code,
        api.client.get(SEARCH + "?conn_id=api_db&job_name=products&query=%FF%FE").status_code,
        api.client.get(SEARCH + "?conn_id=api_db&job_name=products&query=x&category=%C3%28").status_code,
        api.client.post(SEARCH, params={"conn_id": "api_db"},
                        json={"job_name": "products", "query": "x\x00y", "mode": "hybrid"}).status_code,
        api.client.post(SEARCH, params={"conn_id": "api_db"},
                        json={"job_name": "products", "query": "x", "filters": {"category": "a\x00b"}}).status_code,
        # JSON escapes of lone surrogates: not text the model or PostgreSQL takes
        api.client.post(SEARCH, params={"conn_id": "api_db"}, content=b'{"job_name": "products", "query": "\\ud800"}',
                        headers={"Content-Type": "application/json"}).status_code,
        api.client.post(SEARCH, params={"conn_id": "api_db"}, headers={"Content-Type": "application/json"},
                        content=b'{"job_name": "products", "query": "x", "filters": {"category": "\\udfff"}}',
                        ).status_code,
    ]
    assert all(400 <= status < 500 for status in statuses), statuses
    long_get = api.client.get(SEARCH, params={"conn_id": "api_db", "job_name": "products", "query": "x" * 60_000})
    assert long_get.status_code == 422, long_get.text  # a 1 MB URL: see test_a_1_mb_url_is_refused
    assert snapshot(api.db) == before


def test_a_1_mb_url_is_refused(api):
    """HTTP clients refuse to send it (httpx stops at 64 kB): a raw request line of 1 MB gets a 4xx."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=30)
    connection.putrequest("GET", f"{SEARCH}?conn_id=api_db&job_name=products&query={'x' * 1_000_000}")
    connection.putheader("Authorization", f"Bearer {WRITE_TOKEN}")
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    assert 400 <= status < 500, status


# -- concurrency -------------------------------------------------------------------------------------------
QUERIES = ["mobile phone with a good camera", "laptop for travel", "noise cancelling headphones", "kitchen knife",
           "tent for camping", "running shoes", "tablet for drawing", "coffee machine"]


def test_32_clients_for_30_seconds_without_errors(api):
    """32 concurrent clients, each sending searches (GET hybrid, POST vector) back to back for 30 s."""

    async def client(number: int, deadline: float, outcomes: list[int]) -> None:
        async with httpx.AsyncClient(base_url=api.server.url, timeout=30,
                                     headers={"Authorization": f"Bearer {READ_TOKEN}"}) as http:
            i = number
            while time.monotonic() < deadline:
                query = QUERIES[i % len(QUERIES)]
                if i % 2:
                    response = await http.get(SEARCH, params={"conn_id": "api_db", "job_name": "products",
                                                              "query": query, "limit": 5})
                else:
                    response = await http.post(SEARCH, params={"conn_id": "api_db"}, json={
                        "job_name": "products", "query": query, "limit": 5, "mode": "vector"})
                ok = response.status_code == 200 and len(response.json()) == 5
                outcomes.append(200 if ok else response.status_code)
                i += 1

    async def run() -> list[int]:
        outcomes: list[int] = []
        deadline = time.monotonic() + 30
        await asyncio.gather(*(client(n, deadline, outcomes) for n in range(32)))
        return outcomes

    outcomes = asyncio.run(run())
    errors = [status for status in outcomes if status != 200]
    assert len(outcomes) > 100 and not errors, (len(outcomes), errors[:10])
    health = api.reader.get("/health", params={"conn_id": "api_db"}).json()
    model = health["models"]["sentence-transformers/all-MiniLM-L6-v2"]
    assert model["largest_batch"] > 1  # concurrent queries were embedded together
    assert model["model_calls"] < model["texts"]


def test_a_model_connection_named_as_the_database_is_refused_without_connecting(api, embedding_server_session):
    """``chat`` is served (RAG uses it), but it is no database: 400 naming it, not an outage, and its host is
    never asked to log in with the model's key."""
    embedding_server_session.reset()
    for response in (api.client.get(SEARCH, params={"conn_id": "chat", "job_name": "products", "query": "x"}),
                     api.client.get("/api/v1/projects", params={"conn_id": "chat"})):
        assert_error(response, 400, "InvalidInputError",
                     "connection 'chat' is a 'openai' connection, not a PostgreSQL database")
    assert embedding_server_session.requests == []


def test_a_model_too_wide_for_an_hnsw_index_is_a_400_naming_the_way_out(api, embedding_server_session):
    embedding_server_session.reset(default=("tiled", 3072))
    table = new_table(api)
    before = snapshot(api.db)
    body = {"job_name": table, "src_table": table, "src_columns": ["name"], "primary_key": "product_id",
            "model": "openai/MiniLM", "model_conn_id": "chat"}
    response = api.client.post("/api/v1/table", params={"conn_id": "api_db"}, json=body)
    embedding_server_session.reset()
    assert_error(response, 400, "InvalidInputError", "3072-dimensional vectors", "pass halfvec_index=True")
    assert snapshot(api.db) == before


def test_only_a_database_that_cannot_serve_is_a_503(database):
    """A statement past one of PostgreSQL's limits is no outage: the API answers it as the defect it is."""
    import psycopg

    from airflow_vectorize.api.errors import unavailable

    with pytest.raises(psycopg.errors.ProgramLimitExceeded) as limit:
        database.execute("SELECT repeat('x', 2000000)::tsvector")
    assert not unavailable(limit.value)
    with pytest.raises(psycopg.OperationalError) as down:
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", connect_timeout=2)
    assert unavailable(down.value)


def test_database_is_unreachable_503(api):
    assert_error(api.client.get(SEARCH, params={"conn_id": "down", "job_name": "products", "query": "x"}), 503,
                 "DatabaseConnectionError")


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="Debian's chromium is not installed")
def test_the_page_signs_in_with_a_token_and_asks(api, chat_server, embedding_server_session):
    """Standalone, in a real browser: the token form, then the RAG box shows the answer and its context."""
    from playwright.sync_api import expect, sync_playwright

    embedding_server_session.reset()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto(f"{api.server.url}/ui?conn_id=api_db")
            page.get_by_placeholder("token").fill(READ_TOKEN)
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#projects tr[data-project='products']")).to_be_visible(timeout=30_000)
            page.locator("#rag-project").select_option("products")
            page.locator("#rag-query").fill("Which phone has a good camera?")
            page.locator("#rag-model").fill(f"openai/{chat_server.model}")
            page.locator("#rag-conn").fill("chat_patient")
            page.locator("#rag-button").click()
            expect(page.locator("#rag-answer")).to_be_visible(timeout=60_000)
            first = page.locator("#rag-context-rows tbody tr").first
            expect(first.locator("td").first).to_have_text("1")  # record_id of the Pixel 9
            assert 0 < float(first.locator("td").nth(1).inner_text()) <= 1  # its similarity_score
        finally:
            browser.close()


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="Debian's chromium is not installed")
def test_the_page_pauses_and_resumes_realtime_and_shows_why_a_project_has_no_counts(api):
    """In a real browser: Pause and Resume change the project's schedule (a read token gets the API's 403); a
    project whose source column is gone shows the message in place of its counts."""
    from playwright.sync_api import expect, sync_playwright

    table = project_of_new_table(api)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            for token in (READ_TOKEN, WRITE_TOKEN):
                context = browser.new_context()
                context.add_cookies([{"name": "vectorize_token", "value": token, "url": api.server.url}])
                page = context.new_page()
                page.goto(f"{api.server.url}/ui?conn_id=api_db")
                row = page.locator(f"#projects tr[data-project='{table}']")
                expect(row.locator("td").nth(3)).to_have_text("realtime", timeout=30_000)
                row.get_by_role("button", name="Pause").click()
                if token == READ_TOKEN:
                    expect(page.locator("#projects-error")).to_contain_text("403", timeout=30_000)
                    expect(row.locator("td").nth(3)).to_have_text("realtime")
                    context.close()
                    continue
                expect(row.locator("td").nth(3)).to_have_text("manual", timeout=30_000)
                assert listed(api)[table]["params"]["schedule"] == "manual"
                row.get_by_role("button", name="Resume").click()
                expect(row.locator("td").nth(3)).to_have_text("realtime", timeout=30_000)
                assert listed(api)[table]["params"]["schedule"] == "realtime"

                api.db.execute(f"ALTER TABLE {table} RENAME COLUMN name TO title")
                page.locator("#refresh").click()
                expect(row.locator("td.error")).to_contain_text("has no column 'name' any more", timeout=30_000)
                expect(page.locator("#projects tr[data-project='products'] td").nth(5)).to_have_text("24")
                context.close()
        finally:
            browser.close()
    assert api.client.delete(f"/api/v1/table/{table}", params={"conn_id": "api_db"}).status_code == 200


@pytest.mark.parametrize(("variables", "message"), [
    ({}, "refusing to start without authentication: set VECTORIZE_API_TOKENS"),
    ({"VECTORIZE_API_TOKENS": "short"}, "tokens must have at least 16 characters"),
    ({"VECTORIZE_API_TOKENS": "x" * 20, "VECTORIZE_API_CONN_IDS": " , "}, "no connections allowed"),
    ({"VECTORIZE_API_TOKENS": "pässwörd-token-ÄÖÜ-12345"}, "tokens must be printable ASCII without spaces"),
    ({"VECTORIZE_API_TOKENS": "x" * 20, "VECTORIZE_API_POOL_SIZE": "0"},
     "VECTORIZE_API_POOL_SIZE must be a whole number of at least 1, not '0'"),
    ({"VECTORIZE_API_TOKENS": "x" * 20, "VECTORIZE_API_POOL_SIZE": "abc"}, "not 'abc'"),
])
def test_standalone_never_starts_open(variables, message):
    """Without (good) tokens the server does not start, and says why in one line."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("VECTORIZE_API_")}
    result = subprocess.run([sys.executable, "-m", "airflow_vectorize.api", "--port", str(free_port())],
                            env={**env, **variables}, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert result.stderr.startswith("airflow-vectorize API: ")


def test_comment_lines_of_a_token_file_are_not_tokens(tmp_path):
    from airflow_vectorize.api.auth import TokenAuth, _digest

    comment = "# tokens for the vectorize api, rotated monthly"
    (tmp_path / "tokens").write_text(f"{comment}\n\n  #  {WRITE_TOKEN}\n{READ_TOKEN}\n")
    auth = TokenAuth.from_environment({"VECTORIZE_API_TOKENS_FILE": str(tmp_path / "tokens")})
    assert list(auth.grants) == [_digest(READ_TOKEN)]
