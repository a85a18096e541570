"""``python -m bench.retrieval``: retrieval quality measured through the product's own API (issue 33),
``make bench-retrieval``.

Corpus: the README-style descriptions of ``--documents`` installed Python packages (3-20 kB each, real text
nobody here wrote). Two projects on it with the default model: one vector a document (unchunked) and chunks
of 200 tokens (24 shared). Queries: ``hook.sample_queries`` — the last sentence of 12-60 words of each
document, that document the relevant one (a proxy for labelled questions: it asks whether a document is
found by words near its end, which one vector a document cannot read past its first 256 tokens).
``hook.compare`` puts the two side by side (recall@1/3/5/10, MRR, nDCG@10, the paired sign test and
bootstrap interval) and draws ``bench/retrieval-recall.png``; a second comparison, chunked vector vs chunked
hybrid, on the same queries. Reported, not asserted.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.output import add_output_arguments, write_results  # noqa: E402
from bench.session import BenchSession, log, prepare_environment  # noqa: E402

KS = (1, 3, 5, 10)
CHART = ROOT / "bench" / "retrieval-recall.png"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    add_output_arguments(parser, "retrieval")
    args = parser.parse_args(argv)
    prepare_environment()
    from airflow_vectorize.example_data import package_descriptions

    session = BenchSession.start()
    try:
        documents = package_descriptions(args.documents)
        session.execute("CREATE TABLE readmes (doc_id integer PRIMARY KEY, package text, body text)")
        with session.conn.cursor() as cur:
            cur.executemany("INSERT INTO readmes VALUES (%s, %s, %s)",
                            [(i, name, text) for i, (name, text) in enumerate(documents, 1)])
        session.conn.commit()
        hook = session.hook()
        hook.create_project("whole", "readmes", "doc_id", ["body"], schedule="manual")
        hook.create_project("chunked", "readmes", "doc_id", ["body"], schedule="manual", chunk_size=200,
                            chunk_overlap=24)
        for job in ("whole", "chunked"):
            log(f"embedding {job}: {hook.generate_embeddings(job)['embedded']} documents")
        queries = hook.sample_queries("whole", n=len(documents), seed=args.seed, position="last")
        log(f"{len(queries)} sampled queries")
        chunking = hook.compare("whole", "chunked", queries, k=KS, chart_path=str(CHART))
        vector_run = chunking["b"]["evaluation_id"]
        hybrid_run = hook.evaluate_retrieval("chunked", queries, k=KS, mode="hybrid",
                                             label="compare whole vs chunked")["evaluation_id"]
        hybrid = hook.compare(evaluation_ids=[vector_run, hybrid_run])
    finally:
        session.stop()
    results = [{"comparison": "unchunked (a) vs chunked (b), vector", **chunking},
               {"comparison": "chunked vector (a) vs chunked hybrid (b)", **hybrid}]
    meta = {"documents": len(documents), "queries": len(queries), "seed": args.seed, "ks": list(KS),
            "machine": platform.machine(), "python": sys.version.split()[0]}
    path = write_results(args, "retrieval", meta, results)
    print(report(results))
    log(f"results: {path}; chart: {CHART}")


def report(results: list[dict[str, Any]]) -> str:
    metrics = [f"recall@{k}" for k in KS] + ["mrr", "ndcg@10"]
    lines = [f"| comparison | side | {' | '.join(metrics)} |", "|---|---|" + "---:|" * len(metrics)]
    for r in results:
        for side in ("a", "b"):
            values = " | ".join(f"{r[side]['metrics'][m]:.3f}" for m in metrics)
            lines.append(f"| {r['comparison']} | {side} | {values} |")
        p = r["paired"]
        lines.append(f"| | b − a on reciprocal rank | mean {p['mean_difference']:+.3f}, 95 % CI"
                     f" [{p['bootstrap_ci95'][0]:+.3f}, {p['bootstrap_ci95'][1]:+.3f}], wins/losses/ties"
                     f" {p['wins']}/{p['losses']}/{p['ties']}, sign test p = {p['sign_test_p']:.2g} |" + " |" * (len(metrics) - 1))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
