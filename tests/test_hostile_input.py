"""Hostile input (issue 14, point 5): every odd name, text, filter or value is either handled correctly or
refused with a typed error, and a refusal changes nothing.

Names reach PostgreSQL only as quoted identifiers and values only as bound parameters; what these tests pin
down is everything around that: names PostgreSQL would cut at 63 bytes (it does so silently, also when a
name is compared with the catalog, so a longer name would act on another object), NUL characters (which no
PostgreSQL text or name can hold), names that collide with what a project adds, texts of 1 MB, filters and
returned columns written as injections, and NaN/infinite values in imported vectors.

Refusals run against one database per module (they change nothing, and each test checks that with
``snapshot``); tests that create and drop projects get their own database.
"""

from __future__ import annotations

import re
import uuid

import numpy as np
import psycopg
import pytest
from conftest import Database, create_embeddings_table, create_products, fresh_database, snapshot
from psycopg import sql

from airflow_vectorize.exceptions import InvalidInputError, ProjectNotFoundError

N63 = "名" * 21  # 63 bytes in UTF-8
K63 = "k" * 63
C63 = "c" * 30 + "é" * 16 + "c"  # 63 bytes
E63 = "e" * 63


def exact(message: str) -> str:
    """``message`` as a regular expression matching it literally (for pytest.raises(match=...))."""
    return re.escape(message)


def outside_catalog(db: Database) -> dict:
    """``snapshot`` without the vectorize schema (its catalog stays after the last project is dropped)."""
    return {key: [row for row in value if row[0] != "vectorize"] if key in ("relations", "columns") else value
            for key, value in snapshot(db).items() if not key.startswith("vectorize.")}


# -- one database for the refusals -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def shop(postgres, model):
    """(database, hook): the sample catalogue with project ``shop`` (join, embedded), pre-computed embeddings
    ``product_embeddings`` (real[]), and tables whose names are exactly 63 bytes long."""
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    with fresh_database(postgres) as db:
        create_products(db)
        create_embeddings_table(db, model)
        db.execute(sql.SQL("CREATE TABLE {t} ({k} int PRIMARY KEY, {c} text, u timestamptz);"
                           " CREATE TABLE {e} AS SELECT * FROM product_embeddings").format(
            t=sql.Identifier(N63), k=sql.Identifier(K63), c=sql.Identifier(C63), e=sql.Identifier(E63)))
        hook = VectorizeHook(postgres_conn_id=db.conn_id)
        hook.create_project("shop", "products", "product_id", ["name", "description"])
        hook.generate_embeddings("shop")
        yield db, hook


# -- names that work ---------------------------------------------------------------------------------------
NAME_SETS = {
    "reserved-words": dict(job="select", schema="user", table="select", key="order", columns=["from", "desc"],
                           other="group", update_col="timestamp"),
    "reserved-words-append": dict(job="group_", schema="user", table="select", key="order",
                                  columns=["from", "desc"], other="group", update_col="timestamp",
                                  table_method="append"),
    "quotes-semicolons-spaces-chunked": dict(
        job="quotes", schema='a "schema"; --', table="it's a \"table\"; DROP TABLE x; --", key='id "quoted"',
        columns=["na;me", "de scription'"], other="cat egory", update_col="changed at", chunk_size=64),
    "capitals": dict(job="Shop_Items", schema="Sales", table="Products", key="ProductId",
                     columns=["Name", "Description"], other="Category", update_col="UpdatedAt"),
    "unicode-63-bytes": dict(job="j" * 38, schema="схема", table=N63, key=K63, columns=["prodüct 名前", C63],
                             other="カテゴリ", update_col="ü" * 31 + "x"),
}


