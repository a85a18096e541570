"""Set-based writes of embeddings into a project's storage, and the HNSW index around bulk writes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import Cursor, sql

from airflow_vectorize import catalog, expressions, legacy_fts, removal
from airflow_vectorize.catalog import Project, create_index, drop_index_unless_busy
from airflow_vectorize.chunking import TextSplitter
from airflow_vectorize.exceptions import InvalidInputError
from airflow_vectorize.keys import Key
from airflow_vectorize.naming import CHUNK_FTS_COLUMN, DOCUMENT_COLUMN, quoted
from airflow_vectorize.validation import ImportSource

log = logging.getLogger(__name__)

# A write that brings at least this share of the project's final rows, and at least MIN rows, drops the
# HNSW index and builds it again afterwards: a bulk build is several times faster than inserting every
# row into the graph one by one (and leaves no dead index entries after a full re-import). The share is
# measured (bench-million, bench/imports.py): inserting into the graph costs 4 ms a row at 100k and 6.9-7.2
# ms at 1M (3.4 ms with shared buffers larger than the index), a build ≈ 0.34 ms per row of the whole table,
# so a rebuild pays from ≈ 5 % of the rows (≈ 10 % when the index is in shared buffers). From 10 % it is
# never the slower choice.
REBUILD_INDEX_SHARE = 0.1
REBUILD_INDEX_MIN_ROWS = 1000


def rebuild_worthwhile(cur: Cursor, project: Project, incoming: int) -> bool:
    """Whether writing ``incoming`` rows is better done without the index, building it afterwards."""
    if incoming < REBUILD_INDEX_MIN_ROWS:
        return False
    return incoming >= REBUILD_INDEX_SHARE * max(catalog.embedded_rows(cur, project), incoming)


def drop_index_for_bulk_write(cur: Cursor, project: Project, incoming: int, rebuild: bool | None = None) -> bool:
    """Drop the HNSW index in this transaction before it writes ``incoming`` rows — when a rebuild is cheaper
    (``rebuild`` None), or as ``rebuild`` says — unless another session keeps the storage busy; returns
    whether it was dropped. The caller builds the index again after this transaction commits (``build_index``,
    a transaction of its own): searches of the table wait only for the write, and run without the index
    (exactly, slower) while it is built."""
    wanted = rebuild_worthwhile(cur, project, incoming) if rebuild is None else rebuild
    return wanted and drop_index_unless_busy(cur, project)


def build_index(cur: Cursor, project: Project, build_cap: int) -> dict[str, Any] | None:
    """The project's HNSW index over its vectors when it has none (after a bulk write, or the repair of one a
    killed run dropped), its memory sized to them within ``build_cap``; its figures, or None when it existed.
    CREATE INDEX blocks the table's writers until this transaction ends, not its readers. A no-op when the
    project's storage is gone (dropped since the write committed)."""
    cur.execute("SELECT to_regclass(%s) IS NULL", [project.names.target.as_string(cur)])
    if cur.fetchone()[0]:
        return None
    return create_index(cur, project, build_cap)


