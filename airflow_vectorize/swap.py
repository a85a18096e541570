"""A join project's bulk import into a new table, swapped in once it is indexed: searches keep reading the old
table and its HNSW index until the swap.

The in-place bulk path (``storage.drop_index_for_bulk_write``) drops the index, writes, commits and builds the
index again: searches wait for the write, then compare every vector until the build ends (1M rows, a 10 %
re-import: 542 s of exact scans, p50 1.2 s). A swap does it all in the import's transaction:

1. ``stage``: lock the embeddings table in SHARE mode (writers wait, as they wait for any index build;
   searches go on), create ``vectorize._swap_<oid>`` like it, copy the rows the import keeps, insert the
   imported ones, add the unique key, ANALYZE, build the HNSW index (memory sized as for any build) and grant
   what was granted on the table;
2. the caller writes the documents and clears the queue, with no lock that searches wait for;
3. ``complete``: take the table exclusively — each attempt bounded by ``SWAP_LOCK_TIMEOUT``, so that a
   session holding it cannot keep the searches queued behind the attempt waiting, up to
   ``SWAP_LOCK_ATTEMPTS`` times — then drop it and give the new table, its index and its key their names.
   Searches wait only for this step. ``Busy`` when the table stayed in use (a generation run's key stream
   holds it for its whole run while its next batch waits for this transaction): the caller rolls back to
   its savepoint and imports in place.

A table that has something a swap would lose (another owner, storage options, views, rules, triggers,
policies, publications, foreign keys, other indexes or constraints, column grants, inheritance) is imported in
place (``blocker``). As after any TRUNCATE or table rewrite, a REPEATABLE READ transaction that started before
the commit and reads the table only after it finds it empty.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from psycopg import Cursor, sql

from airflow_vectorize import catalog, grants, index_build, index_rebuild, storage
from airflow_vectorize.catalog import Project
from airflow_vectorize.naming import SCHEMA
from airflow_vectorize.validation import ImportSource

log = logging.getLogger(__name__)

SWAP_LOCK_TIMEOUT = "1s"
SWAP_LOCK_ATTEMPTS = 30
SWAP_LOCK_PAUSE_SECONDS = 0.2  # between attempts: the searches queued behind one run meanwhile
# Table privileges GRANT takes (what aclexplode reports); anything else makes the table a blocker.
PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"})


class Busy(Exception):
    """The embeddings table stayed in use: the swap could not take it."""


@dataclass(frozen=True)
class Staged:
    """The table that is to take the project's table's place: its name, its index's and its key's."""

    table: str
    index: str
    written: int
    inserted: int
    build: dict[str, Any]


def import_into_new_table(cur: Cursor, project: Project, source: ImportSource, build_cap: int,
                          ) -> tuple[int, int, int, dict[str, Any]] | None:
    """The import of ``source`` by a swap, when the project is a join project with vectors that searches read
    meanwhile and ``blocker`` finds nothing: (inserted, written, pending cleared, index build). None when it
    cannot be, having written nothing: the caller then imports in place."""
    if project.is_chunked or not project.is_join or not cur.execute(
            sql.SQL("SELECT EXISTS (SELECT FROM {})").format(project.names.target)).fetchone()[0]:
        return None
    reason = "its index is being rebuilt" if index_rebuild.rebuilding(cur, project.name) else blocker(cur, project)
    if reason:
        log.info("Importing into %s in place (its index rebuilt after the write), not into a new table: %s",
                 project.names.target.as_string(cur), reason)
        return None
    try:
        with cur.connection.transaction():  # a savepoint: in place after all when the table stays in use
            staged = stage(cur, project, source, build_cap)
            storage.write_documents(cur, project, source.table, source.key, incoming=source.rows)
            pending_cleared = storage.clear_pending(cur, project, source.table, source.key)
            complete(cur, project, staged)
    except Busy as busy:
        log.warning("Importing in place after all (its index rebuilt after the write): %s", busy)
        return None
    return staged.inserted, staged.written, pending_cleared, staged.build


def blocker(cur: Cursor, project: Project) -> str | None:
    """What keeps a join project's (unchunked) embeddings table from being swapped, or None."""
    found = cur.execute("""
        SELECT pg_get_userbyid(c.relowner) <> current_user, c.reloptions IS NOT NULL,
               c.relpersistence <> 'p' OR c.relkind <> 'r', c.relrowsecurity, c.relreplident <> 'd',
               c.relhassubclass OR c.relispartition OR EXISTS (SELECT FROM pg_inherits WHERE inhrelid = c.oid),
               EXISTS (SELECT FROM pg_depend d WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid
                       AND d.classid IN ('pg_rewrite'::regclass, 'pg_trigger'::regclass, 'pg_policy'::regclass,
                                         'pg_publication_rel'::regclass, 'pg_statistic_ext'::regclass)),
               EXISTS (SELECT FROM pg_constraint k WHERE k.confrelid = c.oid
                       OR (k.conrelid = c.oid AND k.contype NOT IN ('u', 'n')))
               OR (SELECT count(*) FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'u') <> 1,
               EXISTS (SELECT FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid WHERE i.indrelid = c.oid
                       AND x.relname <> %(index)s AND NOT EXISTS (SELECT FROM pg_constraint k
                       WHERE k.conindid = i.indexrelid AND k.conrelid = c.oid AND k.contype = 'u')),
               EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL),
               EXISTS (SELECT FROM aclexplode(c.relacl) g WHERE g.privilege_type <> ALL(%(privileges)s))
        FROM pg_class c WHERE c.oid = %(table)s::regclass""",
        {"table": project.names.target.as_string(cur), "index": project.names.index_name,
         "privileges": sorted(PRIVILEGES)}).fetchone()
    reasons = ("it has another owner", "it has storage options", "it is not a plain logged table",
               "it has row-level security", "it has a replica identity", "it takes part in inheritance",
               "views, rules, triggers, policies, publications or statistics depend on it",
               "it has foreign keys or constraints of its own", "it has indexes of its own",
               "it has column privileges", "it has privileges GRANT cannot copy")
    return next((reason for reason, found_it in zip(reasons, found) if found_it), None)


