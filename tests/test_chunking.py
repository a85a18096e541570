"""Chunked projects: long texts cut by the model's tokenizer, one vector per chunk, one result per row."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import snapshot

from airflow_vectorize.exceptions import InvalidInputError

LICENSES = Path("/usr/share/common-licenses")
DOCUMENTS = {1: "Apache-2.0", 2: "MPL-2.0", 3: "GPL-3", 4: "LGPL-2.1", 5: "GFDL-1.3"}
JOB = "licenses"


def document(name: str) -> str:
    """The first ~9 kB of a license text (paragraph boundaries kept): 2,000+ tokens, far beyond 256."""
    text = (LICENSES / name).read_text()
    return text[: text.index("\n\n", 9000)]


def last_third_sentence(text: str) -> str:
    """A sentence of 12+ words from the last third of ``text``."""
    tail = " ".join(text[2 * len(text) // 3:].split())
    sentences = [s.strip() for s in tail.split(". ")]
    return next(s for s in sentences[1:] if len(s.split()) >= 12)


def executed_scans(plan: str) -> list[str]:
    """The scans of a chunk table that ran in an EXPLAIN ANALYZE plan (``Seq Scan on _chunks_...``,
    ``Index Scan using <index> on _chunks_...``)."""
    return [line.strip().split(" (")[0].removeprefix("->  ") for line in plan.splitlines()
            if " on _chunks_" in line and "never executed" not in line]


@pytest.fixture
def licenses(database):
    database.execute("CREATE TABLE licenses (id integer PRIMARY KEY, name text NOT NULL, body text)")
    for key, name in DOCUMENTS.items():
        database.execute("INSERT INTO licenses VALUES (%s, %s, %s)", [key, name, document(name)])
    return database


def test_long_texts_are_found_by_their_end(licenses, hook, model):
    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=128, chunk_overlap=16)
    hook.create_project("whole", "licenses", "id", ["body"])

    result = hook.generate_embeddings(JOB, batch_size=2)
    hook.generate_embeddings("whole")

    assert result["embedded"] == 5
    status = hook.get_status(JOB)
    assert (status["embedded_rows"], status["missing_rows"]) == (5, 0) and status["chunks"] > 5 * 10
    tokenizer = model.tokenizer
    chunks = licenses.execute(f"SELECT id, chunk_no, start_offset, end_offset, chunk FROM vectorize._chunks_{JOB}")
    bodies = dict(licenses.execute("SELECT id, body FROM licenses"))
    assert all(bodies[key][start:end] == text for key, _, start, end, text in chunks)  # offsets into the text
    assert max(len(tokenizer.encode(text, add_special_tokens=False)) for *_, text in chunks) <= 128
    indexes = dict(licenses.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'vectorize'"))
    assert indexes[f"{JOB}_hnsw_cos_idx"].endswith(  # built for chunks; the unchunked one as pg_vectorize's
        "USING hnsw (((embeddings)::halfvec(384)) halfvec_cosine_ops) WITH (ef_construction='256')")
    assert indexes["whole_hnsw_cos_idx"].endswith("USING hnsw (embeddings vector_cosine_ops)")
    found_chunked = found_whole = 0
    for key, name in DOCUMENTS.items():
        query = last_third_sentence(bodies[key])
        rows = hook.search(JOB, query, return_columns=["id"], num_results=3)
        assert len({row["id"] for row in rows}) == len(rows) == 3  # each row at most once
        assert rows == sorted(rows, key=lambda r: -r["similarity_score"])
        assert all(row["chunk"] in bodies[row["id"]] for row in rows)  # each row's best chunk
        found_chunked += rows[0]["id"] == key
        found_whole += hook.search("whole", query, return_columns=["id"], num_results=1)[0]["id"] == key
    assert found_chunked == 5 and found_whole < 5  # the end of a text is out of reach of one vector a row

    hybrid = hook.hybrid_search(JOB, "Mozilla Public License", return_columns=["id", "name"], num_results=5)
    assert hybrid[0]["name"] == "MPL-2.0" and all("chunk" in row and row["similarity_score"] for row in hybrid)


def test_chunk_vectors_are_the_models_encoding_of_each_chunk(licenses, hook, model):
    """A batch of chunks is encoded in token order (batches of about equal length pad less), and each vector
    is stored with its own chunk."""
    import numpy as np

    from airflow_vectorize.models.local import ENCODE_BATCH_SIZE

    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=128, chunk_overlap=16)
    hook.generate_embeddings(JOB)

    rows = licenses.execute(f"SELECT chunk, embeddings FROM vectorize._chunks_{JOB} ORDER BY id, chunk_no")
    texts = [text for text, _ in rows]
    tokens = [len(model.tokenizer.encode(text)) for text in texts]
    assert len(texts) > 2 * ENCODE_BATCH_SIZE and tokens != sorted(tokens, reverse=True)  # the order matters
    expected = model.encode(texts)
    np.testing.assert_allclose(np.stack([vector.to_numpy() for _, vector in rows]), expected, atol=1e-5)


def test_the_splitter_keeps_nothing_of_the_texts_it_split(model):
    """Token counts are kept for the text being split only: a run over many long documents, or many runs in
    one worker, do not grow its memory (semchunk's own cache kept every piece of every text, ~6.6 MB for a
    megabyte of text, for the life of the process)."""
    import tracemalloc

    from airflow_vectorize.chunking import TextSplitter

    texts = [document(name) for name in DOCUMENTS.values()]
    expected = TextSplitter(model.tokenizer, 200, 20).split_all(texts)  # warm-up
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            assert TextSplitter(model.tokenizer, 200, 20).split_all(texts) == expected
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 100_000, f"{kept:,} bytes kept after splitting {3 * sum(map(len, texts)):,} characters"


def test_a_bulk_load_is_judged_by_its_chunks(licenses, hook, monkeypatch):
    """The bulk-load rule (drop the HNSW index, build it once at the end) counts vectors: 5 long rows make
    over 40 chunks, past the threshold (1,000 vectors, lowered to 40 here), though 5 rows are not."""
    from airflow_vectorize import storage

    monkeypatch.setattr(storage, "REBUILD_INDEX_MIN_ROWS", 40)
    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=128, chunk_overlap=16)

    first = hook.generate_embeddings(JOB)

    assert first["embedded"] == 5 and first["index_rebuilt"] is True
    assert licenses.scalar(f"SELECT count(*) FROM vectorize._chunks_{JOB}") > 40
    assert licenses.scalar("SELECT count(*) FROM pg_indexes WHERE schemaname = 'vectorize' AND indexname = %s",
                           [f"{JOB}_hnsw_cos_idx"]) == 1
    licenses.execute("UPDATE licenses SET body = body || ' Amended.' WHERE id = 1")
    again = hook.generate_embeddings(JOB)  # one row of five: written into the index
    assert again["embedded"] == 1 and again["index_rebuilt"] is False


def test_a_changed_row_replaces_its_chunks_and_others_stay(licenses, hook):
    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=200)
    hook.generate_embeddings(JOB)
    before = dict(licenses.execute(f"SELECT id, count(*) FROM vectorize._chunks_{JOB} GROUP BY id"))
    kept = licenses.execute(f"SELECT id, chunk_no, updated_at FROM vectorize._chunks_{JOB} WHERE id <> 2 ORDER BY 1, 2")

    licenses.execute("UPDATE licenses SET body = 'A short replacement text.' WHERE id = 2")
    licenses.execute("DELETE FROM licenses WHERE id = 5")
    assert hook.get_status(JOB)["stale_rows"] == 1
    result = hook.generate_embeddings(JOB)

    assert result["embedded"] == 1
    assert licenses.execute(f"SELECT chunk_no, chunk FROM vectorize._chunks_{JOB} WHERE id = 2") == [
        (0, "A short replacement text.")]
    assert licenses.execute(f"SELECT count(*) FROM vectorize._chunks_{JOB} WHERE id = 5") == [(0,)]
    assert licenses.execute(f"SELECT id, chunk_no, updated_at FROM vectorize._chunks_{JOB}"
                            " WHERE id NOT IN (2, 5) ORDER BY 1, 2") == [r for r in kept if r[0] != 5]
    assert hook.generate_embeddings(JOB)["embedded"] == 0 and before[2] > 1
    assert hook.get_status(JOB)["pending"] == 0


def test_a_text_of_whitespace_is_one_chunk(licenses, hook):
    """As an unchunked project embeds it. Before, the splitter made no chunk of it: the row was read again by
    every run, counted nowhere, stayed queued and kept a freshness sensor waiting for good."""
    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=200, embed_existing=True)
    licenses.execute("UPDATE licenses SET body = E' \\t ' WHERE id = 2")

    run = hook.generate_embeddings(JOB, pending_only=True)

    assert (run["embedded"], run["pending_cleared"]) == (1, 1)
    assert licenses.execute(f"SELECT chunk_no, start_offset, end_offset, chunk FROM vectorize._chunks_{JOB}"
                            " WHERE id = 2") == [(0, 0, 3, " \t ")]
    assert (hook.get_freshness(JOB)["stale"], hook.get_status(JOB)["pending"]) == (0, 0)
    assert hook.generate_embeddings(JOB)["batches"] == 0


def test_a_text_the_tokenizer_reads_as_one_token_is_cut_by_its_length(licenses, hook):
    """Words joined by form feeds (pdftotext's page breaks), which the tokenizer deletes: one unknown token, so
    before, the whole 1 MB text was one chunk, whose full-text column PostgreSQL could not hold ("string is too
    long for tsvector"): every run failed with a raw error, and the rows beside it were never embedded."""
    from airflow_vectorize.chunking import MAX_CHARACTERS_PER_TOKEN

    text = "\x0c".join(f"lexeme{i:012d}" for i in range(70_000))
    licenses.execute("UPDATE licenses SET body = %s WHERE id = 2", [text])
    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=200)

    run = hook.generate_embeddings(JOB)

    assert (run["embedded"], run["failed"]) == (len(DOCUMENTS), 0)
    chunks = licenses.execute(f"SELECT start_offset, end_offset, chunk FROM vectorize._chunks_{JOB} WHERE id = 2"
                              " ORDER BY chunk_no")
    assert len(chunks) > 1 and all(text[start:end] == chunk for start, end, chunk in chunks)
    assert (chunks[0][0], chunks[-1][1]) == (0, len(text))
    assert all(text[end:start].strip("\x0c") == "" for (_, end, _), (start, _, _) in zip(chunks, chunks[1:]))
    assert max(len(chunk) for _, _, chunk in chunks) < (200 + 1) * MAX_CHARACTERS_PER_TOKEN


def test_drop_removes_the_chunks(licenses, hook):
    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=200)
    hook.generate_embeddings(JOB)

    result = hook.drop_project(JOB)

    assert result["embeddings_removed"] > 5 and f"vectorize._chunks_{JOB}" in result["objects"]
    assert licenses.execute(f"SELECT to_regclass('vectorize._chunks_{JOB}')") == [(None,)]


