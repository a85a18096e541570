"""``python -m bench``: run the measurements on one embedded PostgreSQL, print a table, write JSON + PNG."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.session import prepare_environment

BENCH_DIR = Path(__file__).resolve().parent
SECTIONS = ("import", "search", "reimport", "generate", "remote", "memory", "chunking", "chunked-search")
QUICK = {"rows": 2000, "repeats": 1, "generate_rows": 100, "queries": 20, "memory_import_rows": 500,
         "memory_generate_rows": 50, "remote_rows": 200, "chunking_docs": 16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Ratios of airflow-vectorize against baselines measured side by side in the same run.",
    )
    parser.add_argument("--rows", type=int, default=100_000,
                        help="products and pre-computed embeddings for import, re-import and search (100000)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the cheap import comparison; the median is reported (3)")
    parser.add_argument("--generate-rows", type=int, default=5000,
                        help="texts embedded in measurement 4 (5000)")
    parser.add_argument("--remote-rows", type=int, default=2000,
                        help="texts embedded through a remote model (a local Infinity server) (2000)")
    parser.add_argument("--remote-batch-size", type=int, default=64,
                        help="texts per request / batch_size of the remote measurement (64)")
    parser.add_argument("--chunking-docs", type=int, default=100,
                        help="documents (1-50 kB) of each chunking corpus: man pages, package READMEs (100)")
    parser.add_argument("--chunking-corpora", default="man,readme",
                        help="comma-separated chunking corpora, of man,readme,pypi (man,readme; pypi fetches from PyPI once)")
    parser.add_argument("--queries", type=int, default=200, help="search queries for p50 and recall (200)")
    parser.add_argument("--memory-import-rows", type=int, default=25_000,
                        help="1× of the import memory measurement; 4× must fit in --rows (25000)")
    parser.add_argument("--memory-generate-rows", type=int, default=500,
                        help="1× of the generation memory measurement (500)")
    parser.add_argument("--full-naive", action="store_true",
                        help="also time a naive 100 %% re-import into the indexed table (adds minutes)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (all)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (seconds): checks that everything runs, numbers mean little")
    parser.add_argument("--output-dir", type=Path, default=BENCH_DIR / "results",
                        help="where the timestamped JSON and PNG go (bench/results, git-ignored)")
    parser.add_argument("--latest", action=argparse.BooleanOptionalAction, default=None,
                        help="also copy the results to bench/latest.json and bench/latest.png"
                             " (default: yes, except with --quick)")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    if args.latest is None:
        args.latest = not args.quick
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if {"search", "reimport"} & set(args.only) and "import" not in args.only:
        parser.error("search and reimport use the project that the import section fills: add 'import'")
    if args.remote_rows < 1 or args.remote_batch_size < 1:
        parser.error("--remote-rows and --remote-batch-size must be positive")
    if args.chunking_docs < 2:
        parser.error("--chunking-docs must be at least 2")
    args.chunking_corpora = [c.strip() for c in args.chunking_corpora.split(",") if c.strip()]
    if not args.chunking_corpora or set(args.chunking_corpora) - {"man", "readme", "pypi"}:
        parser.error("--chunking-corpora takes man, readme, pypi or several of them")
    if 4 * args.memory_import_rows > args.rows:
        parser.error("4 × --memory-import-rows must not exceed --rows")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    prepare_environment()
    from bench import chunked_search, chunking, generation, imports, memory, remote, report, search
    from bench.session import BenchSession, log

    started = time.perf_counter()
    load_before = os.getloadavg()
    log(f"starting an embedded PostgreSQL; {args.rows:,} products, sections {','.join(args.only)}")
    session = BenchSession.start()
    measurements = []
    try:
        server = {
            "postgres": session.scalar("SHOW server_version"),
            "pgvector": session.scalar("SELECT extversion FROM pg_extension WHERE extname = 'vector'"),
        }
        session.add_products(imports.PRODUCTS, args.rows, seed=11)
        if "import" in args.only:
            found, state = imports.initial_import(session, args.rows, args.repeats)
            measurements += found
        if "search" in args.only:
            log(f"search: {args.queries} queries")
            measurements += search.measure(session, args.queries)
        if "reimport" in args.only:
            measurements += imports.reimport(session, args.rows, state["initial_import_seconds"],
                                             args.full_naive)
        if "generate" in args.only:
            log(f"generation: {args.generate_rows:,} texts")
            measurements += generation.measure(session, args.generate_rows)
        if "remote" in args.only:
            log(f"remote: {args.remote_rows:,} texts through Infinity, batches of {args.remote_batch_size}")
            measurements += remote.measure(session, args.remote_rows, args.remote_batch_size)
        if "memory" in args.only:
            measurements += memory.measure(session, args.memory_import_rows, args.memory_generate_rows)
        if "chunking" in args.only:
            log(f"chunking: {args.chunking_docs:,} documents (at most) of {', '.join(args.chunking_corpora)}")
            measurements += chunking.measure(session, args.chunking_docs, tuple(args.chunking_corpora))
        if "chunked-search" in args.only:
            log(f"chunked search: sections of {args.chunking_docs:,} documents (at most) of"
                f" {', '.join(args.chunking_corpora)}")
            measurements += chunked_search.measure(session, args.chunking_docs, tuple(args.chunking_corpora))
    finally:
        session.stop()

    wall = time.perf_counter() - started
    meta = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {**server, "python": platform.python_version(), "cpus": os.cpu_count(),
                        "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "wall_seconds": round(wall, 1),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = "bench-" + time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    json_path, png_path = args.output_dir / f"{stem}.json", args.output_dir / f"{stem}.png"
    report.write_json(json_path, measurements, meta)
    subtitle = (f"{args.rows:,} rows × 384, PostgreSQL {server['postgres']}, pgvector {server['pgvector']},"
                f" {os.cpu_count()} CPUs")
    report.write_chart(png_path, measurements, subtitle)
    if args.latest:
        shutil.copyfile(json_path, BENCH_DIR / "latest.json")
        shutil.copyfile(png_path, BENCH_DIR / "latest.png")

    print(report.table(measurements))
    print(f"\nwall time {wall:.0f} s; wrote {json_path} and {png_path}"
          + (" (and bench/latest.*)" if args.latest else ""))
    return {"json": json_path, "png": png_path, "measurements": measurements, "wall_seconds": wall}
