"""``python -m bench.exact_threshold``: where a chunked search should stop comparing every chunk and ask the HNSW
index (``search.EXACT_SCAN_MAX_PAGES``).

One chunked project of man pages (``bench/corpus.py``, CHUNK_SIZE / CHUNK_OVERLAP of ``bench/chunking.py``),
generated once; for each document count, a project on the first documents, its chunk vectors imported from the
first one (nothing embedded again). On each: the exact top-10 rows of every query (each row ranked by its
nearest chunk), the lowest ``ef_search`` at which the index path returns RECALL of them, then
``VectorizeHook.search`` (vectors, key only, top 10) timed three ways, interleaved query by query through two
hooks: the exact path, the index path at that ``ef_search``, the index path at pgvector's default 40. Each hook
takes its path from the threshold set around its calls (read when it looks the project up, and written into
the statements it builds, whose report of the table's size keeps it there).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.output import add_output_arguments, write_results
from bench.session import BenchSession, log, prepare_environment

TOP = 10
RECALL = 0.995  # share of the exact top-10 rows the index path must return
EF_GRID = (10, 20, 40, 80, 120, 160, 240, 320, 480, 640, 1000)
PASSES = 4  # timed passes over the queries (each path once per query and pass)
EXACT, NEVER = 10**9, -1  # thresholds (pages) that force the exact path / the index path


def measure(session: BenchSession, docs: int, counts: list[int], queries: int) -> list[dict[str, Any]]:
    import numpy as np
    from psycopg import sql

    from airflow_vectorize import search
    from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
    from airflow_vectorize.models.local import load_model
    from bench import corpus as corpora
    from bench.chunking import CHUNK_OVERLAP, CHUNK_SIZE

    hook, local = session.hook(), load_model(DEFAULT_TRANSFORMER)
    corpus = corpora.man_corpus(docs)
    picked = corpora.pick_queries(corpus)
    sentences = [s for third in picked.values() for s in third.sentences.values()][:queries]
    vectors = local.model.encode(sentences, show_progress_bar=False)
    options = {"chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP, "schedule": "manual"}
    session.execute("CREATE TABLE man (id integer PRIMARY KEY, name text NOT NULL, body text NOT NULL)")
    with session.conn.cursor() as cur, cur.copy("COPY man (id, name, body) FROM STDIN") as copy:
        for d in corpus.documents:
            copy.write_row((d.key, d.name, d.text))
    hook.create_project("man_all", "man", "id", ["body"], **options)
    log(f"{len(corpus.documents)} man pages, {len(sentences)} queries: generating their chunks")
    hook.generate_embeddings("man_all")
    keys = [d.key for d in corpus.documents]
    found = []
    for count in counts:
        table, job = f"man_{count}", f"man_{count}_chunked"
        chunks = sql.Identifier("vectorize", f"_chunks_{job}")
        session.execute(sql.SQL("CREATE TABLE {} (LIKE man INCLUDING ALL)").format(sql.Identifier(table)))
        session.execute(sql.SQL("INSERT INTO {} SELECT * FROM man WHERE id = ANY(%s)").format(sql.Identifier(table)),
                        [keys[:count]])
        session.execute(sql.SQL("CREATE TABLE {} AS SELECT id, chunk_no, embeddings FROM vectorize._chunks_man_all"
                                " WHERE id = ANY(%s)").format(sql.Identifier(f"{table}_vectors")), [keys[:count]])
        hook.create_project(job, table, "id", ["body"], **options)
        hook.import_embeddings(job, f"{table}_vectors", "id", "embeddings", src_chunk_col="chunk_no")
        session.execute(sql.SQL("ANALYZE {}").format(chunks))
        pages, rows = session.execute(sql.SQL("SELECT pg_relation_size(%s::regclass) / 8192, count(*) FROM {}")
                                      .format(chunks), [chunks.as_string(session.conn)])[0]
        exact = [[r[0] for r in session.execute(sql.SQL(
            "SELECT id FROM {} GROUP BY id ORDER BY min(embeddings <=> %s), id LIMIT {}").format(
            chunks, sql.Literal(TOP)), [v])] for v in vectors]
        exact_hook, index_hook = session.hook(), session.hook()

        def run(hook: Any, pages_limit: int, vector: Any, ef: int, job: str = job) -> list[int]:
            search.EXACT_SCAN_MAX_PAGES = pages_limit
            return [r["id"] for r in hook.search(job, vector, return_columns=["id"], num_results=TOP, ef_search=ef)]

        recall = {}
        for ef in EF_GRID:
            got = [run(index_hook, NEVER, v, ef) for v in vectors]
            recall[ef] = round(float(np.mean([len(set(g) & set(e)) / TOP for g, e in zip(got, exact)])), 4)
        chosen = min((ef for ef, r in recall.items() if r >= RECALL), default=EF_GRID[-1])
        assert all(run(exact_hook, EXACT, v, 40) == e for v, e in zip(vectors, exact)), "exact path not exact"
        paths = {"exact": (exact_hook, EXACT, 40), "index_at_recall": (index_hook, NEVER, chosen),
                 "index_at_40": (index_hook, NEVER, 40)}
        times: dict[str, list[float]] = {name: [] for name in paths}
        for sweep in range(PASSES):
            for i, v in enumerate(vectors):
                for name, (h, limit, ef) in (list(paths.items())[::1 if (i + sweep) % 2 else -1]):
                    started = time.perf_counter()
                    run(h, limit, v, ef)
                    times[name].append(time.perf_counter() - started)
        p50 = {name: round(float(np.median(t)) * 1000, 4) for name, t in times.items()}
        found.append({"documents": count, "pages": pages, "chunks": rows, "ef_search_at_recall": chosen,
                      "recall_by_ef_search": recall, "p50_ms": p50,
                      "exact_vs_index_at_recall": round(p50["exact"] / p50["index_at_recall"], 3)})
        log(f"  {count} man pages: {pages} pages, {rows:,} chunks; exact {p50['exact']:.3f} ms, index at"
            f" ef_search {chosen} {p50['index_at_recall']:.3f} ms, at 40 {p50['index_at_40']:.3f} ms")
    return found


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.exact_threshold", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=300, help="man pages read (300)")
    parser.add_argument("--counts", default="30,60,100,150,200,300",
                        help="comma-separated document counts of the projects compared (30,60,100,150,200,300)")
    parser.add_argument("--queries", type=int, default=120, help="query sentences (120)")
    add_output_arguments(parser, "exact-threshold")
    args = parser.parse_args(argv)
    prepare_environment()
    from airflow_vectorize import search

    started, threshold = time.perf_counter(), search.EXACT_SCAN_MAX_PAGES
    session = BenchSession.start()
    try:
        found = measure(session, args.docs, [int(n) for n in args.counts.split(",")], args.queries)
    finally:
        session.stop()
        search.EXACT_SCAN_MAX_PAGES = threshold
    meta = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "python -m bench.exact_threshold " + " ".join(argv if argv is not None else sys.argv[1:]),
            "exact_scan_max_pages": threshold, "recall": RECALL, "passes": PASSES,
            "load_average_after": os.getloadavg(), "wall_seconds": round(time.perf_counter() - started, 1)}
    path = write_results(args, "exact-threshold", meta, found)
    print(f"chunked search p50 through the hook, exact path vs the index at the lowest ef_search giving {RECALL:.1%}"
          f" of the exact top-10 rows (threshold now {threshold} pages)")
    print(f"{'pages':>6} {'chunks':>7} {'exact ms':>9} {'index ms':>9} {'at ef':>6} {'ratio':>6} {'index@40 ms':>11}")
    for m in found:
        print(f"{m['pages']:>6} {m['chunks']:>7,} {m['p50_ms']['exact']:>9.3f} {m['p50_ms']['index_at_recall']:>9.3f}"
              f" {m['ef_search_at_recall']:>6} {m['exact_vs_index_at_recall']:>6.2f} {m['p50_ms']['index_at_40']:>11.3f}")
    print(f"\nwall time {meta['wall_seconds']:.0f} s; wrote {path}" + (" and bench/latest-exact-threshold.json"
                                                                        if args.latest else ""))
    return {"json": path, "measurements": found, "meta": meta}


if __name__ == "__main__":
    main()
    sys.exit(0)