@pytest.mark.parametrize("options, message", [
    (dict(chunk_size=0), "chunk_size must be a positive integer (tokens) or None, got 0"),
    (dict(chunk_size=-5), "chunk_size must be a positive integer"),
    (dict(chunk_size=100, chunk_overlap=100), "chunk_overlap (100) must be smaller than chunk_size (100)"),
    (dict(chunk_size=100, chunk_overlap=-1), "chunk_overlap must be an integer >= 0"),
    (dict(chunk_overlap=10), "chunk_overlap=10 needs a chunk_size"),
    (dict(chunk_size=100, chunker="semantic"), "chunker 'semantic' is unknown; use one of recursive"),
    (dict(chunk_size=300), "chunk_size 300 is above what 'sentence-transformers/all-MiniLM-L6-v2' reads at once"
                           " (254 tokens); use chunk_size <= 254"),
    (dict(chunk_size=100, table_method="append"), "chunking (chunk_size) needs table_method='join'"),
], ids=["zero", "negative", "overlap=size", "negative-overlap", "overlap-alone", "chunker", "too-big", "append"])
def test_invalid_chunking_is_refused_and_creates_nothing(licenses, hook, options, message):
    before = snapshot(licenses)

    with pytest.raises(InvalidInputError) as error:
        hook.create_project(JOB, "licenses", "id", ["body"], **options)

    assert message in str(error.value)
    assert snapshot(licenses) == before


