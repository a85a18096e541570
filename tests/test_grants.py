"""grant_search / revoke_search: a role that only searches (an application's user) reads a project and nothing
it was not given, and keeps it when the project makes its view again; on the real database and model."""

from __future__ import annotations

import logging
import os
import re

import psycopg
import pytest
from conftest import snapshot

from airflow_vectorize.api.errors import status_of
from airflow_vectorize.exceptions import DatabasePermissionError, InvalidInputError, ProjectNotFoundError
from airflow_vectorize.hooks.vectorize import VectorizeHook

QUERY = "mobile phone with a good camera"


@pytest.fixture
def reader(products):
    """A login role with no privileges, and a hook that connects as it (connection ``<db>_reader``)."""
    role = f"reader_{products.name}"
    products.execute(f'CREATE ROLE "{role}" LOGIN')
    conn_id = f"{products.name}_reader"
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = products.uri.replace("postgres:@", f"{role}:@")
    try:
        yield role, VectorizeHook(conn_id)
    finally:
        os.environ.pop(f"AIRFLOW_CONN_{conn_id.upper()}", None)
        products.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


def test_a_granted_role_searches_and_reads_status_but_writes_nothing(products, hook, reader):
    role, as_reader = reader
    for job, arguments in {"joined": {}, "appended": {"table_method": "append"}, "chunked": {"chunk_size": 12}}.items():
        hook.create_project(job, "products", "product_id", ["name", "description"], **arguments)
        hook.generate_embeddings(job)
    with pytest.raises(DatabasePermissionError, match=r"^the database role of connection '.*_reader' lacks a"
                       r" privilege this call needs \(permission denied for .*\); nothing was written\..*"
                       r"grant_search\(job_name, role\)") as denied:
        as_reader.search("joined", QUERY)
    assert isinstance(denied.value.__cause__, psycopg.errors.InsufficientPrivilege)
    assert status_of(denied.value) == 503  # the HTTP API's answer: the server's role, not the client, lacks it

    for job in ("joined", "appended"):
        granted = hook.grant_search(job, role)
        assert granted["source_granted"] is True and '"public"."products"' in granted["granted"]
        assert as_reader.search(job, QUERY)[0]["product_id"] in {1, 2, 3}
        assert as_reader.hybrid_search(job, "camera")[0]["product_id"] in {1, 2, 3}
        assert as_reader.get_status(job)["embedded_rows"] == 24
        assert as_reader.get_freshness(job)["pending"] == 0
        with pytest.raises(DatabasePermissionError):
            as_reader.generate_embeddings(job)
    assert {p["name"] for p in as_reader.list_projects()} == {"joined", "appended", "chunked"}
    with pytest.raises(DatabasePermissionError, match="permission denied for table _chunks_chunked"):  # not granted
        as_reader.search("chunked", QUERY)
    with psycopg.connect(products.uri.replace("postgres:@", f"{role}:@"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM vectorize.joined_view").fetchone()[0] == 24
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM vectorize._embeddings_joined")

    products.execute("ALTER TABLE products ADD COLUMN colour text")
    hook.generate_embeddings("joined")  # makes the view again on the source's columns: the grant stays
    with psycopg.connect(products.uri.replace("postgres:@", f"{role}:@"), autocommit=True) as conn:
        assert conn.execute("SELECT count(colour) FROM vectorize.joined_view").fetchone()[0] == 0

    revoked = hook.revoke_search("joined", role)["revoked"]
    assert '"vectorize"."_embeddings_joined"' in revoked and '"public"."products"' not in revoked
    as_reader = VectorizeHook(as_reader.postgres_conn_id)  # a new hook: no cached search statement
    with pytest.raises(DatabasePermissionError):
        as_reader.search("joined", QUERY)
    assert as_reader.search("appended", QUERY)  # still granted


def test_bad_grants_change_nothing(products, hook):
    hook.create_project("joined", "products", "product_id", ["name"])
    before = snapshot(products)
    with pytest.raises(InvalidInputError, match="^role 'nobody_here' does not exist$"):
        hook.grant_search("joined", "nobody_here")
    with pytest.raises(ProjectNotFoundError, match="project 'other' not yet initialized"):
        hook.grant_search("other", "postgres")
    with pytest.raises(InvalidInputError, match="role '' must be a non-empty name|role must be a non-empty name"):
        hook.revoke_search("joined", "")
    assert snapshot(products) == before


@pytest.fixture
def writer(products):
    """A login role that may read and write the products table, and nothing of the vectorize schema: an
    application's own role; yields a function that runs a statement as it."""
    role = f"writer_{products.name}"
    products.execute(f'CREATE ROLE "{role}" LOGIN; GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON products TO "{role}"')
    with psycopg.connect(products.uri.replace("postgres:@", f"{role}:@"), autocommit=True) as conn:
        yield conn.execute
    products.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


@pytest.mark.parametrize("arguments", [{"schedule": "realtime"}, {"table_method": "append", "schedule": "manual"},
                                       {"chunk_size": 12, "schedule": "realtime"}], ids=["join", "append", "chunked"])
def test_an_application_role_writes_the_source_with_no_privilege_on_the_project(products, hook, writer, arguments):
    """The project's triggers run as its owner: an application role that writes the source (INSERT, UPDATE of
    a text and of a key, DELETE, TRUNCATE) needs nothing on the vectorize schema, and every write is recorded
    for the project as the owner's own would be."""
    hook.create_project("shop", "products", "product_id", ["name", "description"], **arguments)
    hook.generate_embeddings("shop")
    writer("INSERT INTO products (product_id, name, description) VALUES (100, 'Kettle', 'boils water')")
    writer("UPDATE products SET description = 'a phone' WHERE product_id = 1")
    writer("UPDATE products SET product_id = 101 WHERE product_id = 2")
    writer("DELETE FROM products WHERE product_id = 3")
    if arguments.get("schedule") == "realtime":
        assert products.execute("SELECT product_id FROM vectorize._pending_shop ORDER BY 1") == [(1,), (100,), (101,)]
    # 1, 100 and 101 (an append project's row keeps its vector under its new key)
    assert hook.generate_embeddings("shop")["embedded"] == (2 if arguments.get("table_method") else 3)
    assert hook.get_status("shop")["embedded_rows"] == 24  # 24 + 100 - 3
    writer("TRUNCATE products")
    assert hook.get_status("shop")["embedded_rows"] == 0 and hook.search("shop", QUERY) == []

    functions = products.execute(
        "SELECT proname, prosecdef, proconfig, has_function_privilege('public', oid, 'EXECUTE') FROM pg_proc"
        " WHERE pronamespace = 'vectorize'::regnamespace AND prorettype = 'trigger'::regtype ORDER BY 1")
    expected = [("handle_removal_shop", True, ["search_path=pg_catalog, pg_temp"], False)]
    if arguments.get("schedule") == "realtime":
        expected.append(("handle_update_shop", True, ["search_path=pg_catalog, pg_temp"], False))
    assert functions == expected


def test_trigger_functions_of_an_earlier_version_run_as_the_owner_after_the_next_run(products, hook, writer):
    """A project whose trigger functions run as the writer's role (made by an earlier version) gets them
    as today's from its next generation run: the application's writes then work."""
    hook.create_project("shop", "products", "product_id", ["name"], schedule="realtime")
    for function in ("handle_removal_shop", "handle_update_shop"):
        products.execute(f"ALTER FUNCTION vectorize.{function}() SECURITY INVOKER RESET ALL;"
                         f" GRANT EXECUTE ON FUNCTION vectorize.{function}() TO PUBLIC")
    products.execute("COMMENT ON FUNCTION vectorize.handle_update_shop() IS 'airflow-vectorize realtime queue, layout 4'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for schema vectorize"):
        writer("DELETE FROM products WHERE product_id = 3")

    hook.generate_embeddings("shop")

    writer("DELETE FROM products WHERE product_id = 3")
    writer("UPDATE products SET name = 'Phone' WHERE product_id = 1")
    assert products.execute("SELECT product_id FROM vectorize._pending_shop") == [(1,)]
    assert products.execute("SELECT proname FROM pg_proc WHERE pronamespace = 'vectorize'::regnamespace"
                            " AND prorettype = 'trigger'::regtype AND NOT prosecdef") == []


@pytest.fixture
def table_owner(database):
    """A login role, not a superuser, that may create tables and projects, and a hook that connects as it."""
    role = f"owner_{database.name}"
    database.execute(f'CREATE ROLE "{role}" LOGIN; GRANT CREATE ON DATABASE "{database.name}" TO "{role}";'
                     f' GRANT CREATE ON SCHEMA public TO "{role}"')
    conn_id = f"{database.name}_owner"
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = database.uri.replace("postgres:@", f"{role}:@")
    try:
        with psycopg.connect(database.uri.replace("postgres:@", f"{role}:@"), autocommit=True) as conn:
            yield conn, VectorizeHook(conn_id)
    finally:
        os.environ.pop(f"AIRFLOW_CONN_{conn_id.upper()}", None)
        database.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


@pytest.mark.parametrize("method", ["join", "append"])
def test_row_level_security_that_hides_rows_from_the_projects_role_stops_runs_and_imports(database, table_owner,
                                                                                         method):
    """The source's owner runs the project; FORCE ROW LEVEL SECURITY then hides the rows of tenant 'b' from it:
    runs and import raise DatabasePermissionError saying what the role needs, and change nothing (a run would
    have deleted the vectors of every row it could not see); searches and status answer as the role sees the
    table.
    NO FORCE: the next run deletes only the deleted row's vector."""
    conn, owner = table_owner
    conn.execute("CREATE TABLE r (id integer PRIMARY KEY, tenant text NOT NULL, body text);"
                 " INSERT INTO r SELECT g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, 'secret plan number ' || g"
                 " FROM generate_series(1, 10) g;"
                 " ALTER TABLE r ENABLE ROW LEVEL SECURITY; CREATE POLICY tenant_a ON r USING (tenant = 'a')")
    owner.create_project("plans", "r", "id", ["body"], table_method=method)
    assert owner.generate_embeddings("plans")["embedded"] == 10  # the owner: no policy applies without FORCE
    conn.execute("ALTER TABLE r FORCE ROW LEVEL SECURITY; DELETE FROM r WHERE id = 2")
    conn.execute("CREATE TABLE imported AS SELECT id, NULL::vector(384) AS embedding FROM r WHERE false")
    before = snapshot(database)
    message = ("row-level security on public.r hides some of its rows from this role: project 'plans' would count"
               " and embed only the rows it sees, and a run would delete the stored vectors of the others; nothing"
               " was written. Runs and import need a role that sees every row: one with BYPASSRLS (ALTER"
               " ROLE <role> BYPASSRLS), or the table's owner without FORCE (ALTER TABLE public.r NO FORCE ROW LEVEL"
               " SECURITY). Searches, RAG and status answer as the role sees the table.")
    for call in (lambda: owner.generate_embeddings("plans"), lambda: owner.attach_source("plans"),
                 lambda: owner.import_embeddings("plans", "imported", "id", "embedding")):
        with pytest.raises(DatabasePermissionError, match=f"^{re.escape(message)}$"):
            call()
    assert snapshot(database) == before
    assert {row["tenant"] for row in owner.search("plans", "secret plan number 7", ["tenant"])} == {"a"}
    status = owner.get_status("plans")  # the 4 rows of tenant 'a' it sees (2 deleted)
    assert (status["total_rows"], status["embedded_rows"]) == (4, 4)
    assert owner.get_freshness("plans")["stale"] == 0

    conn.execute("ALTER TABLE r NO FORCE ROW LEVEL SECURITY")
    assert owner.generate_embeddings("plans")["embedded"] == 0
    status = owner.get_status("plans")
    assert (status["total_rows"], status["embedded_rows"]) == (9, 9)
    if method == "join":
        assert database.scalar("SELECT count(*) FROM vectorize._embeddings_plans") == 9


def test_a_role_that_may_only_put_triggers_on_the_source_makes_a_join_project(products, hook, table_owner, caplog):
    """A role that does not own the source but may read it and put triggers on it (GRANT SELECT, TRIGGER)
    makes and runs a join project; its triggers fire in origin sessions only (ENABLE ALWAYS needs the table's
    owner), which it is told, and its runs do not fail trying to change them."""
    _, role_hook = table_owner
    products.execute(f'GRANT SELECT, TRIGGER ON products TO "owner_{products.name}"')
    with caplog.at_level(logging.WARNING, logger="airflow_vectorize.removal"):
        role_hook.create_project("shop", "products", "product_id", ["name"], schedule="realtime")
    assert "fire in origin sessions only" in caplog.text
    assert role_hook.generate_embeddings("shop")["embedded"] == 24
    products.execute("INSERT INTO products (product_id, name) VALUES (100, 'Kettle')")
    assert role_hook.generate_embeddings("shop", pending_only=True)["embedded"] == 1
    assert {state for (state,) in products.execute(
        "SELECT tgenabled FROM pg_trigger WHERE tgrelid = 'products'::regclass AND NOT tgisinternal")} == {"O"}
    assert hook.drop_project("shop")["dropped"] is True  # by the table's owner: DROP TRIGGER needs it
