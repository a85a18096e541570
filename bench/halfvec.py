"""``python -m bench.halfvec``: a half-precision index against a full one (issue 34, point 3),
``make bench-halfvec``.

Two projects on the same ``--rows`` rows of the bench's clustered 384-dimension vectors (bench/data.py), one
with pgvector's ``vector`` index, one with ``halfvec_index=True``; each imported through ``import_embeddings``
(the index built at the end, sized by ``index_build``). Reported: build time (the import's ``index_build``),
index size, and recall@10 of ``hook.search`` against numpy's exact top-10 on ``--queries`` query vectors at
each of ``--ef`` (the same ef_search on both sides), with the p50 time of each side, the two alternating query
by query. Each side's index is built ``--builds`` times (3; each a graph of its own, whose recall differs by
about a point from the last's) and the recall reported is the mean over the builds, with halfvec − vector in
points for the mean and for each build. Reported, not asserted.
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

TOP = 10
SIDES = {"vector": False, "halfvec": True}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", type=lambda text: [int(n) for n in text.split(",")], default=[40, 100, 200])
    parser.add_argument("--builds", type=int, default=3, help="indexes built per side, recall averaged over them")
    add_output_arguments(parser, "halfvec")
    args = parser.parse_args(argv)
    run_standalone("halfvec", args, argv, lambda session: run(session, args),
                   rows=args.rows, queries=args.queries, builds=args.builds)


def run(session: BenchSession, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    data = session.add_products("products", args.rows, seed=11)
    session.add_embeddings("vectors", data.product_ids, data.embeddings)
    hook = session.hook()
    for side, half in SIDES.items():
        hook.create_project(side, "products", "product_id", ["name", "description"], schedule="manual",
                            halfvec_index=half)
    session.execute("ANALYZE products")
    queries = session.space.sample(args.queries, seed=999)
    exact = [set(data.product_ids[np.argsort(-row)[:TOP]].tolist()) for row in queries @ data.embeddings.T]
    builds: list[dict[str, Any]] = []
    for build in range(args.builds):
        log(f"build {build + 1} of {args.builds}")
        builds.append(measure_build(session, hook, queries, exact, args.ef))
    results: dict[str, Any] = {"builds": builds}
    for side in SIDES:
        results[side] = {
            "build_seconds": round(float(np.median([b[side]["build_seconds"] for b in builds])), 2),
            "index_mib": builds[-1][side]["index_mib"],
            **{f"ef_{ef}": {"recall_at_10": round(float(np.mean([b[side][f"ef_{ef}"]["recall_at_10"] for b in builds])), 4),
                            "p50_ms": round(float(np.median([b[side][f"ef_{ef}"]["p50_ms"] for b in builds])), 3)}
               for ef in args.ef}}
    results["recall_points_halfvec_minus_vector"] = {
        f"ef_{ef}": {"mean": round(100 * (results["halfvec"][f"ef_{ef}"]["recall_at_10"]
                                          - results["vector"][f"ef_{ef}"]["recall_at_10"]), 2),
                     "each_build": [round(100 * (b["halfvec"][f"ef_{ef}"]["recall_at_10"]
                                                 - b["vector"][f"ef_{ef}"]["recall_at_10"]), 2) for b in builds]}
        for ef in args.ef}
    log("halfvec - vector, recall@10 points (mean over builds; each build): " + ", ".join(
        f"ef_search {ef}: {d['mean']:+.2f} ({', '.join(f'{x:+.2f}' for x in d['each_build'])})"
        for ef, d in zip(args.ef, results["recall_points_halfvec_minus_vector"].values())))
    results["index_size_ratio"] = round(results["halfvec"]["index_mib"] / results["vector"]["index_mib"], 3)
    results["build_time_ratio"] = round(results["halfvec"]["build_seconds"] / results["vector"]["build_seconds"], 3)
    return results


def measure_build(session: BenchSession, hook: Any, queries: Any, exact: list[set[int]],
                  efs: list[int]) -> dict[str, Any]:
    """Import the vectors into both projects, each building its index anew (a graph of its own: pgvector
    draws each element's level at random), then recall@10 and p50 of each at every ef_search, the two sides
    alternating query by query."""
    import numpy as np

    results: dict[str, Any] = {}
    for side in SIDES:
        session.settle()
        build = hook.import_embeddings(side, "vectors", "product_id", "embedding", rebuild_index=True)["index_build"]
        index = session.scalar("SELECT pg_relation_size(%s::regclass)", [f"vectorize.{side}_hnsw_cos_idx"])
        results[side] = {"build_seconds": build["seconds"], "index_mib": round(index / 2**20, 1)}
        log(f"  {side}: index built in {build['seconds']:.1f} s, {index / 2**20:.0f} MiB"
            f"{'' if build['fits'] else ' (on disk: the graph outgrew its memory)'}")
    for vector in queries[:5]:
        for side in SIDES:
            hook.search(side, vector, ["product_id"], TOP)
    for ef in efs:
        found: dict[str, list[set[int]]] = {side: [] for side in SIDES}
        times: dict[str, list[float]] = {side: [] for side in SIDES}
        for i, vector in enumerate(queries):
            for side in (SIDES if i % 2 else reversed(list(SIDES))):
                started = time.perf_counter()
                rows = hook.search(side, vector, ["product_id"], TOP, ef_search=ef)
                times[side].append(time.perf_counter() - started)
                found[side].append({r["product_id"] for r in rows})
        for side in SIDES:
            recall = float(np.mean([len(f & e) / TOP for f, e in zip(found[side], exact)]))
            results[side][f"ef_{ef}"] = {"recall_at_10": round(recall, 4),
                                         "p50_ms": round(float(np.median(times[side])) * 1000, 3)}
        log(f"  ef_search {ef}: " + ", ".join(f"{side} recall {results[side][f'ef_{ef}']['recall_at_10']:.4f}"
                                             f" p50 {results[side][f'ef_{ef}']['p50_ms']:.2f} ms" for side in SIDES))
    return results


if __name__ == "__main__":
    main()
