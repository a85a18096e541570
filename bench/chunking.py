"""Measurements 8-12: chunked projects on long real texts (issue 12, points 6 and 7): is a text found by its
end, does its beginning lose nothing, and what does chunking cost in embedding throughput and search time?

The corpus is this system's manual pages as ``man`` renders them (80 columns): long technical texts that
nobody here wrote, 1-50 kB each. The generated Google Cloud SDK pages (16,600 of the 17,800 in man1,
alpha/beta/GA near-copies of each other) are left out: a query could not tell those copies apart.
Documents are drawn with a fixed seed from sections 1, 5, 7 and 8 and de-duplicated by content.

Queries: for each document one sentence of 12-60 words (a capital first, a full stop last) from its last
third, and one from its first third, whitespace-normalised and found in no other document of the corpus
(an answer must be unique). all-MiniLM-L6-v2 reads the first 256 word-pieces of a text, so one vector a
row cannot know a long page's end; one vector a chunk can.

One table, two projects on it: chunked (CHUNK_SIZE, CHUNK_OVERLAP) and unchunked (one vector a page). Recall
is asked through ``VectorizeHook.search`` with the sentence as a text; search time is compared on the same
queries as vectors, warm, alternating which project goes first. Throughput: bare ``model.encode`` of the
chunks, the chunked ``generate_embeddings`` (which splits the pages itself), bare again; the first bare run
encodes what the project's own splitter makes of the pages, and the chunks the project stores must be
exactly those.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from bench.measure import Measurement, median, percentile, timed
from bench.session import BenchSession, log

MAN_DIR = Path("/usr/share/man")
MAN_SECTIONS = ("man1", "man5", "man7", "man8")
EXCLUDED = ("gcloud",)  # generated near-copies (alpha/beta/GA of each command)
MIN_BYTES, MAX_BYTES = 1_000, 50_000
SEED = 12
# Rendered as a pipe sees it (no terminal: no bold/underline overstrikes), 80 columns, no hyphenation (a word
# broken across lines would be two words in the document but one in a query taken from it).
MAN_ENV = {"MANWIDTH": "80", "MANROFFOPT": "-rHY=0", "LC_ALL": "C.UTF-8", "MANPAGER": "cat", "PAGER": "cat"}
MIN_WORDS, MAX_WORDS = 12, 60

TABLE = "man_pages"
CHUNKED_JOB = "chunking_bench"
WHOLE_JOB = "chunking_whole_bench"
# 200 tokens, 24 (12 %) shared by neighbours. semchunk cuts at the pages' paragraph and sentence boundaries and
# fills a chunk to ~60 % of chunk_size on average: at 200 a chunk averages ~125 tokens, the length
# all-MiniLM-L6-v2 was trained on (128; it reads 254 at most). 128 and 160 found the same share of
# last-third sentences on a 60-page sample (numpy, exact search) (0.98 / 0.96 / 0.96 at 128 / 160 / 200) but make 1.5x / 1.2x
# the chunks (median 18 / 15 / 12 a page), so more vectors to embed, store and search for no gain.
CHUNK_SIZE, CHUNK_OVERLAP = 200, 24
TOP = 10


@dataclass(frozen=True)
class Document:
    key: int
    name: str  # the man page's file name, e.g. "tar.1.gz"
    text: str


def man_pages() -> list[str]:
    """Every candidate page (symbolic links resolved once), in a stable order."""
    found = set()
    for section in MAN_SECTIONS:
        directory = MAN_DIR / section
        if directory.is_dir():
            found.update(os.path.realpath(p) for p in directory.iterdir()
                         if not p.name.startswith(EXCLUDED) and p.is_file())
    return sorted(found)


def render(path: str) -> str:
    result = subprocess.run(["man", "-P", "cat", "-l", path], env={**os.environ, **MAN_ENV}, check=False,
                            capture_output=True, text=True, errors="replace", timeout=60)
    text = re.sub(r".\x08", "", result.stdout)  # overstrikes, should a man-db version keep them in a pipe
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def body_digest(text: str) -> str:
    """The page without its header and footer lines (they name the page), whitespace-normalised: the
    same text reached through another name (a ``.so`` include, a copy) has the same digest."""
    lines = text.splitlines()
    return hashlib.md5(" ".join(" ".join(lines[1:-1]).split()).encode()).hexdigest()


def corpus(count: int, seed: int = SEED) -> tuple[list[Document], dict[str, Any]]:
    """``count`` distinct man pages of MIN_BYTES-MAX_BYTES, drawn with ``seed``; and how they were chosen."""
    pages = man_pages()
    if shutil.which("man") is None or not pages:
        raise RuntimeError(f"the chunking corpus needs man-db's 'man' and manual pages under {MAN_DIR}")
    random.Random(seed).shuffle(pages)
    documents: list[Document] = []
    digests: set[str] = set()
    rendered = skipped_size = skipped_duplicate = 0
    with ThreadPoolExecutor(2) as pool:  # man + groff take ~0.1 s a page
        position = 0
        while len(documents) < count and position < len(pages):
            wave = pages[position:position + 2 * (count - len(documents)) + 8]
            position += len(wave)
            for path, text in zip(wave, pool.map(render, wave)):  # in the shuffled order: deterministic
                rendered += 1
                if len(documents) == count:
                    break
                if not MIN_BYTES <= len(text.encode()) <= MAX_BYTES:
                    skipped_size += 1
                    continue
                digest = body_digest(text)
                if digest in digests:
                    skipped_duplicate += 1
                    continue
                digests.add(digest)
                documents.append(Document(len(documents) + 1, os.path.basename(path), text))
    if len(documents) < count:
        raise RuntimeError(f"only {len(documents)} man pages of {MIN_BYTES}-{MAX_BYTES} bytes under {MAN_DIR}")
    sizes = sorted(len(d.text.encode()) for d in documents)
    return documents, {
        "source": f"man -P cat -l <page> ({', '.join(f'{MAN_DIR}/{s}' for s in MAN_SECTIONS)};"
                  f" {', '.join(EXCLUDED)}* left out), MANWIDTH=80, no hyphenation",
        "candidate_pages": len(pages), "rendered": rendered, "seed": seed,
        "skipped_size": skipped_size, "skipped_duplicate": skipped_duplicate,
        "bytes_min": sizes[0], "bytes_median": sizes[len(sizes) // 2], "bytes_max": sizes[-1],
        "bytes_total": sum(sizes),
    }


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
ABBREVIATIONS = ("e.g.", "i.e.", "cf.", "vs.")  # a "sentence" ending in these was cut short


def paragraphs(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, text)`` of the page's blocks: runs of lines between blank lines, and each line that
    starts in column 0 (a section heading, the page's header and footer) on its own."""
    blocks: list[tuple[int, int, str]] = []
    start = position = 0
    lines: list[str] = []

    def close(end: int) -> None:
        if lines:
            blocks.append((start, end, "\n".join(lines)))
            lines.clear()

    for line in text.split("\n"):
        if not line.strip() or not line[0].isspace():
            close(position)
            if line.strip():
                blocks.append((position, position + len(line), line))
        else:
            if not lines:
                start = position
            lines.append(line)
        position += len(line) + 1
    close(position)
    return blocks