@pytest.fixture(scope="module")
def license_chunk_vectors(model) -> list[tuple[int, int, list[float]]]:
    """(id, chunk number, vector) of each license's chunks (200 tokens, overlap 20), cut as a project cuts
    them: what an upstream system would have computed."""
    from airflow_vectorize.chunking import TextSplitter

    splitter = TextSplitter(model.tokenizer, 200, 20)
    rows = [(key, chunk) for key, name in DOCUMENTS.items() for chunk in splitter.split(document(name))]
    vectors = model.encode([chunk.text for _, chunk in rows], show_progress_bar=False)
    return [(key, chunk.number, vector.tolist()) for (key, chunk), vector in zip(rows, vectors)]


def chunk_embeddings(db, vectors) -> None:
    db.execute("CREATE TABLE chunk_vectors (id integer, chunk_no smallint, v real[])")
    with db.conn.cursor() as cur:
        cur.executemany("INSERT INTO chunk_vectors VALUES (%s, %s, %s)", vectors)


def test_import_of_chunk_embeddings(licenses, hook, license_chunk_vectors):
    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=200, chunk_overlap=20)
    chunk_embeddings(licenses, license_chunk_vectors)
    total = licenses.scalar("SELECT count(*) FROM chunk_vectors")

    summary = hook.import_embeddings(JOB, "chunk_vectors", "id", "v", src_chunk_col="chunk_no")

    assert (summary["imported"], summary["inserted"], summary["chunks"]) == (5, 5, total)
    assert licenses.scalar(f"SELECT count(*) FROM vectorize._chunks_{JOB} e JOIN chunk_vectors s"
                           " ON s.id = e.id AND s.chunk_no = e.chunk_no"
                           " WHERE e.embeddings = s.v::vector AND e.chunk = substr((SELECT body FROM licenses l"
                           " WHERE l.id = e.id), e.start_offset + 1, e.end_offset - e.start_offset)") == total
    assert hook.generate_embeddings(JOB)["embedded"] == 0  # imported chunks are current
    assert hook.import_embeddings(JOB, "chunk_vectors", "id", "v", src_chunk_col="chunk_no")["updated"] == 5


