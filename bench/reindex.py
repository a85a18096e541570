"""``python -m bench.reindex``: a project's HNSW index built again with other settings while another session
searches — ``alter_project(hnsw_m=…)`` (built concurrently beside the old index, then swapped in;
``airflow_vectorize/index_rebuild.py``) against dropping the index and building it in one transaction, the
way without it (``make bench-reindex``).

The bench's products and clustered 384-dimension vectors (bench/data.py), imported into project ``reindex``
(join, manual; its build's seconds reported). Searches alone first (``--queries`` top-10 key-only searches
through one hook: p50), then each side without searches (its seconds) and while a thread searches in a
loop (which takes one of the machine's cores from the build): the rebuild's seconds and the searches' count,
p50, p99, longest and errors. Every rebuild makes a graph with m = 24. Reported, not asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.measure import percentile, while_searching
from bench.output import add_output_arguments, run_standalone
from bench.session import BenchSession, log

JOB, TOP = "reindex", 10
M = 24  # every rebuild makes a graph with this m (the import's has pgvector's 16)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    add_output_arguments(parser, "reindex")
    args = parser.parse_args(argv)
    run_standalone("reindex", args, argv, lambda session: run(session, args), rows=args.rows)


def run(session: BenchSession, args: argparse.Namespace) -> dict[str, Any]:
    data = session.add_products("products", args.rows, seed=11)
    session.add_embeddings("vectors", data.product_ids, data.embeddings)
    hook = session.hook()
    hook.create_project(JOB, "products", "product_id", ["name", "description"], schedule="manual")
    imported = hook.import_embeddings(JOB, "vectors", "product_id", "embedding")
    session.execute(f"ANALYZE products; ANALYZE vectorize._embeddings_{JOB}")
    log(f"{args.rows:,} rows imported, index built in {imported['index_build']['seconds']} s")
    queries = session.space.sample(args.queries, seed=79)
    searcher = session.hook()

    def search(i: int) -> Any:
        return searcher.search(JOB, queries[i % len(queries)], ["product_id"], TOP)

    results: dict[str, Any] = {"import_build_seconds": imported["index_build"]["seconds"],
                               "searches_alone": searches_alone(search, args.queries)}
    sides = {"concurrently_then_swapped": lambda: hook.alter_project(JOB, hnsw_m=M),
             "dropped_and_built": lambda: drop_and_build(hook, M)}
    for side, action in (("concurrently_without_searches", sides["concurrently_then_swapped"]),
                         ("dropped_and_built_without_searches", sides["dropped_and_built"])):
        forget_m(hook)
        began = time.perf_counter()
        action()  # what the searching thread's core costs the build
        results[f"{side}_seconds"] = round(time.perf_counter() - began, 1)
        log(f"  {side}: {results[f'{side}_seconds']} s")
    for side, action in sides.items():
        forget_m(hook)
        seen = while_searching(search, action)
        latencies = seen.latencies
        results[side] = {"seconds": round(seen.seconds, 1), "searches": len(latencies),
                         "search_errors": len(seen.errors), "search_error_examples": seen.errors[:3],
                         "search_p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
                         "search_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
                         "search_max_ms": round(max(latencies) * 1000, 1)}
        log(f"  {side}: {results[side]}")
    results["searches_after"] = searches_alone(search, args.queries)
    results["rebuild_seconds_ratio"] = round(results["concurrently_then_swapped"]["seconds"]
                                             / results["dropped_and_built"]["seconds"], 2)
    return results


def searches_alone(search: Any, n: int) -> dict[str, float]:
    latencies = []
    for i in range(n):
        began = time.perf_counter()
        search(i)
        latencies.append(time.perf_counter() - began)
    return {"p50_ms": round(percentile(latencies, 0.5) * 1000, 2), "p99_ms": round(percentile(latencies, 0.99) * 1000, 2)}


def forget_m(hook: Any) -> None:
    """The catalog says m is pgvector's default again (the index keeps its own), so that the next side builds
    a graph with ``M`` as the others did."""
    from airflow_vectorize import catalog

    with hook.transaction() as cur:
        project = catalog.find_project(cur, JOB)
        catalog.write_params(cur, project, replace(project, hnsw_m=None), catalog.INDEX_PARAMS)


def drop_and_build(hook: Any, m: int) -> None:
    """The index dropped and built with ``m`` in one transaction, its memory sized as the project's builds."""
    from airflow_vectorize import catalog

    with hook.transaction() as cur:
        project = catalog.find_project(cur, JOB)
        catalog.drop_index(cur, project)
        catalog.write_params(cur, project, replace(project, hnsw_m=m), catalog.INDEX_PARAMS)
        catalog.create_index(cur, replace(project, hnsw_m=m), hook._build_cap)


if __name__ == "__main__":
    main()
