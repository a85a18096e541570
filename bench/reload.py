"""``python -m bench.reload``: full reloads of a project's source (issue 31), ``make bench-reload``.

A table of ``--rows`` products (100k) is embedded (its vectors imported, as the md5 of each row's text is
stored with them) and then reloaded as an ETL job reloads it, with ``--changed`` (1 %) of the descriptions
different: ``TRUNCATE`` + ``COPY`` in one transaction, and ``DELETE`` + ``COPY`` in one transaction; then a
generation run. Side by side in the same run, the baseline: the same reload of the same table without a
project, plus the bare model embedding the changed texts (``LocalModel.embed``, nothing written).

Each reload is measured ``--rounds`` times (3), each round changing the same ``--changed`` texts (the
TRUNCATE reload brings the altered descriptions, the DELETE reload the original ones back), with the project
and the baseline taking turns going first. Reported per layout (join realtime — the default —, join manual,
append realtime) and reload: the texts the model was sent in each round (counted in ``LocalModel.embed``: must
equal the changed rows exactly), the median reload and generation seconds, and ``median(reload + generation) /
median(reload without a project + embedding the changed texts)``: target ≤ 1.3; each round's own ratio is in
the details (this machine's speed drifts by tens of percent between minutes, so one round alone says little).
"""

from __future__ import annotations

import argparse
import platform
import sys
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.measure import Measurement, median, timed  # noqa: E402
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


def baseline(session: BenchSession, model: Any, rows: list[tuple], how: str, texts: list[str]) -> tuple[float, float]:
    """Seconds of the reload of the table without a project, and of the bare model on the changed texts."""
    return reload(session, "plain", rows, how), timed(lambda: model.embed(texts))[0]


def ours(session: BenchSession, hook: Any, table: str, rows: list[tuple], how: str,
         counter: CountingModel) -> tuple[float, float, dict[str, Any]]:
    """Seconds of the reload of the project's table and of the generation run after it, and its summary with
    the texts the run sent to the model (``texts_sent``)."""
    seconds = reload(session, table, rows, how)
    counter.texts = 0
    generation, summary = timed(lambda: hook.generate_embeddings(table))
    return seconds, generation, {**summary, "texts_sent": counter.texts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of the texts changed by a reload")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each reload, taking turns")
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
            rounds: dict[str, list[dict[str, float]]] = {"truncate": [], "delete": []}
            for round_ in range(args.rounds):
                for how, rows in (("truncate", edited), ("delete", original)):
                    base = partial(baseline, session, model, rows, how, edited_texts)
                    project = partial(ours, session, hook, table, rows, how, counter)
                    if round_ % 2:  # the project first in odd rounds
                        (ours_reload, ours_generate, summary), (baseline_reload, baseline_embed) = project(), base()
                    else:
                        (baseline_reload, baseline_embed), (ours_reload, ours_generate, summary) = base(), project()
                    rounds[how].append({"reload_s": ours_reload, "generation_s": ours_generate,
                                        "baseline_reload_s": baseline_reload, "baseline_embed_s": baseline_embed,
                                        "texts_sent_to_model": summary["texts_sent"], "summary": summary})
                    log(f"{layout} {how}, round {round_ + 1}: sent {summary['texts_sent']} texts; reload {ours_reload:.2f} +"
                        f" generation {ours_generate:.2f} s vs {baseline_reload:.2f} + {baseline_embed:.2f} s:"
                        f" {(ours_reload + ours_generate) / (baseline_reload + baseline_embed):.2f}x")
            for how, measured in rounds.items():
                m = measurement(layout, how, args.rows, len(changed), measured)
                results.append(m.as_dict())
                log(f"{m.key}: median {m.ours:.2f} s vs {m.baseline:.2f} s: {m.ratio:.2f}x ({m.status})")
            hook.drop_project(table)
            session.drop_table(table)
    finally:
        session.stop()
    meta = {"rows": args.rows, "changed": len(changed), "rounds": args.rounds, "machine": platform.machine(),
            "python": sys.version.split()[0]}
    path = write_results(args, "reload", meta, results)
    print(report(results))
    log(f"results: {path}")


def measurement(layout: str, how: str, rows: int, changed: int, measured: list[dict[str, Any]]) -> Measurement:
    """The median of a reload's rounds against the median of its baselines'."""
    def mid(name: str) -> float:
        return median([r[name] for r in measured])

    last = measured[-1]["summary"]
    return Measurement(
        key=f"{layout} {how}", title=f"{how.upper()} + COPY of {rows} rows, {changed} texts changed, then"
        f" generation ({layout}), median of {len(measured)} rounds", ours_label="reload + generation",
        baseline_label="reload without a project + model on the changed texts", unit="s",
        ours=median([r["reload_s"] + r["generation_s"] for r in measured]),
        baseline=median([r["baseline_reload_s"] + r["baseline_embed_s"] for r in measured]), target=TARGET,
        details={"texts_sent_to_model": [r["texts_sent_to_model"] for r in measured], "changed_rows": changed,
                 **{name: round(mid(name), 3) for name in ("reload_s", "generation_s", "baseline_reload_s",
                                                           "baseline_embed_s")},
                 "round_ratios": [round((r["reload_s"] + r["generation_s"])
                                        / (r["baseline_reload_s"] + r["baseline_embed_s"]), 3) for r in measured],
                 **{k: last.get(k) for k in ("embedded", "vectors_removed", "vectors_restored", "pending_cleared",
                                             "index_rebuilt")}})


def report(results: list[dict[str, Any]]) -> str:
    lines = ["| reload | texts sent / changed | reload + generation (s) | baseline (s) | ratio | each round | target |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in results:
        d = r["details"]
        sent = "/".join(map(str, sorted(set(d["texts_sent_to_model"]))))
        rounds = ", ".join(f"{x:.2f}" for x in d["round_ratios"])
        lines.append(f"| {r['key']} | {sent} / {d['changed_rows']} | {d['reload_s']:.2f} +"
                     f" {d['generation_s']:.2f} | {d['baseline_reload_s']:.2f} + {d['baseline_embed_s']:.2f} |"
                     f" {r['ratio']:.2f} ({r['status']}) | {rounds} | {r['target_text']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
