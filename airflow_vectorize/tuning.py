"""``hnsw.ef_search`` tuned per project (``VectorizeHook.tune_search``).

pgvector's HNSW search keeps ``ef_search`` candidates (default 40) while it walks the graph: too few miss true
neighbours (large tables, clustered vectors, filters), too many waste time. Tuning runs the project's own
search (``VectorizeHook.search``, the path applications use) at each value of GRID, smallest first, against the
exact answer of the same search (``search.exact_query``: every vector compared) on the same queries, and
keeps the smallest value whose recall@k — the share of the exact top-k rows found, averaged over the queries —
reaches the target; with ``filters``, the smallest value that reaches it with no filter and with each filter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow_vectorize.evaluation import percentile
from airflow_vectorize.exceptions import InvalidInputError

GRID = (10, 20, 40, 60, 80, 100, 120, 160, 200, 250, 300, 400, 500, 600, 800, 1000)  # scan_settings' range


def check_target(target_recall: Any) -> float:
    if isinstance(target_recall, bool) or not isinstance(target_recall, (int, float)) \
            or not 0 < target_recall <= 1:
        raise InvalidInputError(f"target_recall must be a number in (0, 1], got {target_recall!r}")
    return float(target_recall)


def check_filters(filters: Any) -> list[Mapping[str, Any] | None]:
    """The searches to tune for: no filter, then each of ``filters`` (one filter dict, or a list of them)."""
    if filters is None:
        return [None]
    listed = [filters] if isinstance(filters, Mapping) else filters
    if isinstance(listed, (str, bytes)) or not isinstance(listed, Sequence) or not listed \
            or not all(isinstance(f, Mapping) and f for f in listed):
        raise InvalidInputError(f"filters must be a filter {{column: value or {{op: value}}}} or a non-empty list"
                                f" of them, got {filters!r:.200}")
    return [None, *listed]


def query_texts(queries: Any) -> list[Any]:
    """The queries to tune on: texts, vectors, or labelled queries (their ``query``; the labels are not used)."""
    if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence) or not queries:
        raise InvalidInputError("queries must be a non-empty list of query texts (or vectors, or labelled queries)")
    texts = []
    for i, item in enumerate(queries):
        query = item.get("query") if isinstance(item, Mapping) else item
        if isinstance(query, str) and not query.strip() or query is None or isinstance(query, (bytes, Mapping)):
            raise InvalidInputError(f"queries[{i}] must be a non-empty text or a vector, got {item!r:.200}")
        texts.append(query)
    return texts


def recall(found: Sequence[Sequence[tuple]], exact: Sequence[Sequence[tuple]]) -> float:
    """Mean over the queries of the share of the exact rows found (queries with no exact row are left out)."""
    shares = [len(set(f) & set(e)) / len(e) for f, e in zip(found, exact) if e]
    return sum(shares) / len(shares) if shares else 1.0


def curve(search: Callable[[Any, int], list[tuple]], vectors: Sequence[Any], exact: Sequence[Sequence[tuple]],
          target: float) -> dict[str, Any]:
    """Recall and p50 time of ``search(vector, ef_search)`` at each value of GRID until one reaches ``target``:
    ``{"ef_search": the smallest that does (None: none), "points": [{ef_search, recall, p50_ms}]}``."""
    points = []
    for ef in GRID:
        found, seconds = [], []
        for vector in vectors:
            started = time.perf_counter()
            found.append(search(vector, ef))
            seconds.append(time.perf_counter() - started)
        share = recall(found, exact)
        points.append({"ef_search": ef, "recall": round(share, 4), "p50_ms": round(percentile(seconds, 50) * 1000, 3)})
        if share >= target:
            return {"ef_search": ef, "points": points}
    return {"ef_search": None, "points": points}


def choose(curves: Sequence[Mapping[str, Any]]) -> tuple[int, bool]:
    """The value for every tuned search (the largest of their smallest), and whether each reached the target
    (if one did not, the largest value measured)."""
    reached = all(c["ef_search"] is not None for c in curves)
    return max(c["ef_search"] or GRID[-1] for c in curves), reached