@pytest.mark.parametrize("change, kwargs, message", [
    (None, dict(), "project 'licenses' is chunked: give src_chunk_col"),
    ("DELETE FROM chunk_vectors WHERE id = 3 AND chunk_no = (SELECT max(chunk_no) FROM chunk_vectors WHERE id = 3)",
     dict(src_chunk_col="chunk_no"), "1 row(s) whose chunk numbers are not 0..n-1 for the n chunks the project's"
                                     " chunker (chunk_size 200, overlap 20) makes of their text; e.g. keys ['3 ("),
    ("INSERT INTO chunk_vectors SELECT id, chunk_no, v FROM chunk_vectors WHERE id = 2 AND chunk_no = 1",
     dict(src_chunk_col="chunk_no"), "1 duplicate (key, chunk number) pairs; e.g. keys ['2']"),
    ("UPDATE chunk_vectors SET chunk_no = -1 WHERE id = 4 AND chunk_no = 0", dict(src_chunk_col="chunk_no"),
     "1 row(s) with NULL or negative chunk numbers; e.g. keys ['4']"),
    (None, dict(src_chunk_col="v"), "src_chunk_col 'v' of \"public\".\"chunk_vectors\" is real[]; expected an integer"),
    ("UPDATE chunk_vectors SET v[3] = 70000 WHERE id = 5 AND chunk_no = 2", dict(src_chunk_col="chunk_no"),
     "1 row(s) with values beyond the range of halfvec, which the project's index holds (|x| > 65504); e.g. keys ['5']"),
    ("ALTER TABLE chunk_vectors ALTER v TYPE vector(384) USING v::vector; UPDATE chunk_vectors SET v = ("
     "SELECT array_agg(CASE WHEN i = 7 THEN -65600 ELSE 0 END)::vector FROM generate_series(1, 384) i)"
     " WHERE id = 1 AND chunk_no = 0", dict(src_chunk_col="chunk_no"),
     "1 row(s) with values beyond the range of halfvec, which the project's index holds (|x| > 65504); e.g. keys ['1']"),
], ids=["no-chunk-col", "other-chunks", "duplicate", "negative", "chunk-col-type", "beyond-halfvec",
        "beyond-halfvec-vector"])
def test_bad_chunk_imports_change_nothing(licenses, hook, license_chunk_vectors, change, kwargs, message):
    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=200, chunk_overlap=20)
    chunk_embeddings(licenses, license_chunk_vectors)
    if change:
        licenses.execute(change)
    before = snapshot(licenses)

    with pytest.raises(InvalidInputError) as error:
        hook.import_embeddings(JOB, "chunk_vectors", "id", "v", **kwargs)

    assert message in str(error.value)
    assert snapshot(licenses) == before


def test_search_returns_enough_rows_when_one_row_owns_the_nearest_chunks(licenses, hook, index_path):
    sentence = "The lighthouse keeper fed the seagulls at dawn every single morning."
    licenses.execute("INSERT INTO licenses VALUES (6, 'lighthouse', repeat(%s || ' ', 60))", [sentence])
    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=32)
    hook.generate_embeddings(JOB)

    rows = hook.search(JOB, sentence, return_columns=["id"], num_results=5)
    nearest = licenses.execute(
        f"SELECT DISTINCT id FROM (SELECT id FROM vectorize._chunks_{JOB} ORDER BY embeddings <=> %s::vector"
        " LIMIT 20) c", [hook.encode(JOB, [sentence])[0]])

    assert nearest == [(6,)]  # the 4 x 5 nearest chunks are all row 6's: one pass would return one row
    assert len(rows) == 5 and rows[0]["id"] == 6 and len({row["id"] for row in rows}) == 5


def test_the_index_path_finds_every_row_asked_for_when_one_row_owns_thousands_of_the_nearest_chunks(
        licenses, hook, index_path, exact_scan_max_pages, monkeypatch):
    """One row owning more of the nearest chunks than the index path reads at its widest (MAX_CHUNKS_PER_ROW,
    16 here: 32 chunks for 2 rows, of its ~60): search, with and without a filter, and hybrid search's vector
    candidates (10 × 4 chunks, then 10 × 16) still find as many rows as there are and match, the rows of the
    exact path: the index scan kept filling its LIMIT, so the search compared every chunk."""
    from airflow_vectorize import search
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    monkeypatch.setattr(search, "MAX_CHUNKS_PER_ROW", 16)
    sentence = "The lighthouse keeper fed the seagulls at dawn every single morning."
    licenses.execute("INSERT INTO licenses VALUES (6, 'lighthouse', repeat(%s || ' ', 120))", [sentence])
    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=32)
    hook.generate_embeddings(JOB)
    vector = hook.encode(JOB, [sentence])[0]
    owned = licenses.execute(
        f"SELECT count(*) FILTER (WHERE id = 6) FROM (SELECT id FROM vectorize._chunks_{JOB}"
        " ORDER BY embeddings <=> %s::vector LIMIT 40) c", [vector])
    everything = {"name": {"ne": "nothing"}}  # a filter every row passes

    def found(searcher: VectorizeHook) -> list[list[int]]:
        return [[row["id"] for row in rows] for rows in (
            searcher.search(JOB, sentence, return_columns=["id"], num_results=2),
            searcher.search(JOB, sentence, return_columns=["id"], num_results=3, filters=everything),
            searcher.search(JOB, sentence, return_columns=["id"], num_results=2, filters={"id": {"gte": 5}}),
            searcher.hybrid_search(JOB, sentence, return_columns=["id"], num_results=5, candidates=10),
            searcher.hybrid_search(JOB, sentence, return_columns=["id"], num_results=4, candidates=10,
                                   filters=everything),
        )]

    index = found(hook)
    exact_scan_max_pages(10**6)
    exact = found(VectorizeHook(postgres_conn_id=licenses.conn_id))  # looked up afresh: the exact path

    assert owned == [(40,)]  # the nearest 4 × 10 chunks are all row 6's
    assert not hook._search_target(JOB).exact  # still the index path for the next search
    assert [len(set(rows)) for rows in index] == [2, 3, 2, 5, 4]
    assert index == exact
    assert index[0][0] == index[3][0] == 6


