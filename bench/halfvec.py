"""``python -m bench.halfvec``: a half-precision index against a full one (issue 34, point 3),
``make bench-halfvec``.

Two projects on the same ``--rows`` rows of the bench's clustered 384-dimension vectors (bench/data.py), one
with pgvector's ``vector`` index, one with ``halfvec_index=True``; each imported through ``import_embeddings``
(the index built at the end, sized by ``index_build``). Reported: build time (the import's index phase),
index size, and recall@10 of ``hook.search`` against numpy's exact top-10 on ``--queries`` query vectors at
each of ``--ef`` (the same ef_search on both sides), with the p50 time of each side, the two alternating query
by query. Reported, not asserted.
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
    add_output_arguments(parser, "halfvec")
    args = parser.parse_args(argv)
    run_standalone("halfvec", args, argv, lambda session: run(session, args),
                   rows=args.rows, queries=args.queries)


def run(session: BenchSession, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from bench.phases import import_phases

    data = session.add_products("products", args.rows, seed=11)
    session.add_embeddings("vectors", data.product_ids, data.embeddings)
    hook = session.hook()
    results: dict[str, Any] = {}
    for side, half in SIDES.items():
        hook.create_project(side, "products", "product_id", ["name", "description"], schedule="manual",
                            halfvec_index=half)
        session.settle()
        with import_phases() as phases:
            hook.import_embeddings(side, "vectors", "product_id", "embedding")
        index = session.scalar("SELECT pg_relation_size(%s::regclass)", [f"vectorize.{side}_hnsw_cos_idx"])
        results[side] = {"build_seconds": round(phases["index_build"], 2), "index_mib": round(index / 2**20, 1)}
        log(f"  {side}: index built in {phases['index_build']:.1f} s, {index / 2**20:.0f} MiB")
    session.execute("ANALYZE products")
    queries = session.space.sample(args.queries, seed=999)
    exact = [set(data.product_ids[np.argsort(-row)[:TOP]].tolist()) for row in queries @ data.embeddings.T]
    for vector in queries[:5]:
        for side in SIDES:
            hook.search(side, vector, ["product_id"], TOP)
    for ef in args.ef:
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
    results["index_size_ratio"] = round(results["halfvec"]["index_mib"] / results["vector"]["index_mib"], 3)
    results["build_time_ratio"] = round(results["halfvec"]["build_seconds"] / results["vector"]["build_seconds"], 3)
    return results


if __name__ == "__main__":
    main()
