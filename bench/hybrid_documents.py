"""``python -m bench.hybrid_documents``: hybrid search of an unchunked project of long texts, ranking by stored
full-text documents (issue 31, point 5), ``make bench-hybrid-documents``.

An unchunked project over ``--docs`` PyPI package READMEs (1,500; ``bench/corpus.py``, fetched once from PyPI's
JSON API and cached). Searched through the hook, interleaved query by query in alternating order over
``--passes`` passes: ``vector`` (``search``), ``hybrid`` (``hybrid_search``, full-text part ranked by the stored
documents in ``vectorize._documents_<job>``) and ``parsed`` (the same hybrid search of the project as it was
before the documents table: the source's expression index finds matches, ``ts_rank`` parses each one's text).
Queries: keyword pairs common in READMEs (the check that measured the parsing path at 377 ms p50 used such
queries). Reported: p50 / p95 of each, ``hybrid / vector`` (target ≤ 2) and whether ``hybrid`` returns exactly
what ``parsed`` returns (rows, ranks, scores).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.measure import Measurement, percentile  # noqa: E402
from bench.output import add_output_arguments, write_results  # noqa: E402
from bench.session import BenchSession, log, prepare_environment  # noqa: E402

JOB = "readmes"
QUERIES = ["command line", "python library", "pip install", "documentation", "http client", "json schema",
           "unit tests", "configuration file", "async", "data frame", "license", "api"]
TARGET = 2.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1500)
    parser.add_argument("--passes", type=int, default=5)
    add_output_arguments(parser, "hybrid-documents")
    args = parser.parse_args(argv)
    prepare_environment()
    from psycopg import sql

    from airflow_vectorize.expressions import fts_document
    from bench import corpus as corpora

    docs = corpora.pypi_corpus(args.docs)
    session = BenchSession.start()
    try:
        session.execute("CREATE TABLE readmes (id integer PRIMARY KEY, name text NOT NULL, body text NOT NULL)")
        with session.conn.cursor() as cur, cur.copy("COPY readmes (id, name, body) FROM STDIN") as copy:
            for d in docs.documents:
                copy.write_row((d.key, d.name, d.text))
        hook = session.hook()
        hook.create_project(JOB, "readmes", "id", ["body"], schedule="manual")
        log(f"embedding {len(docs.documents)} READMEs (unchunked)")
        hook.generate_embeddings(JOB)
        session.execute("VACUUM ANALYZE readmes")
        session.execute(f"VACUUM ANALYZE vectorize._documents_{JOB}")
        stored, parsed = session.hook(), session.hook()
        # ``parsed``: the same project as it was before the documents table, on a second database copy would
        # cost a second embedding; instead its statement is built as for such a project (no documents table)
        # and run against the source's expression index, made here for it.
        project = stored._search_target(JOB).project
        session.execute(sql.SQL("CREATE INDEX readmes_parsed_fts ON readmes USING gin (({}))").format(fts_document(project)))
        session.execute("ANALYZE readmes")
        parsed_target = parsed._search_target(JOB)
        parsed_target.documents = False
        times: dict[str, list[float]] = {"vector": [], "hybrid": [], "parsed": []}
        identical = True
        calls = {
            "vector": lambda q: stored.search(JOB, q, return_columns=["id"], num_results=10),
            "hybrid": lambda q: stored.hybrid_search(JOB, q, return_columns=["id"], num_results=10),
            "parsed": lambda q: parsed.hybrid_search(JOB, q, return_columns=["id"], num_results=10),
        }
        for q in QUERIES:  # warm: models, caches, prepared statements
            for call in calls.values():
                call(q)
        for p in range(args.passes):
            for i, q in enumerate(QUERIES):
                order = list(calls) if (p + i) % 2 == 0 else list(reversed(calls))
                answers = {}
                for name in order:
                    started = time.perf_counter()
                    answers[name] = calls[name](q)
                    times[name].append((time.perf_counter() - started) * 1000)
                identical &= answers["hybrid"] == answers["parsed"]
        matches = [session.scalar(sql.SQL("SELECT count(*) FROM readmes WHERE {} @@ websearch_to_tsquery('english', %s)")
                                  .format(fts_document(project)), [q]) for q in QUERIES]
    finally:
        session.stop()
    p50 = {name: statistics.median(values) for name, values in times.items()}
    p95 = {name: percentile(values, 0.95) for name, values in times.items()}
    results = [
        Measurement(key="hybrid / vector", title=f"hybrid search p50, stored documents, {args.docs} READMEs",
                    ours_label="hybrid_search", baseline_label="search (vector)", unit="ms", ours=p50["hybrid"],
                    baseline=p50["vector"], target=TARGET,
                    details={"p95_ms": p95, "p50_ms": p50, "identical_to_parsed": identical,
                             "matches_per_query": matches}).as_dict(),
        Measurement(key="parsed / vector", title="hybrid search p50 parsing each match's text (before)",
                    ours_label="hybrid_search, parsed", baseline_label="search (vector)", unit="ms",
                    ours=p50["parsed"], baseline=p50["vector"]).as_dict(),
    ]
    meta = {"docs": args.docs, "passes": args.passes, "queries": QUERIES, "machine": platform.machine(),
            "python": sys.version.split()[0], "corpus": docs.info}
    path = write_results(args, "hybrid-documents", meta, results)
    for name in times:
        print(f"{name:7s} p50 {p50[name]:8.2f} ms  p95 {p95[name]:8.2f} ms")
    print(f"hybrid / vector {p50['hybrid'] / p50['vector']:.2f} (target ≤ {TARGET:g}); parsed / vector"
          f" {p50['parsed'] / p50['vector']:.2f}; hybrid answers identical to parsed: {identical};"
          f" matches per query (median) {statistics.median(matches):.0f}, max {max(matches)}")
    log(f"results: {path}")


if __name__ == "__main__":
    main()
