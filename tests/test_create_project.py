"""create_project: storage layout as pg_vectorize's, idempotence, conflicts, realtime triggers, validation."""

from __future__ import annotations

import pytest
from conftest import create_products, snapshot

from airflow_vectorize.exceptions import (
    InvalidInputError,
    ModelConnectionError,
    ProjectConflictError,
    VectorizeError,
)

COLUMNS = ["name", "description"]


def index_definition(db, schema: str, name: str) -> str | None:
    return db.scalar("SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s", [schema, name])


def queued(db, job: str) -> list[int]:
    return [r[0] for r in db.execute(f'SELECT product_id FROM vectorize."_pending_{job}" ORDER BY 1')]


def test_join_layout_matches_pg_vectorize(products, hook):
    summary = hook.create_project("product_search", "products", "product_id", COLUMNS)

    assert summary["created"] is True and summary["dimensions"] == 384
    columns = products.execute(
        "SELECT column_name, format_type(atttypid, atttypmod), is_nullable FROM information_schema.columns c"
        " JOIN pg_attribute a ON a.attrelid = 'vectorize._embeddings_product_search'::regclass"
        " AND a.attname = c.column_name WHERE table_schema = 'vectorize'"
        " AND table_name = '_embeddings_product_search' ORDER BY ordinal_position"
    )
    assert columns[:3] == [
        ("product_id", "integer", "NO"),
        ("embeddings", "vector(384)", "NO"),
        ("updated_at", "timestamp with time zone", "NO"),
    ]
    assert "USING hnsw (embeddings vector_cosine_ops)" in index_definition(
        products, "vectorize", "product_search_hnsw_cos_idx")
    # No foreign key to the source (a plain TRUNCATE of it must work): removal triggers instead.
    assert products.scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f'") == 0
    assert [r[0] for r in products.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'products'::regclass AND NOT tgisinternal ORDER BY 1")] == [
        "vectorize_delete_trigger_product_search", "vectorize_insert_trigger_product_search",
        "vectorize_rekey_trigger_product_search", "vectorize_trunc_trigger_product_search",
        "vectorize_update_trigger_product_search"]
    view_columns = [r[0] for r in products.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'vectorize'"
        " AND table_name = 'product_search_view' ORDER BY ordinal_position")]
    assert view_columns == ["product_id", "name", "description", "category", "price", "updated_at",
                            "embeddings", "embeddings_updated_at"]
    # The view reads an SQL function (no dependency on the source), which PostgreSQL inlines: a query on it
    # is planned as one on the join.
    products.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in products.execute(
        "EXPLAIN SELECT name FROM vectorize.product_search_view WHERE product_id = 5"))
    assert "Function Scan" not in plan and "products_pkey" in plan, plan
    products.execute("RESET enable_seqscan")
    job = products.execute("SELECT name, index_dist_type, transformer, params FROM vectorize.job")
    assert job == [("product_search", "pgv_hnsw_cosine", "sentence-transformers/all-MiniLM-L6-v2", {
        "schema": "public", "relation": "products", "columns": COLUMNS, "update_time_col": None,
        "table_method": "join", "primary_key": "product_id", "pkey_type": "integer", "schedule": "realtime",
    })]
    assert hook.get_project("product_search")["dimensions"] == 384
    assert [p["name"] for p in hook.list_projects()] == ["product_search"]


