"""``python -m bench.retrieval``: retrieval quality measured through the product's own API (issue 33),
``make bench-retrieval``.

Corpora of real text nobody here wrote, each in a table of its own with two projects on it with the default
model: one vector a document (unchunked) and chunks of 200 tokens (24 shared):

- ``readmes``: the README-style descriptions of ``--documents`` installed Python packages (3-20 kB each);
  queries from ``hook.sample_queries`` — the last sentence of 12-60 words of each document, that document the
  relevant one (a proxy for labelled questions: is a document found by words near its end, which one vector a
  document cannot read past its first 256 tokens).
- ``man`` and ``pypi``: ``--corpus-documents`` manual pages / PyPI package READMEs of ``bench/corpus.py``
  (1-50 kB); queries: the chunking bench's last-third sentences (``corpus.pick_queries``: one a document, no
  boilerplate, none found in another document), the document each came from the relevant one — the queries
  of ``bench/chunking.py``, whose recall@10 of them at the same size these runs repeat.

Per corpus, ``hook.compare`` puts the two projects side by side (recall@1/3/5/10, MRR, nDCG@10, the paired
sign test and bootstrap interval) and draws its recall@k chart (``bench/retrieval-recall*.png``, or beside the
results with ``--no-latest``); a second comparison, chunked vector vs chunked hybrid, on the same queries.
Reported, not asserted.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.output import add_output_arguments, write_results  # noqa: E402
from bench.session import BenchSession, log, prepare_environment  # noqa: E402

KS = (1, 3, 5, 10)
CORPORA = ("readmes", "man", "pypi")
CHARTS = {"readmes": ROOT / "bench" / "retrieval-recall.png", "man": ROOT / "bench" / "retrieval-recall-man.png",
          "pypi": ROOT / "bench" / "retrieval-recall-pypi.png"}
Queries = list[dict[str, Any]]


@dataclass
class Case:
    """A corpus as this bench runs it: its rows, its projects' names and its labelled queries."""

    name: str
    label: str
    rows: list[tuple[int, str, str]]  # (doc_id, name, text)
    queries: Callable[[Any], Queries]  # the hook -> labelled queries
    whole: str
    chunked: str
    info: dict[str, Any]


def installed_readmes(count: int, seed: int) -> Case:
    from airflow_vectorize.example_data import package_descriptions

    documents = package_descriptions(count)
    return Case("readmes", "installed package READMEs", [(i, n, t) for i, (n, t) in enumerate(documents, 1)],
                lambda hook: hook.sample_queries("whole", n=len(documents), seed=seed, position="last"),
                "whole", "chunked", {"queries_from": "hook.sample_queries(position='last')"})


def bench_corpus(name: str, count: int) -> Case:
    """``count`` documents of ``bench/corpus.py``'s corpus ``name`` with their last-third query sentences."""
    from bench import corpus as corpora

    started = time.perf_counter()
    corpus = corpora.CORPORA[name](count)
    picked = corpora.pick_queries(corpus)["last"].sentences
    queries = [{"query": sentence, "relevant": [key]} for key, sentence in picked.items()]
    info = {"queries_from": "bench/corpus.py pick_queries, last third (the chunking bench's)",
            "read_seconds": round(time.perf_counter() - started, 1),
            "bytes_total": corpus.info["bytes_total"], "seed": corpus.info["seed"]}
    return Case(name, corpus.label, [(d.key, d.name, d.text) for d in corpus.documents], lambda hook: queries,
                f"{name}_whole", f"{name}_chunked", info)


