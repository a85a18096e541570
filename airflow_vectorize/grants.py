"""Who else may read a project: a role that only searches (an application's, a read replica's user), and the
privileges others were given on a relation that a project makes again.

``grant_search`` gives a role what searches, hybrid searches, RAG, ``get_status``, ``get_freshness`` and the
project list read (``SELECT``; nothing it could write): the ``vectorize`` schema's usage, the catalog and the
RAG prompts, every table of the project and its view, and the source table when the granting role may grant
it. Privileges follow the tables the project makes again: a bulk import's new embeddings table
(``swap``) and the view made again on the source's columns (``catalog.ensure_view``) get those of the
relation they replace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg import Cursor, sql

from airflow_vectorize.naming import SCHEMA

if TYPE_CHECKING:
    from airflow_vectorize.catalog import Project

CATALOG = (sql.Identifier(SCHEMA, "job"), sql.Identifier(SCHEMA, "prompts"))


def readable(cur: Cursor, project: Project) -> list[sql.Identifier]:
    """The project's relations a searching role reads (those that exist; a project created by an earlier
    version may lack one until its next generation run)."""
    names = project.names
    relations = [*CATALOG, names.queue, names.bulk, names.errors, names.removed]
    if project.is_join:  # an append project's vectors are in the source
        relations += [names.target, names.view]
    if not project.is_chunked:
        relations.append(names.documents)
    cur.execute("SELECT array_agg(r) FROM unnest(%s::text[]) r WHERE to_regclass(r) IS NOT NULL",
                [[r.as_string(cur) for r in relations]])
    present = set(cur.fetchone()[0] or [])
    return [r for r in relations if r.as_string(cur) in present]


def grant_search(cur: Cursor, project: Project, role: str) -> dict[str, Any]:
    """GRANT ``role`` SELECT on what ``readable`` lists, USAGE on the schema, and SELECT on the source when this
    role may grant it; returns what it granted and whether the source was among it."""
    role_id = sql.Identifier(role)
    cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(SCHEMA), role_id))
    relations = readable(cur, project)
    cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.SQL(", ").join(relations), role_id))
    source = project.names.source.as_string(cur)
    cur.execute("SELECT has_table_privilege(%s, 'SELECT WITH GRANT OPTION')", [source])
    source_granted = cur.fetchone()[0]
    if source_granted:
        cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(project.names.source, role_id))
    return {"granted": [r.as_string(cur) for r in relations] + ([source] if source_granted else []),
            "source_granted": source_granted}


def revoke_search(cur: Cursor, project: Project, role: str) -> list[str]:
    """REVOKE what ``grant_search`` granted on the project's own tables and view (the catalog, the schema and
    the source stay: other projects, or the table's owner, may have granted them); returns those relations."""
    catalog = {r.as_string(cur) for r in CATALOG}
    relations = [r for r in readable(cur, project) if r.as_string(cur) not in catalog]
    cur.execute(sql.SQL("REVOKE SELECT ON {} FROM {}").format(sql.SQL(", ").join(relations), sql.Identifier(role)))
    return [r.as_string(cur) for r in relations]


def privileges(cur: Cursor, relation: sql.Identifier) -> list[tuple[str, bool, str, bool]]:
    """What was granted on ``relation`` to others than its owner: (privilege, to PUBLIC, grantee, grantable);
    none when it does not exist."""
    return cur.execute(
        "SELECT g.privilege_type, g.grantee = 0, pg_get_userbyid(g.grantee), g.is_grantable"
        " FROM pg_class c, aclexplode(c.relacl) g WHERE c.oid = to_regclass(%s) AND g.grantee <> c.relowner",
        [relation.as_string(cur)]).fetchall()


def restore(cur: Cursor, granted: list[tuple[str, bool, str, bool]], relation: sql.Identifier) -> None:
    """GRANT on ``relation`` what ``privileges`` read from the relation it replaces."""
    for privilege, public, grantee, grantable in granted:
        cur.execute(sql.SQL("GRANT {} ON {} TO {}{}").format(
            sql.SQL(privilege), relation, sql.SQL("PUBLIC") if public else sql.Identifier(grantee),
            sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))
