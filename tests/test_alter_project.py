"""alter_project: a project's schedule (pause and resume realtime), text columns and update column changed in
place, its vectors kept, on the real database and model."""

from __future__ import annotations

import re

import pytest
from conftest import snapshot

from airflow_vectorize.exceptions import InvalidInputError, ProjectNotFoundError, SourceColumnsMissingError

LAYOUTS = {"join": {}, "append": {"table_method": "append"}, "chunked": {"chunk_size": 12}}
COLUMNS = ["name", "description"]


@pytest.fixture(params=list(LAYOUTS))
def project(request, products, hook):
    """A realtime project ``shop`` over name and description of the 24 products, every row embedded."""
    hook.create_project("shop", "products", "product_id", COLUMNS, **LAYOUTS[request.param])
    assert hook.generate_embeddings("shop")["embedded"] == 24
    products.layout = request.param
    return products


def stored(db) -> dict[int, tuple]:
    """product_id -> what the project stores for it (vector(s) and md5)."""
    if db.layout == "append":
        query = "SELECT product_id, shop_embeddings::text, shop_text_md5 FROM products WHERE shop_embeddings IS NOT NULL"
    elif db.layout == "chunked":
        query = ("SELECT product_id, array_agg(embeddings::text ORDER BY chunk_no), max(text_md5::text)"
                 " FROM vectorize._chunks_shop GROUP BY product_id")
    else:
        query = "SELECT product_id, embeddings::text, text_md5 FROM vectorize._embeddings_shop"
    return {row[0]: row[1:] for row in db.execute(query)}


def triggers(db) -> list[str]:
    return [name for (name,) in db.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'products'::regclass"
                                           " AND NOT tgisinternal ORDER BY 1")]


REALTIME = ["vectorize_delete_trigger_shop", "vectorize_insert_trigger_shop", "vectorize_rekey_trigger_shop",
            "vectorize_trunc_trigger_shop", "vectorize_update_trigger_shop"]
MANUAL = [t for t in REALTIME if "insert" not in t and "update" not in t]


def test_pause_and_resume_realtime_keeps_the_vectors_and_catches_up(project, hook):
    db = project
    before = stored(db)
    db.execute("UPDATE products SET description = 'Refurbished.' WHERE product_id = 1")  # queued
    assert hook.get_status("shop")["pending"] == 1

    assert hook.alter_project("shop", schedule="manual") == {"job_name": "shop",
                                                             "changed": {"schedule": ["realtime", "manual"]}}
    assert triggers(db) == MANUAL
    assert db.scalar("SELECT to_regprocedure('vectorize.handle_update_shop()') IS NULL")
    assert hook.get_status("shop")["pending"] == 0  # the queue emptied; the row is still due by its md5
    assert hook.get_project("shop")["params"]["schedule"] == "manual"
    db.execute("INSERT INTO products (product_id, name, description) VALUES (100, 'Garden hose', '30 m')")
    db.execute("UPDATE products SET name = 'Tablet stand' WHERE product_id = 2")
    assert hook.get_status("shop")["pending"] == 0 and hook.get_freshness("shop")["stale"] == 3

    assert hook.alter_project("shop", schedule="realtime")["changed"] == {"schedule": ["manual", "realtime"]}
    assert triggers(db) == REALTIME
    assert hook.get_status("shop")["pending"] == 3  # the three rows changed while paused
    summary = hook.generate_embeddings("shop", pending_only=True)  # a realtime run looks at every row once
    assert summary["embedded"] == 3
    after = stored(db)
    assert {i: after[i] for i in before if i not in (1, 2)} == {i: before[i] for i in before if i not in (1, 2)}
    db.execute("UPDATE products SET description = 'Queued again.' WHERE product_id = 3")
    assert hook.get_status("shop")["pending"] == 1


def test_columns_renamed_in_the_source_are_followed_without_embedding_again(project, hook):
    db = project
    before = stored(db)
    db.execute("ALTER TABLE products RENAME COLUMN description TO details")
    with pytest.raises(SourceColumnsMissingError, match="has no column 'description' any more"):
        hook.get_status("shop")

    assert hook.alter_project("shop", columns=["name", "details"])["changed"] == {
        "columns": [COLUMNS, ["name", "details"]]}
    assert hook.generate_embeddings("shop")["embedded"] == 0  # the same text: the same md5, the same vectors
    assert stored(db) == before
    assert hook.get_status("shop")["embedded_rows"] == 24
    db.execute("UPDATE products SET details = 'Now with a case.' WHERE product_id = 4")  # the new trigger's column
    assert hook.get_status("shop")["pending"] == 1


def test_other_columns_are_embedded_by_the_next_run_and_searched_meanwhile(project, hook):
    db = project
    before = stored(db)
    assert hook.alter_project("shop", columns=["name", "description", "category"])["changed"]
    assert {r["product_id"] for r in hook.search("shop", "mobile phone", num_results=3)} & {1, 2, 3}  # old vectors
    assert hook.get_status("shop")["stale_rows"] == 24
    assert hook.generate_embeddings("shop", pending_only=True)["embedded"] == 24
    after = stored(db)
    assert all(after[i][1] != before[i][1] for i in before)  # every md5 is of the new text
    db.execute("UPDATE products SET category = 'gadgets' WHERE product_id = 5")  # now an embedded column
    assert hook.get_status("shop")["pending"] == 1


def test_update_col_is_set_and_removed(products, hook):
    hook.create_project("shop", "products", "product_id", COLUMNS, schedule="manual")
    assert hook.alter_project("shop", update_col="updated_at")["changed"] == {"update_col": [None, "updated_at"]}
    assert hook.get_project("shop")["params"]["update_time_col"] == "updated_at"
    assert hook.alter_project("shop", update_col="updated_at") == {"job_name": "shop", "changed": {}}
    assert hook.alter_project("shop", update_col=None)["changed"] == {"update_col": ["updated_at", None]}
    assert hook.get_project("shop")["params"]["update_time_col"] is None


BAD = [
    ({}, InvalidInputError, "nothing to alter: give schedule, columns and/or update_col"),
    ({"schedule": "hourly"}, InvalidInputError, "schedule 'hourly' is not supported"),
    ({"columns": "name"}, InvalidInputError, "columns must be a list of column names, got 'name'"),
    ({"columns": []}, InvalidInputError, "columns must name at least one text column to embed"),
    ({"columns": ["name", "colour"]}, InvalidInputError, "text column 'colour' does not exist in table"),
    ({"columns": ["name", "price"]}, InvalidInputError, "column 'price' of \"public\".\"products\" is numeric"),
    ({"update_col": "name"}, InvalidInputError, "update_col 'name' of \"public\".\"products\" is text"),
    ({"schedule": "manual", "columns": ["nope"]}, InvalidInputError, "text column 'nope' does not exist"),
]


@pytest.mark.parametrize("arguments, error_type, message", BAD, ids=[str(a) for a, _, _ in BAD])
def test_bad_input_changes_nothing(products, hook, arguments, error_type, message):
    hook.create_project("shop", "products", "product_id", COLUMNS)
    before = snapshot(products)
    with pytest.raises(error_type, match=re.escape(message)):
        hook.alter_project("shop", **arguments)
    assert snapshot(products) == before
    with pytest.raises(ProjectNotFoundError, match="project 'other' not yet initialized"):
        hook.alter_project("other", schedule="manual")
    assert snapshot(products) == before
