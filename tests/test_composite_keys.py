"""Composite primary keys (2-4 columns of int, text, uuid, date): create, generation (bulk, realtime queue,
partitions, per-row errors), import, search, hybrid search and drop, against the real database and model;
bad keys are refused with nothing changed."""

from __future__ import annotations

import datetime
import re
import uuid

import pytest
from conftest import concurrently, snapshot
from psycopg import sql

from airflow_vectorize import storage
from airflow_vectorize.example_data import PRODUCTS
from airflow_vectorize.exceptions import InvalidInputError

KEY = ["tenant", "region", "ticket", "opened"]  # integer, text, uuid, date
TYPES = ["integer", "text", "uuid", "date"]
COLUMNS = ["name", "description"]


def key_of(product_id: int) -> tuple[int, str, uuid.UUID, datetime.date]:
    """A product's composite key: tenants and regions repeat, so no column alone is unique."""
    return (product_id % 3, ("eu", "us")[product_id % 2], uuid.uuid5(uuid.NAMESPACE_OID, str(product_id)),
            datetime.date(2024, 1, 1) + datetime.timedelta(days=product_id % 5))


def create_tickets(db, table: str = "tickets") -> dict[tuple, str]:
    """The sample catalogue keyed by KEY; returns key -> the text a project over COLUMNS embeds."""
    db.execute(sql.SQL(
        "CREATE TABLE {} (tenant integer, region text, ticket uuid, opened date, name text NOT NULL,"
        " description text, category varchar(40), PRIMARY KEY (tenant, region, ticket, opened))"
    ).format(sql.Identifier(table)))
    texts = {}
    with db.conn.cursor() as cur:
        for product_id, name, description, category, _ in PRODUCTS:
            key = key_of(product_id)
            cur.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s, %s)").format(sql.Identifier(table)),
                        [*key, name, description, category])
            texts[key] = ", ".join(v for v in (name, description) if v is not None)
    return texts


def stored_keys(db, job: str, table: str | None = None) -> list[tuple]:
    target = sql.Identifier("vectorize", table or f"_embeddings_{job}")
    return db.execute(sql.SQL("SELECT tenant, region, ticket, opened FROM {} ORDER BY 1, 2, 3, 4").format(target))


@pytest.fixture
def tickets(database):
    database.texts = create_tickets(database)
    return database


@pytest.mark.parametrize("table_method", ["join", "append"])
def test_a_project_on_a_four_column_key(tickets, hook, model, table_method):
    texts = tickets.texts
    summary = hook.create_project("tix", "tickets", KEY, COLUMNS, table_method=table_method)

    params = tickets.scalar("SELECT params FROM vectorize.job WHERE name = 'tix'")
    assert (params["primary_key"], params["pkey_type"]) == (KEY, TYPES)  # lists, as params' columns
    assert summary["created"] and hook.get_status("tix")["pending"] == 0

    run = hook.generate_embeddings("tix")
    assert (run["embedded"], run["failed"]) == (len(texts), 0)
    embedded = '"tix_embeddings"' if table_method == "append" else "embeddings"
    source = "public.tickets" if table_method == "append" else 'vectorize."_embeddings_tix"'
    rows = tickets.execute(f"SELECT tenant, region, ticket, opened, {embedded} FROM {source}"
                           f" WHERE {embedded} IS NOT NULL")
    assert {tuple(r[:4]) for r in rows} == set(texts)
    first = next(r for r in rows if tuple(r[:4]) == key_of(7))
    assert float(model.encode(texts[key_of(7)]) @ first[4].to_numpy()) > 0.9999  # the model's vector of that row's text

    # Search: each row once, its whole key with its types; key-only, filtered and hybrid searches agree.
    found = hook.search("tix", texts[key_of(7)], num_results=3)
    assert tuple(found[0][c] for c in KEY) == key_of(7) and found[0]["similarity_score"] > 0.999
    assert isinstance(found[0]["ticket"], uuid.UUID) and isinstance(found[0]["opened"], datetime.date)
    keys_only = hook.search("tix", texts[key_of(7)], return_columns=KEY, num_results=3)
    assert [tuple(r[c] for c in KEY) for r in keys_only] == [tuple(r[c] for c in KEY) for r in found]
    region = key_of(7)[1]
    filtered = hook.search("tix", texts[key_of(7)], filters={"region": region}, num_results=5)
    assert filtered[0]["ticket"] == key_of(7)[2] and {r["region"] for r in filtered} == {region}
    hybrid = hook.hybrid_search("tix", texts[key_of(7)], num_results=5)
    assert tuple(hybrid[0][c] for c in KEY) == key_of(7)
    assert len({tuple(r[c] for c in KEY) for r in hybrid}) == len(hybrid)

    # Realtime: a changed text queues its key; one run embeds it alone; a deleted row takes its embedding.
    tickets.execute("UPDATE tickets SET description = 'now a dark roast' WHERE ticket = %s", [key_of(7)[2]])
    assert [tuple(r) for r in tickets.execute("SELECT tenant, region, ticket, opened FROM vectorize._pending_tix")] \
        == [key_of(7)]
    assert hook.generate_embeddings("tix", pending_only=True)["embedded"] == 1
    tickets.execute("DELETE FROM tickets WHERE ticket = %s", [key_of(9)[2]])
    assert hook.get_status("tix")["embedded_rows"] == len(texts) - 1