def reconcile_removed(cur: Cursor, project: Project) -> dict[str, Any]:
    """Settle the keys removed since the last run: delete the vectors of those that did not come back; for an
    append project, write the kept vectors back into the rows that came back with the same text. Returns
    ``{"vectors_removed": n}`` (chunks for a chunked project) or ``{"vectors_restored": n, "vectors_removed":
    m, "index_dropped": bool}`` (a bulk restore drops the index: ``build_index`` after the commit), with
    ``"partitions_changed": True`` when a partitioned source's partitions did. Call with the project locked.

    A join project's vectors are found by key when few keys were removed, and by comparing every stored key
    with the source (one anti-join) after a TRUNCATE (its marker: a row of NULLs) or when many were.

    A partitioned source is compared when its partitions changed since the last run (``removal.
    partitions_changed``: a partition truncated, detached, dropped or attached fires none of its triggers); a
    DELETE there fires a row trigger, which records it as on any table. Each run also deletes its queue entries and
    errors of keys no longer in it (the row trigger leaves them)."""
    names, key = project.names, project.key
    partitioned = catalog.source_is_partitioned(cur, project)
    if partitioned:  # each entry's row probed by its key (a scalar subquery: the planner would rather scan
        for table in (names.queue, names.errors):  # every partition for a join)
            cur.execute(sql.SQL("DELETE FROM {} x WHERE (SELECT true FROM {} r WHERE {} LIMIT 1) IS NULL").format(
                table, names.source, key.equals("r", "x")))
    cur.execute(sql.SQL("SELECT count(*), count(*) FILTER (WHERE {}) FROM {}").format(key.any_null(None), names.removed))
    pending, truncated = cur.fetchone()
    if partitioned and removal.partitions_changed(cur, project):
        return {**_settle_removed(cur, project, pending, True), "partitions_changed": True}
    if not pending and not truncated:
        return {"vectors_removed": 0} if project.is_join else {"vectors_restored": 0, "vectors_removed": 0}
    return _settle_removed(cur, project, pending, truncated)


def _settle_removed(cur: Cursor, project: Project, pending: int, compare_all: bool) -> dict[str, Any]:
    """``reconcile_removed``'s writes: ``pending`` keys recorded removed; ``compare_all``: every stored key is
    compared with the source (after a TRUNCATE, or partitions changed)."""
    names, key = project.names, project.key
    parts = dict(removed=names.removed, target=names.target, source=names.source, keys=key.names(),
                 emb=sql.Identifier(names.embeddings_column),
                 md5=sql.Identifier(names.text_md5_column), updated_at=sql.Identifier(names.updated_at_column),
                 current=expressions.text_md5(project, "r"), in_source=key.equals("r", "t"))
    documents = has_documents(cur, project)
    if project.is_join:
        # Wait for the batches other runs are writing (a mapped backfill's partitions): one that wrote a vector
        # for a row deleted meanwhile commits before the anti-join looks, so no vector outlives its marker
        # (searches skip the source probe while no marker waits: ``search.source_row_exists``). Searches take
        # no conflicting lock; writers of the embeddings wait until this transaction ends.
        cur.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(names.target))
        tables = [names.target, *([names.documents] if documents else [])]
        if compare_all or pending >= FULL_RECONCILE_SHARE * catalog.embedded_rows(cur, project):
            cur.execute(sql.SQL("DELETE FROM {removed}").format(**parts))
            for table in reversed(tables):  # the vectors' count last
                cur.execute(sql.SQL("DELETE FROM {t} t WHERE NOT EXISTS (SELECT FROM {source} r WHERE {in_source})")
                            .format(t=table, **parts))
        else:
            cur.execute(sql.SQL(
                "CREATE TEMP TABLE vectorize_gone ON COMMIT DROP AS SELECT DISTINCT {keys} FROM {removed};"
                " DELETE FROM {removed}").format(**parts))
            for table in reversed(tables):
                cur.execute(sql.SQL(
                    "DELETE FROM {t} t USING vectorize_gone g WHERE {same}"
                    " AND NOT EXISTS (SELECT FROM {source} r WHERE {in_source})"
                ).format(t=table, same=key.equals("t", "g"), **parts))
            removed = cur.rowcount
            cur.execute("DROP TABLE vectorize_gone")
            return {"vectors_removed": removed}
        return {"vectors_removed": cur.rowcount}
    restored, dropped = 0, False
    if pending:  # none when only a partitioned source's partitions changed
        dropped = drop_index_for_bulk_write(cur, project, pending)
        cur.execute(sql.SQL(
            "WITH gone AS (DELETE FROM {removed} RETURNING {keys}, text_md5, embeddings, updated_at)"
            " UPDATE {source} r SET {emb} = g.embeddings, {md5} = g.text_md5, {updated_at} = g.updated_at FROM gone g"
            " WHERE {same} AND r.{emb} IS NULL AND g.text_md5 = {current}"
        ).format(same=key.equals("r", "g"), **parts))
        restored = cur.rowcount
    if documents:  # of the rows that did not come back
        cur.execute(sql.SQL("DELETE FROM {documents} t WHERE NOT EXISTS (SELECT FROM {source} r WHERE {in_source})")
                    .format(documents=names.documents, **parts))
    return {"vectors_restored": restored, "vectors_removed": pending - restored, "index_dropped": dropped}