def run_case(session: BenchSession, case: Case, chart: Path) -> list[dict[str, Any]]:
    """The case's table and projects, then its two comparisons (the first drawn at ``chart``)."""
    from psycopg import sql

    table = sql.Identifier(case.name)
    session.execute(sql.SQL("CREATE TABLE {} (doc_id integer PRIMARY KEY, name text, body text)").format(table))
    with session.conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(table), case.rows)
    session.conn.commit()
    hook = session.hook()
    hook.create_project(case.whole, case.name, "doc_id", ["body"], schedule="manual")
    hook.create_project(case.chunked, case.name, "doc_id", ["body"], schedule="manual", chunk_size=200,
                        chunk_overlap=24)
    for side, job in (("whole", case.whole), ("chunked", case.chunked)):
        started = time.perf_counter()
        embedded = hook.generate_embeddings(job)["embedded"]
        case.info[f"{side}_generate_seconds"] = seconds = round(time.perf_counter() - started, 1)
        log(f"{case.name}: embedded {job}: {embedded} documents in {seconds} s")
    # As autovacuum would after the bulk load (it is off in the bench's server): the planner's statistics.
    for name in (table, sql.Identifier("vectorize", f"_embeddings_{case.whole}"),
                 sql.Identifier("vectorize", f"_chunks_{case.chunked}")):
        session.execute(sql.SQL("ANALYZE {}").format(name))
    queries = case.queries(hook)
    case.info.update(documents=len(case.rows), queries=len(queries),
                     chunks=hook.get_status(case.chunked)["chunks"])
    log(f"{case.name}: {len(queries)} queries")
    chunking = hook.compare(case.whole, case.chunked, queries, k=KS, chart_path=str(chart))
    chunking["chart"] = str(chart.relative_to(ROOT) if chart.is_relative_to(ROOT) else chart)
    hybrid_run = hook.evaluate_retrieval(case.chunked, queries, k=KS, mode="hybrid",
                                         label=f"compare {case.whole} vs {case.chunked}")["evaluation_id"]
    hybrid = hook.compare(evaluation_ids=[chunking["b"]["evaluation_id"], hybrid_run])
    return [{"corpus": case.name, "comparison": "unchunked (a) vs chunked (b), vector", **chunking},
            {"corpus": case.name, "comparison": "chunked vector (a) vs chunked hybrid (b)", **hybrid}]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=120, help="installed package READMEs (120)")
    parser.add_argument("--corpus-documents", type=int, default=200, help="man pages, PyPI READMEs, each (200)")
    parser.add_argument("--corpora", default=",".join(CORPORA), help=f"of {','.join(CORPORA)} (all)")
    parser.add_argument("--seed", type=int, default=1, help="of the installed READMEs' sampled queries (1)")
    add_output_arguments(parser, "retrieval")
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.corpora.split(",") if c.strip()]
    if not names or set(names) - set(CORPORA):
        parser.error(f"--corpora takes {', '.join(CORPORA)} or several of them")
    prepare_environment()

    # The charts beside the README with --latest, else beside the results.
    charts = {name: CHARTS[name] if args.latest else args.output_dir / CHARTS[name].name for name in names}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    session = BenchSession.start()
    results, info = [], {}
    try:
        for name in names:
            case = (installed_readmes(args.documents, args.seed) if name == "readmes"
                    else bench_corpus(name, args.corpus_documents))
            log(f"{name}: {len(case.rows)} {case.label}")
            results += run_case(session, case, charts[name])
            info[name] = {"label": case.label, **case.info}
    finally:
        session.stop()
    meta = {"corpora": info, "seed": args.seed, "ks": list(KS), "wall_seconds": round(time.perf_counter() - started),
            "machine": platform.machine(), "python": sys.version.split()[0]}
    path = write_results(args, "retrieval", meta, results)
    print(report(results))
    log(f"results: {path}; charts: {', '.join(map(str, charts.values()))}")


def report(results: list[dict[str, Any]]) -> str:
    metrics = [f"recall@{k}" for k in KS] + ["mrr", "ndcg@10"]
    lines = [f"| corpus | comparison | side | {' | '.join(metrics)} |", "|---|---|---|" + "---:|" * len(metrics)]
    for r in results:
        for side in ("a", "b"):
            values = " | ".join(f"{r[side]['metrics'][m]:.3f}" for m in metrics)
            lines.append(f"| {r['corpus']} | {r['comparison']} | {side} | {values} |")
        p = r["paired"]
        lines.append(f"| | | b − a on reciprocal rank | mean {p['mean_difference']:+.3f}, 95 % CI"
                     f" [{p['bootstrap_ci95'][0]:+.3f}, {p['bootstrap_ci95'][1]:+.3f}], wins/losses/ties"
                     f" {p['wins']}/{p['losses']}/{p['ties']}, sign test p = {p['sign_test_p']:.2g} |"
                     + " |" * (len(metrics) - 1))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