@pytest.mark.parametrize("names", NAME_SETS.values(), ids=NAME_SETS.keys())
def test_hostile_names_work_end_to_end(database, hook, model, names):
    """Create, generate (with since/until on the update column), realtime queue (an insert and an update),
    search, hybrid search, import and drop on a source whose every name is hostile (capitals too: a name
    looked up as text must be quoted); the drop leaves the source as it was."""
    job, key, columns, other = names["job"], names["key"], names["columns"], names["other"]
    source = sql.Identifier(names["schema"], names["table"])
    database.execute(sql.SQL(
        "CREATE SCHEMA {schema}; CREATE TABLE {source} ({key} int PRIMARY KEY, {c0} text, {c1} text, {other} text,"
        " {updated} timestamptz NOT NULL DEFAULT now())"
    ).format(schema=sql.Identifier(names["schema"]), source=source, key=sql.Identifier(key),
             c0=sql.Identifier(columns[0]), c1=sql.Identifier(columns[1]), other=sql.Identifier(other),
             updated=sql.Identifier(names["update_col"])))
    insert = sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s)").format(source)
    for row in [(1, "laptop", "a light laptop computer", "x"), (2, "apples", "fresh green apples", "y"),
                (3, "shoes", "a pair of running shoes", "z")]:
        database.execute(insert, row)
    before = outside_catalog(database)

    summary = hook.create_project(job, names["table"], key, columns, schema=names["schema"],
                                  update_col=names["update_col"], table_method=names.get("table_method", "join"),
                                  chunk_size=names.get("chunk_size"))
    assert summary["created"] is True
    assert hook.generate_embeddings(job, since="2000-01-01", until="2100-01-01")["embedded"] == 3
    triggers = [r[0] for r in database.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1")]
    assert triggers == sorted([f"vectorize_{kind}_trigger_{job}"  # not cut
                               for kind in ("delete", "insert", "rekey", "trunc", "update")])

    found = hook.search(job, "notebook computer", num_results=1, filters={other: {"in": ["x", "y"]}},
                        return_columns=[key, columns[0]])
    assert [(r[key], r[columns[0]]) for r in found] == [(1, "laptop")]
    assert [r[key] for r in hook.hybrid_search(job, "apples", num_results=1, filters={key: {"gte": 2}})] == [2]

    database.execute(insert, (4, "phone", "a mobile phone", "w"))  # queued by the realtime triggers
    database.execute(sql.SQL("UPDATE {} SET {} = 'a green apple' WHERE {} = 2").format(
        source, sql.Identifier(columns[1]), sql.Identifier(key)))
    assert hook.get_status(job)["pending"] == 2 and hook.get_freshness(job)["pending"] == 2
    assert hook.generate_embeddings(job, pending_only=True)["embedded"] == 2

    vectors = sql.Identifier(names["schema"], 'emb "vectors"; --')
    database.execute(sql.SQL("CREATE TABLE {} ({} int, {} real[], {} int)").format(
        vectors, sql.Identifier(key), sql.Identifier("vec tör"), sql.Identifier("chunk nö")))
    with database.conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {} VALUES (%s, %s, 0)").format(vectors),
                        [(k, model.encode([t])[0].tolist()) for k, t in [(1, "laptop"), (4, "phone")]])
    imported = hook.import_embeddings(job, 'emb "vectors"; --', key, "vec tör", src_schema=names["schema"],
                                      src_chunk_col="chunk nö" if names.get("chunk_size") else None)
    assert imported["imported"] == 2

    assert hook.drop_project(job)["dropped"] is True
    database.execute(sql.SQL("DROP TABLE {}; DELETE FROM {} WHERE {} = 4").format(vectors, source, sql.Identifier(key)))
    database.execute(sql.SQL("UPDATE {} SET {} = 'fresh green apples' WHERE {} = 2").format(
        source, sql.Identifier(columns[1]), sql.Identifier(key)))
    assert outside_catalog(database) == before


# -- names that are refused ------------------------------------------------------------------------------
def cut(message_name: str, size: int, kept: str) -> str:
    return (f"{message_name} is {size} bytes long; PostgreSQL names have at most 63 bytes and it would silently"
            f" be cut to {kept!r}. Give the object's exact name.")


BAD_SOURCE_NAMES = [
    # A 64-byte name of a table that exists under its first 63 bytes: PostgreSQL would use that table.
    (dict(table=N63 + "x"), cut(f"table {N63 + 'x'!r}", 64, N63)),
    (dict(schema="s" * 64), cut(f"schema {'s' * 64!r}", 64, "s" * 63)),
    (dict(primary_key=K63 + "k"), cut(f"primary_key {K63 + 'k'!r}", 64, K63)),
    (dict(columns=[C63 + "c"]), cut(f"column {C63 + 'c'!r}", 64, C63)),
    (dict(columns=["é" * 32]), cut(f"column {'é' * 32!r}", 64, "é" * 31)),  # never half a character
    (dict(update_col="u" * 64), cut(f"update_col {'u' * 64!r}", 64, "u" * 63)),
    (dict(table="prod\x00ucts"), ("table 'prod\\x00ucts' contains a NUL character (\\x00), which PostgreSQL"
                                 " names cannot hold")),
    (dict(schema="pub\x00lic"), "schema 'pub\\x00lic' contains a NUL character"),
    (dict(primary_key="\x00"), "primary_key '\\x00' contains a NUL character"),
    (dict(columns=[C63, "name\x00"]), "column 'name\\x00' contains a NUL character"),
    (dict(table=123), "table must be a non-empty name, got 123"),
    (dict(table=""), "table must be a non-empty name, got ''"),
    (dict(schema=None), "schema must be a non-empty name, got None"),
    (dict(schema="vectorize", table="job", primary_key="job_id", columns=["name"]),
     "source table 'job' is in schema 'vectorize', which holds the projects' catalog and storage"),
]