def test_drop_leaves_the_database_as_before(tickets, hook):
    hook.create_project("other", "tickets", KEY, COLUMNS)  # the catalog and a neighbour project stay
    before = snapshot(tickets)
    hook.create_project("tix", "tickets", KEY, COLUMNS, chunk_size=32, chunk_overlap=4)
    hook.generate_embeddings("tix")
    hook.drop_project("tix")
    assert snapshot(tickets) == before


@pytest.mark.parametrize("path", ["exact", "index"])
def test_chunked_generation_import_and_search(tickets, hook, exact_scan_max_pages, path):
    """Search on either path: every chunk compared (a small chunk table), or the HNSW index (as past
    EXACT_SCAN_MAX_PAGES)."""
    if path == "index":
        exact_scan_max_pages(-1)
    texts = tickets.texts
    hook.create_project("parts", "tickets", KEY, COLUMNS, chunk_size=24, chunk_overlap=4)
    assert hook.generate_embeddings("parts")["embedded"] == len(texts)
    chunks = tickets.scalar('SELECT count(*) FROM vectorize."_chunks_parts"')
    assert chunks > len(texts)
    assert set(stored_keys(tickets, "parts", "_chunks_parts")) == set(texts)

    # The same chunk vectors, imported into a second project under other column names.
    tickets.execute('CREATE TABLE upstream AS SELECT tenant AS t, region AS r, ticket AS u, opened AS o, chunk_no AS n,'
                    ' embeddings AS v FROM vectorize."_chunks_parts"')
    hook.create_project("copy", "tickets", KEY, COLUMNS, chunk_size=24, chunk_overlap=4, schedule="manual")
    imported = hook.import_embeddings("copy", "upstream", ["t", "r", "u", "o"], "v", src_chunk_col="n")
    assert (imported["imported"], imported["inserted"], imported["chunks"]) == (len(texts), len(texts), chunks)
    assert hook.generate_embeddings("copy")["embedded"] == 0  # imported = current

    query = texts[key_of(12)]
    for job in ("parts", "copy"):
        found = hook.search(job, query, num_results=5)
        assert tuple(found[0][c] for c in KEY) == key_of(12) and found[0]["chunk"]
        assert len({tuple(r[c] for c in KEY) for r in found}) == 5
        assert [tuple(r[c] for c in KEY) for r in hook.search(job, query, return_columns=KEY, num_results=5)] == \
            [tuple(r[c] for c in KEY) for r in found]
        hybrid = hook.hybrid_search(job, query, num_results=5)
        assert tuple(hybrid[0][c] for c in KEY) == key_of(12) and hybrid[0]["chunk"]
        assert hook._search_target(job).exact is (path == "exact")


@pytest.mark.parametrize("table_method, bulk", [("join", False), ("join", True), ("append", False)])
def test_import_with_a_composite_key(tickets, hook, model, table_method, bulk, monkeypatch):
    """``bulk``: the imports are large enough to rebuild the index (a join project's rewrite path)."""
    if bulk:
        monkeypatch.setattr(storage, "REBUILD_INDEX_MIN_ROWS", 10)
    texts = tickets.texts
    hook.create_project("tix", "tickets", KEY, COLUMNS, table_method=table_method, schedule="manual")
    keys = list(texts)
    vectors = model.encode([texts[k] for k in keys])
    tickets.execute("CREATE TABLE upstream (t integer, r text, u uuid, o date, v real[])")
    with tickets.conn.cursor() as cur:
        cur.executemany("INSERT INTO upstream VALUES (%s, %s, %s, %s, %s)",
                        [(*k, [float(x) for x in v]) for k, v in zip(keys, vectors)])

    first = hook.import_embeddings("tix", "upstream", ["t", "r", "u", "o"], "v")
    again = hook.import_embeddings("tix", "upstream", ["t", "r", "u", "o"], "v")

    assert (first["imported"], first["inserted"], first["index_rebuilt"]) == (len(keys), len(keys), bulk)
    assert (again["imported"], again["inserted"], again["updated"]) == (len(keys), 0, len(keys))
    assert hook.generate_embeddings("tix")["embedded"] == 0
    found = hook.search("tix", [float(x) for x in vectors[5]], num_results=1)
    assert tuple(found[0][c] for c in KEY) == keys[5]