def sentences(block: str) -> list[str]:
    """The block's sentences of MIN_WORDS-MAX_WORDS words (a capital first, a full stop last),
    whitespace-normalised."""
    return [s for s in SENTENCE_END.split(" ".join(block.split()))
            if MIN_WORDS <= len(s.split()) <= MAX_WORDS and s[0].isupper() and s.endswith(".")
            and not s.endswith(ABBREVIATIONS)]


def pick_queries(documents: list[Document], third: str, seed: int = SEED) -> dict[int, str]:
    """One sentence per document from its ``third`` ("first" or "last"), found in no other document.
    Documents without such a sentence get no query (counted in the details)."""
    flat = {d.key: " ".join(d.text.split()) for d in documents}
    queries = {}
    for d in documents:
        n = len(d.text)
        low, high = (0, n // 3) if third == "first" else (2 * n // 3, n)
        candidates = [s for start, end, block in paragraphs(d.text) if low <= start and end <= high
                      for s in sentences(block)]
        random.Random(f"{seed}:{d.key}:{third}").shuffle(candidates)
        for sentence in candidates:
            if not any(sentence in text for key, text in flat.items() if key != d.key):
                queries[d.key] = sentence
                break
    return queries


def in_first_tokens(tokenizer: Any, document: Document, sentence: str, limit: int) -> bool:
    """Whether ``sentence`` ends within the document's first ``limit`` tokens (what one vector a row reads)."""
    flat = " ".join(document.text.split())
    end = flat.index(sentence) + len(sentence)
    ids = tokenizer(flat[:end], add_special_tokens=False, truncation=True, max_length=limit + 1)["input_ids"]
    return len(ids) <= limit


def measure(session: BenchSession, docs: int) -> list[Measurement]:
    from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
    from airflow_vectorize.models.local import load_model

    corpus_seconds, (documents, corpus_info) = timed(lambda: corpus(docs))
    queries = {"last": pick_queries(documents, "last"), "first": pick_queries(documents, "first")}
    assert queries["last"] and queries["first"], {k: len(v) for k, v in queries.items()}
    log(f"chunking: {len(documents)} man pages ({corpus_info['bytes_total'] / 1e6:.1f} MB, rendered in"
        f" {corpus_seconds:.0f} s), {len(queries['last'])} last-third and {len(queries['first'])} first-third"
        " queries")
    session.execute(sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY, name text NOT NULL, body text NOT NULL)")
                    .format(sql.Identifier(TABLE)))
    with session.conn.cursor() as cur, cur.copy(
            sql.SQL("COPY {} (id, name, body) FROM STDIN").format(sql.Identifier(TABLE))) as copy:
        for d in documents:
            copy.write_row((d.key, d.name, d.text))
    hook = session.hook()
    try:
        return _measure(session, hook, load_model(DEFAULT_TRANSFORMER), documents, queries,
                        {**corpus_info, "corpus_seconds": round(corpus_seconds, 1)})
    finally:
        for job in (CHUNKED_JOB, WHOLE_JOB):
            hook.drop_project(job, missing_ok=True)
        session.drop_table(TABLE)