@pytest.mark.parametrize("override, message", BAD_SOURCE_NAMES, ids=[ascii(m[:36]) for _, m in BAD_SOURCE_NAMES])
def test_source_names_postgresql_would_cut_or_cannot_hold_are_refused(shop, override, message):
    db, hook = shop
    args = dict(job_name="named", table=N63, primary_key=K63, columns=[C63], update_col="u")
    args.update(override)
    before = snapshot(db)

    with pytest.raises(InvalidInputError, match=exact(message)):
        hook.create_project(**args)

    assert snapshot(db) == before


BAD_JOB_NAMES = [
    ("bad-name", "job_name 'bad-name' is invalid: use only letters, digits and underscores"),
    ("x'; DROP TABLE products; --", "job_name \"x'; DROP TABLE products; --\" is invalid"),
    ('say "hi"', "job_name 'say \"hi\"' is invalid"),
    ("two words", "job_name 'two words' is invalid"),
    ("prodüct", "job_name 'prodüct' is invalid"),
    ("名前", "job_name '名前' is invalid"),
    ("line\n", "job_name 'line\\n' is invalid"),
    ("a\x00b", "job_name 'a\\x00b' is invalid"),
    ("", "job_name '' is invalid"),
    (None, "job_name None is invalid"),
    ("j" * 39, f"job_name {'j' * 39!r} is 39 bytes long; at most 38 are allowed so that every derived name"),
]


@pytest.mark.parametrize("job_name, message", BAD_JOB_NAMES, ids=[ascii(j)[:20] for j, _ in BAD_JOB_NAMES])
def test_bad_job_names_are_refused(shop, job_name, message):
    db, hook = shop
    before = snapshot(db)

    with pytest.raises(InvalidInputError, match=exact(message)):
        hook.create_project(job_name, "products", "product_id", ["name"])

    assert snapshot(db) == before


KEY_NEIGHBOURS = "embeddings, text_md5, enqueued_at, error, attempts, first_seen, last_seen, updated_at"
COLLISIONS = [
    # (key, other column, options, message)
    ("embeddings", "body", {}, (f"primary_key 'embeddings' of \"public\".\"clash\" has the name of a column that"
                               f" the project's tables keep next to the key ({KEY_NEIGHBOURS}, document)")),
    ("embeddings", "body", dict(table_method="append"), (f"primary_key 'embeddings' of \"public\".\"clash\" has the"
                                                        f" name of a column that the project's tables keep next"
                                                        f" to the key ({KEY_NEIGHBOURS}, document)")),
    ("updated_at", "body", {}, "primary_key 'updated_at' of \"public\".\"clash\" has the name of a column"),
    # an append project's removed rows' table keeps updated_at (and text_md5, embeddings) next to the key
    ("updated_at", "body", {"table_method": "append"}, (f"primary_key 'updated_at' of \"public\".\"clash\" has the"
                                                       f" name of a column that the project's tables keep next"
                                                       f" to the key ({KEY_NEIGHBOURS}, document); rename the key"
                                                       " column")),
    ("enqueued_at", "body", dict(table_method="append"), "primary_key 'enqueued_at' of \"public\".\"clash\" has"),
    ("text_md5", "body", dict(table_method="append"), "primary_key 'text_md5' of \"public\".\"clash\" has"),
    # an unchunked project's documents table (key, document)
    ("document", "body", {}, (f"primary_key 'document' of \"public\".\"clash\" has the name of a column that the"
                              f" project's tables keep next to the key ({KEY_NEIGHBOURS}, document)")),
    ("document", "body", {"table_method": "append"}, "primary_key 'document' of \"public\".\"clash\" has the name"),
    ("chunk_no", "body", dict(chunk_size=64), (f"next to the key ({KEY_NEIGHBOURS}, chunk_no,"
                                              " start_offset, end_offset, chunk, chunk_fts)")),
    # a chunked project's chunk table keeps each chunk's full-text document
    ("chunk_fts", "body", {"chunk_size": 64}, "primary_key 'chunk_fts' of \"public\".\"clash\" has the name of a"),
    ("id", "embeddings", {}, ("table_method 'join' makes the view vectorize.clashing_view of the columns of"
                             " \"public\".\"clash\" and embeddings, embeddings_updated_at, but \"public\".\"clash\""
                             " has column(s) ['embeddings']: rename them, or use table_method='append'")),
    ("id", "embeddings_updated_at", {}, "has column(s) ['embeddings_updated_at']: rename them, or use"),
    ("id", "chunk", dict(chunk_size=64), ("of the columns of \"public\".\"clash\" and chunk_no, chunk, embeddings,"
                                         " embeddings_updated_at, but \"public\".\"clash\" has column(s) ['chunk']:"
                                         " rename them")),
]


