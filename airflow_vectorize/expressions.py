"""SQL expressions over a project's source rows: the text it embeds, its md5, the rows with their stored
embedding state, and the full-text documents of hybrid search (a row's, a chunk's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import sql

if TYPE_CHECKING:
    from airflow_vectorize.catalog import Project

# Characters of a row's text in its full-text document: a tsvector holds at most 1 MB, and 100,000
# characters make at most ~0.9 MB of one (distinct 4-byte-character words, measured ~0.65 MB).
FULL_TEXT_CHARS = 100_000


def text(project: Project, alias: str) -> sql.Composable:
    """The text to embed: the columns joined with ', ', NULL and empty columns skipped ('' when none has
    text: a row then has nothing to embed, and no separator is left dangling)."""
    parts = sql.SQL(", ").join(sql.SQL("nullif({}, '')").format(sql.Identifier(alias, column))
                               for column in project.columns)
    return sql.SQL("concat_ws(', ', {})").format(parts)


def text_md5(project: Project, alias: str) -> sql.Composable:
    return sql.SQL("md5({})::uuid").format(text(project, alias))


def stored_rows(project: Project) -> sql.Composable:
    """``FROM`` clause: the source as ``r`` with, for join projects, its stored embedding state as ``e``
    (one row per source row: a chunked project's chunk 0, which carries the row's md5)."""
    names = project.names
    if not project.is_join:
        return sql.SQL("{} r").format(names.source)
    return sql.SQL("{source} r LEFT JOIN {target} e ON {joined}{first_chunk}").format(
        source=names.source, target=names.target, joined=project.key.equals("e", "r"),
        first_chunk=sql.SQL(" AND e.chunk_no = 0" if project.is_chunked else ""))


def fts_document(project: Project, alias: str | None = None) -> sql.Composable:
    """``to_tsvector('english', <the columns joined with ' '>)``, NULL columns as ''.

    IMMUTABLE (concat_ws is not), so the ``<job>_fts_idx`` expression index is built on exactly this
    expression; queries built with the same function match it and can use the index. Only the first
    FULL_TEXT_CHARS characters count: a row whose whole text made a tsvector over 1 MB could not be written
    to the source at all.
    """
    parts = sql.SQL(" || ' ' || ").join(
        sql.SQL("coalesce({}::text, '')").format(sql.Identifier(alias, c) if alias else sql.Identifier(c))
        for c in project.columns
    )
    return sql.SQL("to_tsvector('english', left({}, {}))").format(parts, sql.Literal(FULL_TEXT_CHARS))


def chunk_fts_document() -> sql.Composable:
    """``to_tsvector('english', chunk)``: a chunk's full-text document, stored beside it in the chunk table
    (``naming.CHUNK_FTS_COLUMN``, a generated column: every write of a chunk writes it) and indexed there, so
    that hybrid search ranks a chunked project's matches without parsing their texts again. A chunk is at
    most ``chunk_size`` tokens: far below the 1 MB a tsvector holds."""
    return sql.SQL("to_tsvector('english', chunk)")