def remove_without_text(cur: Cursor, project: Project, keys: list[Any]) -> int:
    """Remove the stored embedding (chunks, full-text document) of the rows ``keys`` whose text is empty now:
    a row with nothing to embed is not found by the text it had. Returns the rows whose embedding went."""
    if not keys:
        return 0
    names, key = project.names, project.key
    parts = dict(source=names.source, listed=key.in_values("r", names.source), same=key.equals("t", "r"),
                 empty=sql.SQL("{} = ''").format(expressions.text(project, "r")))
    tables = [names.documents] if has_documents(cur, project) else []
    if project.is_join:
        tables.append(names.target)
    else:
        md5 = sql.Identifier(names.text_md5_column)
        cur.execute(sql.SQL(
            "UPDATE {source} r SET {emb} = NULL, {md5} = NULL, {updated_at} = NULL WHERE {listed} AND {empty}"
            " AND r.{md5} IS NOT NULL"
        ).format(emb=sql.Identifier(names.embeddings_column), md5=md5,
                 updated_at=sql.Identifier(names.updated_at_column), **parts), [key.bind(keys)])
        removed = cur.rowcount
    for table in tables:
        cur.execute(sql.SQL("DELETE FROM {table} t USING {source} r WHERE {same} AND {listed} AND {empty}"
                            " RETURNING {row}").format(
            table=table, row=sql.SQL("t.chunk_no = 0" if project.is_chunked and table == names.target else "true"),
            **parts), [key.bind(keys)])
        if table == names.target:
            removed = sum(1 for (first,) in cur.fetchall() if first)
    return removed


def has_documents(cur: Cursor, project: Project) -> bool:
    """Whether the project stores its rows' full-text documents (an unchunked project created before the
    documents table gets it from its next generation run: ``ensure_documents``)."""
    if project.is_chunked:
        return False
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", [quoted(project.names.documents_name)])
    return cur.fetchone()[0]


def write_documents(cur: Cursor, project: Project, keys: sql.Composable, keys_key: Key | None = None,
                    documents: bool | None = None, incoming: int = 0, index_dropped: bool = False) -> None:
    """Write the full-text documents of the source rows whose keys are in the relation ``keys`` (its key
    columns named as ``keys_key``'s, by default the project's): as the vectors of those rows are written.
    ``documents``: ``has_documents``, when the caller knows it (a generation run's batches). ``incoming``: how
    many rows ``keys`` holds, when the caller knows it (an import). From REBUILD_INDEX_MIN_ROWS, the documents
    are computed by a ``CREATE TABLE AS``, which PostgreSQL may run with parallel workers (an INSERT's query
    never is; 100k texts: 1.05 s instead of 1.9 s), then upserted. ``index_dropped``: this transaction dropped
    the HNSW index for its write (``drop_index_for_bulk_write``); from FTS_REBUILD_SHARE of the stored
    documents, they are then written without their GIN index too, built again after
    (``_drop_fts_index_for_bulk_write``)."""
    if not (has_documents(cur, project) if documents is None else documents):  # chunked, or created before
        return
    bulk = incoming >= REBUILD_INDEX_MIN_ROWS
    rebuild = bulk and index_dropped and _drop_fts_index_for_bulk_write(cur, project, incoming)
    key = project.key
    parts = dict(documents=project.names.documents, keys=key.names(), document=sql.Identifier(DOCUMENT_COLUMN),
                 r_keys=key.names("r"), text=expressions.fts_document(project, "r"), source=project.names.source,
                 rel=keys, matched=key.equals("r", "k", keys_key), computed=sql.Identifier("vectorize_documents"))
    select = sql.SQL("SELECT {r_keys}, {text} AS {document} FROM {source} r"
                     " WHERE EXISTS (SELECT FROM {rel} k WHERE {matched})").format(**parts)
    if bulk:
        cur.execute(sql.SQL("CREATE TEMP TABLE {computed} ON COMMIT DROP AS {select}").format(select=select, **parts))
        select = sql.SQL("SELECT {keys}, {document} FROM {computed}").format(**parts)
    cur.execute(sql.SQL(
        "INSERT INTO {documents} ({keys}, {document}) {select}"
        " ON CONFLICT ({keys}) DO UPDATE SET {document} = EXCLUDED.{document}"
    ).format(select=select, **parts))
    if bulk:
        cur.execute(sql.SQL("DROP TABLE {computed}").format(**parts))
    if rebuild:
        cur.execute(catalog.fts_index_statement(project))