@pytest.mark.parametrize("key, column, options, message", COLLISIONS,
                         ids=[f"{k}/{c}/{'-'.join(o) or 'join'}" for k, c, o, _ in COLLISIONS])
def test_names_colliding_with_project_storage_are_refused(shop, key, column, options, message):
    """Without the check these made CREATE TABLE / CREATE VIEW fail with a raw DuplicateColumn (or, for an
    append project keyed on ``embeddings``, the first generation run)."""
    db, hook = shop
    db.execute(sql.SQL("DROP TABLE IF EXISTS clash; CREATE TABLE clash ({} int PRIMARY KEY, {} text, body2 text)")
               .format(sql.Identifier(key), sql.Identifier(column)))
    before = snapshot(db)

    with pytest.raises(InvalidInputError, match=exact(message)):
        hook.create_project("clashing", "clash", key, ["body2"], **options)

    assert snapshot(db) == before


# Projects whose derived names meet: the second's (job name, the first's object with its name).
MEETING_NAMES = [
    ("_bulk_x", "x_view", "vectorize._bulk_x_view"),  # _bulk_x's view is x_view's bulk table
    ("x_view", "_bulk_x", "vectorize._bulk_x_view"),
    ("x_view_rows", "handle_update_x", "vectorize.handle_update_x_view_rows()"),  # a view's function, a trigger's
    ("x_view_rows", "handle_removal_x", "vectorize.handle_removal_x_view_rows()"),
    ("handle_removal_z", "z_view_rows", "vectorize.handle_removal_z_view_rows()"),
    ("handle_update_y", "y_view_rows", "vectorize.handle_update_y_view_rows()"),
]


@pytest.mark.parametrize("first, second, taken", MEETING_NAMES, ids=[f"{a}+{b}" for a, b, _ in MEETING_NAMES])
def test_job_names_whose_derived_names_meet_another_projects_are_refused(database, hook, first, second, taken):
    """Before, these failed with a TypeError (the bulk table assumed to be a table) or PostgreSQL's
    DuplicateFunction / InvalidFunctionDefinition."""
    database.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    hook.create_project(first, "notes", "id", ["body"])
    before = snapshot(database)

    with pytest.raises(InvalidInputError, match=exact(
            f"project {second!r} is not in the catalog, but objects with its names exist: {taken}.")):
        hook.create_project(second, "notes", "id", ["body"])

    assert snapshot(database) == before


def test_a_relation_in_the_place_of_a_projects_bulk_table_is_a_conflict(database, hook):
    """A project made before its bulk table (which its next run makes) whose name another relation took."""
    from airflow_vectorize.exceptions import ProjectConflictError

    database.execute("CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'a note')")
    hook.create_project("x_view", "notes", "id", ["body"])
    database.execute("DROP TABLE vectorize._bulk_x_view; CREATE VIEW vectorize._bulk_x_view AS SELECT 1 AS one")
    before = snapshot(database)

    with pytest.raises(ProjectConflictError, match=exact(
            "project 'x_view' keeps its bulk writes in vectorize._bulk_x_view, but a relation of that name exists"
            " that is not its table (relkind 'v'; another project's, or another tool's): drop or rename it")):
        hook.generate_embeddings("x_view")

    assert snapshot(database) == before


BAD_IMPORT_NAMES = [
    # The 63-byte table exists: a 64-byte name would silently import from it.
    (dict(src_table=E63 + "e"), cut(f"src_table {E63 + 'e'!r}", 64, E63)),
    (dict(src_primary_key="p" * 64), cut(f"src_primary_key {'p' * 64!r}", 64, "p" * 63)),
    (dict(src_embeddings_col="名" * 22), cut(f"src_embeddings_col {'名' * 22!r}", 66, "名" * 21)),
    (dict(src_schema="pub\x00lic"), "src_schema 'pub\\x00lic' contains a NUL character"),
    (dict(src_table="product_embeddings\x00"), "src_table 'product_embeddings\\x00' contains a NUL character"),
    (dict(src_embeddings_col="\x00"), "src_embeddings_col '\\x00' contains a NUL character"),
    (dict(src_table=5), "src_table must be a non-empty name, got 5"),
    (dict(src_primary_key=""), "src_primary_key must be a non-empty name, got ''"),
]


