"""``python -m bench.tune``: ef_search tuned per project (issue 33, point 5), ``make bench-tune``.

A join project over the bench's product table (``--rows``, default 100k; clustered 384-dimension vectors,
bench/data.py) with its vectors imported under the HNSW index. For each of ``--targets``, ``hook.tune_search``
picks the smallest ef_search reaching that recall@10 against the exact answer on ``--queries`` query vectors,
without and with a category filter (~1/6 of the rows), and stores it. Then, on as many *other* query vectors
(held out: the tuned value is not judged on the queries it was chosen on), ``hook.search`` at pgvector's
default 40 and at the tuned value (the project's own, the caller giving none): recall@10 against numpy's exact
top-10 and p50 time, the two sides alternating query by query over ``--passes`` passes. Reported, not asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.output import add_output_arguments, run_standalone
from bench.session import BenchSession, log

JOB, TABLE, VECTORS, TOP, DEFAULT_EF = "tuned", "products", "product_vectors", 10, 40


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100, help="tuning queries, and as many held out")
    parser.add_argument("--targets", type=lambda text: [float(t) for t in text.split(",")], default=[0.95, 0.99])
    parser.add_argument("--passes", type=int, default=3)
    add_output_arguments(parser, "tune")
    args = parser.parse_args(argv)
    run_standalone("tune", args, argv, lambda session: run(session, args),
                   rows=args.rows, queries=args.queries, target_recalls=args.targets, passes=args.passes)


def run(session: BenchSession, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    data = session.add_products(TABLE, args.rows, seed=11)
    session.add_embeddings(VECTORS, data.product_ids, data.embeddings)
    hook = session.hook()
    hook.create_project(JOB, TABLE, "product_id", ["name", "description"], schedule="manual")
    started = time.perf_counter()
    hook.import_embeddings(JOB, VECTORS, "product_id", "embedding")
    log(f"{args.rows} rows imported with the HNSW index in {time.perf_counter() - started:.1f} s")
    session.execute("ANALYZE products")

    queries = session.space.sample(2 * args.queries, seed=999)
    tuning_set, held_out = queries[: args.queries], queries[args.queries:]
    scores = held_out @ data.embeddings.T  # unit vectors: cosine similarity
    exact = [set(data.product_ids[np.argsort(-row)[:TOP]].tolist()) for row in scores]
    for vector in held_out[:5]:  # warm-up: connection, catalog lookup, pages into shared buffers
        hook.search(JOB, vector, ["product_id"], TOP, ef_search=DEFAULT_EF)
    results = {"held_out_queries": len(held_out), "targets": {}}
    for target in args.targets:
        results["targets"][str(target)] = tuned(hook, data, target, tuning_set, held_out, exact, args.passes)
    return results


def tuned(hook: Any, data: Any, target: float, tuning_set: Any, held_out: Any, exact: list[set[int]],
          passes: int) -> dict[str, Any]:
    """tune_search for ``target`` (stored), then the held-out queries at the default 40 and at the project's own."""
    import numpy as np

    started = time.perf_counter()
    found_ef = hook.tune_search(JOB, target, queries=list(tuning_set), k=TOP,
                                filters=[{"category": data.categories[0]}])
    tune_seconds = time.perf_counter() - started
    for curve in found_ef["curves"]:
        log(f"  target {target}, filters {curve['filters']}: smallest ef_search {curve['ef_search']};"
            + ";".join(f" {p['ef_search']}: {p['recall']:.3f} ({p['p50_ms']:.2f} ms)" for p in curve["points"]))
    log(f"tune_search({target}): ef_search {found_ef['ef_search']} in {tune_seconds:.1f} s")
    sides = {"default_40": DEFAULT_EF, "tuned": None}  # None: the project's own (the tuned value)
    times: dict[str, list[float]] = {side: [] for side in sides}
    found: dict[str, list[list[int]]] = {side: [] for side in sides}
    for run_no in range(passes):
        for i, vector in enumerate(held_out):
            order = list(sides.items()) if (i + run_no) % 2 else list(sides.items())[::-1]
            for side, ef in order:
                started = time.perf_counter()
                rows = hook.search(JOB, vector, ["product_id"], TOP, ef_search=ef)
                times[side].append(time.perf_counter() - started)
                if run_no == 0:
                    found[side].append([r["product_id"] for r in rows])
    result: dict[str, Any] = {"tune_search": {k: found_ef[k] for k in ("ef_search", "reached", "curves", "rows")},
                              "tune_seconds": round(tune_seconds, 2)}
    for side in sides:
        recall = float(np.mean([len(set(f) & e) / TOP for f, e in zip(found[side], exact)]))
        p50 = float(np.median(times[side])) * 1000
        result[side] = {"ef_search": DEFAULT_EF if side == "default_40" else found_ef["ef_search"],
                        "recall_at_10": round(recall, 4), "p50_ms": round(p50, 3),
                        "p95_ms": round(float(np.percentile(times[side], 95)) * 1000, 3)}
        log(f"  held out, {side}: recall@10 {recall:.3f}, p50 {p50:.2f} ms")
    result["p50_ratio_tuned_to_default"] = round(result["tuned"]["p50_ms"] / result["default_40"]["p50_ms"], 3)
    return result


if __name__ == "__main__":
    main()