def test_partitions_split_composite_keys(tickets, hook):
    hook.create_project("tix", "tickets", KEY, COLUMNS, schedule="manual")
    parts = []
    for index in range(3):
        hook.generate_embeddings("tix", partition_index=index, partition_count=3)
        parts.append(set(stored_keys(tickets, "tix")) - set().union(*parts))
    assert set().union(*parts) == set(tickets.texts) and sum(map(len, parts)) == len(tickets.texts)
    assert all(parts)  # a hash split: every partition got some of the 24 rows


def test_concurrent_runs_embed_every_composite_key_once(database, hook):
    """Two runs at once over 400 rows keyed by (text, integer): each row is claimed (locked) by one of them."""
    database.execute("CREATE TABLE parts (maker text, serial integer, title text, PRIMARY KEY (maker, serial))")
    database.execute("INSERT INTO parts SELECT 'maker ' || (g % 7), g, 'part ' || g || ' of a'"
                     " || repeat(' long', g % 5) || ' story' FROM generate_series(1, 400) g")
    hook.create_project("parts", "parts", ["maker", "serial"], ["title"], schedule="manual")
    results, errors = concurrently(lambda: hook.generate_embeddings("parts", batch_size=32), 2)

    assert errors == []
    assert sum(r["embedded"] for r in results) == 400 and all(r["embedded"] for r in results)  # both took part
    assert database.scalar('SELECT count(*) FROM vectorize."_embeddings_parts"') == 400


def test_a_source_column_named_b_is_no_row(database, hook):
    """A composite key's lists are read into a row of the source (keys.base_row): a column of the source named
    as that row's alias (b) is still a column, and generation and evaluation work."""
    database.execute("CREATE TABLE t (tenant int NOT NULL, id int NOT NULL, b text, body text, PRIMARY KEY (tenant, id))")
    database.execute("INSERT INTO t SELECT g % 3, g, 'x', 'document about topic ' || g FROM generate_series(1, 30) g")
    hook.create_project("jb", "t", ["tenant", "id"], ["body"], schedule="manual")

    assert hook.generate_embeddings("jb", batch_size=8)["embedded"] == 30
    assert hook.search("jb", "document about topic 3", num_results=1, return_columns=["tenant", "id"])[0]["id"] == 3
    assert hook.evaluate_retrieval("jb", [{"query": "document about topic 3", "relevant": [[0, 3]]}],
                                   k=[5])["metrics"]["recall@5"] == 1.0


def test_two_column_key_and_refused_rows(database, hook, embedding_server):
    """A 2-column (integer, varchar) key through a remote model: a refused row is recorded by its whole key,
    the rest embedded; once fixed, its error clears."""
    database.execute("CREATE TABLE notes (shop integer, code varchar(8), body text, PRIMARY KEY (code, shop))")
    database.execute("INSERT INTO notes SELECT i % 4, 'c' || i, 'note number ' || i FROM generate_series(1, 20) i")
    database.execute("UPDATE notes SET body = repeat('far too long ', 20) WHERE code = 'c7'")
    embedding_server.reset(max_input_bytes=150)
    hook.create_project("notes", "notes", ["shop", "code"], ["body"], transformer="openai/MiniLM",
                        model_conn_id="flaky")

    run = hook.generate_embeddings("notes", batch_size=8)

    assert (run["embedded"], run["failed"]) == (19, 1)
    assert database.execute("SELECT shop, code, attempts FROM vectorize._errors_notes") == [(3, "c7", 1)]
    assert hook.get_status("notes")["failed_rows"] == 1
    database.execute("UPDATE notes SET body = 'short again' WHERE code = 'c7'")
    assert hook.generate_embeddings("notes")["embedded"] == 1
    assert database.execute("SELECT count(*) FROM vectorize._errors_notes") == [(0,)]


