"""``python -m bench.swap``: a 10 % re-import of a join project while another session searches, written in place
(the index dropped, the rows written, the index built after the commit) and into a new table swapped in once
indexed (``airflow_vectorize.swap``), side by side on one project of ``--rows`` rows (``make bench-swap``).

The bench's products and clustered 384-dimension vectors (bench/data.py), imported into project ``swap``.
Then, ``--rounds`` times, each side re-imports a different tenth of the keys (new vectors), in turns, while a
thread searches in a loop through one hook (top 10, key only): the import's seconds, and the searches'
count, p50, p99 and longest (a search without the index, an exact scan, is two orders of magnitude slower
than one through it). The in-place side is made by a view on the embeddings table, which a swap would lose
(``swap.blocker``).

Reported, not asserted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.measure import median, percentile, while_searching
from bench.million import product_project
from bench.output import add_output_arguments, run_standalone
from bench.session import BenchSession, log

JOB, TOP = "swap", 10
VIEW = "swap_keys"  # a view on the embeddings table: its imports are written in place


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=1, help="re-imports per side (1)")
    add_output_arguments(parser, "swap")
    args = parser.parse_args(argv)
    run_standalone("swap", args, argv, lambda session: run(session, args), rows=args.rows, rounds=args.rounds)


def run(session: BenchSession, args: argparse.Namespace) -> dict[str, Any]:
    data, seconds = product_project(session, JOB, args.rows)
    log(f"{args.rows:,} rows imported in {seconds:.1f} s")
    session.execute(f"ANALYZE products; ANALYZE vectorize._embeddings_{JOB}")
    queries = session.space.sample(50, seed=79)
    results: dict[str, list[dict[str, Any]]] = {"in_place": [], "new_table": []}
    for round_ in range(args.rounds):
        for side in ("in_place", "new_table") if round_ % 2 == 0 else ("new_table", "in_place"):
            tenth = sum(len(runs) for runs in results.values())  # each run re-imports other keys
            ids = data.product_ids[tenth % 10::10]
            table = f"reimport_{side}_{round_}"
            session.add_embeddings(table, ids, session.space.sample(len(ids), seed=100 + tenth))
            if side == "in_place":
                session.execute(f"CREATE VIEW {VIEW} AS SELECT product_id FROM vectorize._embeddings_{JOB}")
            outcome = reimport_while_searching(session, table, queries)
            if side == "in_place":
                session.execute(f"DROP VIEW {VIEW}")
            session.drop_table(table)
            results[side].append(outcome)
            log(f"  {side}: {outcome}")
    summary = {side: {key: median([r[key] for r in runs]) for key in ("seconds", "search_p50_ms", "search_max_ms")}
               for side, runs in results.items()}
    log(f"medians: {summary}")
    return {"runs": results, "medians": summary}


def reimport_while_searching(session: BenchSession, table: str, queries: Any) -> dict[str, Any]:
    """``table`` imported while a thread searches: the import's summary figures and the searches'."""
    searcher = session.hook()
    searcher.search(JOB, queries[0], ["product_id"], TOP)
    seen = while_searching(lambda i: searcher.search(JOB, queries[i % len(queries)], ["product_id"], TOP),
                           lambda: session.hook().import_embeddings(JOB, table, "product_id", "embedding"))
    imported, latencies = seen.result, seen.latencies
    return {"rows": imported["imported"], "seconds": round(seen.seconds, 1),
            "table_swapped": imported["table_swapped"], "index_rebuilt": imported["index_rebuilt"],
            "build_seconds": (imported.get("index_build") or {}).get("seconds"),
            "searches": len(latencies), "search_errors": len(seen.errors), "search_error_examples": seen.errors[:3],
            "search_p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "search_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "search_max_ms": round(max(latencies) * 1000, 1)}


if __name__ == "__main__":
    main()