@pytest.mark.parametrize("dist, index, opclass", [
    ("pgv_hnsw_cosine", "hnsw_cos_idx", "vector_cosine_ops"),
    ("pgv_hnsw_l2", "hnsw_l2_idx", "vector_l2_ops"),
    ("pgv_hnsw_ip", "hnsw_ip_idx", "vector_ip_ops"),
])
def test_append_layout_and_index_kinds(products, hook, dist, index, opclass):
    hook.create_project("shop", "products", "product_id", COLUMNS, table_method="append", index_dist_type=dist)

    types = dict(products.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'products'::regclass AND attname LIKE 'shop_%%'"))
    assert types == {"shop_embeddings": "vector(384)", "shop_updated_at": "timestamp with time zone",
                     "shop_text_md5": "uuid"}
    assert f"USING hnsw (shop_embeddings {opclass})" in index_definition(products, "public", f"shop_{index}")
    assert products.scalar("SELECT to_regclass('vectorize._embeddings_shop')") is None


def test_same_call_is_a_no_op(products, hook):
    first = hook.create_project("product_search", "products", "product_id", COLUMNS)
    before = snapshot(products)

    again = hook.create_project("product_search", "products", "product_id", COLUMNS)
    # pgvector's index defaults stated are the same call (before: a conflict, "existing None, requested 16")
    stated = hook.create_project("product_search", "products", "product_id", COLUMNS, hnsw_m=16,
                                 hnsw_ef_construction=64)

    assert again["created"] is False and again["objects"] == first["objects"]
    assert stated["created"] is False
    assert snapshot(products) == before
    with pytest.raises(ProjectConflictError, match=r"hnsw_m: existing 16, requested 8"):
        hook.create_project("product_search", "products", "product_id", COLUMNS, hnsw_m=8)


def test_other_config_is_a_conflict_naming_the_fields(products, hook):
    hook.create_project("product_search", "products", "product_id", COLUMNS)
    before = snapshot(products)

    with pytest.raises(ProjectConflictError) as error:
        hook.create_project("product_search", "products", "product_id", ["name"], index_dist_type="pgv_hnsw_l2")

    message = str(error.value)
    assert "'product_search' already exists" in message
    assert "columns: existing ('name', 'description'), requested ('name',)" in message
    assert "index_dist_type: existing 'pgv_hnsw_cosine', requested 'pgv_hnsw_l2'" in message
    assert "table_method" not in message
    assert snapshot(products) == before


@pytest.mark.parametrize("table_method", ["join", "append"])
def test_realtime_triggers_queue_inserts_and_text_changes_only(products, hook, table_method):
    hook.create_project("live", "products", "product_id", COLUMNS, table_method=table_method)
    assert queued(products, "live") == []

    products.execute("INSERT INTO products (product_id, name) VALUES (100, 'new'), (101, 'newer')")
    products.execute("UPDATE products SET description = 'changed' WHERE product_id = 1")
    products.execute("UPDATE products SET price = price + 1, category = 'x'")  # not embedded columns
    products.execute("UPDATE products SET name = name WHERE product_id = 2")  # same value
    if table_method == "append":  # writing embeddings must not queue anything
        products.execute("UPDATE products SET live_embeddings = array_fill(0.1, ARRAY[384])::vector")

    assert queued(products, "live") == [1, 100, 101]
    products.execute("DELETE FROM products WHERE product_id = 100")
    assert queued(products, "live") == [1, 101]


def test_manual_schedule_installs_no_queueing_triggers(products, hook):
    hook.create_project("batch", "products", "product_id", COLUMNS, schedule="manual")
    products.execute("INSERT INTO products (product_id, name) VALUES (100, 'new')")

    assert products.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1") == [
        ("vectorize_delete_trigger_batch",), ("vectorize_rekey_trigger_batch",), ("vectorize_trunc_trigger_batch",)]
    assert queued(products, "batch") == []
    assert hook.get_status("batch")["pending"] == 0


def test_hostile_names_are_quoted_not_executed(database, hook):
    create_products(database, table='odd "table"; DROP TABLE x; --', schema="Odd Schema")

    hook.create_project("odd", 'odd "table"; DROP TABLE x; --', "product_id", COLUMNS, schema="Odd Schema",
                        table_method="append")
    database.execute('INSERT INTO "Odd Schema"."odd ""table""; DROP TABLE x; --" (product_id, name) VALUES (99, \'n\')')

    assert hook.get_status("odd")["pending"] == 1
    assert hook.drop_project("odd")["dropped"] is True


