"""Retrieval quality: labelled queries in, recall@k, precision@k, MRR, nDCG@10, hit rate out (issue 33).

A labelled query is ``{"query": text, "relevant": [key, ...]}`` or, graded, ``{"relevant": {key: grade}}``
(grades > 0; a list means grade 1 each). A key is a value, or a list of values for a composite key. The
metrics, per query then averaged over the queries:

- recall@k: relevant keys among the first k results ÷ relevant keys;
- precision@k: relevant keys among the first k results ÷ k;
- MRR: 1 ÷ the rank of the first relevant result (0 when none is returned);
- nDCG@10: DCG of the first 10 results (gain = grade, discount log2(rank + 1)) ÷ the DCG of the ideal order;
- hit rate: the share of queries with a relevant key among the first max(k) results; ``no_relevant``: the
  share with none (1 − hit rate).

Each evaluation is kept in ``vectorize.evaluations`` with the configuration that decides the result (model,
chunking, mode, weights, ef_search, row count) and each query's reciprocal rank and recall, so two runs can
be compared query by query.

:func:`sample_queries` makes labelled queries from a project's own texts: a sentence of 12-60 words taken
from a row as the query (each sentence used once), that row as the relevant one. It measures whether a row
can be found by words it contains — a proxy, not a substitute for real questions labelled by people.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import Cursor, sql

from airflow_vectorize import validation
from airflow_vectorize.catalog import Project
from airflow_vectorize.exceptions import InvalidInputError
from airflow_vectorize.keys import base_row

MODES = ("vector", "hybrid")
WORST = 10  # queries listed in ``worst``
NDCG_AT = 10  # nDCG@10: every evaluation reads this many results at least, whatever its k
MIN_WORDS, MAX_WORDS = 12, 60  # a sampled query's words: a sentence, not a run-on block without full stops
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
POSITIONS = ("any", "first", "last")


@dataclass(frozen=True)
class LabelledQuery:
    """A query and its relevant keys (each a tuple of key values) with their grades."""

    query: str
    relevant: dict[tuple, float]


def parse_queries(queries: Any, key_columns: Sequence[str]) -> list[LabelledQuery]:
    """``queries`` as LabelledQuery objects; InvalidInputError naming the first bad one."""
    if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence) or not queries:
        raise InvalidInputError("queries must be a non-empty list of {'query': text, 'relevant': [key, ...]}")
    parsed = []
    for i, item in enumerate(queries):
        where = f"queries[{i}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("query"), str) or not item["query"].strip():
            raise InvalidInputError(f"{where} must be {{'query': a non-empty text, 'relevant': [key, ...]}},"
                                    f" got {item!r:.200}")
        relevant = item.get("relevant")
        grades = relevant if isinstance(relevant, Mapping) else {_hashable(k): 1.0 for k in relevant or ()} \
            if isinstance(relevant, Sequence) and not isinstance(relevant, str) else None
        if not grades:
            raise InvalidInputError(f"{where}: 'relevant' must name at least one key (a list, or {{key: grade}})")
        found: dict[tuple, float] = {}
        for key, grade in grades.items():
            if isinstance(grade, bool) or not isinstance(grade, (int, float)) or not 0 < grade < math.inf:
                raise InvalidInputError(f"{where}: the grade of key {key!r} must be a finite number > 0, got {grade!r}")
            found[_key(key, key_columns, where)] = float(grade)
        parsed.append(LabelledQuery(item["query"], found))
    return parsed


def load_queries(cur: Cursor, project: Project, table: Any) -> list[dict[str, Any]]:
    """Labelled queries kept in a table or view ``table`` (``"schema.name"``, or ``"name"`` in public): one
    row per query and relevant row (qrels' layout) — a ``query`` text column, the project's key column(s)
    under their names, and an optional ``grade`` (NULL or absent: 1). Queries in the order of their text."""
    if not isinstance(table, str) or not table.strip():
        raise InvalidInputError(f"queries must be labelled queries or the name of a table holding them, got {table!r}")
    schema, _, name = table.rpartition(".")
    held = validation.require_table(cur, schema or "public", name, kinds="rvmpf", role="queries")
    columns = ["query", *project.key.columns]
    for column in columns:
        held.column(column, "queries")
    grade = sql.Identifier("grade") if "grade" in held.columns else sql.SQL("NULL")
    rows = cur.execute(sql.SQL("SELECT {}, {} FROM {} ORDER BY 1, {}").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), grade, sql.Identifier(held.schema, held.name),
        sql.SQL(", ").join(sql.Literal(i) for i in range(2, len(columns) + 1)))).fetchall()
    queries: dict[str, dict[Any, float]] = {}
    for query, *key, graded in rows:
        if query is None or any(value is None for value in key):
            raise InvalidInputError(f"queries table {held.label} has a row with a NULL query or key: {[query, *key]!r}")
        relevant = queries.setdefault(query, {})
        relevant[tuple(key) if len(key) > 1 else key[0]] = 1.0 if graded is None else _grade(held.label, graded)
    if not queries:
        raise InvalidInputError(f"queries table {held.label} holds no rows")
    return [{"query": query, "relevant": relevant} for query, relevant in queries.items()]


def _grade(table: str, value: Any) -> float:
    """A ``grade`` of a queries table: a finite number > 0."""
    try:
        grade = float(value)
    except (TypeError, ValueError):
        grade = math.nan
    if not 0 < grade < math.inf:
        raise InvalidInputError(f"queries table {table}: column grade must hold finite numbers > 0, got {value!r}")
    return grade


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _key(key: Any, key_columns: Sequence[str], where: str) -> tuple:
    values = tuple(key) if isinstance(key, (list, tuple)) else (key,)
    if len(values) != len(key_columns) or any(v is None for v in values):
        raise InvalidInputError(f"{where}: key {key!r} must have {len(key_columns)} value(s), one per key column"
                                f" ({', '.join(key_columns)})")
    return text_key(values)


def text_key(values: Sequence[Any]) -> tuple[str, ...]:
    """A key as given, before ``resolve_keys`` reads it from the source: its values' text."""
    return tuple(str(v) for v in values)


def fingerprint(queries: list[LabelledQuery]) -> str:
    """What identifies a query set (texts, keys, grades, in order): two runs are compared query by query only
    when theirs are equal."""
    canonical = json.dumps([[q.query, sorted([_shown(k), g] for k, g in q.relevant.items())] for q in queries],
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def check_ks(k: Any) -> tuple[int, ...]:
    ks = (k,) if isinstance(k, int) else tuple(k) if isinstance(k, Sequence) else ()
    if not ks or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in ks):
        raise InvalidInputError(f"k must be a positive integer or a list of them, got {k!r}")
    return tuple(sorted(set(ks)))


def resolve_keys(cur: Cursor, project: Project, queries: list[LabelledQuery]) -> list[LabelledQuery]:
    """``queries`` with each relevant key as the source row's key (its values as psycopg reads them, as a
    search returns them: ``1.5`` and ``"1.50"`` name the same numeric key, ``True`` and ``"true"`` the same
    boolean one); InvalidInputError naming up to five keys that are not rows of the source.

    One statement: the keys, typed by the source's row type (as ``Key.in_values`` types a composite key),
    looked up by the key's index; a value the key's type cannot hold is refused."""
    keys = sorted({key for q in queries for key in q.relevant}, key=repr)
    columns = project.key.columns
    statement = sql.SQL(
        "SELECT i.n, {r_keys} FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY i(doc, n)"
        " CROSS JOIN LATERAL jsonb_populate_record({base}, i.doc) w"
        " JOIN {source} r ON ({r_keys}) = ({w_keys})"
    ).format(source=project.names.source, base=base_row(project.names.source), r_keys=project.key.names("r"),
             w_keys=project.key.names("w"))
    try:
        with cur.connection.transaction():  # a savepoint: the caller's transaction survives a bad value
            cur.execute(statement, [json.dumps([dict(zip(columns, key)) for key in keys])])
    except (psycopg.errors.DataError, psycopg.errors.InvalidTextRepresentation) as error:
        raise InvalidInputError(f"a relevant key is not a value of the key column(s) {', '.join(columns)}:"
                                f" {error.diag.message_primary}") from error
    found = {keys[n - 1]: tuple(values) for n, *values in cur.fetchall()}
    missing = [key for key in keys if key not in found]
    if missing:
        shown = ", ".join(k[0] if len(k) == 1 else "(" + ", ".join(k) + ")" for k in missing[:5])
        raise InvalidInputError(f"{len(missing)} relevant key(s) are not rows of {project.schema}.{project.relation}:"
                                f" {shown}{' …' if len(missing) > 5 else ''}")
    resolved = []
    for q in queries:
        relevant: dict[tuple, float] = {}
        for key, grade in q.relevant.items():  # two spellings of one row: its highest grade
            relevant[found[key]] = max(grade, relevant.get(found[key], 0.0))
        resolved.append(LabelledQuery(q.query, relevant))
    return resolved


# -- metrics ---------------------------------------------------------------------------------------------
def query_metrics(got: Sequence[tuple], relevant: Mapping[tuple, float], ks: Sequence[int]) -> dict[str, float]:
    """One query's metrics; ``got``: the returned keys, best first (max(ks), or more for nDCG@10: the
    reciprocal rank and hit look at the first max(ks) only)."""
    hits = [key in relevant for key in got]
    first = next((rank for rank, hit in enumerate(hits[:max(ks)], 1) if hit), None)
    found: dict[str, float] = {"reciprocal_rank": 1.0 / first if first else 0.0}
    for k in ks:
        in_top = sum(hits[:k])
        found[f"recall@{k}"] = in_top / len(relevant)
        found[f"precision@{k}"] = in_top / k
    dcg = sum(relevant.get(key, 0.0) / math.log2(rank + 1) for rank, key in enumerate(got[:NDCG_AT], 1))
    ideal = sum(grade / math.log2(rank + 1)
                for rank, grade in enumerate(sorted(relevant.values(), reverse=True)[:NDCG_AT], 1))
    found["ndcg@10"] = dcg / ideal
    found["hit"] = 1.0 if any(hits[:max(ks)]) else 0.0
    return found


def summary(per_query: list[dict[str, float]], ks: Sequence[int], seconds: list[float]) -> dict[str, float]:
    """The mean of each metric over the queries, hit rate, no-relevant share and latency p50/p95 (ms)."""
    n = len(per_query)
    mean = {name: sum(q[name] for q in per_query) / n for name in per_query[0]}
    metrics = {f"recall@{k}": mean[f"recall@{k}"] for k in ks}
    metrics |= {f"precision@{k}": mean[f"precision@{k}"] for k in ks}
    metrics |= {"mrr": mean["reciprocal_rank"], "ndcg@10": mean["ndcg@10"], "hit_rate": mean["hit"],
                "no_relevant": 1.0 - mean["hit"], "latency_p50_ms": percentile(seconds, 50) * 1000,
                "latency_p95_ms": percentile(seconds, 95) * 1000}
    return {name: round(value, 6) for name, value in metrics.items()}


def metric_names(ks: Sequence[int]) -> list[str]:
    """The metrics an evaluation with these ``ks`` reports."""
    return ([f"recall@{k}" for k in ks] + [f"precision@{k}" for k in ks]
            + ["mrr", "ndcg@10", "hit_rate", "no_relevant", "latency_p50_ms", "latency_p95_ms"])


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile, linear between the closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def evaluate(queries: list[LabelledQuery], ks: Sequence[int], search: Callable[[str, int], list[tuple]],
             clock: Callable[[], float]) -> dict[str, Any]:
    """Run every query through ``search(query, limit) -> keys`` and score it: max(k) results, and at least
    NDCG_AT so that nDCG@10 is the same measure whatever ``ks`` is (``worst`` shows the first max(k))."""
    per_query, seconds, answers = [], [], []
    for q in queries:
        started = clock()
        got = search(q.query, max(*ks, NDCG_AT))
        seconds.append(clock() - started)
        per_query.append(query_metrics(got, q.relevant, ks))
        answers.append(got[:max(ks)])
    order = sorted(range(len(queries)), key=lambda i: (per_query[i]["reciprocal_rank"], per_query[i]["ndcg@10"]))
    worst = [{"query": queries[i].query, "expected": [_shown(k) for k in queries[i].relevant],
              "got": [_shown(k) for k in answers[i]], "reciprocal_rank": round(per_query[i]["reciprocal_rank"], 4)}
             for i in order[:WORST] if per_query[i]["reciprocal_rank"] < 1.0]
    return {"metrics": summary(per_query, ks, seconds), "queries": len(queries), "worst": worst,
            "per_query": [{"reciprocal_rank": round(m["reciprocal_rank"], 6),
                           f"recall@{max(ks)}": round(m[f"recall@{max(ks)}"], 6)} for m in per_query]}


def _shown(key: tuple) -> Any:
    """A key as JSON holds it: a value (a list for a composite key); other than text, numbers and booleans,
    as its text."""
    values = [v if v is None or isinstance(v, (str, int, float, bool)) else str(v) for v in key]
    return values[0] if len(values) == 1 else values


# -- kept ------------------------------------------------------------------------------------------------
def ensure_table(cur: Cursor) -> None:
    cur.execute(
        "CREATE TABLE IF NOT EXISTS vectorize.evaluations (id bigserial PRIMARY KEY, job_name text NOT NULL,"
        " evaluated_at timestamptz NOT NULL DEFAULT now(), label text, config jsonb NOT NULL,"
        " metrics jsonb NOT NULL, per_query jsonb NOT NULL, passed boolean);"
        " CREATE INDEX IF NOT EXISTS evaluations_job_idx ON vectorize.evaluations (job_name, evaluated_at)")


def store(cur: Cursor, job_name: str, label: str | None, config: dict[str, Any], result: dict[str, Any],
          passed: bool | None = None) -> int:
    """Keep an evaluation; ``passed``: what a gate decided of it (None: no gate)."""
    ensure_table(cur)
    cur.execute("INSERT INTO vectorize.evaluations (job_name, label, config, metrics, per_query, passed)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                [job_name, label, json.dumps(config), json.dumps(result["metrics"]),
                 json.dumps(result["per_query"]), passed])
    return cur.fetchone()[0]