@pytest.mark.parametrize("override, message", BAD_IMPORT_NAMES, ids=[ascii(m[:36]) for _, m in BAD_IMPORT_NAMES])
def test_import_names_postgresql_would_cut_or_cannot_hold_are_refused(shop, override, message):
    db, hook = shop
    args = dict(job_name="shop", src_table=E63, src_primary_key="product_id", src_embeddings_col="embedding")
    args.update(override)
    before = snapshot(db)

    with pytest.raises(InvalidInputError, match=exact(message)):
        hook.import_embeddings(**args)

    assert snapshot(db) == before


LOOKUPS = {
    "search": lambda hook, job: hook.search(job, "phone"),
    "hybrid_search": lambda hook, job: hook.hybrid_search(job, "phone"),
    "get_status": lambda hook, job: hook.get_status(job),
    "generate_embeddings": lambda hook, job: hook.generate_embeddings(job),
    "import_embeddings": lambda hook, job: hook.import_embeddings(job, "product_embeddings", "product_id",
                                                                  "embedding"),
    "drop_project": lambda hook, job: hook.drop_project(job),
}


@pytest.mark.parametrize("job_name", [
    "x'; DROP TABLE products; --",
    42,
    pytest.param("shop\x00", id="NUL"),
])
@pytest.mark.parametrize("method", LOOKUPS)
def test_unknown_job_names_are_not_found(shop, method, job_name):
    """A name no project has, whatever it contains, is ProjectNotFoundError (never another project)."""
    db, hook = shop
    before = snapshot(db)

    with pytest.raises(ProjectNotFoundError, match=exact(f"project {job_name!r} not yet initialized")):
        LOOKUPS[method](hook, job_name)

    assert snapshot(db) == before


def test_names_close_to_a_project_name_are_other_names(shop):
    _db, hook = shop
    for job_name in ['shop"; --', "shop ", " shop", "SHOP", "shop;", "名前", "shop\n"]:
        with pytest.raises(ProjectNotFoundError, match=exact(f"project {job_name!r} not yet initialized")):
            hook.search(job_name, [0.0] * 384)


@pytest.mark.parametrize("job_name", ["x'; DROP TABLE products; --",
                                      pytest.param("shop\x00", id="NUL")])
def test_dropping_an_unknown_hostile_name_with_missing_ok_changes_nothing(shop, job_name):
    db, hook = shop
    before = snapshot(db)

    assert hook.drop_project(job_name, missing_ok=True) == {"job_name": job_name, "dropped": False}

    assert snapshot(db) == before


# -- filters and returned columns --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def searches(shop, model):
    """Both kinds of search of project ``shop`` for 'phone': vector search with the query already embedded
    (its checks then run without the model), hybrid search with the text."""
    _, hook = shop
    vector = model.encode(["phone"])[0]
    return {"search": lambda **kwargs: hook.search("shop", vector, **kwargs),
            "hybrid_search": lambda **kwargs: hook.hybrid_search("shop", "phone", **kwargs)}