def stage(cur: Cursor, project: Project, source: ImportSource, build_cap: int) -> Staged:
    """The project's table as the import leaves it, as a new table with its key, statistics, index and
    grants; the project's table is locked against writers (SHARE) until the transaction ends."""
    target = project.names.target
    oid = cur.execute("SELECT %s::regclass::oid", [target.as_string(cur)]).fetchone()[0]
    table, index = f"_swap_{oid}", f"_swap_{oid}_idx"
    new = sql.Identifier(SCHEMA, table)
    key = project.key
    cur.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(target))
    cur.execute(sql.SQL("CREATE TABLE {new} (LIKE {target} INCLUDING DEFAULTS INCLUDING STORAGE"
                        " INCLUDING COMPRESSION)").format(new=new, target=target))
    cur.execute(sql.SQL("INSERT INTO {new} SELECT * FROM {target} t WHERE NOT EXISTS"
                        " (SELECT FROM {src} s WHERE {imported})").format(
        new=new, target=target, src=source.table, imported=key.equals("t", "s", source.key)))
    kept = cur.rowcount
    before = catalog.embedded_rows(cur, project)  # a join table: a vector in every row
    _, written = storage.import_from_table(cur, project, source.table, source.key, source.embeddings,
                                           exclusive=True, into=new)
    cur.execute(sql.SQL("ALTER TABLE {} ADD {}").format(new, catalog.key_index(project)))
    cur.execute(sql.SQL("ANALYZE {}").format(new))
    build = index_build.build(cur, catalog.index_statement(project, new, index), f"project {project.name!r}",
                              kept + written, project.dimensions, project.hnsw_m, project.half_index, build_cap)
    grants.restore(cur, grants.privileges(cur, project.names.target), new)
    return Staged(table, index, written, written - (before - kept), build)


def complete(cur: Cursor, project: Project, staged: Staged) -> None:
    """Put the staged table in the place of the project's table; ``Busy`` when it could not be taken."""
    target = project.names.target
    _take(cur, target)
    new = sql.Identifier(SCHEMA, staged.table)
    constraint, new_constraint = cur.execute(  # each table's unique key (``blocker``: exactly one)
        "SELECT (SELECT conname FROM pg_constraint WHERE conrelid = %(old)s::regclass AND contype = 'u'),"
        " (SELECT conname FROM pg_constraint WHERE conrelid = %(new)s::regclass AND contype = 'u')",
        {"old": target.as_string(cur), "new": new.as_string(cur)}).fetchone()
    cur.execute(sql.SQL("DROP TABLE {}").format(target))
    cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, sql.Identifier(project.names.target_name[1])))
    cur.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
        sql.Identifier(SCHEMA, staged.index), sql.Identifier(project.names.index_name)))
    cur.execute(sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
        target, sql.Identifier(new_constraint), sql.Identifier(constraint)))


def _take(cur: Cursor, table: sql.Identifier) -> None:
    """ACCESS EXCLUSIVE on ``table``: up to SWAP_LOCK_ATTEMPTS tries of SWAP_LOCK_TIMEOUT each."""
    if not catalog.take_exclusively(cur, table, SWAP_LOCK_ATTEMPTS, SWAP_LOCK_TIMEOUT, SWAP_LOCK_PAUSE_SECONDS):
        raise Busy(f"{table.as_string(cur)} stayed in use for {SWAP_LOCK_ATTEMPTS} attempts of {SWAP_LOCK_TIMEOUT}")
