"""Measurement 4: embedding generation through the hook against a bare ``model.encode`` of the same texts."""

from __future__ import annotations

from psycopg import sql

from bench.imports import COLUMNS
from bench.measure import Measurement, timed, unavailable
from bench.session import BenchSession, log

TABLE = "products_generate"
JOB = "generate_bench"


def available() -> bool:
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    return hasattr(VectorizeHook, "generate_embeddings")


def measure(session: BenchSession, rows: int) -> list[Measurement]:
    title = f"Generate embeddings of {rows:,} product texts: ours ÷ bare model.encode, rows/s"
    if not available():
        return [unavailable("generate_vs_encode", title,
                            "VectorizeHook.generate_embeddings does not exist yet",
                            target=0.9, op=">=")]
    from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
    from airflow_vectorize.embedders import load_model

    session.add_products(TABLE, rows, seed=21)
    hook = session.hook()
    hook.create_project(JOB, TABLE, "product_id", COLUMNS, schedule="manual")
    # Exactly the texts the project embeds (its columns joined with ', ').
    texts = [r[0] for r in session.execute(sql.SQL(
        "SELECT concat_ws(', ', name, description) FROM {} ORDER BY product_id"
    ).format(sql.Identifier(TABLE)))]
    model = load_model(DEFAULT_TRANSFORMER)
    model.encode(texts[:64], show_progress_bar=False)  # warm-up: both sides find the model loaded and warm

    # Bare encode before and after ours, averaged: load from elsewhere on the machine hits both sides alike.
    bare_before, _ = timed(lambda: model.encode(texts, show_progress_bar=False))
    log(f"  bare model.encode: {rows / bare_before:.0f} rows/s")
    ours_seconds, result = timed(lambda: hook.generate_embeddings(JOB))
    log(f"  generate_embeddings: {rows / ours_seconds:.0f} rows/s ({result})")
    bare_after, _ = timed(lambda: model.encode(texts, show_progress_bar=False))
    log(f"  bare model.encode: {rows / bare_after:.0f} rows/s")
    bare_seconds = (bare_before + bare_after) / 2
    embedded = result.get("embedded", rows) if isinstance(result, dict) else rows
    hook.drop_project(JOB)
    session.drop_table(TABLE)
    return [Measurement(
        key="generate_vs_encode",
        title=title,
        ours_label="VectorizeHook.generate_embeddings (read, embed, write, commit)",
        baseline_label="model.encode(texts) in the same process",
        unit="rows/s", ours=embedded / ours_seconds, baseline=rows / bare_seconds, target=0.9, op=">=",
        details={"rows": rows, "embedded": embedded, "ours_seconds": ours_seconds,
                 "bare_seconds": [bare_before, bare_after],
                 "result": {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
                 if isinstance(result, dict) else str(result)},
    )]