BAD_CREATE_ARGS = [
    (dict(job_name="bad-name"), InvalidInputError, "job_name 'bad-name' is invalid"),
    (dict(job_name="x'; DROP TABLE products; --"), InvalidInputError, "use only letters, digits and underscores"),
    (dict(job_name="j" * 39), InvalidInputError, "at most 38 are allowed"),
    (dict(table="nope"), InvalidInputError, 'source table "public"."nope" does not exist'),
    (dict(schema="nowhere"), InvalidInputError, 'source table "nowhere"."products" does not exist'),
    (dict(primary_key="sku"), InvalidInputError, "primary_key column 'sku' does not exist in table"),
    (dict(primary_key="name"), InvalidInputError, "primary_key 'name' of \"public\".\"products\" is not unique"),
    (dict(columns=["name", "colour"]), InvalidInputError, "text column 'colour' does not exist"),
    (dict(columns=["name", "price"]), InvalidInputError, "column 'price' of \"public\".\"products\" is numeric"),
    (dict(columns=[]), InvalidInputError, "columns must name at least one text column"),
    (dict(columns="name"), InvalidInputError, "columns must be a list of column names"),
    (dict(columns=["name", "name"]), InvalidInputError, "name a column more than once"),
    (dict(update_col="name"), InvalidInputError, "update_col 'name' of \"public\".\"products\" is text"),
    (dict(update_col="changed_at"), InvalidInputError, "update_col column 'changed_at' does not exist"),
    (dict(table_method="inline"), InvalidInputError, "table_method 'inline' is unknown; use one of join, append"),
    (dict(index_dist_type="diskann"), InvalidInputError, "index_dist_type 'diskann' is unknown"),
    (dict(schedule="0 * * * *"), InvalidInputError, "Embedding runs are driven by your DAG's own schedule"),
    (dict(transformer="openai/text-embedding-3-small", model_conn_id="no_such_conn"), ModelConnectionError,
     "the Airflow connection 'no_such_conn' for the openai provider is not defined"),
    (dict(transformer="vector-serve/all-MiniLM-L6-v2"), InvalidInputError,
     "pg_vectorize's vector-serve is reached as the model it serves"),
    (dict(transformer="openai/"), InvalidInputError, "names no model: write 'openai/<model>'"),
    (dict(model_conn_id="no_such_conn"), ModelConnectionError,
     "the Airflow connection 'no_such_conn' for the self-hosted sentence-transformers/all-MiniLM-L6-v2 provider"),
    (dict(input_types={"document": "search_document"}), InvalidInputError,
     "input_types['document']='search_document': 'sentence-transformers/all-MiniLM-L6-v2' takes no input type"),
    (dict(input_types={"passage": "x"}), InvalidInputError, "input_types must be a mapping of 'document' and/or"),
    (dict(query_prompt=3), InvalidInputError, "query_prompt must be a string ('' for none), got 3"),
    (dict(dimensions=0), InvalidInputError, "dimensions must be a positive integer, got 0"),
    (dict(dimensions=256), InvalidInputError,
     "dimensions=256 was requested, but 'sentence-transformers/all-MiniLM-L6-v2' produces 384-dimensional"),
    (dict(transformer="sentence-transformers/not-a-cached-model"), InvalidInputError,
     "cannot load transformer 'sentence-transformers/not-a-cached-model'"),
]


def test_a_unique_index_left_invalid_makes_no_key_unique(products, hook):
    """An index that a failed CREATE UNIQUE INDEX CONCURRENTLY left invalid says nothing of the rows already
    there: create_project refuses a key with only that index, and a project's calls refuse its key once its
    only unique index is invalid."""
    from airflow_vectorize.exceptions import ProjectConflictError

    products.execute("CREATE UNIQUE INDEX products_name ON products (name)")
    hook.create_project("by_name", "products", "name", ["description"], schedule="manual")
    products.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'products_name'::regclass")
    before = snapshot(products)
    with pytest.raises(InvalidInputError, match="primary_key 'name' of \"public\".\"products\" is not unique"):
        hook.create_project("by_name_too", "products", "name", ["description"])
    with pytest.raises(ProjectConflictError, match="the key \\(name\\) of project 'by_name' is no longer unique"):
        hook.generate_embeddings("by_name")
    assert snapshot(products) == before


@pytest.mark.parametrize("override, error_type, message", BAD_CREATE_ARGS,
                         ids=[next(iter(a[0])) + ":" + str(next(iter(a[0].values())))[:20] for a in BAD_CREATE_ARGS])
def test_bad_input_is_rejected_and_changes_nothing(products, hook, override, error_type, message):
    hook.create_project("existing", "products", "product_id", ["name"], table_method="append")
    before = snapshot(products)
    args = dict(job_name="product_search", table="products", primary_key="product_id", columns=COLUMNS)
    args.update(override)

    with pytest.raises(error_type) as error:
        hook.create_project(**args)

    assert message in str(error.value)
    assert snapshot(products) == before


def test_append_refuses_existing_columns(products, hook):
    products.execute("ALTER TABLE products ADD COLUMN shop_embeddings text")
    before = snapshot(products)

    with pytest.raises(InvalidInputError, match=r"adds columns \['shop_embeddings'\] .* already exist"):
        hook.create_project("shop", "products", "product_id", COLUMNS, table_method="append")

    assert snapshot(products) == before


@pytest.mark.parametrize("column", ["chunk", "similarity_score"])
def test_an_embedded_column_named_as_a_search_result_key_is_refused(products, hook, column):
    """Search results add these keys to a row: RAG, which returns the embedded text, could never answer."""
    products.execute(f"ALTER TABLE products ADD COLUMN {column} text")
    before = snapshot(products)
    with pytest.raises(InvalidInputError, match=rf"^column\(s\) \['{column}'\] have the names of keys that search"
                                                r" results add \(similarity_score, .*\): no search or RAG call could"
                                                r" return them; rename the column\(s\)$"):
        hook.create_project("shop", "products", "product_id", ["name", column])
    assert snapshot(products) == before