def test_search_rows_do_not_depend_on_the_returned_columns(licenses, hook):
    """Key only (no join to the source), more columns (joined after the best rows are chosen) and a filter
    (joined in the chunk scan) return the same rows, best chunks and scores, in the same order."""
    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=128, chunk_overlap=16)
    hook.generate_embeddings(JOB)
    query = "You must give any other recipients of the Work a copy of this License."

    key_only = hook.search(JOB, query, return_columns=["id"], num_results=4)
    wide = hook.search(JOB, query, return_columns=["name", "id"], num_results=4)
    filtered = hook.search(JOB, query, return_columns=["id"], num_results=4, filters={"id": {"lte": 5}})
    nearest = licenses.execute(
        f"SELECT id, min(embeddings <=> %s::vector) AS d FROM vectorize._chunks_{JOB} GROUP BY id ORDER BY d, id",
        [hook.encode(JOB, [query])[0]])

    assert [list(row) for row in key_only] == [["id", "similarity_score", "chunk"]] * 4
    assert [list(row) for row in wide] == [["name", "id", "similarity_score", "chunk"]] * 4
    names = dict(licenses.execute("SELECT id, name FROM licenses"))
    assert [{**row, "name": names[row["id"]]} for row in key_only] == wide
    assert filtered == key_only and len({row["id"] for row in key_only}) == 4
    assert key_only[0]["id"] == nearest[0][0]  # ranked by the row's best chunk (exact here: few vectors)
    assert key_only[0]["similarity_score"] == pytest.approx(1 - nearest[0][1], abs=1e-6)


@pytest.mark.parametrize("index_dist_type, suffix, opclass", [
    ("pgv_hnsw_cosine", "cos", "halfvec_cosine_ops"), ("pgv_hnsw_l2", "l2", "halfvec_l2_ops"),
    ("pgv_hnsw_ip", "ip", "halfvec_ip_ops")])
def test_chunked_searches_are_served_by_the_half_precision_index(licenses, hook, index_dist_type, suffix, opclass,
                                                                 index_path):
    """Vector and hybrid search order the chunks by the indexed expression (a search that did not would scan
    every chunk), and score rows by the full vectors."""
    from airflow_vectorize import search

    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=128, index_dist_type=index_dist_type)
    hook.generate_embeddings(JOB)
    index = f"{JOB}_hnsw_{suffix}_idx"
    definition = licenses.scalar("SELECT indexdef FROM pg_indexes WHERE schemaname = 'vectorize' AND indexname = %s",
                                 [index])
    target, vector = hook._search_target(JOB), hook.encode(JOB, ["a copy of this License"])[0]
    conn = hook._search_connection()
    with conn.transaction(), conn.cursor() as cur:
        plans = [search.explain(cur, search.vector_search_query(target, vector, num_results=3)),
                 search.explain(cur, search.hybrid_search_query(target, "License", num_results=3,
                                                           embed=lambda _: vector))]
    rows = hook.search(JOB, vector, return_columns=["id"], num_results=3)
    best = licenses.execute(f"SELECT id, chunk FROM vectorize._chunks_{JOB} ORDER BY embeddings"
                            f" {target.project.distance.operator} %s::vector LIMIT 1", [vector])

    assert definition.endswith(f"USING hnsw (((embeddings)::halfvec(384)) {opclass}) WITH (ef_construction='256')")
    assert all(f"Index Scan using {index}" in plan for plan in plans), plans
    assert (rows[0]["id"], rows[0]["chunk"]) == best[0]  # the full vectors' nearest chunk
    with pytest.raises(InvalidInputError) as error:  # a value halfvec cannot hold
        hook.search(JOB, [0.0] * 100 + [-70000.0] + [0.0] * 283)
    assert str(error.value) == ("query vector has values beyond the range of halfvec (|x| > 65504), in which"
                                f" project {JOB!r} is indexed")


