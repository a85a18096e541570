"""Measurement 5: top-10 search through ``VectorizeHook.search`` against the raw SQL, and recall vs exact.

The raw SQL is the floor: one statement on an open autocommit connection with ``hnsw.ef_search`` set once
for the session. ``VectorizeHook.search`` is called as an application would call it: one hook, many
queries (the hook keeps its connection and the project's catalog lookups between calls). The calls are
interleaved, so that load from elsewhere on the machine hits every side alike.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from bench.imports import PRODUCTS, SEARCH_JOB
from bench.measure import Measurement, percentile
from bench.session import BenchSession, log

PGVECTOR_DEFAULT_EF_SEARCH = 40
EF_SEARCH_CANDIDATES = (PGVECTOR_DEFAULT_EF_SEARCH, 64, 100, 160, 250, 400)
RECALL_TARGET = 0.95
TOP = 10


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int = TOP) -> np.ndarray:
    """Row indices of the exact top-k by cosine distance (the vectors are unit length: cosine = dot)."""
    scores = queries @ vectors.T
    return np.argpartition(-scores, k, axis=1)[:, :k]


def recall(found: list[list[int]], exact_ids: np.ndarray) -> float:
    hits = sum(len(set(f) & set(e.tolist())) for f, e in zip(found, exact_ids))
    return hits / exact_ids.size


def row_key(row: dict[str, Any]) -> int:
    return row["product_id"]


def measure(session: BenchSession, queries: int) -> list[Measurement]:
    data = session.datasets[PRODUCTS]
    query_vectors = session.space.sample(queries, seed=999)
    exact_ids = data.product_ids[exact_neighbours(data.embeddings, query_vectors)]
    target = sql.Identifier("vectorize", f"_embeddings_{SEARCH_JOB}")
    conn = session.conn  # autocommit, pgvector registered
    # A plain string, as an application that knows its table writes it: composing it with psycopg.sql at
    # every call (escaping the identifiers through libpq each time) cost this side ~50 µs of client CPU per call.
    raw = sql.SQL(
        "SELECT product_id, 1 - (embeddings <=> %(q)s) AS similarity_score FROM {}"
        " ORDER BY embeddings <=> %(q)s LIMIT {}").format(target, sql.Literal(TOP)).as_string(conn)
    conn.execute(sql.SQL("ANALYZE {}").format(target))

    def raw_search(q: np.ndarray, connection: psycopg.Connection = conn) -> list[int]:
        return [r[0] for r in connection.execute(raw, {"q": q}).fetchall()]

    # The smallest ef_search at which the raw query reaches the recall target (same index, same plan).
    ef_search, raw_recall = EF_SEARCH_CANDIDATES[-1], 0.0
    for candidate in EF_SEARCH_CANDIDATES:
        conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(candidate)))
        raw_recall = recall([raw_search(q) for q in query_vectors], exact_ids)
        log(f"  raw SQL recall@10 at ef_search={candidate}: {raw_recall:.3f}")
        if raw_recall >= RECALL_TARGET:
            ef_search = candidate
            break
    conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef_search)))
    explained = conn.execute("EXPLAIN " + raw, {"q": query_vectors[0]}).fetchall()
    plan = "\n".join(r[0] for r in explained)
    # The hook is given ef_search only when it differs from pgvector's default (as a caller would do).
    hook_ef = None if ef_search == PGVECTOR_DEFAULT_EF_SEARCH else ef_search

    hook = session.hook()

    def hook_search(q: np.ndarray) -> list[dict[str, Any]]:
        return hook.search(SEARCH_JOB, q, return_columns=["product_id"], num_results=TOP,
                           ef_search=hook_ef)

    for q in query_vectors[:5]:  # warm-up: the hook opens its connection and caches the project
        hook_search(q)
        raw_search(q)
    ours, bare, fresh = [], [], []
    found: list[list[int]] = []
    def time_hook(q: np.ndarray) -> None:
        started = time.perf_counter()
        result = hook_search(q)
        ours.append(time.perf_counter() - started)
        found.append([row_key(r) for r in result])

    def time_raw(q: np.ndarray) -> None:
        started = time.perf_counter()
        raw_search(q)
        bare.append(time.perf_counter() - started)

    # The first run of a query vector reads its index pages into shared buffers (the 100k index and table
    # exceed the default 128 MB); without a warm-up both sides' times are a 50/50 mix of cold and warm runs
    # and the p50 falls between the two. So: one untimed run, then both sides, alternating which goes first.
    # The untimed run uses a third connection: a backend that has just run a query answers the next one
    # faster than one that sat idle while another backend ran (~0.1 ms here), and the warm-up must not
    # hand that to one side.
    with psycopg.connect(session.uri(), autocommit=True) as warmer:
        register_vector(warmer)
        warmer.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef_search)))
        for i, q in enumerate(query_vectors):
            raw_search(q, warmer)
            for run in ((time_hook, time_raw) if i % 2 else (time_raw, time_hook)):
                run(q)

    # A separate pass: a closing connection's backend exits while the next call runs, which would
    # otherwise burden whichever side comes after it in the interleaved loop above.
    for q in query_vectors:
        started = time.perf_counter()  # what a connection per call would cost
        with psycopg.connect(session.uri(), autocommit=True) as own:
            register_vector(own)
            own.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef_search)))
            raw_search(q, own)
        fresh.append(time.perf_counter() - started)

    ours_p50, raw_p50, fresh_p50 = (percentile(v, 0.5) * 1000 for v in (ours, bare, fresh))
    # Diagnostic: each query's two sides ran back to back, so the median of their ratios is less exposed to
    # load from elsewhere on the machine than the ratio of the two p50s (which can fall on either side of a
    # gap between calls that got a core at once and calls that waited for one).
    paired = percentile([o / b for o, b in zip(ours, bare)], 0.5)
    hook_recall = recall(found, exact_ids)
    log(f"  p50: hook {ours_p50:.2f} ms, raw SQL {raw_p50:.2f} ms, raw SQL on a new connection"
        f" {fresh_p50:.2f} ms; median of the per-query ratios {paired:.3f};"
        f" recall {hook_recall:.3f} at ef_search={ef_search}")
    details: dict[str, Any] = {
        "queries": len(query_vectors), "rows": data.rows, "ef_search": ef_search,
        "p95_ms": {"hook": percentile(ours, 0.95) * 1000, "raw_sql": percentile(bare, 0.95) * 1000,
                   "raw_sql_new_connection": percentile(fresh, 0.95) * 1000},
        "median_paired_ratio": paired,
        "raw_sql_plan": plan,
    }
    return [
        Measurement(
            key="search_vs_raw_sql",
            title=f"Search top-10 on {data.rows // 1000}k with HNSW: VectorizeHook.search ÷ raw SQL, p50",
            ours_label=f"VectorizeHook.search (ef_search={ef_search})",
            baseline_label="ORDER BY embeddings <=> q LIMIT 10 on an open connection",
            unit="ms", ours=ours_p50, baseline=raw_p50, target=1.1, details=details,
        ),
        Measurement(
            key="search_connection_share",
            title="Search: raw SQL on a new connection per query ÷ on an open connection, p50",
            ours_label="connect + register_vector + SET + query",
            baseline_label="query on an open connection",
            unit="ms", ours=fresh_p50, baseline=raw_p50, target=None,
            note="diagnostic: what a connection per call would cost",
        ),
        Measurement(
            key="search_recall",
            title=f"Search recall@10 vs exact (ef_search={ef_search})",
            ours_label="true neighbours found by VectorizeHook.search", baseline_label="exact top-10 (numpy)",
            unit="rows", ours=hook_recall * exact_ids.size, baseline=float(exact_ids.size),
            target=RECALL_TARGET, op=">=", details={"ef_search": ef_search, "raw_sql_recall": raw_recall},
        ),
    ]