# A bulk write of documents at least this share of the stored ones (after the write) drops their GIN index
# and builds it again in the same transaction: 100k product texts took 0.97 s to insert with the index,
# 0.30 s without it and 0.25 s to build it (its cost is all the documents', the inserts' only the new ones').
FTS_REBUILD_SHARE = 0.3


def _drop_fts_index_for_bulk_write(cur: Cursor, project: Project, incoming: int) -> bool:
    """Drop the documents' GIN index before writing ``incoming`` documents when building it again is cheaper,
    unless another session uses the documents table at this moment; returns whether it was dropped.

    Searches of the documents then wait for this transaction, as they already wait for its embeddings (whose
    index it dropped). The lock is taken without waiting (NOWAIT): a hybrid search that holds the documents
    table may be waiting for those embeddings, and waiting for it in turn would be a deadlock (which
    PostgreSQL would end by failing the search)."""
    stored = cur.execute(sql.SQL("SELECT count(*) FROM {}").format(project.names.documents)).fetchone()[0]
    if incoming < FTS_REBUILD_SHARE * (stored + incoming):
        return False
    try:
        with cur.connection.transaction():  # a savepoint: the caller's transaction survives a busy table
            cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE NOWAIT").format(project.names.documents))
            cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(*project.names.fts_index_qualified_name)))
        return True
    except psycopg.errors.LockNotAvailable:
        return False


def ensure_documents(cur: Cursor, project: Project) -> bool:
    """Give an unchunked project created before the documents table its stored documents (of every row with a
    current vector), their index, and drop the full-text index it had on the source; returns whether it did.
    Call with the project locked."""
    if project.is_chunked or has_documents(cur, project):
        return False
    catalog.create_documents_table(cur, project)
    stored_md5 = sql.Identifier("e" if project.is_join else "r", project.names.text_md5_column)
    cur.execute(sql.SQL(
        "INSERT INTO {documents} ({keys}, {document}) SELECT {r_keys}, {text} FROM {rows} WHERE {stored} = {current}"
    ).format(documents=project.names.documents, keys=project.key.names(), document=sql.Identifier(DOCUMENT_COLUMN),
             r_keys=project.key.names("r"), text=expressions.fts_document(project, "r"),
             rows=expressions.stored_rows(project), stored=stored_md5, current=expressions.text_md5(project, "r")))
    cur.execute(catalog.fts_index_statement(project))
    legacy_fts.drop_source_fts_index(cur, project)
    return True


