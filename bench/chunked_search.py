"""Search time at equal recall where the HNSW index serves both projects (issue 12, point 7), on real text.

``bench/chunking.py`` times search on the documents the splitter cuts into 3-10 chunks: a few hundred, so
PostgreSQL scans the unchunked side's vectors exactly, and equal recall asks the chunked side for an exact
answer over 3-10× the vectors. Here the rows are many more: each document of a corpus is cut into sections,
runs of 3-10 consecutive chunks of the project's splitter (sizes drawn with the corpus' SEED), a row's text
the span from its first chunk's start to its last chunk's end; a row the splitter, given only its text, cuts
into other than 3-10 chunks is left out. A chunked and an unchunked project on those rows, both filled by
``generate_embeddings`` (the model embeds every chunk, and each row's first 256 word-pieces); then both
searched as in ``bench/chunking.py``: an ``ef_search`` sweep, each side at the lowest setting reaching the
recall of the exact top-10 (twice: the unchunked project's at pgvector's default ef_search, and the
highest both reach), a paired pass, the plans. The queries are the corpus' picked
sentences (both thirds), each expected in the section that holds it.
"""

from __future__ import annotations

import random
from typing import Any

from bench import corpus as corpora
from bench.chunking import CHUNK_OVERLAP, CHUNK_SIZE, CorpusRun
from bench.corpus import Corpus, Queries
from bench.measure import Measurement, timed
from bench.session import BenchSession, log

MIN_CHUNKS, MAX_CHUNKS = 3, 10
# Finer than bench/chunking.py's: the two sides reach a recall at different settings.
EF_GRID = (10, 20, 30, 40, 60, 80, 120, 160, 240, 320)
RECALL_LEVELS = (0.95, 0.98, 0.99)  # the sweep's time ratio at each (details)


def measure(session: BenchSession, docs: int, names: tuple[str, ...]) -> list[Measurement]:
    from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
    from airflow_vectorize.models.local import load_model

    local, hook, found = load_model(DEFAULT_TRANSFORMER), session.hook(), []
    for name in names:
        corpus = corpora.CORPORA[name](docs)
        queries = corpora.pick_queries(corpus)
        log(f"chunked search at scale/{name}: sections of {len(corpus.documents)} {corpus.label}")
        found += SectionRun(session, hook, local, corpus, queries).measure(throughput=False)
    return found