def test_one_column_keeps_pg_vectorizes_spelling(products, hook):
    hook.create_project("shop", "products", ["product_id"], COLUMNS)  # a list of one is that column
    params = products.scalar("SELECT params FROM vectorize.job WHERE name = 'shop'")
    assert (params["primary_key"], params["pkey_type"]) == ("product_id", "integer")
    assert hook.create_project("shop", "products", "product_id", COLUMNS)["created"] is False  # the same project


BAD_KEYS = [
    (["tenant", "region"], "primary_key ['tenant', 'region'] of \"public\".\"tickets\" is not unique: it needs a"
                           " primary key or a unique index on exactly these columns"),
    (["tenant", "tenant"], "primary_key ['tenant', 'tenant'] names a column more than once"),
    (["tenant", "nope"], "primary_key column 'nope' does not exist in table \"public\".\"tickets\""),
    ([], "primary_key must be a column name or a list of column names, got []"),
    (["tenant", 3], "primary_key must be a column name or a list of column names, got ['tenant', 3]"),
]


@pytest.mark.parametrize("key, message", BAD_KEYS, ids=[m[:30] for _, m in BAD_KEYS])
def test_bad_keys_change_nothing(tickets, hook, key, message):
    hook.create_project("other", "tickets", KEY, COLUMNS)  # the catalog exists: nothing of it may change
    before = snapshot(tickets)
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        hook.create_project("tix", "tickets", key, COLUMNS)
    assert snapshot(tickets) == before


BAD_IMPORTS = [
    ("SELECT tenant AS t, region AS r, ticket AS u, opened AS o, v FROM base", ["t", "r", "u"],
     "src_primary_key ['t', 'r', 'u'] must name 4 column(s), one for each column of the key"
     " ['tenant', 'region', 'ticket', 'opened'] of project 'tix', in that order"),
    ("SELECT tenant AS t, region AS r, ticket::text AS u, opened AS o, v FROM base", ["t", "r", "u", "o"],
     "src_primary_key 'u' of \"public\".\"upstream\" is text, but the key 'ticket' of project 'tix' is uuid"),
    ("SELECT tenant AS t, region AS r, ticket AS u, opened AS o, v FROM base UNION ALL"
     " (SELECT tenant, region, ticket, opened, v FROM base LIMIT 2)", ["t", "r", "u", "o"],
     "2 duplicate key value(s); e.g. keys ['("),
    ("SELECT tenant AS t, CASE WHEN tenant = 1 THEN NULL ELSE region END AS r, ticket AS u, opened AS o, v"
     " FROM base", ["t", "r", "u", "o"], "row(s) with NULL keys"),
    ("SELECT tenant + 10 AS t, region AS r, ticket AS u, opened AS o, v FROM base", ["t", "r", "u", "o"],
     "24 row(s) with keys not found in the project's table; e.g. keys ['(1"),
]


@pytest.mark.parametrize("select, src_key, message", BAD_IMPORTS, ids=[m[:30] for *_, m in BAD_IMPORTS])
def test_bad_imports_change_nothing(tickets, hook, model, select, src_key, message):
    hook.create_project("tix", "tickets", KEY, COLUMNS, schedule="manual")
    vectors = model.encode(list(tickets.texts.values()))
    tickets.execute("CREATE TABLE base (tenant integer, region text, ticket uuid, opened date, v real[])")
    with tickets.conn.cursor() as cur:
        cur.executemany("INSERT INTO base VALUES (%s, %s, %s, %s, %s)",
                        [(*k, [float(x) for x in v]) for k, v in zip(tickets.texts, vectors)])
    tickets.execute(f"CREATE TABLE upstream AS {select}")
    before = snapshot(tickets)
    with pytest.raises(InvalidInputError) as error:
        hook.import_embeddings("tix", "upstream", src_key, "v")
    assert message in str(error.value), str(error.value)
    assert snapshot(tickets) == before


def test_rag_context_carries_the_whole_key(tickets, hook, chat):
    model, _ = chat
    hook.create_project("tix", "tickets", KEY, COLUMNS)
    hook.generate_embeddings("tix")
    query = "Which phone has a good camera?"

    result = hook.rag("tix", query, model, chat_conn_id="chat", num_context=3, max_tokens=4)

    found = hook.search("tix", query, return_columns=KEY, num_results=3)
    assert [c["record_id"] for c in result["context"]] == [[r[c] for c in KEY] for r in found]
