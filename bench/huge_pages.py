"""``python -m bench.huge_pages``: a parallel HNSW build with its graph on huge pages against ordinary pages
(issue 34, points 1 and 6), ``make bench-huge-pages``. Needs root (it sets ``vm.nr_hugepages``).

A parallel build keeps pgvector's graph in dynamic shared memory (``maintenance_work_mem`` of it, sized by
``index_build``). With ``huge_pages = on`` and ``min_dynamic_shared_memory`` at least that large, PostgreSQL
takes that memory from its main segment, on 2 MB pages; otherwise it comes from ``/dev/shm`` on 4 kB pages.
For each of ``--sizes`` (the first rows of the bench's clustered 384-dimension vectors, bench/data.py), the
same ``CREATE INDEX … USING hnsw`` as a project's bulk build (``index_build.build``), once per side and round,
the server restarted with the side's settings before each build, the order of the sides alternating by
round. Reported: seconds and µs a row per side, huge ÷ ordinary, and each side's per-row time against its own
at the smallest size. The previous ``vm.nr_hugepages`` is restored at the end. Reported, not asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.output import add_output_arguments, run_standalone
from bench.session import BenchSession, log

NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
PAGE = 2 * 1024**2
DIMENSIONS = 384
SIDES = ("ordinary", "huge")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda text: [int(n) for n in text.split(",")], default=[100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=1, help="builds per side and size")
    add_output_arguments(parser, "huge_pages")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench.huge_pages needs root: it reserves huge pages (vm.nr_hugepages) for the run")
    run_standalone("huge_pages", args, argv, lambda session: run(session, args), sizes=args.sizes,
                   rounds=args.rounds)


def run(session: BenchSession, args: argparse.Namespace) -> dict[str, Any]:
    from psycopg import sql

    from airflow_vectorize import index_build

    largest = max(args.sizes)
    data = session.space.sample(largest, seed=12)
    session.add_embeddings("vectors_all", _ids(largest), data)
    for n in args.sizes:
        session.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM vectors_all WHERE product_id <= %s").format(
            sql.Identifier(f"vectors_{n}")), [n])
        session.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(f"vectors_{n}")))
    cap = 64 * 1024**3  # every graph in memory: the comparison is of pages, not of builds on disk
    shared = max(index_build.build_memory(n, DIMENSIONS, None, False, cap) for n in args.sizes) + 64 * 1024**2
    previous = int(NR_HUGEPAGES.read_text())
    NR_HUGEPAGES.write_text(str(previous + -(-(shared + 512 * 1024**2) // PAGE)))  # + shared buffers, margin
    seconds: dict[str, dict[int, list[float]]] = {side: {n: [] for n in args.sizes} for side in SIDES}
    try:
        for round_ in range(args.rounds):
            for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                configure(session, side, shared)
                for n in args.sizes:
                    table, index = f"vectors_{n}", f"vectors_{n}_hnsw"
                    create = sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops)").format(
                        sql.Identifier(index), sql.Identifier(table))
                    session.settle()
                    with session.conn.transaction(), session.conn.cursor() as cur:
                        built = index_build.build(cur, create, table, n, DIMENSIONS, None, False, cap)
                    session.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
                    seconds[side][n].append(built["seconds"])
                    log(f"  {side} pages, {n:,} rows: {built['seconds']:.1f} s ({built})")
    finally:
        configure(session, "ordinary", shared)
        NR_HUGEPAGES.write_text(str(previous))
    return report(seconds, args.sizes)


def configure(session: BenchSession, side: str, shared: int) -> None:
    """Restart the server with huge pages (and the build's shared memory in the main segment) or without."""
    from psycopg import sql

    huge = side == "huge"
    for name, value in (("huge_pages", "on" if huge else "off"),
                        ("min_dynamic_shared_memory", f"{shared // 1024**2}MB" if huge else "0")):
        session.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    session.restart()
    status = session.scalar("SELECT current_setting('huge_pages_status')")
    if status != ("on" if huge else "off"):
        raise RuntimeError(f"the server's huge_pages_status is {status!r} for the {side} side")


def report(seconds: dict[str, dict[int, list[float]]], sizes: list[int]) -> dict[str, Any]:
    smallest = min(sizes)
    out: dict[str, Any] = {}
    for n in sizes:
        entry: dict[str, Any] = {}
        for side in SIDES:
            median = statistics.median(seconds[side][n])
            base = statistics.median(seconds[side][smallest]) / smallest
            entry[side] = {"seconds": round(median, 2), "all_seconds": seconds[side][n],
                           "us_per_row": round(median / n * 1e6, 1),
                           "per_row_ratio_to_smallest": round(median / n / base, 3)}
        entry["huge_over_ordinary"] = round(entry["huge"]["seconds"] / entry["ordinary"]["seconds"], 3)
        out[str(n)] = entry
        log(f"{n:,} rows: {entry}")
    return {"sizes": out}


def _ids(n: int):
    import numpy as np

    return np.arange(1, n + 1, dtype=np.int32)


if __name__ == "__main__":
    main()
