"""``python -m bench.due_rows``: what finding the rows due costs a project of 100k and 1M rows (``make bench-due-rows``).

Every generation run starts by finding the rows whose text has no current embedding: one scan of the source
that computes each row's text md5 and compares it with the stored one (``generation.DueKeys``); ``get_status``
and the freshness sensor count them the same way. A scheduled run over a large table whose
rows barely changed is mostly this scan.

Per size (``--rows``, 100k and 1M): a join project of the bench's products, its vectors imported (the md5 of
each text stored with them), then ``--changed`` (0.1 %) descriptions changed. In ``--rounds`` (5) rounds, taking
turns going first: the run's scan (``DueKeys``: counts the rows due and keeps their keys), ``get_status``,
``get_freshness``, and the floor any md5-based change detection pays — reading every row's text and computing its md5 in one
process (``count(md5(...))`` without parallel workers). Reported: medians, each ÷ the floor, and µs per row
(1M ÷ 100k per row says whether the cost stays linear).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.measure import Measurement, median, timed
from bench.output import add_output_arguments, run_standalone
from bench.session import BenchSession, log

JOB = "due_rows"
SIDES = {"scan": "a generation run's scan for rows due (DueKeys)", "status": "get_status",
         "freshness": "get_freshness", "floor": "every text's md5, one process"}


def scan(hook: Any, project: Any) -> int:
    """A generation run's scan for the rows due; returns how many there are."""
    from airflow_vectorize import generation

    with hook.connect() as conn:
        due = generation.DueKeys(conn, project, generation.Scope(), generation.DEFAULT_BATCH_SIZE)
        due.close()
    return due.due.rows


def floor(session: BenchSession) -> None:
    with session.conn.transaction():
        session.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        session.execute(f"SELECT count(md5(concat_ws(', ', name, description))::uuid) FROM {JOB}")


def measure_size(session: BenchSession, rows: int, changed: float, rounds: int) -> dict[str, Any]:
    from airflow_vectorize import catalog

    data = session.add_products(JOB, rows, seed=5)
    session.add_embeddings("due_vectors", data.product_ids, data.embeddings)
    hook = session.hook()
    hook.create_project(JOB, JOB, "product_id", ["name", "description"], schedule="manual")
    log(f"{rows} rows: importing the vectors")
    hook.import_embeddings(JOB, "due_vectors", "product_id", "embedding")
    step = round(1 / changed)
    session.execute(f"UPDATE {JOB} SET description = description || ' (revised)' WHERE product_id % {step} = 0")
    session.execute(f"VACUUM ANALYZE {JOB}")
    session.execute(f'VACUUM ANALYZE vectorize."_embeddings_{JOB}"')
    with hook.transaction() as cur:
        project = catalog.find_project(cur, JOB)
    sides = {"scan": partial(scan, hook, project), "status": partial(hook.get_status, JOB),
             "freshness": partial(hook.get_freshness, JOB), "floor": partial(floor, session)}
    due = scan(hook, project)  # and warm: every side finds the tables in memory
    for name in SIDES:
        sides[name]()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(rounds):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for name in order:
            times[name].append(timed(sides[name])[0])
        log(f"{rows} rows, round {round_ + 1}: " + ", ".join(f"{n} {times[n][-1] * 1000:.0f} ms" for n in sides))
    hook.drop_project(JOB)
    session.drop_table(JOB)
    session.drop_table("due_vectors")
    return {"rows": rows, "due": due,
            **{name: median(values) for name, values in times.items()},
            "each_round_ms": {name: [round(v * 1000, 1) for v in values] for name, values in times.items()}}


def measurements(results: list[dict[str, Any]]) -> list[Measurement]:
    out = []
    for r in results:
        for side in ("scan", "status", "freshness"):
            out.append(Measurement(
                key=f"{side} {r['rows']}", title=f"{SIDES[side]} on {r['rows']:,} rows, 0.1 % changed",
                ours_label=SIDES[side], baseline_label=SIDES["floor"], unit="s",
                ours=r[side], baseline=r["floor"],
                details={"rows_due": r["due"], "us_per_row": round(r[side] / r["rows"] * 1e6, 3),
                         "floor_us_per_row": round(r["floor"] / r["rows"] * 1e6, 3),
                         "each_round_ms": r["each_round_ms"]}))
    if len(results) > 1:
        small, large = results[0], results[-1]
        for side in ("scan", "status", "freshness"):
            out.append(Measurement(
                key=f"{side} per row {large['rows']} / {small['rows']}",
                title=f"{side}: time per row at {large['rows']:,} ÷ at {small['rows']:,} rows",
                ours_label=f"µs per row at {large['rows']:,}", baseline_label=f"µs per row at {small['rows']:,}",
                unit="µs", ours=large[side] / large["rows"] * 1e6, baseline=small[side] / small["rows"] * 1e6))
    return out


def report(found: list[Measurement]) -> str:
    lines = ["| measurement | ours | baseline | ratio |", "|---|---:|---:|---:|"]
    for m in found:
        scale = 1000 if m.unit == "s" else 1
        unit = "ms" if m.unit == "s" else m.unit
        lines.append(f"| {m.title} | {m.ours * scale:.1f} {unit} | {m.baseline * scale:.1f} {unit} | {m.ratio:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000", help="table sizes, comma-separated")
    parser.add_argument("--changed", type=float, default=0.001, help="share of the texts changed")
    parser.add_argument("--rounds", type=int, default=5)
    add_output_arguments(parser, "due_rows")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.rows.split(",")]

    def run(session: BenchSession) -> list[dict[str, Any]]:
        found = measurements([measure_size(session, rows, args.changed, args.rounds) for rows in sizes])
        print(report(found))
        return [m.as_dict() for m in found]

    run_standalone("due_rows", args, argv, run, rows=sizes, changed=args.changed, rounds=args.rounds)


if __name__ == "__main__":
    main()