ALLOWED = "product_id, name, description, category, price, updated_at"
BAD_FILTERS = [
    ({"price; DROP TABLE products": 1}, ("filter column 'price; DROP TABLE products' does not exist in"
                                        f" public.products of project 'shop' (or cannot be filtered on);"
                                        f" allowed columns: {ALLOWED}")),
    ({'"price"': 1}, "filter column '\"price\"' does not exist"),
    ({"price\x00": 1}, "filter column 'price\\x00' does not exist"),
    ({"embeddings": [0.1] * 384}, "filter column 'embeddings' does not exist"),
    ({("price",): 1}, "filter column ('price',) does not exist"),
    ({"price": {"gt; DROP TABLE products": 1}}, ("filter operator 'gt; DROP TABLE products' on column 'price' is"
                                                " unknown; allowed operators: eq, ne, gt, gte, lt, lte, in")),
    ({"price": {"$gt": 1}}, "filter operator '$gt' on column 'price' is unknown"),
    ({"price": {"GT": 1}}, "filter operator 'GT' on column 'price' is unknown"),
    ({"price": {"like": "%"}}, "filter operator 'like' on column 'price' is unknown"),
    ({"price": {}}, "filter on column 'price' has no operator"),
    ({"category": {"in": "phones'); DROP TABLE products; --"}},
     "filter 'in' on column 'category' takes a list of values, got \"phones'); DROP TABLE products; --\""),
    ([("price", 1)], "filters must be a dict of column -> value or {operator: value}, got [('price', 1)]"),
    ("price > 0; DROP TABLE products", "filters must be a dict of column -> value"),
    ({"price": {"gt": "0; DROP TABLE products"}},
     'a filter value does not fit its column: invalid input syntax for type numeric: "0; DROP TABLE products"'),
    ({"price": "1 OR 1=1"}, 'a filter value does not fit its column: invalid input syntax for type numeric'),
    ({"name": "laptop\x00'; DROP TABLE products; --"},
     "a filter value does not fit its column: PostgreSQL text fields cannot contain NUL (0x00) bytes"),
    ({"name": {"in": ["a", "b\x00"]}}, "a filter value does not fit its column: PostgreSQL text fields cannot"),
    ({"product_id": [1, 2]}, "a filter value does not fit its column: operator does not exist: integer ="),
    pytest.param({"name": {"eq": {"$ne": None}}}, "filter value {'$ne': None} on column 'name' is a mapping:"
                 " nested filters are not supported", id="nested-dict"),
    pytest.param({"name": {"in": ["a", {"$regex": ".*"}]}}, "filter value {'$regex': '.*'} on column 'name' is a"
                 " mapping", id="nested-dict-in-list"),
    pytest.param({"price": {"gt": {"price": 0}}}, "filter value {'price': 0} on column 'price' is a mapping",
                 id="nested-column-dict"),
]


@pytest.mark.parametrize("filters, message", BAD_FILTERS,
                         ids=[None if hasattr(f, "marks") else ascii(f[0])[:30] for f in BAD_FILTERS])
def test_hostile_filters_are_refused(shop, searches, filters, message):
    db, _ = shop
    before = snapshot(db)

    for search in searches.values():
        with pytest.raises(InvalidInputError, match=exact(message)):
            search(filters=filters)

    assert snapshot(db) == before


@pytest.mark.parametrize("method", ["search", "hybrid_search"])
def test_injections_in_filter_values_are_just_values(shop, searches, method):
    db, _ = shop
    before = snapshot(db)
    search = searches[method]

    assert search(filters={"name": "'; DROP TABLE products; --"}) == []
    assert search(filters={"category": "phones' OR '1'='1"}) == []
    rows = search(num_results=24, filters={"category": {"in": ["phones", "x'); DROP TABLE products; --"]}})
    assert rows and {r["category"] for r in rows} == {"phones"}
    assert len(search(num_results=24, filters={"name": {"ne": "\"; DROP TABLE x; --"}})) == 24
    assert snapshot(db) == before


BAD_RETURN_COLUMNS = [
    (["name; DROP TABLE products"], "unknown: name; DROP TABLE products"),
    (['"name"'], "unknown: \"name\""),
    (["name", "embeddings"], "unknown: embeddings"),
    (["name\x00"], "unknown: name\x00"),
    (["*", "name"], "unknown: *"),
    (["name", "name"], "empty or repeated"),
    ([], "empty or repeated"),
]


@pytest.mark.parametrize("return_columns, problem", BAD_RETURN_COLUMNS, ids=[ascii(c) for c, _ in BAD_RETURN_COLUMNS])
def test_hostile_return_columns_are_refused(shop, searches, return_columns, problem):
    db, _ = shop
    before = snapshot(db)

    for search in searches.values():
        with pytest.raises(InvalidInputError, match=exact(
                f"return_columns {return_columns!r} of project 'shop' are invalid ({problem}); choose distinct"
                f" columns of public.products: {ALLOWED}")):
            search(return_columns=return_columns)

    assert snapshot(db) == before


def test_return_columns_that_are_not_a_list_of_names_are_refused(searches):
    for return_columns in ["name", ["name", 1], [None], [("name",)]]:
        for search in searches.values():
            with pytest.raises(InvalidInputError, match=exact(
                    f"return_columns must be a list of column names, got {return_columns!r}")):
                search(return_columns=return_columns)


def test_a_source_column_named_like_a_result_key_is_refused(database, hook):
    database.execute("CREATE TABLE scored (id int PRIMARY KEY, body text, similarity_score text);"
                     " INSERT INTO scored VALUES (1, 'green apples', 'five stars')")
    hook.create_project("scored", "scored", "id", ["body"], embed_existing=True)

    with pytest.raises(InvalidInputError, match=exact(
            "return_columns ['similarity_score'] have the names of keys that search results add")):
        hook.search("scored", "apples", return_columns=["id", "similarity_score"])


