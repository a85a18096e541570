"""A project's HNSW index rebuilt in place with other settings (``alter_project``'s ``hnsw_m``,
``hnsw_ef_construction``, ``halfvec_index``), its vectors kept and searched throughout.

The new index is built beside the old one (``StorageNames.rebuilt_index_name``) with CREATE INDEX
CONCURRENTLY, its memory sized as every build's (``index_build``); searches use the old index and writes to the
table go on (into both) meanwhile. Then one short transaction, with the project locked, drops the old index,
gives the new one its name and writes the settings into the catalog; it tries SWAP_LOCK_ATTEMPTS times to take
the table for at most SWAP_LOCK_TIMEOUT, so that the searches queued behind it wait no longer, then waits for
it. The project's lock is not held during the build: a run waiting for it while the build waits for that
run's snapshot would deadlock; ``drop_project``, which would wait for the build, is refused meanwhile. A
partitioned table (an append project's partitioned source) cannot build concurrently: its index is built in
the swap's transaction, which blocks the source's writers, not its readers. A rebuild stopped between its
build and its swap leaves the new index, which the next rebuild, generation run or ``attach_source`` drops.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import Cursor, sql

from airflow_vectorize import catalog, index_build, validation
from airflow_vectorize.catalog import Project
from airflow_vectorize.exceptions import InvalidInputError, ProjectConflictError

log = logging.getLogger(__name__)

# taking the table for the swap: as an import into a new table does (``swap``), then as long as it takes
SWAP_LOCK_TIMEOUT, SWAP_LOCK_ATTEMPTS, SWAP_LOCK_PAUSE_SECONDS = "1s", 30, 0.2


def settings(project: Project) -> dict[str, Any]:
    """The project's index settings (``catalog.INDEX_PARAMS``)."""
    return {name: getattr(project, name) for name in catalog.INDEX_PARAMS}


def rebuild_lock(cur: Cursor, job_name: str) -> bool:
    """Take the project's rebuild lock for the session (released when it ends); False: another session holds it.
    Only rebuilds take it, never waiting: nothing that waits for it can block their CREATE INDEX CONCURRENTLY."""
    return cur.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [_lock_key(job_name)]).fetchone()[0]


def rebuilding(cur: Cursor, job_name: str) -> bool:
    """Whether a rebuild of the project's index runs; if not, none can start until this transaction ends. For
    what would wait for a running build while the build waits for its snapshot: ``drop_project``, an import
    into a new table, ``discard_leftover``."""
    return not cur.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
                           [_lock_key(job_name)]).fetchone()[0]


def _lock_key(job_name: str) -> str:
    """The advisory lock of a project's index rebuilds (another than ``catalog.lock_project``'s)."""
    return f"vectorize-index:{job_name}"


def discard_leftover(cur: Cursor, project: Project) -> bool:
    """Drop the index a killed rebuild left on the project's table (``<index>_rebuild``: every write keeps it up
    to date until it goes), unless a rebuild runs or the table stays in use for DROP_INDEX_LOCK_TIMEOUT; returns
    whether it did. Call with the project locked; the table stays locked until the transaction ends."""
    building = sql.Identifier(project.names.index_qualified_name[0], project.names.rebuilt_index_name)
    if not cur.execute("SELECT EXISTS (SELECT FROM pg_index WHERE indexrelid = to_regclass(%s)"
                       " AND indrelid = to_regclass(%s))",
                       [building.as_string(cur), project.names.target.as_string(cur)]).fetchone()[0]:
        return False
    if rebuilding(cur, project.name):
        return False
    try:
        with catalog.lock_timeout(cur, catalog.DROP_INDEX_LOCK_TIMEOUT):
            cur.execute(sql.SQL("DROP INDEX {}").format(building))
    except psycopg.errors.LockNotAvailable:
        return False
    log.warning("Project %r: dropped %s, which a rebuild of its index left when it was stopped", project.name,
                building.as_string(cur))
    return True


def altered(project: Project, given: dict[str, Any]) -> Project:
    """``project`` with the index settings ``given`` (``hnsw_m``, ``hnsw_ef_construction``, ``halfvec_index``),
    checked as ``create_project`` checks them and against the project's vectors."""
    wanted = replace(project, **given)
    validation.check_index_options(wanted.hnsw_m, wanted.hnsw_ef_construction,
                                   catalog.CHUNK_INDEX_EF_CONSTRUCTION if project.is_chunked else 64)
    if not isinstance(wanted.halfvec_index, bool):
        raise InvalidInputError(f"halfvec_index must be True or False, got {wanted.halfvec_index!r}")
    if project.is_chunked and given.get("halfvec_index") is False:
        raise InvalidInputError(f"project {project.name!r} is chunked: its index always holds half-precision vectors")
    validation.check_index_dimensions(wanted, f"project {project.name!r}")
    return wanted