class SectionRun(CorpusRun):
    """One corpus cut into sections of 3-10 chunks: their table, the two projects, the search time."""

    def __init__(self, session: BenchSession, hook: Any, local: Any, corpus: Corpus,
                 queries: dict[str, Queries]) -> None:
        super().__init__(session, hook, local, corpus, queries)
        self.table = f"chunking_{corpus.name}_sections"
        self.chunked, self.whole = f"{self.table}_chunked", f"{self.table}_whole"
        self.jobs = (self.chunked, self.whole)
        self.jobs_to_drop, self.tables = list(self.jobs), [self.table]
        self.doc_of: dict[int, int] = {}  # section key -> document key
        self.words: dict[int, str] = {}  # section key -> its text as words (as_words)
        self.ef_grid = EF_GRID

    def rows(self) -> list[tuple[int, str, str]]:
        """(key, name, text) of each section the splitter cuts into 3-10 chunks."""
        from airflow_vectorize.chunking import TextSplitter

        splitter = TextSplitter(self.local.model.tokenizer, CHUNK_SIZE, CHUNK_OVERLAP)
        rng = random.Random(corpora.SEED)
        spans: list[tuple[int, str, str]] = []
        for d in self.corpus.documents:
            chunks, first = splitter.split(d.text), 0
            while len(chunks) - first >= MIN_CHUNKS:
                last = first + min(rng.randint(MIN_CHUNKS, MAX_CHUNKS), len(chunks) - first) - 1
                spans.append((d.key, f"{d.name} #{len(spans) + 1}", d.text[chunks[first].start:chunks[last].end]))
                first = last + 1
        rows = []
        for (doc, name, text), chunks in zip(spans, splitter.split_all([text for _, _, text in spans])):
            if MIN_CHUNKS <= len(chunks) <= MAX_CHUNKS:
                key = len(rows) + 1
                rows.append((key, name, text))
                self.doc_of[key], self.chunk_counts[key], self.words[key] = doc, len(chunks), as_words(text)
        log(f"  {len(rows):,} sections of {MIN_CHUNKS}-{MAX_CHUNKS} chunks ({len(spans) - len(rows)} cut otherwise"
            f" on their own, left out), {sum(self.chunk_counts.values()):,} chunks")
        return rows

    def steps(self, throughput: bool) -> list[Measurement]:
        from airflow_vectorize.search import DEFAULT_CANDIDATES  # pgvector's default ef_search

        hook, n = self.hook, len(self.chunk_counts)
        hook.create_project(self.chunked, self.table, "id", ["body"], chunk_size=CHUNK_SIZE,
                            chunk_overlap=CHUNK_OVERLAP, schedule="manual")
        hook.create_project(self.whole, self.table, "id", ["body"], schedule="manual")
        seconds = {}
        for job in self.jobs:
            seconds[job], result = timed(lambda job=job: hook.generate_embeddings(job))
            assert result["embedded"] == n, result
        chunks = sum(self.chunk_counts.values())
        status = hook.get_status(self.chunked)
        assert (status["embedded_rows"], status["missing_rows"], status["chunks"]) == (n, 0, chunks), status
        log(f"  generated: {chunks:,} chunks in {seconds[self.chunked]:.0f} s, {n:,} rows in"
            f" {seconds[self.whole]:.0f} s")
        self.analyze(self.chunked, self.whole, self.table)
        counts = sorted(self.chunk_counts.values())
        self.project = {"chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP, "model": "all-MiniLM-L6-v2",
                        "chunk_index": self.chunk_index(self.chunked),
                        "documents": len(self.corpus.documents), "rows": n, "chunks": chunks,
                        "generate_seconds": {job: round(s, 1) for job, s in seconds.items()}}
        self.chunks_per_row = {"min": counts[0], "median": counts[n // 2], "mean": round(chunks / n, 2),
                               "max": counts[-1], "issue_range": [MIN_CHUNKS, MAX_CHUNKS]}

        by_doc: dict[int, list[int]] = {}
        for key, doc in self.doc_of.items():
            by_doc.setdefault(doc, []).append(key)
        keys, sentences = [], []
        for third, picked in self.queries.items():
            for doc, sentence in picked.items():
                words = as_words(sentence)
                holder = next((key for key in by_doc.get(doc, ()) if words in self.words[key]), None)
                if holder is not None:
                    keys.append((third, holder))
                    sentences.append(sentence)
        assert keys, "no query sentence lies inside a section"
        vectors = self.local.model.encode(sentences, show_progress_bar=False)
        run = self.sweep(self.chunked, self.whole, keys, vectors)
        rows = f"{n:,} sections of {MIN_CHUNKS}-{MAX_CHUNKS} chunks of {len(self.corpus.documents):,} {self.corpus.label}"
        default = run["curve"][self.whole][str(DEFAULT_CANDIDATES)]["exact_recall"]
        found = [self.matched(run, rows, "_sections", 1.5, default,
                              f" {default:.3f} (the unchunked project's at the default ef_search {DEFAULT_CANDIDATES})"),
                 self.matched(run, rows, "_sections_highest", 1.5, None, " (the highest both reach)")]
        for measurement in found:
            measurement.details["sweep_ratio_at_recall"] = ratios_at_recall(run["curve"][self.chunked],
                                                                            run["curve"][self.whole])
        return found


def as_words(text: str) -> str:
    """``text``'s words, space-padded: a picked sentence (its block's lines joined) is found in a section's
    text as words."""
    return f" {' '.join(corpora.normalise(text))} "


def ratios_at_recall(chunked: dict[str, Any], whole: dict[str, Any]) -> dict[str, Any]:
    """For each of RECALL_LEVELS both sides reach: each side's lowest ef_search reaching it in the sweep, and
    the ratio of their sweep p50 times (measured at different moments; the paired pass is the headline)."""
    result = {}
    for level in RECALL_LEVELS:
        chosen = [min((int(ef) for ef, p in curve.items() if p["exact_recall"] >= level), default=None)
                  for curve in (chunked, whole)]
        if None not in chosen:
            c, w = (curve[str(ef)]["p50_ms"] for curve, ef in zip((chunked, whole), chosen))
            result[str(level)] = {"ef_search": {"chunked": chosen[0], "unchunked": chosen[1]},
                                  "p50_ms": {"chunked": c, "unchunked": w}, "ratio": round(c / w, 3)}
    return result