def ensure_chunk_documents(cur: Cursor, project: Project) -> bool:
    """Give a chunked project created before chunk tables stored their full-text documents its chunk table's
    ``chunk_fts`` column (``catalog.chunk_documents_column``: computed for every chunk at once, a rewrite of the
    chunk table with its indexes, the table locked meanwhile) and its GIN index, and drop the project's own
    full-text index from the source; returns whether it did. Call with the project locked."""
    if not project.is_chunked:
        return False
    cur.execute("SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s"
                " AND NOT attisdropped)", [project.names.target.as_string(cur), CHUNK_FTS_COLUMN])
    if cur.fetchone()[0]:
        return False
    legacy_fts.drop_source_fts_index(cur, project)  # first: it may have the name of the one made below
    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(project.names.target, catalog.chunk_documents_column()))
    cur.execute(catalog.fts_index_statement(project))
    log.info("Project %r: its chunk table stores the chunks' full-text documents now", project.name)
    return True


# Removed keys at least this share of the stored vectors: one anti-join of every stored key with the source
# is cheaper than looking up each removed key.
FULL_RECONCILE_SHARE = 0.2


@dataclass(frozen=True)
class Upgraded:
    """What ``upgrade_layout`` changed that its caller acts on."""

    searched: bool  # searches read the project otherwise now (its removed keys, stored documents)
    triggers_restored: bool  # realtime triggers dropped from the source were put back (rows due queued)


def upgrade_layout(cur: Cursor, project: Project) -> Upgraded:
    """Bring a project created by an earlier version to today's layout (each step a no-op when done): errors
    table, pg_vectorize's foreign keys → removal triggers, view through its function, stored documents (a
    chunked project's in its chunk table), bulk table, today's removal function, realtime triggers (and those
    dropped from the source), triggers firing in every session, the md5 in a join project's key index. Run by
    generation and by every call that writes to the project (alter_project, attach_source, import_embeddings).
    Call with the project locked."""
    catalog.create_errors_table(cur, project)
    searched = removal.upgrade(cur, project)
    removal.upgrade_partitioned(cur, project)
    removal.refresh_function(cur, project)
    catalog.ensure_view(cur, project)
    searched = ensure_documents(cur, project) or searched
    searched = ensure_chunk_documents(cur, project) or searched
    catalog.ensure_bulk_table(cur, project)
    catalog.upgrade_triggers(cur, project)
    restored = removal.restore_realtime_triggers(cur, project)
    removal.ensure_fired_always(cur, project)
    catalog.ensure_key_index(cur, project)
    return Upgraded(searched, restored)


def import_from_table(
    cur: Cursor, project: Project, src: sql.Identifier, src_key: Key, src_embeddings: str, exclusive: bool,
    into: sql.Identifier | None = None,
) -> tuple[int | None, int]:
    """Write every source row's embedding, overwriting existing ones; returns (inserted, written).

    ``inserted`` is None for append projects (an UPDATE cannot tell new from overwritten embeddings).
    The md5 of each row's current text is stored with its embedding, so generation treats imported
    embeddings as current until the text changes.

    ``exclusive``: this transaction holds the target exclusively (``drop_index_for_bulk_write`` dropped its
    index, to be built after the write). A join import may then skip ON CONFLICT's speculative insertion
    (~20 % of the write) and, for a bulk re-import, rewrite the table instead of updating it (see
    ``_rewrite_pays``). ``into``: a join project's table that is to take the place of its embeddings table
    (``airflow_vectorize.swap``), holding none of the imported keys: the rows are inserted there.
    """
    key = project.key
    parts = dict(
        target=into or project.names.target,
        source=project.names.source,
        src=src,
        keys=key.names(),
        r_keys=key.names("r"),
        matched=key.equals("r", "s", src_key),
        src_emb=sql.Identifier("s", src_embeddings),
        emb=sql.Identifier(project.names.embeddings_column),
        updated_at=sql.Identifier(project.names.updated_at_column),
        text_md5=sql.Identifier(project.names.text_md5_column),
        md5=expressions.text_md5(project, "r"),
    )
    if not project.is_join:
        cur.execute(sql.SQL(
            "UPDATE {source} r SET {emb} = {src_emb}::vector, {updated_at} = now(), {text_md5} = {md5}"
            " FROM {src} s WHERE {matched}"
        ).format(**parts))
        return None, cur.rowcount
    insert = sql.SQL(
        "INSERT INTO {target} ({keys}, {emb}, {updated_at}, {text_md5})"
        " SELECT {r_keys}, {src_emb}::vector, now(), {md5} FROM {src} s JOIN {source} r ON {matched}"
    ).format(**parts)
    if into is not None:
        cur.execute(insert)
        return None, cur.rowcount
    if exclusive:
        total, overwritten = cur.execute(sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT FROM {src} s WHERE {in_src}))"
            " FROM {target} t"
        ).format(in_src=key.equals("t", "s", src_key), **parts)).fetchone()
        if overwritten == 0 or _rewrite_pays(total, overwritten):
            if overwritten:
                _keep_only_rows_not_in(cur, project, src, src_key)
            cur.execute(insert)
            return cur.rowcount - overwritten, cur.rowcount
    cur.execute(sql.SQL(
        "WITH written AS ({insert} ON CONFLICT ({keys}) DO UPDATE SET {emb} = EXCLUDED.{emb},"
        " {updated_at} = EXCLUDED.{updated_at}, {text_md5} = EXCLUDED.{text_md5} RETURNING xmax = 0 AS inserted)"
        " SELECT count(*) FILTER (WHERE inserted), count(*) FROM written"
    ).format(insert=insert, **parts))
    inserted, written = cur.fetchone()
    return inserted, written


