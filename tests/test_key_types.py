"""Keys of the types schemas use beyond integers and text — char(n), an enum, a domain, alone and in a composite
key — through a realtime project's whole life; keys a project cannot keep are refused with nothing changed."""

from __future__ import annotations

import re

import pytest
from conftest import snapshot

from airflow_vectorize.exceptions import InvalidInputError

# key columns -> their SQL types; each row's key values are made from g (1..6) in SQL.
KEYS = {
    "char": ({"code": "char(5)"}, ["'c' || g"]),
    "enum": ({"code": "shade"}, ["('s' || g)::shade"]),
    "domain": ({"code": "sku"}, ["'SKU' || g"]),
    "char and enum": ({"code": "char(3)", "tone": "shade"}, ["'c' || mod(g, 2)", "('s' || g)::shade"]),
}
TEXTS = ["a red kettle", "a green lamp", "a blue chair", "a wooden desk", "a soft pillow", "a tall bookshelf"]


@pytest.fixture
def types(database):
    database.execute("CREATE TYPE shade AS ENUM ('s1', 's2', 's3', 's4', 's5', 's6', 's7', 's8')")
    database.execute("CREATE DOMAIN sku AS varchar(12) CHECK (VALUE LIKE 'SKU%%')")
    return database


@pytest.mark.parametrize("kind", KEYS)
def test_a_realtime_project_keyed_by(types, hook, model, kind):
    columns, values = KEYS[kind]
    key = list(columns)
    types.execute(f"CREATE TABLE items ({', '.join(f'{c} {t}' for c, t in columns.items())}, body text,"
                  f" PRIMARY KEY ({', '.join(key)}))")
    types.execute(f"INSERT INTO items SELECT {', '.join(values)}, (%s::text[])[g] FROM generate_series(1, 6) g",
                  [TEXTS])
    keys = {text: tuple(row) for *row, text in types.execute(f"SELECT {', '.join(key)}, body FROM items")}
    before = snapshot(types)
    hook.create_project("items", "items", key, ["body"])

    assert hook.generate_embeddings("items")["embedded"] == 6
    # Realtime: an insert, a changed text and a delete, embedded by a run over the queue.
    types.execute(f"INSERT INTO items SELECT {', '.join(values)}, 'a brass telescope' FROM generate_series(7, 7) g")
    types.execute("UPDATE items SET body = 'a green umbrella' WHERE body = 'a green lamp'")
    types.execute("DELETE FROM items WHERE body = 'a wooden desk'")
    run = hook.generate_embeddings("items", pending_only=True)
    assert (run["embedded"], run["failed"]) == (2, 0)
    status = hook.get_status("items")
    assert (status["total_rows"], status["embedded_rows"], status["stale_rows"], status["pending"]) == (6, 6, 0, 0)
    found = hook.search("items", "an umbrella", num_results=1)[0]
    assert tuple(found[c] for c in key) == keys["a green lamp"]  # the key as the source holds it (char padded)

    # An import keyed by the same types overwrites what it names, and nothing else.
    types.execute(f"CREATE TABLE upstream AS SELECT {', '.join(key)}, NULL::real[] AS v FROM items")
    vector = [float(x) for x in model.encode("a kettle for tea")]
    types.execute("UPDATE upstream SET v = %s WHERE (" + ", ".join(key) + ") = (SELECT " + ", ".join(key)
                  + " FROM items WHERE body = 'a red kettle')", [vector])
    types.execute("DELETE FROM upstream WHERE v IS NULL")
    assert hook.import_embeddings("items", "upstream", key, "v")["imported"] == 1
    assert tuple(hook.search("items", "tea", num_results=1)[0][c] for c in key) == keys["a red kettle"]

    hook.drop_project("items")
    after = snapshot(types)
    assert [r for r in after["relations"] if r[0] == "vectorize" and "items" in r[1]] == []
    assert [f for f in after["functions"] if "items" in f[0]] == [] and after["triggers"] == before["triggers"]
    assert [c for c in after["columns"] if c[1] == "items"] == [c for c in before["columns"] if c[1] == "items"]