def test_a_table_with_inheritance_children_is_refused(products, hook):
    """Rows of a table that INHERITS the source are read through it, but their writes fire none of the source's
    triggers; declarative partitions do (tests/test_partitioned_sources.py)."""
    products.execute("CREATE TABLE products_archive (PRIMARY KEY (product_id)) INHERITS (products)")
    before = snapshot(products)

    with pytest.raises(InvalidInputError, match=r'^source "public"."products" has child tables through INHERITS'
                       r" \(products_archive\): their rows .* use declarative partitioning \(PARTITION BY\)"):
        hook.create_project("product_search", "products", "product_id", COLUMNS)

    assert snapshot(products) == before
    assert hook.create_project("archive_search", "products_archive", "product_id", COLUMNS)["created"]  # a child


def test_a_child_table_attached_to_a_source_later_stops_its_runs_until_detached(products, hook):
    from airflow_vectorize.exceptions import ProjectConflictError

    hook.create_project("product_search", "products", "product_id", COLUMNS)
    hook.generate_embeddings("product_search")
    products.execute("CREATE TABLE products_archive (LIKE products); ALTER TABLE products_archive INHERIT products")
    before = snapshot(products)
    for call in (hook.generate_embeddings, hook.get_status):
        with pytest.raises(ProjectConflictError, match=r"has child tables through INHERITS now \(products_archive\)"
                           r".* Detach them \(ALTER TABLE <child> NO INHERIT <table>\), or drop the project\.$"):
            call("product_search")
    assert snapshot(products) == before
    assert hook.search("product_search", "phone")  # searches keep answering
    products.execute("ALTER TABLE products_archive NO INHERIT products")
    assert hook.get_status("product_search")["embedded_rows"] == 24


def test_leftover_objects_are_refused(products, hook):
    products.execute("CREATE SCHEMA vectorize; CREATE TABLE vectorize._embeddings_product_search (x int)")
    before = snapshot(products)

    with pytest.raises(InvalidInputError, match="objects with its names exist: vectorize._embeddings_product_search"):
        hook.create_project("product_search", "products", "product_id", COLUMNS)

    assert snapshot(products) == before


@pytest.mark.parametrize(("dims", "halfvec_index", "remedy"), [
    (3072, False, "pass halfvec_index=True"),  # OpenAI's text-embedding-3-large
    (4096, True, "ask for shorter vectors"),
])
def test_vectors_wider_than_an_hnsw_index_takes_are_refused_at_create(products, hook, embedding_server, dims,
                                                                       halfvec_index, remedy):
    embedding_server.reset(default=("tiled", dims))
    before = snapshot(products)
    with pytest.raises(InvalidInputError, match=f"has {dims}-dimensional vectors, but pgvector's HNSW index of"
                                                f" {'halfvec' if halfvec_index else 'vector'} takes at most"
                                                f" {4000 if halfvec_index else 2000} dimensions: {remedy}"):
        hook.create_project("wide", "products", "product_id", COLUMNS, transformer="openai/MiniLM",
                            model_conn_id="flaky", halfvec_index=halfvec_index)
    assert snapshot(products) == before


def test_a_3072_dimension_model_is_served_by_a_halfvec_index(products, hook, embedding_server):
    embedding_server.reset(default=("tiled", 3072))
    summary = hook.create_project("wide", "products", "product_id", COLUMNS, transformer="openai/MiniLM",
                                  model_conn_id="flaky", halfvec_index=True, embed_existing=True)
    assert summary["dimensions"] == 3072
    assert summary["initial_load"]["embedded"] == products.scalar("SELECT count(*) FROM products")
    assert [row["product_id"] for row in hook.search("wide", "espresso machine", num_results=1)] == [
        products.scalar("SELECT product_id FROM products WHERE name ILIKE '%espresso%'")]
    hook.drop_project("wide")


def test_pgvector_in_a_schema_off_the_search_path_is_named(products, hook):
    """Before: a raw UndefinedObject (type "vector" does not exist) from the embeddings table's CREATE."""
    products.execute("CREATE SCHEMA ext; ALTER EXTENSION vector SET SCHEMA ext")
    before = snapshot(products)

    with pytest.raises(VectorizeError) as raised:
        hook.create_project("shop", "products", "product_id", COLUMNS)

    assert str(raised.value) == (
        f"pgvector is installed in schema 'ext' of database {products.name!r}, which is not on this connection's"
        f' search_path ("$user", public), so its type vector cannot be found. Add the schema to the database\'s'
        f' search_path (ALTER DATABASE "{products.name}" SET search_path = "$user", public, "ext"; new sessions'
        " take it) or to the connection's (options: -c search_path=...)")
    assert snapshot(products) == before
    products.execute(f'ALTER DATABASE "{products.name}" SET search_path = "$user", public, ext')
    assert hook.create_project("shop", "products", "product_id", COLUMNS)["created"] is True