def test_a_chunked_search_on_the_index_path_reads_the_index_at_any_ef_search(licenses, hook, index_path):
    """Past EXACT_SCAN_MAX_PAGES a chunked search reads its HNSW index also where PostgreSQL's cost model
    prefers to scan the table (from ef_search ~120 on a table of ~2,000 chunks; here, on a small one, a cost
    model that prices a random page 1,000 sequential ones), which would compute the index's half-precision
    distance for every chunk; its rows are the exact ones. A search with filters, and the hook's next
    unchunked search on the same connection, are left to the planner."""
    from airflow_vectorize import search

    licenses.execute(f'ALTER DATABASE "{licenses.name}" SET random_page_cost = 1000')  # for new sessions
    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=128)
    hook.create_project("whole", "licenses", "id", ["body"])
    hook.generate_embeddings(JOB)
    hook.generate_embeddings("whole")
    query = "You must give any other recipients of the Work a copy of this License."
    vector = hook.encode(JOB, [query])[0]
    target, conn = hook._search_target(JOB), hook._search_connection()

    def scans(built: search.SearchQuery) -> list[str]:
        with conn.transaction(), conn.cursor() as cur:
            return executed_scans(search.explain(cur, built, analyze=True))

    rows = hook.search(JOB, vector, return_columns=["id"], num_results=4, ef_search=1000)
    hybrid = hook.hybrid_search(JOB, query, return_columns=["id"], num_results=4, full_text_weight=0,
                                ef_search=1000)
    during = conn.execute("SHOW enable_seqscan").fetchone()[0]  # the setting the hook's searches ran with
    planned = [scans(search.vector_search_query(target, vector, ["id"], 4, ef_search=1000)),
               scans(search.hybrid_search_query(target, query, ["id"], 4, ef_search=1000, embed=lambda _: vector))]
    filtered = search.vector_search_query(target, vector, ["id"], 4, filters={"name": {"ne": ""}}, ef_search=1000)
    hook.search("whole", vector, return_columns=["id"])
    after = conn.execute("SHOW enable_seqscan").fetchone()[0]
    exact = licenses.execute(
        f"SELECT id FROM vectorize._chunks_{JOB} GROUP BY id ORDER BY min(embeddings <=> %s::vector), id LIMIT 4",
        [vector])

    index_scan = f"Index Scan using {JOB}_hnsw_cos_idx on _chunks_{JOB} e"
    assert all(index_scan in plan for plan in planned), planned
    assert filtered.settings == {"hnsw.ef_search": "1000"}  # the plan is the planner's choice
    assert [row["id"] for row in rows] == [row["id"] for row in hybrid] == [key for (key,) in exact]
    assert (during, after) == ("off", "on")


def test_search_reads_the_index_first_pass_and_looks_further_past_deleted_chunks(licenses, hook, index_path):
    """A chunked search of at most ef_search chunks reads the index's first pass only (no iterative scan);
    chunks of deleted rows stay in the index until VACUUM, and when the live ones among the first pass
    cover too few rows the search asks again for more: the rows are still the exact ones."""
    from airflow_vectorize import search

    sentence = "The lighthouse keeper fed the seagulls at dawn every single morning."
    licenses.execute("INSERT INTO licenses VALUES (6, 'lighthouse', repeat(%s || ' ', 200))", [sentence])
    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=32)
    hook.generate_embeddings(JOB)
    target = hook._search_target(JOB)
    assert search.vector_search_query(target, [0.1] * 384, num_results=10, single_pass=True).single_pass
    # The first ask reads the first pass when it holds 2 chunks per row (of the 4 it asks for); a later ask
    # (more chunks per row) only when they all lie within it.
    assert search.vector_search_query(target, [0.1] * 384, num_results=20, single_pass=True).single_pass
    assert not search.vector_search_query(target, [0.1] * 384, num_results=21, single_pass=True).single_pass
    assert not search.vector_search_query(target, [0.1] * 384, num_results=10, chunks_per_row=16,
                                          single_pass=True).single_pass
    vector = hook.encode(JOB, [sentence])[0]
    first_pass = licenses.execute(  # the nearest chunks as search orders them (by the indexed expression)
        f"SELECT id FROM vectorize._chunks_{JOB} ORDER BY embeddings::halfvec(384) <=> %s::halfvec(384) LIMIT 40",
        [vector])
    licenses.execute("DELETE FROM licenses WHERE id = 6")  # never read again; its chunks go at the next run,
    hook.generate_embeddings(JOB)  # dead in the index until VACUUM

    rows = hook.search(JOB, sentence, return_columns=["id"], num_results=5)
    shallow = hook.search(JOB, sentence, return_columns=["id"], num_results=5, ef_search=10)  # 10 of 20 chunks
    exact = licenses.execute(
        f"SELECT id FROM vectorize._chunks_{JOB} GROUP BY id ORDER BY min(embeddings <=> %s::vector), id LIMIT 5",
        [vector])

    assert {key for (key,) in first_pass} == {6}  # the index's first pass (ef_search 40): all deleted now
    assert [row["id"] for row in rows] == [key for (key,) in exact] and len(exact) == 5
    assert len({row["id"] for row in shallow}) == 5 and 6 not in {row["id"] for row in shallow}