BAD_KEYS = [
    ("id integer[] PRIMARY KEY", "'{1}'",
     "primary_key 'id' of \"public\".\"odd\" is integer[]: a key must be a single value of a plain type"),
    ("id jsonb PRIMARY KEY", "'{\"a\": 1}'", "primary_key 'id' of \"public\".\"odd\" is jsonb: a key must be"),
    ("id money PRIMARY KEY", "1.5", "primary_key 'id' of \"public\".\"odd\" is money: a key must be"),
    ("id integer UNIQUE", "NULL",
     "primary_key column(s) ['id'] of \"public\".\"odd\" allow NULL: a row with a NULL key cannot be told apart"
     " from another, nor kept in the project's tables, whose keys are NOT NULL (as pg_vectorize's). Make them NOT"
     " NULL (ALTER TABLE \"public\".\"odd\" ALTER COLUMN id SET NOT NULL; it fails while a row has a NULL key), or"
     " choose a primary key"),
]


@pytest.mark.parametrize("column, value, message", BAD_KEYS, ids=[c.split(" ", 2)[1] for c, _, _ in BAD_KEYS])
def test_keys_a_project_cannot_keep_are_refused(database, hook, column, value, message):
    """Before, these were accepted: generation then failed on every run (arrays, jsonb, money), and a nullable
    key made the realtime triggers fail the application's inserts of a NULL key."""
    database.execute(f"CREATE TABLE odd ({column}, body text)")
    database.execute(f"INSERT INTO odd VALUES ({value}, 'some text')")
    before = snapshot(database)
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        hook.create_project("odd", "odd", "id", ["body"])
    assert snapshot(database) == before


@pytest.mark.parametrize("method", ["join", "append"])
def test_a_key_whose_type_changed_is_refused_until_changed_back_and_its_triggers_come_back(database, hook, method):
    """``ALTER COLUMN id TYPE bigint`` (its key-change trigger dropped in the ALTER's transaction, as PostgreSQL
    wants): every call that reads the source raises ProjectConflictError naming the column and both types,
    and writes nothing; changed back, attach_source puts the key-change trigger back and a key change is then
    followed again."""
    from airflow_vectorize.exceptions import ProjectConflictError

    database.execute("CREATE TABLE items (id integer PRIMARY KEY, body text)")
    database.execute("INSERT INTO items SELECT g, (%s::text[])[g] FROM generate_series(1, 6) g", [TEXTS])
    hook.create_project("items", "items", "id", ["body"], table_method=method)
    assert hook.generate_embeddings("items")["embedded"] == 6
    with database.conn.transaction():
        database.execute("DROP TRIGGER vectorize_rekey_trigger_items ON items")
        database.execute("ALTER TABLE items ALTER COLUMN id TYPE bigint")
    before = snapshot(database)
    message = ("key column 'id' of public.items is bigint now, but project 'items' keeps its keys as integer: its"
               " tables and triggers cannot hold the new keys. Change the column back (ALTER TABLE public.items"
               " ALTER COLUMN id TYPE integer), or make another project of the table, import this one's vectors"
               " into it (import_embeddings, no model call) and drop this one (drop_project('items')).")
    for call in (lambda: hook.get_status("items"), lambda: hook.get_freshness("items"),
                 lambda: hook.generate_embeddings("items"), lambda: hook.attach_source("items")):
        with pytest.raises(ProjectConflictError, match=f"^{re.escape(message)}"):
            call()
    assert snapshot(database) == before

    database.execute("ALTER TABLE items ALTER COLUMN id TYPE integer")
    assert hook.attach_source("items")["attached"] is True
    assert ("vectorize_rekey_trigger_items",) in database.execute("SELECT tgname FROM pg_trigger")
    database.execute("UPDATE items SET id = 60 WHERE id = 6")  # recorded and queued again
    assert hook.generate_embeddings("items")["embedded"] == (1 if method == "join" else 0)
    assert hook.get_status("items")["embedded_rows"] == 6
    assert [r["id"] for r in hook.search("items", TEXTS[5], num_results=1)] == [60]
