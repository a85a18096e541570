"""drop_project: removes everything the project made, never the source table or its data."""

from __future__ import annotations

import pytest
from conftest import create_embeddings_table, snapshot

from airflow_vectorize.exceptions import ProjectNotFoundError

COLUMNS = ["name", "description"]


def without_catalog(state: dict) -> dict:
    """The snapshot less the catalog (vectorize.job, vectorize.prompts), which stays once created."""
    state = dict(state)
    state["relations"] = [r for r in state["relations"] if not r[1].startswith(("job", "prompts"))]
    state["columns"] = [c for c in state["columns"] if c[1] not in ("job", "prompts")]
    state.pop("vectorize.job", None)
    state.pop("vectorize.prompts", None)
    return state


def source_rows(db) -> str:
    return db.scalar("SELECT md5(string_agg(t::text, '|' ORDER BY product_id)) FROM"
                     " (SELECT product_id, name, description, category, price, updated_at FROM products) t")


@pytest.mark.parametrize("table_method", ["join", "append"])
def test_drop_restores_the_database_as_it_was(products, hook, model, table_method):
    create_embeddings_table(products, model)
    before = snapshot(products)
    hook.create_project("product_search", "products", "product_id", COLUMNS, table_method=table_method)
    hook.import_embeddings("product_search", "product_embeddings", "product_id", "embedding")
    products.execute("INSERT INTO products (product_id, name) VALUES (100, 'queued')")
    products.execute("DELETE FROM products WHERE product_id = 100")
    products.execute("INSERT INTO products (product_id, name) VALUES (100, 'queued')")
    rows_before = source_rows(products)

    result = hook.drop_project("product_search")

    assert result["dropped"] is True
    assert (result["embeddings_removed"], result["pending_removed"]) == (24, 1)
    assert source_rows(products) == rows_before
    after = without_catalog(snapshot(products))
    after["public.products"] = before["public.products"] = None  # one row was added meanwhile
    assert after == without_catalog(before)
    assert products.execute("SELECT count(*) FROM vectorize.job") == [(0,)]
    assert products.scalar("SELECT count(*) FROM products") == 25
    with pytest.raises(ProjectNotFoundError):
        hook.get_status("product_search")


def test_unknown_project(products, hook):
    before = snapshot(products)

    with pytest.raises(ProjectNotFoundError, match="project 'ghost' not yet initialized"):
        hook.drop_project("ghost")
    assert hook.drop_project("ghost", missing_ok=True) == {"job_name": "ghost", "dropped": False}

    assert snapshot(products) == before


def test_drop_after_the_source_table_was_dropped(products, hook):
    hook.create_project("product_search", "products", "product_id", COLUMNS)
    products.execute("DROP TABLE products CASCADE")

    result = hook.drop_project("product_search")

    assert result["dropped"] is True
    assert products.execute("SELECT relname FROM pg_class WHERE relnamespace = 'vectorize'::regnamespace"
                            " AND relname NOT LIKE 'job%%' AND relname NOT LIKE 'prompts%%'") == []
    assert products.execute("SELECT proname FROM pg_proc WHERE pronamespace = 'vectorize'::regnamespace") == []


def test_dropping_the_project_of_a_busy_source_lets_the_application_through_then_refuses(products, hook,
                                                                                           monkeypatch):
    """Before, its DROP TRIGGER waited behind a long report with every read and write of the table queued
    behind it. Now it takes the table in short tries, and fails, dropping nothing, when every try finds it busy."""
    import threading

    from test_alter_project import open_report, the_application_gets_through, waits_for_the_table

    from airflow_vectorize.exceptions import ProjectConflictError
    from airflow_vectorize.hooks import vectorize

    hook.create_project("shop", "products", "product_id", ["name"])
    monkeypatch.setattr(vectorize, "ALTER_LOCK_TRIES", (20, "300ms", 0.1))
    report, refused = open_report(products), []

    def drop() -> None:
        with pytest.raises(ProjectConflictError, match="stayed in use .* for 20 tries of 300ms; nothing was dropped"):
            hook.drop_project("shop")
        refused.append(True)

    dropper = threading.Thread(target=drop)
    dropper.start()
    try:
        waits_for_the_table(products)
        before = snapshot(products)
        the_application_gets_through(products)
        dropper.join(60)
    finally:
        report.close()

    assert refused and snapshot(products) == before
    assert hook.drop_project("shop")["dropped"]


def index_tables(db, name: str) -> list[str]:
    """The tables that have an index named ``name`` in schema public."""
    return [r[0] for r in db.execute("SELECT tablename FROM pg_indexes WHERE schemaname = 'public' AND indexname = %s",
                                     [name])]


LEGACY_DOCUMENTS = {  # the full-text expressions earlier versions indexed on the source
    "today": "to_tsvector('english', left(coalesce(name::text, '') || ' ' || coalesce(description::text, ''), 100000))",
    "first": "to_tsvector('english', coalesce(name::text, '') || ' ' || coalesce(description::text, ''))",
}


@pytest.mark.parametrize("table_method", ["join", "append"])
def test_an_index_of_the_users_named_like_the_projects_full_text_index_stays(products, hook, table_method):
    """``<job>_fts_idx`` in the source's schema was the index of projects made before the documents table: drop
    and the move to stored documents drop it only when it is that one (before: whatever index had the name)."""
    hook.create_project("products", "products", "product_id", COLUMNS, table_method=table_method, embed_existing=True)
    products.execute("CREATE TABLE articles (id int PRIMARY KEY, body text);"
                     " CREATE INDEX products_fts_idx ON articles USING gin (to_tsvector('english', body))")
    products.execute("DROP TABLE vectorize._documents_products")  # as a project made before the documents table
    hook.generate_embeddings("products")  # ... moves to stored documents

    assert products.scalar("SELECT to_regclass('vectorize._documents_products') IS NOT NULL")
    assert index_tables(products, "products_fts_idx") == ["articles"]
    hook.drop_project("products")
    assert index_tables(products, "products_fts_idx") == ["articles"]
    # on the source, but another expression than the project's: the user's too
    products.execute("DROP INDEX products_fts_idx")
    hook.create_project("products", "products", "product_id", COLUMNS, table_method=table_method)
    products.execute("CREATE INDEX products_fts_idx ON products USING gin (to_tsvector('simple', name))")
    hook.drop_project("products")
    assert index_tables(products, "products_fts_idx") == ["products"]


@pytest.mark.parametrize("version", LEGACY_DOCUMENTS)
def test_a_projects_full_text_index_on_its_source_is_dropped(products, hook, version):
    hook.create_project("shop", "products", "product_id", COLUMNS)
    products.execute(f"CREATE INDEX shop_fts_idx ON products USING gin (({LEGACY_DOCUMENTS[version]}))")

    hook.drop_project("shop")

    assert index_tables(products, "shop_fts_idx") == []