def last(cur: Cursor, job_name: str, label: str | None = None) -> dict[str, Any] | None:
    """The project's latest kept evaluation of ``label`` (None: of the runs without one, not of any label)
    that no gate failed, or None."""
    cur.execute("SELECT to_regclass('vectorize.evaluations') IS NOT NULL")
    if not cur.fetchone()[0]:
        return None
    cur.execute("SELECT id, evaluated_at, label, config, metrics FROM vectorize.evaluations WHERE job_name = %s"
                " AND label IS NOT DISTINCT FROM %s AND passed IS NOT FALSE ORDER BY id DESC LIMIT 1",
                [job_name, label])
    row = cur.fetchone()
    if row is None:
        return None
    return {"evaluation_id": row[0], "evaluated_at": row[1].isoformat(), "label": row[2], "config": row[3],
            "metrics": row[4]}


def load(cur: Cursor, evaluation_id: Any) -> dict[str, Any]:
    """A kept evaluation by id; InvalidInputError when there is none."""
    if isinstance(evaluation_id, bool) or not isinstance(evaluation_id, int):
        raise InvalidInputError(f"an evaluation id must be an integer, got {evaluation_id!r}")
    cur.execute("SELECT to_regclass('vectorize.evaluations') IS NOT NULL")
    row = None
    if cur.fetchone()[0]:
        cur.execute("SELECT id, job_name, label, config, metrics, per_query FROM vectorize.evaluations WHERE id = %s",
                    [evaluation_id])
        row = cur.fetchone()
    if row is None:
        raise InvalidInputError(f"there is no evaluation {evaluation_id} in vectorize.evaluations")
    return {"evaluation_id": row[0], "job_name": row[1], "label": row[2], "config": row[3], "metrics": row[4],
            "per_query": row[5]}