# The rewrite copies the rows an import keeps twice (~30 µs each here) to spare the HNSW build one dead
# row version per overwritten row (~300 µs each: a build indexes the versions its own transaction deleted).
REWRITE_MIN_OVERWRITTEN_PER_KEPT = 0.25


def _rewrite_pays(total: int, overwritten: int) -> bool:
    """Whether rewriting the table beats updating ``overwritten`` of its ``total`` rows before a rebuild.

    An UPDATE (or ON CONFLICT DO UPDATE) leaves the old row versions behind, deleted by this transaction;
    CREATE INDEX indexes such versions, so a bulk re-import would build the HNSW graph over twice the rows
    and leave half of them dead. Rewriting (TRUNCATE, re-insert the kept rows, insert the imported ones)
    leaves no old versions and blocks nobody who was not blocked already. As with any TRUNCATE, a
    REPEATABLE READ transaction that started before the import commits and reads the table only
    afterwards finds it empty.
    """
    return overwritten >= REWRITE_MIN_OVERWRITTEN_PER_KEPT * (total - overwritten)


def _keep_only_rows_not_in(cur: Cursor, project: Project, src: sql.Identifier, src_key: Key) -> None:
    """Empty the target (new storage, no old row versions) except its rows whose key is not in ``src``."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in (
        *project.key.columns, project.names.embeddings_column, project.names.updated_at_column,
        project.names.text_md5_column))
    kept = sql.Identifier("vectorize_import_kept")
    cur.execute(sql.SQL(
        "CREATE TEMP TABLE {kept} ON COMMIT DROP AS SELECT {columns} FROM {target} t"
        " WHERE NOT EXISTS (SELECT FROM {src} s WHERE {in_src});"
        " TRUNCATE {target};"
        " INSERT INTO {target} ({columns}) SELECT {columns} FROM {kept};"
        " DROP TABLE {kept}"
    ).format(kept=kept, columns=columns, target=project.names.target, src=src,
             in_src=project.key.equals("t", "s", src_key)))


def clear_pending(cur: Cursor, project: Project, src: sql.Identifier, src_key: Key) -> int:
    """Remove queued realtime work and recorded errors (an embedded row clears its error) for the keys in
    ``src``; returns how many queue entries were removed."""
    cur.execute(
        sql.SQL("DELETE FROM {errors} x USING {src} s WHERE {matched}").format(
            errors=project.names.errors, src=src, matched=project.key.equals("x", "s", src_key))
    )
    cur.execute(
        sql.SQL("DELETE FROM {queue} q USING {src} s WHERE {matched}").format(
            queue=project.names.queue, src=src, matched=project.key.equals("q", "s", src_key))
    )
    return cur.rowcount


def upsert_from_staging(cur: Cursor, project: Project, documents: bool) -> int:
    """Write the rows of the session's ``vectorize_staging`` (key, embeddings, text_md5, and for a chunked
    project chunk_no, offsets and chunk; then also ``vectorize_current``, its keys); returns the source rows
    written.

    Only rows whose text is still the one embedded are written: a row deleted meanwhile is ignored, and so is
    one whose text changed since the batch read it (its trigger queued it again; an import may have stored
    the vector of its new text, which an older one must not overwrite).
    """
    parts = dict(
        target=project.names.target,
        source=project.names.source,
        keys=project.key.names(),
        s_keys=project.key.names("s"),
        emb=sql.Identifier(project.names.embeddings_column),
        updated_at=sql.Identifier(project.names.updated_at_column),
        text_md5=sql.Identifier(project.names.text_md5_column),
        current=expressions.text_md5(project, "r"),
    )
    if project.is_chunked:  # a row's chunks are replaced as a whole
        cur.execute(sql.SQL(  # vectorize_current: the batch's rows whose text is still the one embedded
            "INSERT INTO vectorize_current SELECT DISTINCT {s_keys} FROM vectorize_staging s"
            " JOIN {source} r USING ({keys}) WHERE s.text_md5 = {current};"
            " DELETE FROM {target} t USING vectorize_current s WHERE {same_key};"
            " INSERT INTO {target} ({keys}, chunk_no, start_offset, end_offset, chunk, {emb}, {updated_at}, {text_md5})"
            " SELECT {s_keys}, s.chunk_no, s.start_offset, s.end_offset, s.chunk, s.embeddings, now(), s.text_md5"
            " FROM vectorize_staging s JOIN vectorize_current c USING ({keys})"
        ).format(same_key=project.key.equals("t", "s"), **parts))
        return cur.execute("SELECT count(*) FROM vectorize_current").fetchone()[0]
    if project.is_join:
        cur.execute(sql.SQL(
            "INSERT INTO {target} ({keys}, {emb}, {updated_at}, {text_md5})"
            " SELECT {s_keys}, s.embeddings, now(), s.text_md5 FROM vectorize_staging s JOIN {source} r USING ({keys})"
            " WHERE s.text_md5 = {current}"
            " ON CONFLICT ({keys}) DO UPDATE SET {emb} = EXCLUDED.{emb}, {updated_at} = EXCLUDED.{updated_at},"
            " {text_md5} = EXCLUDED.{text_md5}"
        ).format(**parts))
    else:  # the source row itself: an UPDATE that waited for the application's re-checks its new text
        cur.execute(sql.SQL(
            "UPDATE {source} r SET {emb} = s.embeddings, {updated_at} = now(), {text_md5} = s.text_md5"
            " FROM vectorize_staging s WHERE {same_key} AND s.text_md5 = {current}"
        ).format(same_key=project.key.equals("r", "s"), **parts))
    written = cur.rowcount
    write_documents(cur, project, sql.Identifier("vectorize_staging"), documents=documents)
    return written


def import_chunks(cur: Cursor, project: Project, source: ImportSource, splitter: TextSplitter) -> tuple[int, int, int]:
    """Write a chunked project's imported (key, chunk number, vector) rows; returns (rows new to the project,
    rows written, chunks written).

    Each row's current text is cut with the project's own splitter, which gives every chunk its offsets and
    text; the source must hold exactly the chunk numbers 0..n-1 for the n chunks that makes, else nothing
    is written (the embeddings were computed on other chunks). A row's chunks are replaced as a whole.

    It first waits for the batches generation runs are writing (each holds the chunk table from its claim,
    ``generation.BatchWriter.claim``), and batches wait for it: a batch's chunks of a row committed between
    this import's delete and insert would otherwise make the insert fail on the chunks' key.
    """
    key, names = project.key, project.key.aliases()
    src_chunk = sql.Identifier("s", source.chunk)
    cur.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(project.names.target))
    cur.execute(sql.SQL(
        "CREATE TEMP TABLE vectorize_import_chunks ON COMMIT DROP AS SELECT {keys} FROM {source} WITH NO DATA;"
        " ALTER TABLE vectorize_import_chunks ADD COLUMN chunk_no integer, ADD COLUMN start_offset integer,"
        " ADD COLUMN end_offset integer, ADD COLUMN chunk text, ADD COLUMN text_md5 uuid"
    ).format(keys=key.names(), source=project.names.source))
    mismatched: list[str] = []
    with cur.connection.cursor(name="vectorize_import_texts") as texts:
        texts.execute(sql.SQL(
            "SELECT {r_keys}, {text}, {md5}, c.n, c.top FROM (SELECT {src_keys}, count(*) AS n,"
            " max({src_chunk}) AS top FROM {src} s GROUP BY {names}) c JOIN {source} r ON {matched}"
        ).format(r_keys=key.names("r"), text=expressions.text(project, "r"), md5=expressions.text_md5(project, "r"),
                 src_keys=source.key.select_as("s", names), src_chunk=src_chunk, src=source.table,
                 names=names.names(), source=project.names.source, matched=key.equals("r", "c", names)))
        width = len(key.columns)
        while batch := texts.fetchmany(1000):
            rows = []
            for row in batch:
                row_key, (text, md5, count, top) = key.value(row), row[width:]
                chunks = splitter.split(text)
                if count != len(chunks) or top != count - 1:
                    mismatched.append(f"{row_key} ({count} given, {len(chunks)} made)")
                rows += [(*key.flat(row_key), c.number, c.start, c.end, c.text, md5) for c in chunks]
            if not mismatched:
                with cur.copy("COPY vectorize_import_chunks FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
    if mismatched:
        raise InvalidInputError(
            f"cannot import chunk embeddings into project {project.name!r} from {source.table.as_string(cur)}:"
            f" {len(mismatched)} row(s) whose chunk numbers are not 0..n-1 for the n chunks the project's"
            f" chunker (chunk_size {project.chunk_size}, overlap {project.chunk_overlap}) makes of their text;"
            f" e.g. keys {mismatched[:5]}. Compute the embeddings on the same chunks, or generate them."
            " Nothing was written."
        )
    cur.execute(sql.SQL(
        "WITH gone AS (DELETE FROM {target} t USING (SELECT DISTINCT {keys} FROM vectorize_import_chunks) c"
        " WHERE {same_key} RETURNING {t_keys}) SELECT count(DISTINCT ({keys})) FROM gone"
    ).format(target=project.names.target, keys=key.names(), t_keys=key.names("t"), same_key=key.equals("t", "c")))
    replaced = cur.fetchone()[0]
    cur.execute(sql.SQL(
        "INSERT INTO {target} ({keys}, chunk_no, start_offset, end_offset, chunk, embeddings, updated_at, text_md5)"
        " SELECT {c_keys}, c.chunk_no, c.start_offset, c.end_offset, c.chunk, {src_emb}::vector, now(), c.text_md5"
        " FROM {src} s JOIN vectorize_import_chunks c ON {matched} AND c.chunk_no = {src_chunk}"
    ).format(target=project.names.target, keys=key.names(), c_keys=key.names("c"),
             src_emb=sql.Identifier("s", source.embeddings), src=source.table,
             matched=key.equals("c", "s", source.key), src_chunk=src_chunk))
    chunks = cur.rowcount
    rows = cur.execute(sql.SQL("SELECT count(DISTINCT ({})) FROM vectorize_import_chunks").format(key.names())).fetchone()[0]
    return rows - replaced, rows, chunks
