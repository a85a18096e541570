"""A source's key and embedded columns renamed under a project, followed without embedding anything again.

The project's tables (vectors or chunks, queue, errors, removed keys, stored documents) are keyed by the
source's key columns under the same names, its trigger functions name them, and its catalog names the text
columns it embeds. PostgreSQL tracks the columns of the project's key-change trigger (``AFTER UPDATE OF
<key>``) and of a realtime project's update trigger (``AFTER UPDATE OF <embedded columns>``) by number, not
by name: those triggers say what the columns are called now (and PostgreSQL refuses to drop them while the
triggers exist). A rename is thus proved, never guessed from names; a manual project's embedded columns have
no such trigger (``alter_project(columns=…)`` follows them). ``follow`` renames the key columns in the
project's tables, writes the catalog, and makes the trigger functions, realtime triggers and view again.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from psycopg import Cursor, sql

from airflow_vectorize import catalog, removal
from airflow_vectorize.catalog import Project

log = logging.getLogger(__name__)


def renamed(cur: Cursor, project: Project) -> Project | None:
    """``project`` with its key and embedded columns as the source names them now, or None when none of them
    was renamed (or nothing proves it: no such trigger on the source, e.g. a paused project's update trigger,
    or another table in the source's place)."""
    names = project.names
    now = dict(cur.execute(
        "SELECT t.tgname::text, array_agg(a.attname::text ORDER BY k.ord) FROM pg_trigger t,"
        " unnest(t.tgattr::int2[]) WITH ORDINALITY k(attnum, ord)"
        " JOIN pg_attribute a ON a.attnum = k.attnum WHERE a.attrelid = t.tgrelid"
        " AND t.tgrelid = to_regclass(%s) AND t.tgname = ANY(%s) GROUP BY t.tgname",
        [names.source.as_string(cur), [names.rekey_trigger, names.update_trigger]]).fetchall())
    key = tuple(now.get(names.rekey_trigger) or project.key.columns)
    columns = tuple(now.get(names.update_trigger) or project.columns)
    if (key, columns) == (project.key.columns, project.columns):
        return None
    return replace(project, primary_key=key[0] if len(key) == 1 else key, columns=columns)


def described(project: Project, now: Project) -> str:
    """What was renamed, for a message: "'id' is now 'doc_id', ..."."""
    pairs = [*zip(project.key.columns, now.key.columns), *zip(project.columns, now.columns)]
    return ", ".join(f"{old!r} is now {new!r}" for old, new in pairs if old != new)


def follow(cur: Cursor, project: Project) -> Project | None:
    """Follow the source's renamed key and embedded columns (``renamed``): the key columns in the project's
    tables, the catalog, the trigger functions, realtime triggers and view; returns the project as it is then,
    or None when nothing was renamed. Call with the project locked."""
    now = renamed(cur, project)
    if now is None:
        return None
    tables = [project.names.queue, project.names.errors, project.names.removed, project.names.documents]
    if project.is_join:
        tables.append(project.names.target)
    renames = dict(zip(project.key.columns, now.key.columns))
    for schema, table, old in cur.execute(  # the project's tables that have a renamed key column (as they exist)
            "SELECT n.nspname::text, c.relname::text, a.attname::text FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE a.attrelid = ANY(ARRAY(SELECT to_regclass(t) FROM unnest(%s::text[]) t))"
            " AND a.attname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            [[t.as_string(cur) for t in tables], [o for o, n in renames.items() if o != n]]).fetchall():
        cur.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
            sql.Identifier(schema, table), sql.Identifier(old), sql.Identifier(renames[old])))
    catalog.write_params(cur, project, now, ("primary_key", "columns"))
    removal.replace_function(cur, now)
    triggers = [project.names.insert_trigger, project.names.update_trigger]
    if project.schedule == "realtime" and cur.execute(  # one missing: removal.restore_realtime_triggers's
            "SELECT count(*) = 2 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = ANY(%s)",
            [project.names.source.as_string(cur), triggers]).fetchone()[0]:
        catalog.drop_realtime_triggers(cur, project)  # their function names the key
        catalog.create_triggers(cur, now)
    catalog.ensure_view(cur, now)
    log.info("Project %r follows its source's renamed columns: %s", project.name, described(project, now))
    return now
