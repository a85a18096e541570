"""``python -m bench.writes``: what a project costs the writes of the table it watches (issue 31),
``make bench-writes``.

Three tables of the same shape and data, side by side in one run: no project, a ``manual`` project and a
``realtime`` project (both ``join``, the default, over ``name`` and ``description``). Each round, on each table in
turn (each table first in a third of the rounds; autovacuum off, the bench vacuums and analyzes before each
operation): ``COPY`` of ``--rows`` rows (1M) from a server-side file into the empty table, ``UPDATE`` of a column the
project does not embed on ``--subset`` rows (100k), ``UPDATE`` of an embedded column on the same rows,
``DELETE`` of those rows, ``TRUNCATE`` of the rest, ``INSERT … SELECT`` of the ``--rows`` rows. The project's
tables hold a vector for every key of the table (as after a generation run; no HNSW index: source writes never
touch it), and the realtime queue is emptied before each operation, so each pays only for its own rows. A
``CHECKPOINT`` precedes every timed statement. Reported: the median seconds over ``--rounds`` and each project's
ratio to the table without one. Targets: COPY and INSERT ≤ 1.3×, UPDATE of a non-embedded column ≤ 1.05×,
UPDATE of an embedded column and DELETE ≤ 1.5×; TRUNCATE reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.measure import Measurement, timed  # noqa: E402
from bench.output import add_output_arguments, write_results  # noqa: E402
from bench.session import BenchSession, log, prepare_environment  # noqa: E402

VARIANTS = {"none": None, "manual": "manual", "realtime": "realtime"}  # table suffix -> project schedule
OPERATIONS = {  # name -> (SQL on {t}, target ratio)
    "COPY": ("COPY {t} (product_id, name, description, category, price) FROM '{file}'", 1.3),
    "UPDATE non-embedded column": ("UPDATE {t} SET price = price + 1 WHERE product_id <= {subset}", 1.05),
    "UPDATE embedded column": ("UPDATE {t} SET description = description || ' v2' WHERE product_id <= {subset}", 1.5),
    "DELETE": ("DELETE FROM {t} WHERE product_id <= {subset}", 1.5),
    "TRUNCATE": ("TRUNCATE {t}", None),
    "INSERT … SELECT": ("INSERT INTO {t} (product_id, name, description, category, price)"
                        " SELECT product_id, name, description, category, price FROM rows_to_load", 1.3),
}

WORDS = ("lightweight compact waterproof premium affordable durable wireless ergonomic foldable professional"
         " quiet rechargeable phone laptop headphones espresso knife skillet shoes mat bike tent drill chair"
         " desk book watch vacuum battery screen warranty frame display case brakes coating presets").split()


def create_rows(session: BenchSession, rows: int) -> None:
    """``rows_to_load``: ``rows`` products with ~20-word descriptions, made in the server."""
    words = "ARRAY[" + ", ".join(f"'{w}'" for w in WORDS) + "]"
    session.execute(
        f"CREATE TABLE rows_to_load AS SELECT g AS product_id,"
        f" initcap(({words})[1 + g % {len(WORDS)}]) || ' ' || ({words})[1 + (g / 7) % {len(WORDS)}] || ' ' || g AS name,"
        f" (SELECT string_agg(({words})[1 + ((g * 31 + i * 17) % {len(WORDS)})], ' ') FROM generate_series(1, 20) i)"
        f" AS description, ({words})[1 + (g / 3) % 10] AS category, round((g % 2000)::numeric + 0.99, 2) AS price"
        f" FROM generate_series(1, {rows}) g")
    session.execute("VACUUM ANALYZE rows_to_load")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--subset", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=6)  # each table first in 2 of them
    add_output_arguments(parser, "writes")
    args = parser.parse_args(argv)
    prepare_environment()
    session = BenchSession.start()
    seconds: dict[tuple[str, str], list[float]] = {}
    try:
        log(f"making {args.rows} rows")
        create_rows(session, args.rows)
        folder = Path(tempfile.mkdtemp(prefix="vectorize-bench-writes-"))
        folder.chmod(0o777)  # the server (another OS user here) writes and reads the file
        file = folder / "rows.copy"
        session.execute(f"COPY rows_to_load (product_id, name, description, category, price) TO '{file}'")
        hook = session.hook()
        for suffix, schedule in VARIANTS.items():
            table = f"t_{suffix}"
            # Autovacuum off: a worker vacuuming one table while another is timed takes the other core; the
            # bench vacuums and analyzes every table before each operation itself.
            session.execute(f"CREATE TABLE {table} (product_id integer PRIMARY KEY, name text NOT NULL,"
                            " description text, category varchar(40), price numeric(10, 2),"
                            " updated_at timestamptz NOT NULL DEFAULT now()) WITH (autovacuum_enabled = false)")
            if schedule:
                hook.create_project(table, table, "product_id", ["name", "description"], schedule=schedule)
                session.execute(f'DROP INDEX vectorize."{table}_hnsw_cos_idx"')
                vector = "[" + ",".join(["0.05"] * 384) + "]"
                session.execute(f"INSERT INTO vectorize._embeddings_{table} (product_id, embeddings, text_md5)"
                                f" SELECT product_id, '{vector}', md5(name || ', ' || description)::uuid FROM rows_to_load")
                session.execute(f"VACUUM ANALYZE vectorize._embeddings_{table}")
                session.execute(f"ALTER TABLE vectorize._embeddings_{table} SET (autovacuum_enabled = false)")
        for round_ in range(args.rounds):
            for suffix in VARIANTS:
                session.execute(f"TRUNCATE t_{suffix}")
                if VARIANTS[suffix]:
                    session.execute(f"TRUNCATE vectorize._removed_t_{suffix}")
            order = list(VARIANTS)[round_ % 3:] + list(VARIANTS)[:round_ % 3]  # each table first in turn
            for operation, (statement, _) in OPERATIONS.items():
                for suffix in order:
                    schedule = VARIANTS[suffix]
                    if schedule:  # each operation pays only for its own queued keys and removed keys
                        session.execute(f"TRUNCATE vectorize._pending_t_{suffix}, vectorize._removed_t_{suffix}")
                    session.execute(f"VACUUM ANALYZE t_{suffix}")
                    session.settle()
                    took, _ = timed(lambda: session.execute(
                        statement.format(t=f"t_{suffix}", file=file, subset=args.subset)))
                    seconds.setdefault((operation, suffix), []).append(took)
                    log(f"round {round_ + 1} {operation} on t_{suffix}: {took:.2f} s")
        file.unlink()
        folder.rmdir()
    finally:
        session.stop()
    results = []
    for operation, (_, target) in OPERATIONS.items():
        baseline = statistics.median(seconds[(operation, "none")])
        for suffix in ("manual", "realtime"):
            ours = statistics.median(seconds[(operation, suffix)])
            m = Measurement(key=f"{operation} / {suffix}", title=f"{operation} with a {suffix} project",
                            ours_label=f"{suffix} project", baseline_label="no project", unit="s", ours=ours,
                            baseline=baseline, target=target,
                            details={"runs": seconds[(operation, suffix)], "baseline_runs": seconds[(operation, "none")]})
            results.append(m.as_dict())
    meta = {"rows": args.rows, "subset": args.subset, "rounds": args.rounds, "machine": platform.machine(),
            "python": sys.version.split()[0]}
    path = write_results(args, "writes", meta, results)
    print(report(results))
    log(f"results: {path}")


def report(results: list[dict[str, Any]]) -> str:
    lines = ["| operation | project | seconds (median) | without a project | ratio | target |", "|---|---|---:|---:|---:|---|"]
    for r in results:
        operation, project = r["key"].split(" / ")
        lines.append(f"| {operation} | {project} | {r['ours']:.3f} | {r['baseline']:.3f} | {r['ratio']:.2f}"
                     f" ({r['status']}) | {r['target_text']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