def test_a_small_chunk_table_is_searched_exactly_while_it_is_small(licenses, hook, exact_scan_max_pages):
    """While the chunk table has at most EXACT_SCAN_MAX_PAGES pages a search compares every chunk (exact rows,
    scores and best chunks at any ef_search). Each search sees the table's size as it runs: the hook's next
    search takes the index once the table has grown past them, and every chunk again once it has shrunk."""
    from airflow_vectorize import search

    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=128, chunk_overlap=16)
    hook.generate_embeddings(JOB)
    pages = licenses.scalar(f"SELECT pg_relation_size('vectorize._chunks_{JOB}') / 8192")
    exact_scan_max_pages(pages)
    licenses.execute(f'ALTER DATABASE "{licenses.name}" SET enable_seqscan = off')  # the index, if it may
    query = "You must give any other recipients of the Work a copy of this License."
    vector = hook.encode(JOB, [query])[0]

    def plan() -> list[str]:
        """The chunk-table scans of the hook's next search (after one search, which sees the table)."""
        hook.search(JOB, vector, return_columns=["id"], num_results=4, ef_search=1)
        built = search.vector_search_query(hook._search_target(JOB), vector, ["id"], 4, ef_search=1,
                                           single_pass=True)
        conn = hook._search_connection()
        with conn.transaction(), conn.cursor() as cur:
            return executed_scans(search.explain(cur, built, analyze=True))

    rows = hook.search(JOB, vector, return_columns=["id"], num_results=4, ef_search=1)
    hybrid = hook.hybrid_search(JOB, query, return_columns=["id"], num_results=4, full_text_weight=0, ef_search=1)
    exact = licenses.execute(
        f"SELECT id, 1 - d, chunk FROM (SELECT DISTINCT ON (id) id, chunk, embeddings <=> %s::vector AS d"
        f" FROM vectorize._chunks_{JOB} ORDER BY id, d, chunk_no) best ORDER BY d, id LIMIT 4", [vector])
    small = plan()
    licenses.execute("INSERT INTO licenses SELECT id + 10, name, body FROM licenses")
    hook.generate_embeddings(JOB)
    grown = plan()
    licenses.execute("DELETE FROM licenses WHERE id > 10")
    hook.generate_embeddings(JOB)  # the next generation run deletes the chunks of the rows deleted
    licenses.execute(f"VACUUM vectorize._chunks_{JOB}")  # gives the emptied pages at its end back
    shrunk = plan()

    assert [(row["id"], row["chunk"]) for row in rows] == [(key, chunk) for key, _, chunk in exact]
    assert [row["similarity_score"] for row in rows] == pytest.approx([score for _, score, _ in exact], abs=1e-6)
    assert [(row["id"], row["chunk"], row["semantic_rank"]) for row in hybrid] == [
        (key, chunk, rank) for rank, (key, _, chunk) in enumerate(exact, 1)]
    assert small and not any("hnsw" in scan for scan in small), small
    assert f"Index Scan using {JOB}_hnsw_cos_idx on _chunks_{JOB} e" in grown, grown
    assert shrunk == small


def embedded_with_statements_counted(hook, monkeypatch) -> list:
    """Project JOB over the licenses (chunk_size 128), embedded; the list that gets each search statement run."""
    from airflow_vectorize import search

    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=128)
    hook.generate_embeddings(JOB)
    calls = []
    run = search.run
    monkeypatch.setattr(search, "run", lambda *args, **kwargs: calls.append(args[1]) or run(*args, **kwargs))
    return calls


def test_a_short_exact_result_is_not_asked_again(licenses, hook, monkeypatch):
    """A filter leaving fewer rows than asked for: the exact path has compared every chunk, so the search
    runs once (the index path would ask again with more chunks per row, in vain)."""
    calls = embedded_with_statements_counted(hook, monkeypatch)

    rows = hook.search(JOB, "a copy of this License", return_columns=["id"], num_results=5,
                       filters={"id": {"in": [2, 4]}})

    assert sorted(row["id"] for row in rows) == [2, 4]
    assert len(calls) == 1, [call.statement for call in calls]


def test_a_short_result_on_the_index_path_is_completed_by_comparing_every_chunk(licenses, hook, index_path,
                                                                                monkeypatch):
    """On the index path, a filter leaving fewer rows than asked for: an HNSW scan that ends before its LIMIT
    may have left chunks unread (hnsw.max_scan_tuples, its memory bound), so the search compares every chunk
    passing the filter, once, instead of asking the index again; a search whose nearest chunks cover its rows
    runs once."""
    calls = embedded_with_statements_counted(hook, monkeypatch)

    rows = hook.search(JOB, "a copy of this License", return_columns=["id"], num_results=5,
                       filters={"id": {"in": [2, 4]}})
    short = list(calls)
    calls.clear()
    enough = hook.search(JOB, "a copy of this License", return_columns=["id"], num_results=1)

    assert sorted(row["id"] for row in rows) == [2, 4]
    assert [call.exact for call in short][-1:] == [True] and not any(call.exact for call in short[:-1]), short
    assert len(short) <= 3 and short[-2].short and not short[-2].more, short  # the scan ended: all 2 rows' chunks
    assert len(enough) == 1 and len(calls) == 1 and not calls[0].short


