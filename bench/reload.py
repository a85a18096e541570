"""``python -m bench.reload``: full reloads of a project's source (issue 31), ``make bench-reload``.

A table of ``--rows`` products (100k) is embedded (its vectors imported, as the md5 of each row's text is
stored with them) and then reloaded as an ETL job reloads it, with ``--changed`` (1 %) of the descriptions
different: ``TRUNCATE`` + ``COPY`` in one transaction, and ``DELETE`` + ``COPY`` in one transaction; then a
generation run. Side by side in the same run, the baseline: the same reload of the same table without a
project, plus the bare model embedding the changed texts (``LocalModel.embed``, nothing written).

Reported per layout (join realtime — the default —, join manual, append realtime): the texts the model was
sent (counted in ``LocalModel.embed``: must equal the changed rows exactly), reload and generation seconds,
and ``(reload + generation) / (reload without a project + embedding the changed texts)``: target ≤ 1.3.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.measure import Measurement, timed  # noqa: E402
from bench.output import add_output_arguments, write_results  # noqa: E402
from bench.session import BenchSession, log, prepare_environment  # noqa: E402

COLUMNS = ("product_id", "name", "description", "category", "price")
LAYOUTS = {  # name -> create_project arguments
    "join realtime": {},
    "join manual": {"schedule": "manual"},
    "append realtime": {"table_method": "append"},
}
TARGET = 1.3


class CountingModel:
    """Counts the texts the local model is asked to embed in this process."""

    def __init__(self) -> None:
        from airflow_vectorize.models.local import LocalModel

        self.texts = 0
        embed = LocalModel.embed

        def counted(model: Any, texts: Any, **options: Any) -> Any:
            self.texts += len(texts)
            return embed(model, texts, **options)

        LocalModel.embed = counted


def rows_of(data: Any, changed: set[int]) -> list[tuple]:
    """The table's rows, the descriptions of the ``changed`` product ids altered."""
    return [(pid, name, f"{desc} (new edition)" if pid in changed else desc, category, price)
            for pid, name, desc, category, price in zip(data.product_ids.tolist(), data.names, data.descriptions,
                                                        data.categories, data.prices.tolist())]


def reload(session: BenchSession, table: str, rows: list[tuple], how: str) -> float:
    """Empty ``table`` (TRUNCATE or DELETE) and COPY ``rows`` in, in one transaction; returns the seconds."""
    from psycopg import sql

    session.settle()
    empty = sql.SQL("TRUNCATE {}" if how == "truncate" else "DELETE FROM {}").format(sql.Identifier(table))
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table),
                                                       sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))

    def run() -> None:
        with session.conn.transaction(), session.conn.cursor() as cur:
            cur.execute(empty)
            with cur.copy(copy_in) as copy:
                for row in rows:
                    copy.write_row(row)

    return timed(run)[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of the texts changed by a reload")
    add_output_arguments(parser, "reload")
    args = parser.parse_args(argv)
    prepare_environment()
    import numpy as np

    from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
    from airflow_vectorize.models.local import load_model

    session = BenchSession.start()
    counter = CountingModel()
    model = load_model(DEFAULT_TRANSFORMER)
    results: list[dict[str, Any]] = []
    try:
        data = session.add_products("plain", args.rows, seed=5)
        session.add_embeddings("vectors", data.product_ids, data.embeddings)
        changed = set(np.random.default_rng(9).choice(data.product_ids, int(args.rows * args.changed),
                                                      replace=False).tolist())
        original, edited = rows_of(data, set()), rows_of(data, changed)
        edited_texts = [f"{name}, {desc}" for pid, name, desc, _, _ in edited if pid in changed]
        model.embed(edited_texts[:64])  # warm
        for layout, arguments in LAYOUTS.items():
            table = "p_" + layout.replace(" ", "_")
            session.add_products(table, args.rows, seed=5)
            hook = session.hook()
            hook.create_project(table, table, "product_id", ["name", "description"], **arguments)
            log(f"{layout}: importing {args.rows} vectors")
            hook.import_embeddings(table, "vectors", "product_id", "embedding")
            session.execute(f"VACUUM ANALYZE {table}")
            for how, rows in (("truncate", edited), ("delete", original)):
                baseline_reload = reload(session, "plain", rows, how)
                baseline_embed, _ = timed(lambda: model.embed(edited_texts))
                ours_reload = reload(session, table, rows, how)
                counter.texts = 0
                ours_generate, summary = timed(lambda: hook.generate_embeddings(table))
                m = Measurement(
                    key=f"{layout} {how}", title=f"{how.upper()} + COPY of {args.rows} rows, {len(changed)} texts"
                    f" changed, then generation ({layout})", ours_label="reload + generation",
                    baseline_label="reload without a project + model on the changed texts", unit="s",
                    ours=ours_reload + ours_generate, baseline=baseline_reload + baseline_embed, target=TARGET,
                    details={"texts_sent_to_model": counter.texts, "changed_rows": len(changed),
                             "reload_s": round(ours_reload, 3), "generation_s": round(ours_generate, 3),
                             "baseline_reload_s": round(baseline_reload, 3),
                             "baseline_embed_s": round(baseline_embed, 3),
                             **{k: summary.get(k) for k in ("embedded", "vectors_removed", "vectors_restored",
                                                            "pending_cleared", "index_rebuilt")}})
                results.append(m.as_dict())
                log(f"{m.key}: sent {counter.texts} texts (changed {len(changed)}); reload {ours_reload:.2f} +"
                    f" generation {ours_generate:.2f} s vs {baseline_reload:.2f} + {baseline_embed:.2f} s:"
                    f" {m.ratio:.2f}x ({m.status})")
            hook.drop_project(table)
            session.drop_table(table)
    finally:
        session.stop()
    meta = {"rows": args.rows, "changed": len(changed), "machine": platform.machine(), "python": sys.version.split()[0]}
    path = write_results(args, "reload", meta, results)
    print(report(results))
    log(f"results: {path}")


def report(results: list[dict[str, Any]]) -> str:
    lines = ["| reload | texts sent / changed | reload + generation (s) | baseline (s) | ratio | target |",
             "|---|---:|---:|---:|---:|---|"]
    for r in results:
        d = r["details"]
        lines.append(f"| {r['key']} | {d['texts_sent_to_model']} / {d['changed_rows']} | {d['reload_s']:.2f} +"
                     f" {d['generation_s']:.2f} | {d['baseline_reload_s']:.2f} + {d['baseline_embed_s']:.2f} |"
                     f" {r['ratio']:.2f} ({r['status']}) | {r['target_text']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
