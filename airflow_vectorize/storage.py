"""Set-based writes of embeddings into a project's storage, and the HNSW index around bulk writes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from psycopg import Cursor, sql

from airflow_vectorize.catalog import Project, create_index, drop_index

# A write that brings at least this share of the project's final rows, and at least MIN rows, drops the
# HNSW index and builds it again afterwards: a bulk build is several times faster than inserting every
# row into the graph one by one (and leaves no dead index entries after a full re-import).
REBUILD_INDEX_SHARE = 0.5
REBUILD_INDEX_MIN_ROWS = 1000


def embedded_rows(cur: Cursor, project: Project) -> int:
    cur.execute(sql.SQL("SELECT count({emb}) FROM {target}").format(
        emb=sql.Identifier(project.embeddings_column), target=project.target))
    return cur.fetchone()[0]


def rebuild_worthwhile(cur: Cursor, project: Project, incoming: int) -> bool:
    """Whether writing ``incoming`` rows is better done without the index, building it afterwards."""
    if incoming < REBUILD_INDEX_MIN_ROWS:
        return False
    return incoming >= REBUILD_INDEX_SHARE * max(embedded_rows(cur, project), incoming)


@contextmanager
def index_maintenance(cur: Cursor, project: Project, incoming: int, build_memory: str) -> Iterator[bool]:
    """Around a write of ``incoming`` rows: drop the index first when a rebuild is cheaper; rebuild after.

    The build runs with ``maintenance_work_mem = build_memory`` for this transaction only (set_config
    with is_local), so the session's settings are restored when the transaction ends. Yields whether the
    index is being rebuilt.
    """
    rebuild = rebuild_worthwhile(cur, project, incoming)
    if rebuild:
        drop_index(cur, project)
    yield rebuild
    if rebuild:
        cur.execute("SELECT set_config('maintenance_work_mem', %s, true)", [build_memory])
        create_index(cur, project)


def import_from_table(
    cur: Cursor, project: Project, src: sql.Identifier, src_key: str, src_embeddings: str
) -> tuple[int | None, int]:
    """Write every source row's embedding, overwriting existing ones; returns (inserted, written).

    ``inserted`` is None for append projects (an UPDATE cannot tell new from overwritten embeddings).

    The text md5 of each row's current text is stored with the embedding, so generation treats imported
    embeddings as current until the text changes.
    """
    key = sql.Identifier(project.primary_key)
    parts = dict(
        target=project.target,
        source=project.source,
        src=src,
        key=key,
        src_key=sql.Identifier("s", src_key),
        src_emb=sql.Identifier("s", src_embeddings),
        emb=sql.Identifier(project.embeddings_column),
        updated_at=sql.Identifier(project.updated_at_column),
        text_md5=sql.Identifier(project.text_md5_column),
        md5=project.text_md5_expression("r"),
    )
    if project.is_join:
        cur.execute(
            sql.SQL(
                "WITH written AS ("
                " INSERT INTO {target} ({key}, {emb}, {updated_at}, {text_md5})"
                " SELECT r.{key}, {src_emb}::vector, now(), {md5}"
                " FROM {src} s JOIN {source} r ON r.{key} = {src_key}"
                " ON CONFLICT ({key}) DO UPDATE SET {emb} = EXCLUDED.{emb},"
                " {updated_at} = EXCLUDED.{updated_at}, {text_md5} = EXCLUDED.{text_md5}"
                " RETURNING xmax = 0 AS inserted)"
                " SELECT count(*) FILTER (WHERE inserted), count(*) FROM written"
            ).format(**parts)
        )
        inserted, written = cur.fetchone()
        return inserted, written
    cur.execute(
        sql.SQL(
            "UPDATE {source} r SET {emb} = {src_emb}::vector, {updated_at} = now(), {text_md5} = {md5}"
            " FROM {src} s WHERE r.{key} = {src_key}"
        ).format(**parts)
    )
    return None, cur.rowcount


def clear_pending(cur: Cursor, project: Project, src: sql.Identifier, src_key: str) -> int:
    """Remove queued realtime work for the keys in ``src``; returns how many entries were removed."""
    cur.execute(
        sql.SQL("DELETE FROM {queue} q USING {src} s WHERE q.{key} = s.{src_key}").format(
            queue=project.queue, src=src, key=sql.Identifier(project.primary_key),
            src_key=sql.Identifier(src_key))
    )
    return cur.rowcount


def upsert_from_staging(cur: Cursor, project: Project) -> int:
    """Write the rows of the session's ``vectorize_staging`` (key, embeddings, text_md5); returns rows written.

    Rows whose source row was deleted meanwhile are ignored.
    """
    parts = dict(
        target=project.target,
        source=project.source,
        key=sql.Identifier(project.primary_key),
        emb=sql.Identifier(project.embeddings_column),
        updated_at=sql.Identifier(project.updated_at_column),
        text_md5=sql.Identifier(project.text_md5_column),
    )
    if project.is_join:
        cur.execute(sql.SQL(
            "INSERT INTO {target} ({key}, {emb}, {updated_at}, {text_md5})"
            " SELECT s.{key}, s.embeddings, now(), s.text_md5 FROM vectorize_staging s JOIN {source} r USING ({key})"
            " ON CONFLICT ({key}) DO UPDATE SET {emb} = EXCLUDED.{emb}, {updated_at} = EXCLUDED.{updated_at},"
            " {text_md5} = EXCLUDED.{text_md5}"
        ).format(**parts))
    else:
        cur.execute(sql.SQL(
            "UPDATE {source} r SET {emb} = s.embeddings, {updated_at} = now(), {text_md5} = s.text_md5"
            " FROM vectorize_staging s WHERE r.{key} = s.{key}"
        ).format(**parts))
    return cur.rowcount