def check_half_range(cur: Cursor, project: Project, wanted: Project) -> None:
    """Refuse ``wanted``'s half-precision index when ``project``'s stored vectors hold values beyond halfvec's range
    (an import into a full-precision project takes any ``real``), as an import into a half-precision project
    refuses them: the count and a few keys."""
    if not wanted.half_index or project.half_index:
        return
    emb = sql.Identifier("e", project.names.embeddings_column)
    cur.execute(sql.SQL(
        "SELECT count(*), (array_agg({key}))[1:{sample}] FROM {target} e WHERE vector_norm({emb}) > {m}"
        " AND EXISTS (SELECT FROM unnest({emb}::real[]) x WHERE abs(x) > {m})"
    ).format(key=project.key.as_text("e"), sample=sql.Literal(validation.SAMPLE_SIZE), target=project.names.target,
             emb=emb, m=sql.Literal(validation.HALFVEC_MAX)))
    count, keys = cur.fetchone()
    if count:
        raise InvalidInputError(
            f"project {project.name!r} cannot have halfvec_index=True: {count} row(s) hold vectors with values beyond"
            f" the range of halfvec (|x| > {validation.HALFVEC_MAX:g}), which its index would hold; e.g. keys {keys}."
            " Nothing was changed.")


def rebuild(cur: Cursor, project: Project, wanted: Project, build_cap: int) -> dict[str, Any]:
    """Give ``project`` the index ``wanted`` describes, on ``cur``'s autocommit connection, which holds the
    project's rebuild lock (``rebuild_lock``). Returns ``rebuilt`` (False: the project had no index, a bulk
    write's build being due; the next build takes the settings) and the build's figures (``index_build``)."""
    schema, name = project.names.index_qualified_name
    current, building = sql.Identifier(schema, name), sql.Identifier(schema, project.names.rebuilt_index_name)
    target = project.names.target.as_string(cur)
    exists, partitioned, leftover = cur.execute(
        "SELECT to_regclass(%s) IS NOT NULL, (SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)),"
        " (SELECT bool_and(coalesce(i.indrelid = to_regclass(%s), false)) FROM pg_class c"
        "  LEFT JOIN pg_index i ON i.indexrelid = c.oid WHERE c.oid = to_regclass(%s))",
        [current.as_string(cur), target, target, building.as_string(cur)]).fetchone()
    if leftover is False:
        raise ProjectConflictError(
            f"project {project.name!r}: {schema}.{project.names.rebuilt_index_name} exists and is not an index of the"
            " project's table; rename or drop it to rebuild the project's index")
    discard = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(building)
    if leftover:  # a killed rebuild's (no other rebuild runs: this session holds the lock)
        cur.execute(discard)
    if not exists:
        with cur.connection.transaction():
            _swap(cur, project, wanted, None)
        return {"rebuilt": False}
    label = f"project {project.name!r}"
    rows = catalog.embedded_rows(cur, project)
    if partitioned:
        with cur.connection.transaction():
            summary = index_build.build(cur, catalog.index_statement(wanted, name=project.names.rebuilt_index_name),
                                        label, rows, wanted.dimensions, wanted.hnsw_m, wanted.half_index, build_cap)
            _swap(cur, project, wanted, building)
        return {"rebuilt": True, **summary}
    summary = index_build.build(
        cur, catalog.index_statement(wanted, name=project.names.rebuilt_index_name, concurrently=True), label,
        rows, wanted.dimensions, wanted.hnsw_m, wanted.half_index, build_cap, discard=discard)
    try:
        with cur.connection.transaction():
            _swap(cur, project, wanted, building)
    except BaseException:
        if not cur.connection.closed:
            cur.execute(discard)
        raise
    return {"rebuilt": True, **summary}


def _swap(cur: Cursor, project: Project, wanted: Project, building: sql.Identifier | None) -> None:
    """In the caller's transaction, with the project locked: check that it is still ``project``, then put the
    ``building`` index in the old one's place (None: there is none) and write ``wanted``'s settings."""
    catalog.lock_project(cur, project.name)
    now = catalog.find_project(cur, project.name)
    if now is None or now.job_id != project.job_id or settings(now) != settings(project):
        raise ProjectConflictError(f"project {project.name!r} was dropped or changed while its index was rebuilt;"
                                   " nothing was changed, alter it again")
    if building is not None:
        target = project.names.target
        if not catalog.take_exclusively(cur, target, SWAP_LOCK_ATTEMPTS, SWAP_LOCK_TIMEOUT, SWAP_LOCK_PAUSE_SECONDS):
            log.warning("%s stayed in use for %d attempts of %s; the rebuilt index waits for it to take the old"
                        " one's place", target.as_string(cur), SWAP_LOCK_ATTEMPTS, SWAP_LOCK_TIMEOUT)
            cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(target))
        catalog.drop_index(cur, project)
        cur.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            building, sql.Identifier(project.names.index_name)))
    catalog.write_params(cur, project, wanted, catalog.INDEX_PARAMS)