# -- texts ----------------------------------------------------------------------------------------------------
def test_empty_null_and_whitespace_texts(database, hook):
    """Rows without text (NULL or '') are skipped and counted; whitespace-only texts are texts: the model
    embeds them (to a finite unit vector). Empty and blank queries are refused."""
    database.execute("CREATE TABLE notes (id int PRIMARY KEY, body text);"
                     " INSERT INTO notes VALUES (1, 'green apples'), (2, ''), (3, NULL), (4, '   '), (5, E'\\t\\n')")
    hook.create_project("notes", "notes", "id", ["body"])

    summary = hook.generate_embeddings("notes")

    assert (summary["embedded"], summary["skipped"]) == (3, 2)
    assert hook.get_status("notes")["no_text_rows"] == 2
    vectors = dict(database.execute('SELECT id, embeddings FROM vectorize."_embeddings_notes" ORDER BY id'))
    assert sorted(vectors) == [1, 4, 5]
    assert all(np.isclose(np.linalg.norm(v.to_numpy()), 1, atol=1e-5) for v in vectors.values())
    before = snapshot(database)
    for query in ["", "   ", "\t\n"]:
        with pytest.raises(InvalidInputError, match=exact("query is empty: give a text or a vector")):
            hook.search("notes", query)
        with pytest.raises(InvalidInputError, match=exact(f"hybrid_search needs a non-empty text query, got {query!r}")):
            hook.hybrid_search("notes", query)
    assert snapshot(database) == before


def test_nul_in_texts(shop):
    """PostgreSQL text cannot hold NUL, so no source row (and no import, which carries keys and vectors) can
    bring one; a search text may: the model's tokenizer drops it."""
    db, hook = shop
    before = snapshot(db)
    with pytest.raises(psycopg.DataError, match=exact("PostgreSQL text fields cannot contain NUL (0x00) bytes")):
        db.execute("UPDATE products SET description = %s WHERE product_id = 1", ["a\x00b"])
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="null character not permitted"):
        db.execute("UPDATE products SET description = 'a' || chr(0) WHERE product_id = 1")

    assert hook.search("shop", "lap\x00top computer", num_results=3) == hook.search("shop", "laptop computer",
                                                                                       num_results=3)
    assert hook.encode("shop", ["lap\x00top"]) == hook.encode("shop", ["laptop"])
    assert snapshot(db) == before


def test_a_nul_in_a_hybrid_query_is_refused(shop):
    db, hook = shop
    before = snapshot(db)

    with pytest.raises(InvalidInputError, match=exact(
            "hybrid_search query contains a NUL character (\\x00), which PostgreSQL text cannot hold")):
        hook.hybrid_search("shop", "lap\x00top")

    assert snapshot(db) == before


@pytest.mark.parametrize("call, message", [
    (lambda hook: hook.search("shop", "lap\ud800top"), "query is not valid Unicode: surrogates not allowed at position 3"),
    (lambda hook: hook.hybrid_search("shop", "lap\ud800top"), "hybrid_search query is not valid Unicode"),
    (lambda hook: hook.encode("shop", ["fine", "\udfff"]), "texts[1] is not valid Unicode"),
    (lambda hook: hook.encode("shop", "laptop"), "texts must be a list of texts, got 'laptop'"),
    (lambda hook: hook.search("shop", "laptop", filters={"category": {"in": ["phones", "\ud83d"]}}),
     "filter value on column 'category' is not valid Unicode"),
], ids=["search", "hybrid", "encode", "encode-str", "filter"])
def test_a_lone_surrogate_is_refused_as_invalid_input(shop, call, message):
    """A lone surrogate ("\\ud800" in JSON or Python) cannot be written as UTF-8: before, a raw TypeError from the
    tokenizer or UnicodeEncodeError from psycopg (and a 500 from the API)."""
    db, hook = shop
    before = snapshot(db)

    with pytest.raises(InvalidInputError, match=re.escape(message)):
        call(hook)

    assert snapshot(db) == before


MEGABYTE_TEXT = "A light laptop with a bright screen, a quiet keyboard and a long battery life. " * 13_000