# -- compared --------------------------------------------------------------------------------------------
BOOTSTRAP_SAMPLES = 2000


def paired(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """B against A on the same queries: mean difference, wins / losses / ties, the two-sided sign test's p
    (ties dropped) and a 95 % bootstrap interval of the mean difference (queries resampled)."""
    differences = [y - x for x, y in zip(a, b)]
    wins, losses = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
    n = wins + losses
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n if n else 1.0
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(differences) for _ in differences) / len(differences)
                   for _ in range(BOOTSTRAP_SAMPLES))
    return {"mean_difference": round(sum(differences) / len(differences), 6), "wins": wins, "losses": losses,
            "ties": len(differences) - n, "sign_test_p": float(f"{min(1.0, 2 * tail):.3g}"),
            "bootstrap_ci95": [round(percentile(means, 2.5), 6), round(percentile(means, 97.5), 6)]}


def chart(path: str, runs: Mapping[str, Mapping[str, float]], title: str) -> str:
    """recall@k against k for each run (name -> metrics) as a PNG at ``path``; the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise InvalidInputError("a chart needs matplotlib: pip install matplotlib, or leave chart_path unset") from error
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    for name, metrics in runs.items():
        ks = sorted(int(m.split("@")[1]) for m in metrics if m.startswith("recall@"))
        axes.plot(ks, [metrics[f"recall@{k}"] for k in ks], marker="o", label=name)
    axes.set(xlabel="k", ylabel="recall@k", title=title, ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


# -- the gate --------------------------------------------------------------------------------------------
def check_thresholds(name: str, thresholds: Any, metrics: Sequence[str]) -> dict[str, float]:
    """``thresholds`` ({metric: number}) checked against the metrics an evaluation reports."""
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        raise InvalidInputError(f"{name} must be a mapping of metric to number, got {thresholds!r}")
    for metric, value in thresholds.items():
        if metric not in metrics:
            raise InvalidInputError(f"{name}: unknown metric {metric!r}; the evaluation reports"
                                    f" {', '.join(sorted(metrics))}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise InvalidInputError(f"{name}[{metric!r}] must be a finite number >= 0, got {value!r}")
    return {metric: float(value) for metric, value in thresholds.items()}


LOWER_IS_BETTER = ("no_relevant", "latency_p50_ms", "latency_p95_ms")


def gate(metrics: Mapping[str, float], previous: Mapping[str, float] | None, minimum: Mapping[str, float],
         max_drop: Mapping[str, float]) -> list[str]:
    """What fails the gate: a metric below its ``minimum`` (above it, for the lower-is-better ones), or worse
    than the ``previous`` run's by more than ``max_drop``. Empty: it passes."""
    failures = []
    for metric, bound in minimum.items():
        worse = metrics[metric] > bound if metric in LOWER_IS_BETTER else metrics[metric] < bound
        if worse:
            failures.append(f"{metric} {metrics[metric]:.4f} is {'above the maximum' if metric in LOWER_IS_BETTER else 'below the minimum'} {bound:g}")
    for metric, allowed in (max_drop.items() if previous else ()):
        if metric not in previous:
            continue
        drop = (metrics[metric] - previous[metric]) if metric in LOWER_IS_BETTER else (previous[metric] - metrics[metric])
        if drop > allowed + 1e-12:
            failures.append(f"{metric} {metrics[metric]:.4f} is {drop:.4f} worse than the last run's"
                            f" {previous[metric]:.4f} (allowed: {allowed:g})")
    return failures


