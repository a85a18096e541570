"""HNSW index builds sized to the data: memory from the graph's estimated size, parallel workers, and a warning
when the graph outgrows its memory anyway.

pgvector builds the graph in ``maintenance_work_mem``; when it no longer fits, it says so (a NOTICE) and goes on
inserting on disk, several times slower. A fixed setting is either too small for a large table (500k × 384
dimensions did not fit in 1 GB: 163 s, 117 s with 4 GB) or more than a small one needs (a parallel build
allocates its whole ``maintenance_work_mem`` as shared memory up front). So a build asks for the graph's
estimated size (``graph_bytes``) plus a margin, within a cap (``index_build_memory``: ``"auto"`` = AUTO_CAP, or a
size such as ``"16GB"``), never less than the session already has. Parallel maintenance workers are pgvector's
and PostgreSQL's (``max_parallel_maintenance_workers``, 2 by default, for tables past
``min_parallel_table_scan_size``); a parallel build that cannot get its shared memory (a container's small
``/dev/shm``: "could not resize shared memory segment") is run again without workers.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import psycopg
from psycopg import Cursor, sql

from airflow_vectorize.exceptions import InvalidInputError

log = logging.getLogger(__name__)

AUTO = "auto"
AUTO_CAP = 4 * 1024**3  # "auto": at most 4 GB, a quarter of a 16 GB server; set a size to go past it
MARGIN = 1.15  # estimate × MARGIN + FIXED_MARGIN: the estimate is per element, allocations are not exact
FIXED_MARGIN = 16 * 1024**2
DEFAULT_M = 16  # pgvector's
DEFAULT_EF_CONSTRUCTION = 64  # pgvector's
UNITS = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
SIZE = re.compile(r"^\s*(\d+)\s*(kB|MB|GB|TB)\s*$", re.IGNORECASE)
NO_LONGER_FITS = re.compile(r"graph no longer fits into maintenance_work_mem after (\d+) tuples")


def parse_cap(value: Any) -> int:
    """``index_build_memory`` in bytes: ``"auto"`` (AUTO_CAP) or a size of PostgreSQL's spelling ("512MB")."""
    if value == AUTO:
        return AUTO_CAP
    match = SIZE.match(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) == 0:
        raise InvalidInputError(f"index_build_memory must be 'auto' or a size such as '512MB' or '4GB', got {value!r}")
    return int(match.group(1)) * UNITS[match.group(2).lower()]


def graph_bytes(rows: int, dimensions: int, m: int | None = None, half: bool = False) -> int:
    """pgvector's in-memory graph for ``rows`` vectors: each element holds its value (4 bytes a dimension, 2 at
    half precision, plus a header) and its neighbour lists (2m on level 0, m on the few upper levels) with the
    element's own bookkeeping. Checked against pgvector 0.8's NOTICE (tests/test_index_build.py)."""
    m = m or DEFAULT_M
    value = 8 + dimensions * (2 if half else 4)
    return rows * (value + 192 + 36 * m)


def build_memory(rows: int, dimensions: int, m: int | None, half: bool, cap: int) -> int:
    """The ``maintenance_work_mem`` (bytes) a build of ``rows`` asks for: the graph with its margin, capped."""
    return min(cap, int(graph_bytes(rows, dimensions, m, half) * MARGIN) + FIXED_MARGIN)


def kilobytes(size: int) -> str:
    return f"{max(64, size // 1024)}kB"


def spelled(size: int) -> str:
    """A size for a person and for ``index_build_memory``: whole MB, or GB from 10 GB."""
    mb = -(-size // 1024**2)
    return f"{-(-mb // 1024)}GB" if mb >= 10 * 1024 else f"{mb}MB"


def build(cur: Cursor, create: sql.Composable, label: str, rows: int, dimensions: int, m: int | None,
          half: bool, cap: int, discard: sql.Composable | None = None) -> dict[str, Any]:
    """Run ``create`` (a CREATE INDEX) with ``maintenance_work_mem`` sized for ``rows`` (this transaction only),
    in a savepoint; again without parallel workers if their shared memory cannot be had. Logs a warning
    naming the memory that would have held the graph when pgvector reports that it did not fit.

    ``discard``: ``create`` is a CREATE INDEX CONCURRENTLY, run on an autocommit connection with the settings
    given to the session until it ends (then reset); ``discard`` (a DROP INDEX CONCURRENTLY IF EXISTS)
    removes the invalid index a failed build leaves, before the build without workers and before an error
    is raised.

    :return: ``memory`` (the setting used), ``estimated`` (the graph's estimate), ``fits`` (no NOTICE),
        ``parallel_fallback``, ``seconds``.
    """
    local = discard is None
    current = cur.execute("SELECT pg_size_bytes(current_setting('maintenance_work_mem'))").fetchone()[0]
    memory = max(current, build_memory(rows, dimensions, m, half, cap))
    cur.execute("SELECT set_config('maintenance_work_mem', %s, %s)", [kilobytes(memory), local])
    notices: list[str] = []

    def keep(diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.message_primary:
            notices.append(diagnostic.message_primary)

    def run() -> None:
        if local:
            with cur.connection.transaction():
                cur.execute(create)
            return
        try:
            cur.execute(create)
        except psycopg.errors.DuplicateTable:  # the name is another's: nothing of ours to discard
            raise
        except BaseException:
            if not cur.connection.closed:
                cur.execute(discard)
            raise

    started, fallback = time.monotonic(), False
    cur.connection.add_notice_handler(keep)
    try:
        try:
            run()
        except psycopg.errors.UniqueViolation:  # a concurrent run's build committed first (IF NOT EXISTS
            pass  # sees only committed indexes)
        except (psycopg.errors.DiskFull, psycopg.errors.OutOfMemory) as error:  # DSM of a parallel build
            log.warning("The parallel build of %s could not get its shared memory (%s); building it again"
                        " without parallel workers", label, error.diag.message_primary)
            fallback = True
            cur.execute("SELECT set_config('max_parallel_maintenance_workers', '0', %s)", [local])
            run()
    finally:
        cur.connection.remove_notice_handler(keep)
        if not local and not cur.connection.closed:
            cur.execute("RESET maintenance_work_mem; RESET max_parallel_maintenance_workers")
    outgrown = next((int(found.group(1)) for n in notices if (found := NO_LONGER_FITS.search(n))), None)
    if outgrown is not None:
        needed = spelled(int(memory * rows / max(outgrown, 1) * MARGIN))
        log.warning("The HNSW graph of %s outgrew maintenance_work_mem (%s) after %d of %d rows and was built on"
                    " disk, several times slower; index_build_memory=%r (or maintenance_work_mem) would have held"
                    " it, if the server has the memory", label, spelled(memory), outgrown, rows, needed)
    summary = {"memory": spelled(memory), "estimated": spelled(graph_bytes(rows, dimensions, m, half)),
               "fits": outgrown is None, "parallel_fallback": fallback, "seconds": round(time.monotonic() - started, 3)}
    if outgrown is None:
        log.info("Built the HNSW index of %s over %d vectors in %.1f s; the graph (estimated %s) fits in"
                 " maintenance_work_mem %s", label, rows, summary["seconds"], summary["estimated"], summary["memory"])
    return summary
