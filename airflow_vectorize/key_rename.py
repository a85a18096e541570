"""A source's key columns renamed under a project, followed without embedding anything again.

The project's tables (vectors or chunks, queue, errors, removed keys, stored documents) are keyed by the
source's key columns under the same names, and its trigger functions name them. PostgreSQL tracks the key
columns of the project's key-change trigger (``AFTER UPDATE OF <key>``) by number, not by name, so that trigger
says what the key columns are called now (and PostgreSQL refuses to drop them while it exists). ``follow``
renames them in the project's tables, writes the catalog, and makes the trigger functions and the view again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from psycopg import Cursor, sql

from airflow_vectorize import catalog, removal
from airflow_vectorize.catalog import Project
from airflow_vectorize.naming import quoted

log = logging.getLogger(__name__)


def current_names(cur: Cursor, project: Project) -> tuple[str, ...] | None:
    """The key columns' names in the source now, in the key's order (None: the key-change trigger is not on
    the source, e.g. another table was put in its place)."""
    names = cur.execute(
        "SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_trigger t,"
        " unnest(t.tgattr::int2[]) WITH ORDINALITY k(attnum, ord)"
        " JOIN pg_attribute a ON a.attnum = k.attnum WHERE a.attrelid = t.tgrelid"
        " AND t.tgrelid = to_regclass(%s) AND t.tgname = %s",
        [project.names.source.as_string(cur), project.names.rekey_trigger]).fetchone()[0]
    return tuple(names) if names and len(names) == len(project.key.columns) else None


def follow(cur: Cursor, project: Project) -> Project | None:
    """Rename the key columns in the project's tables as they were renamed in the source, and make its trigger
    functions, realtime triggers and view again; returns the project as it is then, or None when no key column
    was renamed. Call with the project locked."""
    now = current_names(cur, project)
    if now is None or now == project.key.columns:
        return None
    renamed = replace(project, primary_key=now[0] if len(now) == 1 else now)
    tables = [project.names.queue, project.names.errors, project.names.removed, project.names.documents]
    if project.is_join:
        tables.append(project.names.target)
    for table in tables:
        existing = cur.execute(
            "SELECT array_agg(attname::text) FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
            " AND NOT attisdropped", [table.as_string(cur)]).fetchone()[0] or []
        for old, new in zip(project.key.columns, now):
            if old != new and old in existing:
                cur.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                    table, sql.Identifier(old), sql.Identifier(new)))
    cur.execute("UPDATE vectorize.job SET params = params || jsonb_build_object('primary_key', %s::jsonb)"
                " WHERE job_id = %s", [json.dumps(renamed.params()["primary_key"]), project.job_id])
    removal.replace_function(cur, renamed)
    if cur.execute("SELECT to_regprocedure(%s) IS NOT NULL",
                   [quoted(project.names.trigger_function_name) + "()"]).fetchone()[0]:
        catalog.drop_realtime_triggers(cur, project)  # their function names the key
        catalog.create_triggers(cur, renamed)
    catalog.ensure_view(cur, renamed)
    log.info("Project %r follows its source's key columns renamed %s → %s", project.name,
             list(project.key.columns), list(now))
    return renamed