def test_a_1_mb_text_is_embedded_and_a_1_mb_query_searched(database, hook, model):
    """The model reads the first 256 tokens of a 1 MB text: generation embeds it without error, and the
    stored vector is the embedding of its beginning; a 1 MB search text is cut the same way."""
    assert len(MEGABYTE_TEXT.encode()) > 1_000_000
    database.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    database.execute("INSERT INTO docs VALUES (1, 'fresh green apples'), (2, 'running shoes'), (3, %s)",
                     [MEGABYTE_TEXT])
    hook.create_project("docs", "docs", "id", ["body"])

    assert hook.generate_embeddings("docs")["embedded"] == 3

    stored = database.scalar('SELECT embeddings FROM vectorize."_embeddings_docs" WHERE id = 3').to_numpy()
    np.testing.assert_allclose(stored, model.encode([MEGABYTE_TEXT[:4000]])[0], atol=1e-5)
    best = hook.search("docs", MEGABYTE_TEXT, num_results=1)[0]
    assert best["id"] == 3 and best["similarity_score"] == pytest.approx(1, abs=1e-5)


def test_a_long_hybrid_query_is_refused(shop):
    db, hook = shop
    query = MEGABYTE_TEXT[:200_000]
    before = snapshot(db)

    with pytest.raises(InvalidInputError, match=exact(
            "hybrid_search query is 200000 bytes; its full-text part takes at most 16384 bytes")):
        hook.hybrid_search("shop", query)

    assert snapshot(db) == before


@pytest.mark.parametrize("query", [
    "Installation " + "-" * 72 + " pip install cachetools",  # a README's rule line: found by bench/retrieval.py
    "a " + "- " * 300 + "b",
])
def test_a_hybrid_query_with_runs_of_dashes_is_searched(shop, query):
    """A run of '-' is a chain of NOT operators to websearch_to_tsquery, whose parser ran out of stack on it
    ("tsquery stack too small"); it is read as a space."""
    _, hook = shop
    rows = hook.hybrid_search("shop", query, num_results=3)
    assert len(rows) == 3


def test_a_1_mb_text_of_distinct_words_can_be_written_to_a_source(database, hook):
    words = " ".join(f"w{i:06x}" for i in range(130_000))  # ~1 MB, every word distinct
    database.execute("CREATE TABLE docs (id int PRIMARY KEY, body text); INSERT INTO docs VALUES (1, 'apples')")
    hook.create_project("docs", "docs", "id", ["body"])

    database.execute("INSERT INTO docs VALUES (2, %s)", [words])

    assert hook.generate_embeddings("docs")["embedded"] == 2
    assert [r["id"] for r in hook.hybrid_search("docs", "w000010", num_results=1)] == [2]


# -- NaN and infinity in imported vectors --------------------------------------------------------------------
NON_FINITE = "1 row(s) with NaN or infinite values; e.g. keys ['7']"
OUT_OF_RANGE = "1 row(s) with values beyond the range of real (|x| > 3.4028235e+38); e.g. keys ['7']"
BAD_VALUES = [(column_type, value, NON_FINITE) for column_type in ("real[]", "double precision[]")
              for value in ("NaN", "Infinity", "-Infinity")] + [
    ("double precision[]", "1e39", OUT_OF_RANGE),  # finite as double, infinite as real
    ("double precision[]", "-1e300", OUT_OF_RANGE),
]


@pytest.mark.parametrize("column_type, value, problem", BAD_VALUES, ids=[f"{t}:{v}" for t, v, _ in BAD_VALUES])
def test_non_finite_imported_values_are_refused_naming_keys(shop, column_type, value, problem):
    db, hook = shop
    table = f"bad_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE TABLE {t} AS SELECT product_id, embedding::{type} AS embedding FROM"
                       " product_embeddings; UPDATE {t} SET embedding[5] = {v} WHERE product_id = 7").format(
        t=sql.Identifier(table), type=sql.SQL(column_type), v=sql.Literal(value)))
    before = snapshot(db)

    with pytest.raises(InvalidInputError, match=exact(
            f"cannot import embeddings into project 'shop' from \"public\".\"{table}\" (key 'product_id',"
            f" embeddings 'embedding'): {problem}. Nothing was written.")):
        hook.import_embeddings("shop", table, "product_id", "embedding")

    assert snapshot(db) == before
    db.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))


@pytest.mark.parametrize("column_type", ["vector(384)", "halfvec(384)"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_vector_columns_cannot_hold_non_finite_values(shop, column_type, value):
    """pgvector refuses NaN and infinity on the way in, so an import from a vector column never meets one."""
    db, _ = shop
    with pytest.raises(psycopg.errors.DataException, match="not allowed in"):
        db.execute(sql.SQL("SELECT (array_fill(0.5::real, ARRAY[383]) || {}::real)::{}").format(
            sql.Literal(value), sql.SQL(column_type)))
