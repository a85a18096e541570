"""The full-text index a project kept on its source before stored documents (the documents table; a chunked
project's, its chunk table's ``chunk_fts``) (``StorageNames.source_fts_index_qualified_name``: ``<job>_fts_idx``
in the source's schema), dropped when the project moves to stored documents or is dropped — but only when it is
that index: the user's own index of that name (made later, on the source or another table, on another
expression) is never touched."""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import Cursor, sql

from airflow_vectorize import expressions
from airflow_vectorize.naming import quoted

if TYPE_CHECKING:
    from airflow_vectorize.catalog import Project

_PROBE = sql.Identifier("vectorize_fts_probe")  # a temporary table shaped as the source, never committed


def drop_source_fts_index(cur: Cursor, project: Project) -> bool:
    """Drop the project's full-text index on its source, if it has one; returns whether it did. Its own is a GIN
    index of the source on one expression, the project's ``expressions.fts_document`` (today's, or the one
    before it read only the first FULL_TEXT_CHARS characters)."""
    name = project.names.source_fts_index_qualified_name
    found = cur.execute(
        "SELECT pg_get_expr(i.indexprs, i.indrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_am a ON a.oid = c.relam WHERE i.indexrelid = to_regclass(%s) AND i.indrelid = to_regclass(%s)"
        " AND i.indnatts = 1 AND i.indkey[0] = 0 AND a.amname = 'gin'",
        [quoted(name), quoted((project.schema, project.relation))]).fetchone()
    if found is None or found[0] not in _project_expressions(cur, project):
        return False
    cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(*name)))
    return True


def _project_expressions(cur: Cursor, project: Project) -> set[str]:
    """The project's full-text expressions as PostgreSQL writes them in an index of the source: built on an empty
    temporary copy of its columns, in a savepoint that is rolled back."""
    legacy = sql.SQL("to_tsvector('english', {})").format(sql.SQL(" || ' ' || ").join(
        sql.SQL("coalesce({}::text, '')").format(sql.Identifier(c)) for c in project.columns))
    with cur.connection.transaction(force_rollback=True):
        cur.execute(sql.SQL("CREATE TEMP TABLE {probe} (LIKE {source})").format(probe=_PROBE,
                                                                                source=project.names.source))
        for expression in (expressions.fts_document(project), legacy):
            cur.execute(sql.SQL("CREATE INDEX ON {} USING gin (({}))").format(_PROBE, expression))
        cur.execute("SELECT pg_get_expr(indexprs, indrelid) FROM pg_index WHERE indrelid = %s::regclass",
                    [_PROBE.as_string(cur)])
        return {row[0] for row in cur.fetchall()}