def _measure(session: BenchSession, hook: Any, local: Any, documents: list[Document],
             queries: dict[str, dict[int, str]], corpus_info: dict[str, Any]) -> list[Measurement]:
    from airflow_vectorize.chunking import TextSplitter

    model, tokenizer = local.model, local.model.tokenizer
    n = len(documents)
    texts = [d.text for d in documents]  # by key: what the project embeds (its one column)

    # -- 4. chunking + embedding throughput against a bare model.encode of the same chunks ----------------
    # The first bare run comes before ours has written any chunk: it encodes what the project's own
    # splitter (same tokenizer, size, overlap) makes of the texts, which must equal the chunks ours stores.
    split_seconds, split = timed(lambda: TextSplitter(tokenizer, CHUNK_SIZE, CHUNK_OVERLAP).split_all(texts))
    expected = [c.text for row in split for c in row]
    per_row = sorted(len(row) for row in split)
    tokens = sum(len(ids) for ids in tokenizer(expected, add_special_tokens=False)["input_ids"])
    log(f"chunking: {len(expected):,} chunks of <= {CHUNK_SIZE} tokens ({tokens:,} tokens, median"
        f" {per_row[n // 2]} a page, split in {split_seconds:.1f} s)")
    model.encode(expected[:64], show_progress_bar=False)  # warm-up: both sides find the model warm

    def bare(chunks: list[str]) -> float:
        seconds, vectors = timed(lambda: model.encode(chunks, show_progress_bar=False))
        assert len(vectors) == len(chunks)
        log(f"  bare model.encode: {tokens / seconds:,.0f} tokens/s ({len(chunks) / seconds:.1f} chunks/s)")
        return seconds

    bare_runs = [bare(expected)]
    hook.create_project(CHUNKED_JOB, TABLE, "id", ["body"], chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP,
                        schedule="manual")  # empty: a bulk run
    session.settle()
    ours_seconds, result = timed(lambda: hook.generate_embeddings(CHUNKED_JOB))
    log(f"  generate_embeddings (chunked): {tokens / ours_seconds:,.0f} tokens/s ({result})")
    chunks_table = sql.Identifier("vectorize", f"_chunks_{CHUNKED_JOB}")
    stored = [r[0] for r in session.execute(sql.SQL("SELECT chunk FROM {} ORDER BY id, chunk_no")
                                            .format(chunks_table))]
    status = hook.get_status(CHUNKED_JOB)
    assert result["embedded"] == n, result  # every page embedded, in chunks
    assert (status["embedded_rows"], status["missing_rows"], status["chunks"]) == (n, 0, len(expected)), status
    assert len(stored) > n and stored == expected, (len(stored), len(expected))
    bare_runs.append(bare(stored))
    bare_seconds = median(bare_runs)

    # -- the unchunked project on the same table: one vector a page, of its first 256 word-pieces ---------
    hook.create_project(WHOLE_JOB, TABLE, "id", ["body"], schedule="manual")
    whole_seconds, whole = timed(lambda: hook.generate_embeddings(WHOLE_JOB))
    assert whole["embedded"] == n, whole
    log(f"  generate_embeddings (unchunked): {n / whole_seconds:.1f} pages/s")
    # As autovacuum would after a bulk load (it is off in the bench's server).
    for table in (chunks_table, sql.Identifier("vectorize", f"_embeddings_{WHOLE_JOB}"), sql.Identifier(TABLE)):
        session.execute(sql.SQL("ANALYZE {}").format(table))

    # -- 1-3. recall@10: text queries through hook.search, as an application asks -------------------------
    jobs = (CHUNKED_JOB, WHOLE_JOB)
    found: dict[str, dict[str, dict[int, list[int]]]] = {job: {"last": {}, "first": {}} for job in jobs}
    text_times: dict[str, list[float]] = {job: [] for job in jobs}
    for third in ("last", "first"):
        for i, (key, query) in enumerate(queries[third].items()):
            for job in (jobs if i % 2 else jobs[::-1]):
                seconds, rows = timed(lambda job=job, query=query: hook.search(job, query, return_columns=["id"],
                                                                               num_results=TOP))
                text_times[job].append(seconds)
                found[job][third][key] = [r["id"] for r in rows]
    short = {job: sum(len(ids) < TOP for third in found[job].values() for ids in third.values()) for job in jobs}

    def recall(job: str, third: str, keys: list[int] | None = None, top: int = TOP) -> float:
        keys = list(queries[third]) if keys is None else keys
        return sum(key in found[job][third][key][:top] for key in keys) / len(keys) if keys else float("nan")

    limit = local.max_input_tokens
    early = [key for key, q in queries["first"].items() if in_first_tokens(tokenizer, documents[key - 1], q, limit)]
    recalls = {f"{job}_{third}": round(recall(job, third), 4) for job in jobs for third in ("last", "first")}
    log("  recall@10 " + ", ".join(f"{k}: {v:.3f}" for k, v in recalls.items())
        + f"; searches returning < {TOP} rows: {short}")

    # -- 5. search time: the same queries as vectors (the database's part; a text query adds ~the same
    # embedding time to both sides), warm, alternating which project goes first --------------------------
    all_queries = [*queries["last"].values(), *queries["first"].values()]
    vectors = model.encode(all_queries, show_progress_bar=False)
    for job in jobs:  # warm-up: both statements prepared, both tables' pages in shared buffers
        for v in vectors[:10]:
            hook.search(job, v, return_columns=["id"], num_results=TOP)
    vector_times: dict[str, list[float]] = {job: [] for job in jobs}
    for i, v in enumerate(vectors):
        for job in (jobs if i % 2 else jobs[::-1]):
            seconds, _ = timed(lambda job=job, v=v: hook.search(job, v, return_columns=["id"], num_results=TOP))
            vector_times[job].append(seconds)
    p50 = {job: percentile(vector_times[job], 0.5) * 1000 for job in jobs}
    text_p50 = {job: percentile(text_times[job], 0.5) * 1000 for job in jobs}
    log(f"  search p50 (vector query): chunked {p50[CHUNKED_JOB]:.2f} ms, unchunked {p50[WHOLE_JOB]:.2f} ms;"
        f" text query: {text_p50[CHUNKED_JOB]:.2f} / {text_p50[WHOLE_JOB]:.2f} ms")

    project = {"chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP, "model": "all-MiniLM-L6-v2",
               "documents": n, "chunks": len(expected)}
    common = {
        **project, "corpus": corpus_info,
        "queries": {third: len(q) for third, q in queries.items()},
        "documents_without_query": {third: n - len(q) for third, q in queries.items()},
        "recall_at_10": recalls,
        "recall_at_1": {f"{job}_{third}": round(recall(job, third, top=1), 4)
                        for job in jobs for third in ("last", "first")},
        "searches_returning_fewer_than_10_rows": short,
        "query_examples": {third: [queries[third][k] for k in list(queries[third])[:3]] for third in queries},
    }
    counts = {third: len(queries[third]) for third in queries}
    hits = {third: recall(CHUNKED_JOB, third) * counts[third] for third in counts}
    return [
        Measurement(
            key="chunking_recall_last_third",
            title=f"Chunked search on {n} man pages: recall@10 of a sentence from a page's last third",
            ours_label=f"VectorizeHook.search, chunk_size={CHUNK_SIZE}, overlap={CHUNK_OVERLAP}: pages found",
            baseline_label="queries (one sentence of 12+ words per page)",
            unit="queries", ours=hits["last"], baseline=float(counts["last"]), target=0.8, op=">=",
            details={**common, "unchunked_recall_at_10": recalls[f"{WHOLE_JOB}_last"],
                     "chunked_recall_at_10": recalls[f"{CHUNKED_JOB}_last"]},
        ),
        Measurement(
            key="chunking_recall_gain",
            title="Recall@10 of last-third sentences: chunked ÷ one vector a page",
            ours_label=f"chunked project (chunk_size={CHUNK_SIZE}, overlap={CHUNK_OVERLAP})",
            baseline_label="unchunked project (the model reads a page's first 256 word-pieces)",
            unit="", ours=recall(CHUNKED_JOB, "last"), baseline=recall(WHOLE_JOB, "last"), target=2.0, op=">=",
            details={"queries": counts["last"], "recall_at_10": recalls},
        ),
        Measurement(
            key="chunking_recall_first_third",
            title="Recall@10 of first-third sentences: chunked ÷ one vector a page (lose nothing)",
            ours_label=f"chunked project (chunk_size={CHUNK_SIZE}, overlap={CHUNK_OVERLAP})",
            baseline_label="unchunked project",
            unit="", ours=recall(CHUNKED_JOB, "first"), baseline=recall(WHOLE_JOB, "first"), target=1.0, op=">=",
            details={"queries": counts["first"], "recall_at_10": recalls,
                     # The sentences one vector a page can read at all: the ones ending in its first tokens.
                     f"queries_within_first_{limit}_tokens": len(early),
                     f"recall_at_10_within_first_{limit}_tokens": {
                         job: round(recall(job, "first", early), 4) for job in jobs}},
        ),
        Measurement(
            key="chunking_embed_throughput",
            title=f"Chunk + embed {n} man pages: ours ÷ bare model.encode of the same chunks, tokens/s",
            ours_label="VectorizeHook.generate_embeddings, chunked (read, split, embed, write, commit, index)",
            baseline_label="model.encode(chunk texts) in the same process",
            unit="tokens/s", ours=tokens / ours_seconds, baseline=tokens / bare_seconds, target=0.9, op=">=",
            details={**project, "tokens": tokens, "ours_seconds": ours_seconds, "bare_seconds": bare_runs,
                     "split_seconds_outside_ours": round(split_seconds, 2),
                     "unchunked_generate_seconds": round(whole_seconds, 2),
                     "embedded": result["embedded"], "stored_chunks": len(stored),
                     "result": {k: v for k, v in result.items() if isinstance(v, (int, float, str))}},
        ),
        Measurement(
            key="chunking_search_time",
            title="Search top-10, chunked ÷ unchunked project, p50 (vector queries)",
            ours_label=f"VectorizeHook.search on the chunked project ({len(expected):,} chunks)",
            baseline_label=f"VectorizeHook.search on the unchunked project ({n} vectors)",
            unit="ms", ours=p50[CHUNKED_JOB], baseline=p50[WHOLE_JOB], target=1.5, op="<=",
            details={**project, "searches_per_side": len(vectors),
                     "chunks_per_row": {"min": per_row[0], "median": per_row[n // 2],
                                        "mean": round(len(expected) / n, 2), "max": per_row[-1],
                                        "issue_range": [3, 10],
                                        "rows_in_range": sum(3 <= c <= 10 for c in per_row)},
                     "p95_ms": {job: percentile(vector_times[job], 0.95) * 1000 for job in jobs},
                     "text_query_p50_ms": text_p50,
                     "searches_returning_fewer_than_10_rows": short},
        ),
    ]
