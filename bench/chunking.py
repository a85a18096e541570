"""Measurements on chunked projects over long real texts (issue 12, points 6 and 7), on each corpus of
``bench/corpus.py`` (man pages, installed package READMEs, PyPI READMEs): is a text found by its end, does its beginning lose
nothing, what does chunking cost in embedding throughput (man pages) and in search time at equal recall?

Per corpus, one table and two projects on it: chunked (CHUNK_SIZE, CHUNK_OVERLAP) and unchunked (one vector
a document: the whole text, which all-MiniLM-L6-v2 truncates at 256 word-pieces, as pg_vectorize does).

Recall: each third's query sentences (the relevant row: the document a sentence came from) evaluated by the
product's ``VectorizeHook.evaluate_retrieval`` on each project (text queries through ``search``, default settings).

Search time at equal recall, on the rows the splitter cuts into 3-10 chunks (the issue's condition; a
second pair of projects on a copy of those rows, filled by importing the vectors computed for all rows),
and, for information, on all rows: the queries as vectors (the database's part; a text query adds the same
embedding time to both sides), warm, each project on a hook (so a connection) of its own, sides alternating
query by query. A sweep over EF_SEARCH (``search(..., ef_search=)``, SWEEP_PASSES passes) gives each side's
p50 time and recall: the share of the exact top-10 rows it returns (the exact answer compares every vector;
a chunked row ranks by its nearest chunk). Both sides are then taken at the highest recall both reach, each
at the lowest ef_search that reaches it, and timed again in a paired pass (MATCHED_PASSES passes; the sweep's
settings ran at different moments of a shared machine's load). The paired pass also times the chunk index
alone (``index_alone_statement``: the 10 nearest chunks as the chunked project's index serves them, or as an
exact scan finds them where the chunked search compares every chunk; nothing grouped by row): the ratio splits
into what searching more vectors costs and what the per-row pick adds. EXPLAIN (ANALYZE, BUFFERS) of both
statements at those settings shows where the time goes, and EXPLAIN (ANALYZE, TIMING OFF) of all three each
side's time inside the server alone (``server_times``).

Hybrid search (``hybrid_time``): both projects on two-word keyword queries taken from the query sentences; a
chunked project ranks full-text matches from the documents stored in its chunk table, an unchunked one parses
each matching row's text again.

Throughput (on the first corpus): bare ``model.encode`` of the chunks, the chunked ``generate_embeddings``
(which splits the texts itself), bare again; the first bare run encodes what the project's own splitter
makes of the texts, and the chunks the project stores must be exactly those.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pgvector.psycopg import register_vector
from psycopg import sql

from bench import corpus as corpora
from bench.corpus import Corpus, Queries
from bench.measure import Measurement, median, percentile, timed
from bench.session import BenchSession, log

CORPORA = ("man", "readme")
# 200 tokens, 24 (12 %) shared by neighbours. semchunk cuts at the pages' paragraph and sentence boundaries
# and fills a chunk to ~60 % of chunk_size on average: at 200 a chunk averages ~125 tokens, the length
# all-MiniLM-L6-v2 was trained on (128; it reads 254 at most). On a 60-page sample (numpy, exact search),
# 128 / 160 / 200 found 0.98 / 0.96 / 0.96 of last-third sentences but 128 and 160 make 1.5x / 1.2x the
# chunks (median 18 / 15 / 12 a page): more vectors to embed, store and search for little gain.
CHUNK_SIZE, CHUNK_OVERLAP = 200, 24
TOP = 10
EF_SEARCH = (10, 20, 40, 80, 160, 320)  # hnsw.ef_search settings of the search-time sweep
SWEEP_PASSES = 2
MATCHED_PASSES = 3
THROUGHPUT_ROUNDS = 3  # runs of ours, each between two bare encodes; each side's median counts
THROUGHPUT_MAX_DOCS = 400  # the throughput comparison embeds the corpus twice more: larger runs leave it out
EXPLAINED_QUERIES = 20
KEYWORD = re.compile(r"[A-Za-z]{4,}")
INDEX_ALONE = "chunk_index_alone"  # its side in the paired pass
SERVER_QUERIES = 300  # queries of server_times
HYBRID_QUERIES = 60  # keyword queries of hybrid_time
HYBRID_PASSES = 3  # the first warms up


@dataclass
class Floor:
    """The floor under a chunked search (``index_alone_statement``): its statement (the query vector bound as
    ``vector``) and the settings it runs with."""

    statement: sql.Composed
    settings: dict[str, str]


def measure(session: BenchSession, docs: int, names: tuple[str, ...] = CORPORA) -> list[Measurement]:
    from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
    from airflow_vectorize.models.local import load_model

    local = load_model(DEFAULT_TRANSFORMER)
    hook = session.hook()
    found = []
    for position, name in enumerate(names):
        corpus_seconds, corpus = timed(lambda name=name: corpora.CORPORA[name](docs))
        query_seconds, queries = timed(lambda corpus=corpus: corpora.pick_queries(corpus))
        corpus.info.update(corpus_seconds=round(corpus_seconds, 1), query_seconds=round(query_seconds, 1))
        assert queries["last"].sentences and queries["first"].sentences, corpus.name
        log(f"chunking/{name}: {len(corpus.documents)} {corpus.label} ({corpus.info['bytes_total'] / 1e6:.1f} MB,"
            f" read in {corpus_seconds:.0f} s), {len(queries['last'].sentences)} last-third and"
            f" {len(queries['first'].sentences)} first-third queries (picked in {query_seconds:.0f} s)")
        throughput = position == 0 and docs <= THROUGHPUT_MAX_DOCS
        found += CorpusRun(session, hook, local, corpus, queries).measure(throughput=throughput)
    return found


class CorpusRun:
    """One corpus: its table, its two projects, its measurements."""

    def __init__(self, session: BenchSession, hook: Any, local: Any, corpus: Corpus,
                 queries: dict[str, Queries]) -> None:
        self.session, self.hook, self.local, self.corpus = session, hook, local, corpus
        self.queries = {third: q.sentences for third, q in queries.items()}
        self.picked = queries
        self.table = f"chunking_{corpus.name}"
        self.chunked, self.whole = f"chunking_{corpus.name}_chunked", f"chunking_{corpus.name}_whole"
        self.jobs = (self.chunked, self.whole)
        self.jobs_to_drop, self.tables = list(self.jobs), [self.table]
        self.ef_grid = EF_SEARCH
        self.searchers: dict[str, Any] = {}
        self.connections: list[Any] = []  # index_alone's
        # Filled by embed() and recall(), read by the measurements after them.
        self.chunk_counts: dict[int, int] = {}  # chunks of each document, by key
        self.chunks_per_row: dict[str, Any] = {}
        self.project: dict[str, Any] = {}  # the chunked project's options and size
        self.baseline_check: dict[str, Any] = {}  # the unchunked side is today's layout
        self.text_p50: dict[str, dict[str, float]] = {}  # text queries (model + database), ms, by third

    def searcher(self, job: str) -> Any:
        """A hook (so a search connection) of the project's own: a connection alternating between projects
        would change its session's settings at every search (iterative scans differ between them)."""
        if job not in self.searchers:
            self.searchers[job] = self.session.hook()
        return self.searchers[job]

    def measure(self, throughput: bool) -> list[Measurement]:
        """The table of ``rows()``, then ``steps()``; the projects and tables dropped after."""
        session = self.session
        session.execute(sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY, name text NOT NULL, body text NOT NULL)")
                        .format(sql.Identifier(self.table)))
        with session.conn.cursor() as cur, cur.copy(
                sql.SQL("COPY {} (id, name, body) FROM STDIN").format(sql.Identifier(self.table))) as copy:
            for row in self.rows():
                copy.write_row(row)
        try:
            return self.steps(throughput)
        finally:
            for hook in self.searchers.values():  # a hook has no close(): its search connection
                connection = getattr(hook, "_search_conn", None)
                if connection is not None:
                    connection.close()
            for connection in self.connections:
                connection.close()
            for job in self.jobs_to_drop:
                self.hook.drop_project(job, missing_ok=True)
            for table in self.tables:
                session.drop_table(table)

    def analyze(self, chunked: str, whole: str, table: str) -> None:
        """ANALYZE both projects' storage and their source, as autovacuum would after a bulk load (it is off
        in the bench's server)."""
        for name in (sql.Identifier("vectorize", f"_chunks_{chunked}"),
                     sql.Identifier("vectorize", f"_embeddings_{whole}"), sql.Identifier(table)):
            self.session.execute(sql.SQL("ANALYZE {}").format(name))

    def chunk_index(self, chunked: str) -> str:
        """The chunked project's HNSW index as built (its expression, operator class and options)."""
        return self.session.scalar("SELECT indexdef FROM pg_indexes WHERE schemaname = 'vectorize'"
                                   " AND tablename = %s AND indexdef LIKE '%%USING hnsw%%'", [f"_chunks_{chunked}"])

    def rows(self) -> list[tuple[int, str, str]]:
        """(key, name, text) of the table's rows: the corpus' documents."""
        return [(d.key, d.name, d.text) for d in self.corpus.documents]

    def steps(self, throughput: bool) -> list[Measurement]:
        found = self.embed(throughput)
        found += self.recall()
        found.append(self.hybrid_time())
        return found + self.search_time()

    # -- 4. chunking + embedding throughput against a bare model.encode of the same chunks ----------------
    def embed(self, throughput: bool) -> list[Measurement]:
        from airflow_vectorize.chunking import TextSplitter

        session, hook, corpus = self.session, self.hook, self.corpus
        model, tokenizer = self.local.model, self.local.model.tokenizer
        documents, n = corpus.documents, len(corpus.documents)
        texts = [d.text for d in documents]  # by key: what the project embeds (its one column)
        # The first bare run comes before ours has written any chunk: it encodes what the project's own
        # splitter (same tokenizer, size, overlap) makes of the texts, which must equal the chunks ours stores.
        split_seconds, split = timed(lambda: TextSplitter(tokenizer, CHUNK_SIZE, CHUNK_OVERLAP).split_all(texts))
        expected = [c.text for row in split for c in row]
        self.chunk_counts = {d.key: len(row) for d, row in zip(documents, split)}
        per_row = sorted(self.chunk_counts.values())
        tokens = sum(len(ids) for ids in tokenizer(expected, add_special_tokens=False)["input_ids"])
        log(f"  {len(expected):,} chunks of <= {CHUNK_SIZE} tokens ({tokens:,} tokens, median {per_row[n // 2]}"
            f" a document, split in {split_seconds:.1f} s)")

        def bare(chunks: list[str]) -> float:
            seconds, vectors = timed(lambda: model.encode(chunks, show_progress_bar=False))
            assert len(vectors) == len(chunks)
            log(f"  bare model.encode: {tokens / seconds:,.0f} tokens/s ({len(chunks) / seconds:.1f} chunks/s)")
            return seconds

        bare_runs = []
        if throughput:
            model.encode(expected[:64], show_progress_bar=False)  # warm-up: both sides find the model warm
            bare_runs.append(bare(expected))
        ours_runs = []
        chunks_table = sql.Identifier("vectorize", f"_chunks_{self.chunked}")
        # Encodes of the same chunks vary by ±10 % from one run to the next on 2 shared cores: with the
        # throughput measured, the sides alternate THROUGHPUT_ROUNDS times (bare, ours, bare, ..., bare).
        for round_ in range(THROUGHPUT_ROUNDS if throughput else 1):
            if round_:
                hook.drop_project(self.chunked)
            hook.create_project(self.chunked, self.table, "id", ["body"], chunk_size=CHUNK_SIZE,
                                chunk_overlap=CHUNK_OVERLAP, schedule="manual")  # empty: a bulk run
            session.settle()
            seconds, result = timed(lambda: hook.generate_embeddings(self.chunked))
            ours_runs.append(seconds)
            log(f"  generate_embeddings (chunked): {tokens / seconds:,.0f} tokens/s ({result['seconds']} s)")
            stored = [r[0] for r in session.execute(sql.SQL("SELECT chunk FROM {} ORDER BY id, chunk_no")
                                                    .format(chunks_table))]
            status = hook.get_status(self.chunked)
            assert result["embedded"] == n, result  # every document embedded, in chunks
            assert (status["embedded_rows"], status["missing_rows"], status["chunks"]) == (n, 0, len(expected)), status
            assert len(stored) > n and stored == expected, (len(stored), len(expected))
            if throughput:
                bare_runs.append(bare(stored))
        ours_seconds = median(ours_runs)

        # -- the unchunked project on the same table: one vector a document, of its first 256 word-pieces --
        hook.create_project(self.whole, self.table, "id", ["body"], schedule="manual")
        whole_seconds, whole = timed(lambda: hook.generate_embeddings(self.whole))
        assert whole["embedded"] == n, whole
        log(f"  generate_embeddings (unchunked): {n / whole_seconds:.1f} documents/s")
        whole_table = sql.Identifier("vectorize", f"_embeddings_{self.whole}")
        # The baseline is today's layout: the whole text embedded once, the model reading its first tokens.
        sample = documents[:: max(1, n // 8)][:8]
        stored_whole = dict(session.execute(sql.SQL("SELECT id, embeddings FROM {} WHERE id = ANY(%s)")
                                            .format(whole_table), [[d.key for d in sample]]))
        direct = model.encode([d.text for d in sample], show_progress_bar=False)
        agreement = min(float(np.dot(stored_whole[d.key].to_numpy(), v)) for d, v in zip(sample, direct))
        assert agreement > 0.999, agreement
        limit = self.local.max_input_tokens
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        self.baseline_check = {
            "model_reads_tokens": limit,
            "documents_longer_than_that": sum(length > limit for length in lengths),
            "document_tokens_median": sorted(lengths)[n // 2],
            "stored_unchunked_vector_vs_model_encode_of_whole_text_min_cosine": round(agreement, 6),
        }
        self.analyze(self.chunked, self.whole, self.table)
        self.project = {"chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP, "model": "all-MiniLM-L6-v2",
                        "chunk_index": self.chunk_index(self.chunked), "documents": n, "chunks": len(expected)}
        self.chunks_per_row = {"min": per_row[0], "median": per_row[n // 2], "mean": round(len(expected) / n, 2),
                               "max": per_row[-1], "issue_range": [3, 10],
                               "rows_in_range": sum(3 <= c <= 10 for c in per_row)}
        if not throughput:
            return []
        bare_seconds = median(bare_runs)
        return [Measurement(
            key="chunking_embed_throughput",
            title=f"Chunk + embed {n} {corpus.label}: ours ÷ bare model.encode of the same chunks, tokens/s",
            ours_label="VectorizeHook.generate_embeddings, chunked (read, split, embed, write, commit, index)",
            baseline_label="model.encode(chunk texts) in the same process",
            unit="tokens/s", ours=tokens / ours_seconds, baseline=tokens / bare_seconds, target=0.9, op=">=",
            details={**self.project, "corpus": corpus.name, "tokens": tokens, "ours_seconds": ours_runs,
                     "bare_seconds": bare_runs, "split_seconds_outside_ours": round(split_seconds, 2),
                     "unchunked_generate_seconds": round(whole_seconds, 2),
                     "embedded": result["embedded"], "stored_chunks": len(stored),
                     "result": {k: v for k, v in result.items() if isinstance(v, (int, float, str))}},
        )]

    # -- 1-3. recall@10: the product's evaluate_retrieval, text queries through hook.search -----------------
    def recall(self) -> list[Measurement]:
        """Recall@1 and @10 of each third's query sentences, the relevant row the document a sentence came
        from: ``VectorizeHook.evaluate_retrieval`` of each project on its own hook (text queries through
        ``search`` at the default settings, as an application asks). The recall of the queries within /
        beyond the model's first tokens: the same runs' per-query results, as kept in vectorize.evaluations."""
        from airflow_vectorize import evaluation

        queries, corpus, n = self.queries, self.corpus, len(self.corpus.documents)
        sides = {"chunked": self.chunked, "unchunked": self.whole}
        runs: dict[str, dict[str, Any]] = {}  # by f"{side}_{third}": evaluate_retrieval's summary, per_query
        for side, job in sides.items():
            for third in ("last", "first"):
                labelled = [{"query": q, "relevant": [key]} for key, q in queries[third].items()]
                run = self.searcher(job).evaluate_retrieval(job, labelled, k=(1, TOP), label=f"bench {third} third")
                with self.session.conn.cursor() as cur:
                    run["per_query"] = evaluation.load(cur, run["evaluation_id"])["per_query"]
                runs[f"{side}_{third}"] = run

        def recall(name: str, keys: list[int]) -> float:
            """recall@10 of run ``name`` over the queries of documents ``keys``."""
            third = name.rsplit("_", 1)[1]
            hits = [q[f"recall@{TOP}"] for key, q in zip(queries[third], runs[name]["per_query"]) if key in keys]
            return sum(hits) / len(hits) if hits else float("nan")

        # The queries one vector a document can read at all: those ending within its first tokens.
        tokenizer, limit = self.local.model.tokenizer, self.local.max_input_tokens
        documents = {d.key: d for d in corpus.documents}
        readable = {third: {key for key, q in queries[third].items()
                            if corpora.in_first_tokens(tokenizer, documents[key], q, limit)} for third in queries}
        beyond = {third: set(queries[third]) - readable[third] for third in queries}
        metric = {name: {m: run["metrics"][m] for m in ("recall@1", f"recall@{TOP}", "mrr")}
                  for name, run in runs.items()}
        recalls = {name: round(m[f"recall@{TOP}"], 4) for name, m in metric.items()}
        by_reach = {
            f"queries_within_first_{limit}_tokens": {third: len(keys) for third, keys in readable.items()},
            f"recall_at_10_within_first_{limit}_tokens": {
                name: round(recall(name, readable[name.rsplit("_", 1)[1]]), 4) for name in runs},
            f"recall_at_10_beyond_first_{limit}_tokens": {
                name: round(recall(name, beyond[name.rsplit("_", 1)[1]]), 4) for name in runs},
        }
        log(f"  recall@10 (evaluate_retrieval) {', '.join(f'{k}: {v:.3f}' for k, v in recalls.items())}")
        self.text_p50 = {job: {third: runs[f"{side}_{third}"]["metrics"]["latency_p50_ms"] for third in queries}
                         for side, job in sides.items()}
        counts = {third: len(queries[third]) for third in queries}
        words = [len(q.split()) for third in queries.values() for q in third.values()]
        common = {
            **self.project, "corpus": self.corpus.info, "corpus_name": corpus.name,
            "queries": counts,
            "documents_without_query": {third: n - c for third, c in counts.items()},
            "query_words": {"min": min(words), "median": sorted(words)[len(words) // 2], "max": max(words)},
            # Where the queries' blocks lie, as a share of the document's characters.
            "query_block_start_min_last_third": round(min(p[0] for p in self.picked["last"].position.values()), 4),
            "query_block_end_max_first_third": round(max(p[1] for p in self.picked["first"].position.values()), 4),
            "candidate_sentences_rejected": {third: q.rejected for third, q in self.picked.items()},
            "unchunked_baseline": self.baseline_check,
            "evaluated_by": "VectorizeHook.evaluate_retrieval(job, queries, k=(1, 10)), one relevant row a query",
            "recall_at_10": recalls,
            "recall_at_1": {name: round(m["recall@1"], 4) for name, m in metric.items()},
            "mrr": {name: round(m["mrr"], 4) for name, m in metric.items()},
            **by_reach,
            "query_examples": {third: [queries[third][k] for k in list(queries[third])[:3]] for third in queries},
        }
        hits = sum(q[f"recall@{TOP}"] for q in runs["chunked_last"]["per_query"])
        label = corpus.label
        prefix = f"chunking_{corpus.name}"
        return [
            Measurement(
                key=f"{prefix}_recall_last_third",
                title=f"Chunked search on {n} {label}: recall@10 of a sentence from a document's last third",
                ours_label=f"VectorizeHook.search, chunk_size={CHUNK_SIZE}, overlap={CHUNK_OVERLAP}: documents found",
                baseline_label="queries (one sentence of 12+ words per document)",
                unit="queries", ours=hits, baseline=float(counts["last"]), target=0.8, op=">=",
                details=common,
            ),
            *(Measurement(
                key=f"{prefix}_recall_{what}",
                title=f"Recall@10 of {third}-third sentences ({label}): chunked ÷ one vector a document{goal}",
                ours_label=f"chunked project (chunk_size={CHUNK_SIZE}, overlap={CHUNK_OVERLAP})",
                baseline_label=baseline_label, unit="", ours=metric[f"chunked_{third}"][f"recall@{TOP}"],
                baseline=metric[f"unchunked_{third}"][f"recall@{TOP}"], target=target, op=">=",
                details={"queries": counts[third], "recall_at_10": recalls, **by_reach},
            ) for what, third, goal, target, baseline_label in (
                ("gain", "last", "", 2.0, "unchunked project (the model reads a document's first 256 word-pieces)"),
                ("first_third", "first", " (lose nothing)", 1.0, "unchunked project"))),
        ]

    # -- 5. hybrid search on keyword queries -----------------------------------------------------------------
    def hybrid_time(self) -> Measurement:
        """Both projects' hybrid search (top 10, default weights and candidates) on keyword queries: the first
        two adjacent words of 4+ letters of each query sentence that make two lexemes (``keyword_queries``).
        Query vectors given (the database's part; a text query adds the same embedding time to both), sides
        alternating query by query, HYBRID_PASSES passes. The chunked project ranks full-text matches by
        their best chunk from the documents stored in its chunk table; the unchunked one (today's layout)
        parses each matching row's text again to rank it."""
        from airflow_vectorize import catalog
        from airflow_vectorize import search as searching
        from airflow_vectorize.expressions import fts_document

        sentences = [q for third in ("last", "first") for q in self.queries[third].values()]
        phrases = keyword_queries(self.session, sentences)[:HYBRID_QUERIES]
        vectors = self.local.model.encode(phrases, show_progress_bar=False)

        def runner(job: str) -> Callable[[str, np.ndarray], list[dict[str, Any]]]:
            hook = self.searcher(job)
            target, conn = hook._search_target(job), hook._search_connection()
            return lambda text, v: searching.run(conn, searching.hybrid_search_query(
                target, text, ["id"], TOP, embed=lambda _: v), hook._search_session)

        runs = {job: runner(job) for job in self.jobs}
        times: dict[str, list[float]] = {job: [] for job in self.jobs}
        found: dict[str, list[list[int]]] = {job: [] for job in self.jobs}
        for sweep in range(HYBRID_PASSES):
            for i, (text, v) in enumerate(zip(phrases, vectors)):
                for job in (self.jobs if (i + sweep) % 2 else self.jobs[::-1]):
                    seconds, rows = timed(lambda job=job, text=text, v=v: runs[job](text, v))
                    if sweep:  # the first pass warms both sides up
                        times[job].append(seconds)
                    else:
                        found[job].append([r["id"] for r in rows if r["full_text_rank"] is not None])
        with self.session.conn.cursor() as cur:
            document = fts_document(catalog.find_project(cur, self.whole))
        matched = [n for (n,) in self.session.conn.execute(sql.SQL(
            "SELECT (SELECT count(*) FROM {} WHERE {} @@ websearch_to_tsquery('english', q))"
            " FROM unnest(%s::text[]) WITH ORDINALITY u(q, i) ORDER BY i").format(
            sql.Identifier(self.table), document), [phrases]).fetchall()]
        overlap = [len(set(a) & set(b)) / len(b) for a, b in zip(found[self.chunked], found[self.whole]) if b]
        p50 = {job: percentile(times[job], 0.5) * 1000 for job in self.jobs}
        log(f"  hybrid search, {len(phrases)} keyword queries ({median(matched):.0f} documents matched at the median,"
            f" {max(matched)} at most): chunked {p50[self.chunked]:.2f} ms, unchunked {p50[self.whole]:.2f} ms")
        return Measurement(
            key=f"chunking_{self.corpus.name}_hybrid_time",
            title=f"Hybrid search top-10 on {len(self.corpus.documents)} {self.corpus.label}, two-word keyword"
                  " queries: chunked ÷ unchunked p50",
            ours_label="chunked project: full-text matches ranked from the chunks' stored documents",
            baseline_label="unchunked project: each matching row's text parsed again to rank it",
            unit="ms", ours=p50[self.chunked], baseline=p50[self.whole],
            details={"queries": len(phrases), "query_examples": phrases[:5], "passes_timed": HYBRID_PASSES - 1,
                     "documents_matched": {"median": median(matched), "max": max(matched)},
                     "p90_ms": {job: round(percentile(times[job], 0.9) * 1000, 3) for job in self.jobs},
                     "full_text_rows_found": {job: sum(map(len, found[job])) for job in self.jobs},
                     "full_text_top10_shared_with_unchunked": round(float(np.mean(overlap)), 3) if overlap else None},
        )

    # -- 6. search time at equal recall --------------------------------------------------------------------
    def search_time(self) -> list[Measurement]:
        """On the rows cut into 3-10 chunks (the issue's condition: a second pair of projects on those rows,
        filled by importing the vectors computed above), and on all rows (for information)."""
        keys = [(third, key) for third in ("last", "first") for key in self.queries[third]]
        vectors = self.local.model.encode([self.queries[third][key] for third, key in keys],
                                          show_progress_bar=False)
        in_range = sorted(key for key, count in self.chunk_counts.items() if 3 <= count <= 10)
        chosen = [i for i, (_, key) in enumerate(keys) if key in set(in_range)]
        assert chosen, "no query of a document cut into 3-10 chunks"
        label, n = self.corpus.label, len(self.corpus.documents)
        part = self.sweep(*self.subset_projects(in_range), [keys[i] for i in chosen], vectors[chosen])
        everything = self.sweep(self.chunked, self.whole, keys, vectors)
        return [self.matched(part, f"the {len(in_range)} {label} (of {n}) cut into 3-10 chunks", "", 1.5),
                self.matched(everything, f"all {n} {label}", "_all_rows", None)]

    def subset_projects(self, keys: list[int]) -> tuple[str, str]:
        """A chunked and an unchunked project on a copy of ``keys``' rows, their vectors imported from the
        projects on all rows (what generation computed there: nothing embedded again)."""
        session, hook = self.session, self.hook
        table = f"{self.table}_3to10"
        chunked, whole = f"{self.chunked}_3to10", f"{self.whole}_3to10"
        self.tables.append(table)
        session.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
            sql.Identifier(table), sql.Identifier(self.table)))
        session.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} WHERE id = ANY(%s)").format(
            sql.Identifier(table), sql.Identifier(self.table)), [keys])
        sources = {
            chunked: ("chunk_no, ", sql.Identifier("vectorize", f"_chunks_{self.chunked}")),
            whole: ("", sql.Identifier("vectorize", f"_embeddings_{self.whole}")),
        }
        for job, (chunk_col, origin) in sources.items():
            vectors = f"{job}_vectors"
            self.tables.append(vectors)
            session.execute(sql.SQL("CREATE TABLE {} AS SELECT id, {}embeddings FROM {} WHERE id = ANY(%s)").format(
                sql.Identifier(vectors), sql.SQL(chunk_col), origin), [keys])
            options = {"chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP} if job == chunked else {}
            self.jobs_to_drop.append(job)
            hook.create_project(job, table, "id", ["body"], schedule="manual", **options)
            hook.import_embeddings(job, vectors, "id", "embeddings",
                                   src_chunk_col="chunk_no" if job == chunked else None)
            status = hook.get_status(job)
            assert (status["embedded_rows"], status["missing_rows"]) == (len(keys), 0), status
        assert hook.get_status(chunked)["chunks"] == sum(self.chunk_counts[key] for key in keys)
        self.analyze(chunked, whole, table)
        log(f"  {len(keys)} rows cut into 3-10 chunks: projects {chunked} and {whole} (imported)")
        return chunked, whole


    def search(self, job: str, vector: np.ndarray, ef: int) -> list[dict[str, Any]]:
        """``job``'s top-10 keys for ``vector`` at ``hnsw.ef_search = ef``, as an application asks."""
        return self.searcher(job).search(job, vector, return_columns=["id"], num_results=TOP, ef_search=ef)

    def sweep(self, chunked: str, whole: str, keys: list[tuple[str, int]], vectors: np.ndarray) -> dict[str, Any]:
        """Both projects' p50 search time and recall at each ef_search of ``self.ef_grid`` (module doc)."""
        jobs = (chunked, whole)
        exact = self.exact_answers(chunked, whole, vectors)
        grid = self.ef_grid
        times: dict[tuple[str, int], list[float]] = {(job, ef): [] for job in jobs for ef in grid}
        answers: dict[tuple[str, int], list[list[int]]] = {}
        for sweep in range(SWEEP_PASSES):
            for ef in (grid if sweep % 2 == 0 else grid[::-1]):
                for job in jobs:  # warm-up: the statement prepared, the setting given to the session
                    for v in vectors[:6]:
                        self.search(job, v, ef)
                for i, v in enumerate(vectors):
                    for job in (jobs if (i + sweep) % 2 else jobs[::-1]):
                        seconds, rows = timed(lambda job=job, v=v, ef=ef: self.search(job, v, ef))
                        times[job, ef].append(seconds)
                        if sweep == 0:
                            answers.setdefault((job, ef), []).append([r["id"] for r in rows])

        def point(job: str, ef: int) -> dict[str, Any]:
            got = answers[job, ef]
            return {
                "p50_ms": round(percentile(times[job, ef], 0.5) * 1000, 4),
                "exact_recall": round(float(np.mean([len(set(ids) & set(best)) / TOP
                                                     for ids, best in zip(got, exact[job])])), 4),
                "task_recall": round(float(np.mean([key in ids for (_, key), ids in zip(keys, got)])), 4),
                "task_recall_by_third": {third: round(float(np.mean(
                    [key in ids for (t, key), ids in zip(keys, got) if t == third])), 4)
                    for third in sorted({t for t, _ in keys})},
                "fewer_than_10_rows": sum(len(ids) < TOP for ids in got),
            }

        curve = {job: {str(ef): point(job, ef) for ef in grid} for job in jobs}
        for job in jobs:
            log(f"  {job}: " + "; ".join(f"ef {ef}: {p['p50_ms']:.2f} ms, exact {p['exact_recall']:.3f},"
                                        f" task {p['task_recall']:.3f}" for ef, p in curve[job].items()))
        vector_count = {job: self.session.scalar(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier("vectorize", f"_chunks_{job}" if job == chunked else f"_embeddings_{job}")))
            for job in jobs}
        return {"chunked": chunked, "whole": whole, "vectors": vectors, "curve": curve,
                "vector_count": vector_count, "queries": len(keys),
                "nearest_chunks_cover_fewer_than_10_rows": exact["short"]}

    def matched(self, run: dict[str, Any], rows: str, suffix: str, target: float | None,
                level: float | None = None, level_label: str = "") -> Measurement:
        """Both sides at equal recall: ``level`` of the exact top-10 rows, by default the highest share both
        reach in the sweep, each side at the lowest ef_search that reaches it; then timed again in a paired
        pass."""
        sides = {"chunked": run["chunked"], "unchunked": run["whole"]}
        curves = {side: run["curve"][job] for side, job in sides.items()}
        recall = level if level is not None else min(max(p["exact_recall"] for p in curve.values())
                                                     for curve in curves.values())
        chosen = {side: min(int(ef) for ef, p in curve.items() if p["exact_recall"] >= recall)
                  for side, curve in curves.items()}
        chunked, whole = run["chunked"], run["whole"]
        settings = {sides[side]: ef for side, ef in chosen.items()}
        alone = self.index_alone_statement(chunked, chosen["chunked"])
        paired = self.paired(run["vectors"], settings, {INDEX_ALONE: self.index_alone(alone)})
        plans = self.explain(settings, run["vectors"])
        server = self.server_times(settings, chunked, alone, run["vectors"])
        floor = {"p50_ms": paired[INDEX_ALONE]["p50_ms"], "ef_search": chosen["chunked"],
                 "chunked_over_it": round(paired[chunked]["p50_ms"] / paired[INDEX_ALONE]["p50_ms"], 3),
                 "it_over_unchunked": round(paired[INDEX_ALONE]["p50_ms"] / paired[whole]["p50_ms"], 3)}
        log(f"  the chunk index alone: {floor['p50_ms']:.3f} ms; chunked search {floor['chunked_over_it']:.2f}x"
            f" it, it {floor['it_over_unchunked']:.2f}x the unchunked search")
        return Measurement(
            key=f"chunking_{self.corpus.name}_search_time{suffix}",
            title=f"Search top-10 on {rows}: chunked ÷ unchunked p50 at equal recall of the exact top-10"
                  f"{level_label}",
            ours_label=f"chunked project ({run['vector_count'][chunked]:,} chunks), ef_search"
                       f" {chosen['chunked']}: recall {curves['chunked'][str(chosen['chunked'])]['exact_recall']:.3f}",
            baseline_label=f"unchunked project ({run['vector_count'][whole]:,} vectors), ef_search"
                           f" {chosen['unchunked']}: recall"
                           f" {curves['unchunked'][str(chosen['unchunked'])]['exact_recall']:.3f}",
            unit="ms", ours=paired[chunked]["p50_ms"], baseline=paired[whole]["p50_ms"], target=target,
            op="<=",
            details={**self.project, "projects": sides, "queries": run["queries"],
                     "searches_per_side_and_setting": run["queries"] * SWEEP_PASSES,
                     "curve": run["curve"], "vector_count": run["vector_count"],
                     "matched_recall": recall, "ef_search": chosen, "paired_pass": paired, "plans": plans,
                     "chunk_index_alone": floor, "server_execution_ms": server,
                     "nearest_chunks_cover_fewer_than_10_rows": run["nearest_chunks_cover_fewer_than_10_rows"],
                     "chunks_per_row": self.chunks_per_row, "text_query_p50_ms_all_rows": self.text_p50},
        )

    def paired(self, vectors: np.ndarray, settings: dict[str, int],
               others: dict[str, Callable[[np.ndarray], Any]] | None = None) -> dict[str, dict[str, float]]:
        """p50 and p90 of each project's search at its ``settings`` ef_search, and of each of ``others``
        (a name and what it runs for a query vector), interleaved query by query, MATCHED_PASSES passes (the
        sweep's settings ran at different moments of a shared machine's load)."""
        sides = {job: (lambda v, job=job, ef=ef: self.search(job, v, ef)) for job, ef in settings.items()}
        sides.update(others or {})
        order = list(sides)
        for run in sides.values():  # warm-up
            for v in vectors[:10]:
                run(v)
        times: dict[str, list[float]] = {name: [] for name in sides}
        for sweep in range(MATCHED_PASSES):
            for i, v in enumerate(vectors):
                for name in (order if (i + sweep) % 2 else order[::-1]):
                    seconds, _ = timed(lambda name=name, v=v: sides[name](v))
                    times[name].append(seconds)
        result = {name: {"ef_search": settings.get(name), "searches": len(times[name]),
                         "p50_ms": round(percentile(times[name], 0.5) * 1000, 4),
                         "p90_ms": round(percentile(times[name], 0.9) * 1000, 4)} for name in sides}
        log("  paired pass: " + ", ".join(f"{name} at ef_search {settings[name]}: {r['p50_ms']:.3f} ms"
                                           if name in settings else f"{name}: {r['p50_ms']:.3f} ms"
                                           for name, r in result.items()))
        return result

    def index_alone(self, floor: Floor) -> Callable[[np.ndarray], Any]:
        """``floor`` run with its settings on a connection of its own."""
        conn = self.session.server.connect(self.session.conn.info.dbname)
        register_vector(conn)
        self.connections.append(conn)
        for name, value in floor.settings.items():
            conn.execute("SELECT set_config(%s, %s, false)", [name, value])
        return lambda v: conn.execute(floor.statement, {"vector": v}, prepare=True).fetchall()

    def index_alone_statement(self, chunked: str, ef: int) -> Floor:
        """The chunked project's TOP nearest chunks as its HNSW index serves them at ``hnsw.ef_search = ef``
        (``chunk_order``; the query vector bound as ``vector``): nothing grouped by row, no chunk text, what a
        store returning chunks pays (a row may come more than once). The floor under a chunked search. While
        the chunked search compares every chunk (a small table, ``SearchTarget.exact``), the floor does too: the
        TOP nearest by the full vectors' distance, as PostgreSQL scans a small unchunked table (the index's
        half-precision order would cost a cast per chunk, a floor above the search). Otherwise it reads the
        index at any ef_search, as the search does (``search.INDEX_PATH_SETTINGS``)."""
        from airflow_vectorize.search import INDEX_PATH_SETTINGS, chunk_order

        with self.session.conn.cursor() as cur:
            target = search_target(cur, chunked)
        project = target.project
        if target.exact:
            order, settings = sql.SQL("e.embeddings {} %(vector)s").format(sql.SQL(project.distance.operator)), {}
        else:
            order, settings = chunk_order(project), dict(INDEX_PATH_SETTINGS)
        settings["hnsw.ef_search"] = str(ef)
        statement = sql.SQL("SELECT e.id FROM {} e ORDER BY {} LIMIT {}").format(
            sql.Identifier("vectorize", f"_chunks_{chunked}"), order, sql.Literal(TOP))
        return Floor(statement, settings)

    def server_times(self, settings: dict[str, int], chunked: str, alone: Floor,
                     vectors: np.ndarray) -> dict[str, Any]:
        """Each side's time inside the server alone: the p50 execution time EXPLAIN (ANALYZE, TIMING OFF)
        reports (no per-node clocks, no planning, no client or round trip) of the chunked and unchunked
        statements as the hook builds them at their ``settings`` ef_search, and of ``alone``
        (``index_alone_statement``) at the chunked side's; sides alternating query by query. A custom plan
        for the bound values (see ``explain``)."""
        conn, options = self.session.conn, "ANALYZE, TIMING OFF"
        with conn.cursor() as cur:
            targets = {job: search_target(cur, job) for job in settings}

        def execution_ms(name: str, v: np.ndarray) -> float:
            with conn.transaction(), conn.cursor() as cur:
                if name == INDEX_ALONE:
                    for setting, value in alone.settings.items():
                        cur.execute("SELECT set_config(%s, %s, true)", [setting, value])
                    plan = explained(cur, alone.statement.as_string(cur), {"vector": v}, options)
                else:
                    plan = explained_search(cur, targets[name], v, settings[name], options)
                return plan["Execution Time"]

        names = [*settings, INDEX_ALONE]
        times: dict[str, list[float]] = {name: [] for name in names}
        for v in vectors[:10]:  # warm-up
            for name in names:
                execution_ms(name, v)
        for i, v in enumerate(vectors[:SERVER_QUERIES]):
            for name in (names if i % 2 else names[::-1]):
                times[name].append(execution_ms(name, v))
        result: dict[str, Any] = {name: round(median(t), 4) for name, t in times.items()}
        result["queries"] = len(times[INDEX_ALONE])
        log("  inside the server (EXPLAIN ANALYZE, TIMING OFF): "
            + ", ".join(f"{name} {result[name]:.3f} ms" for name in names))
        return result

    def exact_answers(self, chunked: str, whole: str, vectors: np.ndarray) -> dict[str, Any]:
        """Each side's exact top-10 rows for each query (no index: every vector compared; a chunked row
        ranks by its nearest chunk), and for how many queries the index's nearest TOP × CHUNKS_PER_ROW
        chunks at the default ef_search cover fewer than TOP rows (the hook then asks again with more)."""
        from airflow_vectorize import catalog
        from airflow_vectorize.search import CHUNKS_PER_ROW, chunk_order

        chunks = sql.Identifier("vectorize", f"_chunks_{chunked}")
        one = sql.Identifier("vectorize", f"_embeddings_{whole}")
        by_best = sql.SQL("SELECT id FROM {} GROUP BY id ORDER BY min(embeddings <=> %s), id LIMIT {}").format(
            chunks, sql.Literal(TOP))
        by_one = sql.SQL("SELECT id FROM {} ORDER BY embeddings <=> %s, id LIMIT {}").format(one, sql.Literal(TOP))
        conn = self.session.conn
        nearest = sql.SQL(  # through the chunk index, ordered as the hook's search orders the chunks
            "SELECT count(DISTINCT id) FROM (SELECT id FROM {} e ORDER BY {} LIMIT {}) c").format(
            chunks, chunk_order(catalog.find_project(conn.cursor(), chunked)), sql.Literal(TOP * CHUNKS_PER_ROW))
        result: dict[str, Any] = {chunked: [], whole: []}
        with conn.transaction():
            conn.execute("SET LOCAL enable_indexscan = off")
            for v in vectors:
                result[chunked].append([r[0] for r in conn.execute(by_best, [v])])
                result[whole].append([r[0] for r in conn.execute(by_one, [v])])
        with conn.transaction():
            conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")  # as the hook's connection
            result["short"] = sum(conn.execute(nearest, {"vector": v}).fetchone()[0] < TOP for v in vectors)
        return result

    def explain(self, settings: dict[str, int], vectors: np.ndarray) -> dict[str, Any]:
        """Where a search's time goes in the database: EXPLAIN (ANALYZE, BUFFERS) of each project's statement
        at its ``settings`` ef_search, as the hook builds it (medians over EXPLAINED_QUERIES queries), and
        every node of the first query's plan. It is the plan PostgreSQL makes for the bound values (the
        planner takes a sequential scan over the HNSW index for small tables, or large ef_search); the
        hook's prepared statement may run its generic plan instead."""
        conn, plans = self.session.conn, {}
        for job, ef in settings.items():
            with conn.transaction(), conn.cursor() as cur:
                target = search_target(cur, job)
                samples = [explained_search(cur, target, v, ef, "ANALYZE, BUFFERS")
                           for v in vectors[:EXPLAINED_QUERIES]]
            plans[job] = {
                "ef_search": ef,
                "execution_ms": round(median([s["Execution Time"] for s in samples]), 4),
                "planning_ms": round(median([s["Planning Time"] for s in samples]), 4),
                "shared_buffers_hit": median([s["Plan"].get("Shared Hit Blocks", 0) for s in samples]),
                "nodes": [f"{'  ' * depth}{node['Node Type']}"
                          + (f" on {node['Relation Name']}" if "Relation Name" in node else "")
                          + (f" using {node['Index Name']}" if "Index Name" in node else "")
                          + f": {node['Actual Total Time']:.3f} ms, {node['Actual Rows']:g} rows"
                          + f" x {node['Actual Loops']}, {node.get('Shared Hit Blocks', 0)} buffers"
                          for depth, node in plan_nodes(samples[0]["Plan"])],
            }
            log(f"  plan of {job} at ef_search {ef}: {plans[job]['execution_ms']:.3f} ms\n    "
                + "\n    ".join(plans[job]["nodes"]))
        return plans


def search_target(cur: Any, job: str) -> Any:
    """The hook's ``SearchTarget`` of project ``job``."""
    from airflow_vectorize import catalog
    from airflow_vectorize import search as searching

    return searching.search_target(cur, catalog.find_project(cur, job))


def explained_search(cur: Any, target: Any, vector: np.ndarray, ef: int, options: str) -> dict[str, Any]:
    """``explained`` of the statement the hook runs to search ``target`` for ``vector`` at ``ef`` (one pass,
    its settings given to the caller's transaction as the hook's connection has them)."""
    from airflow_vectorize import search as searching

    cur.execute("SET LOCAL hnsw.iterative_scan = strict_order")
    query = searching.vector_search_query(target, vector, ["id"], TOP, ef_search=ef, single_pass=True)
    for name, value in query.settings.items():  # (an unchunked search: no iterative scan)
        cur.execute("SELECT set_config(%s, %s, true)", [name, value])
    return explained(cur, query.statement, query.params, options)


def explained(cur: Any, statement: str, params: dict[str, Any], options: str) -> dict[str, Any]:
    """EXPLAIN (``options``, FORMAT JSON) of ``statement``: its plan and times."""
    cur.execute(f"EXPLAIN ({options}, FORMAT JSON) {statement}", params)
    raw = cur.fetchone()[0]
    return raw[0] if isinstance(raw, list) else json.loads(raw)[0]


def plan_nodes(plan: dict[str, Any], depth: int = 0) -> list[tuple[int, dict[str, Any]]]:
    """The plan's nodes with their depth, depth first."""
    found = [(depth, plan)]
    for child in plan.get("Plans", []):
        found += plan_nodes(child, depth + 1)
    return found


def keyword_queries(session: BenchSession, sentences: list[str]) -> list[str]:
    """Per sentence, its first two adjacent words of 4+ letters that PostgreSQL's english configuration makes
    two lexemes of (no stop word), lower-cased; each phrase once."""
    candidates = [(n, f"{a} {b}".lower()) for n, sentence in enumerate(sentences)
                  for a, b in zip(sentence.split(), sentence.split()[1:])
                  if KEYWORD.fullmatch(a) and KEYWORD.fullmatch(b)]
    rows = session.conn.execute(
        "SELECT DISTINCT ON (n) n, p FROM unnest(%s::int[], %s::text[]) WITH ORDINALITY u(n, p, i)"
        " WHERE numnode(websearch_to_tsquery('english', p)) = 3 ORDER BY n, i",
        [[n for n, _ in candidates], [p for _, p in candidates]]).fetchall()
    return list(dict.fromkeys(p for _, p in rows))