def test_hybrid_search_ranks_full_text_matches_by_their_best_chunk(licenses, hook):
    """A chunked project's chunks carry their full-text documents (``chunk_fts``, generated with every write,
    indexed in the chunk table, nothing added to the source): hybrid search's full-text part finds rows by a
    chunk matching the query and ranks them by their best chunk's ts_rank, from the stored documents."""
    from airflow_vectorize import search

    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=128)
    hook.generate_embeddings(JOB)
    query = "copyright notice"
    by_best_chunk = f"""SELECT id FROM vectorize._chunks_{JOB}, websearch_to_tsquery('english', %(q)s) q
        WHERE to_tsvector('english', chunk) @@ q GROUP BY id
        ORDER BY max(ts_rank(to_tsvector('english', chunk), q)) DESC, id"""

    def full_text(text: str, **kwargs: object) -> list[tuple[int, int]]:
        rows = hook.hybrid_search(JOB, text, return_columns=["id"], semantic_weight=0, **kwargs)
        return [(row["id"], row["full_text_rank"]) for row in rows if row["full_text_rank"] is not None]

    expected = [key for (key,) in licenses.execute(by_best_chunk, {"q": query})]
    ranked = full_text(query)
    filtered = full_text(query, filters={"name": {"ne": "MPL-2.0"}})
    apart_before = full_text("zebra quokka")
    licenses.execute("UPDATE licenses SET body = 'The zebra met a quokka. ' || body || ' The quokka waved.'"
                     " WHERE id = 2")
    hook.generate_embeddings(JOB)  # the row's chunks are replaced, and their documents with them
    together, apart = full_text("zebra quokka"), full_text("zebra waved")
    target = hook._search_target(JOB)
    conn = hook._search_connection()
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET LOCAL enable_seqscan = off")  # the plan of a large table
        plan = search.explain(cur, search.hybrid_search_query(target, query, embed=hook._embed_query(target.project)))
    indexes = licenses.execute("SELECT schemaname, tablename, indexdef FROM pg_indexes"
                               " WHERE indexname = %s OR tablename = 'licenses'", [f"{JOB}_fts_idx"])

    assert len(expected) >= 3 and ranked == [(key, rank) for rank, key in enumerate(expected, 1)]
    assert filtered == [(key, rank) for rank, key in enumerate([k for k in expected if k != 2], 1)]
    assert apart_before == [] and together == [(2, 1)]  # both words in the changed row's first chunk
    assert apart == []  # in its first chunk and its last: no chunk matches
    assert f"Bitmap Index Scan on {JOB}_fts_idx" in plan, plan
    assert indexes == [("public", "licenses", "CREATE UNIQUE INDEX licenses_pkey ON public.licenses USING btree (id)"),
                       ("vectorize", f"_chunks_{JOB}",
                        f"CREATE INDEX {JOB}_fts_idx ON vectorize._chunks_{JOB} USING gin (chunk_fts)")]
    assert licenses.scalar(f"SELECT count(*) FROM vectorize._chunks_{JOB}"
                           " WHERE chunk_fts IS DISTINCT FROM to_tsvector('english', chunk)") == 0


def test_a_chunked_project_made_before_chunk_documents_gets_them_from_its_next_run(licenses, hook):
    """A chunked project made by the 2026-12-02 code (no chunk_fts column in its chunk table, its full-text
    index on the source's rows: emulated): hybrid search raised a VectorizeError with hand-run DDL, before and
    after generation runs, and the source kept its index. Before its next run, hybrid search ranks the rows'
    texts as it did then, writing nothing; the run adds the chunk documents and their index, drops the
    source's index, and hybrid search ranks by chunk again."""
    from airflow_vectorize import expressions

    hook.create_project(JOB, "licenses", "id", ["body"], chunk_size=128)
    hook.generate_embeddings(JOB)
    expected = hook.hybrid_search(JOB, "copyright notice", return_columns=["id"])
    project = hook._search_target(JOB).project
    licenses.execute(f"ALTER TABLE vectorize._chunks_{JOB} DROP COLUMN chunk_fts;"  # its index goes with it
                     f" CREATE INDEX {JOB}_fts_idx ON licenses USING gin"
                     f" ({expressions.fts_document(project).as_string(licenses.conn)})")
    hook._search_target(JOB, refresh=True)
    before = snapshot(licenses)

    old = hook.hybrid_search(JOB, "copyright notice", return_columns=["id"])
    found = hook.search(JOB, "copyright notice", return_columns=["id"])
    assert snapshot(licenses) == before
    assert hook.generate_embeddings(JOB)["embedded"] == 0

    assert len(old) == len(found) == 5 and all(row["full_text_rank"] for row in old)
    assert licenses.execute("SELECT c.relname, i.indrelid::regclass::text FROM pg_index i"
                            " JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s", [f"{JOB}_fts_idx"]) == [
        (f"{JOB}_fts_idx", f"vectorize._chunks_{JOB}")]
    assert licenses.scalar(f"SELECT count(*) FROM vectorize._chunks_{JOB}"
                           " WHERE chunk_fts IS DISTINCT FROM to_tsvector('english', chunk)") == 0
    assert hook.hybrid_search(JOB, "copyright notice", return_columns=["id"]) == expected  # this hook's too