# -- sampled queries -------------------------------------------------------------------------------------
def sentences(text: str) -> list[str]:
    """The text's sentences of MIN_WORDS to MAX_WORDS words, whitespace-normalised."""
    return [s for s in SENTENCE_END.split(" ".join(text.split())) if MIN_WORDS <= len(s.split()) <= MAX_WORDS]


def pick(text: str, rng: random.Random, position: str, used: set[str]) -> str | None:
    """One sentence of ``text`` not ``used`` by another query (boilerplate shared by rows would be relevant to
    several): any, the first or the last such; None when it has none."""
    found = [s for s in sentences(text) if s not in used]
    if not found:
        return None
    return found[0] if position == "first" else found[-1] if position == "last" else rng.choice(found)


def sample(cur: Cursor, project: Project, n: int, seed: int, position: str) -> list[dict[str, Any]]:
    """Up to ``n`` labelled queries from the project's rows, the same for the same seed and rows: rows in the
    order of md5(seed, key), the first ``n`` that hold a sentence of MIN_WORDS-MAX_WORDS words no query
    before took."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise InvalidInputError(f"n must be a positive integer, got {n!r}")
    if position not in POSITIONS:
        raise InvalidInputError(f"position must be one of {', '.join(map(repr, POSITIONS))}, got {position!r}")
    from airflow_vectorize import expressions

    columns = project.key.columns
    query = sql.SQL("SELECT {keys}, {text} FROM {source} r ORDER BY md5(%s || {key_text})").format(
        keys=project.key.names("r"), text=expressions.text(project, "r"), source=project.names.source,
        key_text=project.key.as_text("r"))
    found: list[dict[str, Any]] = []
    used: set[str] = set()
    rng = random.Random(seed)
    with cur.connection.cursor(name="vectorize_sample_queries") as rows:
        rows.itersize = 1000
        rows.execute(query, [str(seed)])
        for row in rows:
            sentence = pick(row[-1], rng, position, used)
            if sentence is not None:
                used.add(sentence)
                key = row[0] if len(columns) == 1 else list(row[:len(columns)])
                found.append({"query": sentence, "relevant": [key]})
                if len(found) == n:
                    break
    return found
