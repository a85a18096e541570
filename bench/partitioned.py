"""``python -m bench.partitioned``: a realtime run of a few queued rows on a partitioned source against the
same rows in a plain table, ``make bench-partitioned``.

``--rows`` rows (key ``(id, day)``, a short text) in a plain table and in one partitioned by ``day`` into
``--partitions`` ranges; a realtime join project on each, its vectors imported (random, from the bench's vector
space: the model is not what is measured). Then ``--rounds`` rounds, the sides taking turns first: ``--queued``
rows' texts changed (queued by the triggers), then ``generate_embeddings(pending_only=True)``, timed. Reported:
median and each round per side, and partitioned − plain. What a partitioned source adds to a realtime run is
what its rows cost to find by their keys: the planner would scan every partition for them (``generation.by_key``,
``nested_loops``). Then a third of the rows deleted from a partitioned table with no project, a realtime join
project and an append project (``deletes``). Reported, not asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.output import add_output_arguments, run_standalone
from bench.session import BenchSession, log

SIDES = ("plain", "partitioned")
DAYS = 300


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--queued", type=int, default=1, help="rows changed before each run")
    parser.add_argument("--rounds", type=int, default=7)
    add_output_arguments(parser, "partitioned")
    args = parser.parse_args(argv)
    run_standalone("partitioned", args, argv, lambda session: run(session, args), rows=args.rows,
                   partitions=args.partitions, queued=args.queued, rounds=args.rounds)


def run(session: BenchSession, args: argparse.Namespace) -> dict[str, Any]:
    import datetime

    from psycopg import sql

    ddl = "CREATE TABLE {} (id integer, day date NOT NULL, body text, PRIMARY KEY (id, day))"
    session.execute(sql.SQL(ddl).format(sql.Identifier("plain")))
    session.execute(sql.SQL(ddl + " PARTITION BY RANGE (day)").format(sql.Identifier("partitioned")))
    span = -(-DAYS // args.partitions)
    for p in range(args.partitions):
        session.execute(sql.SQL("CREATE TABLE {} PARTITION OF partitioned FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(f"partitioned_{p}"), sql.Literal(_day(p * span)), sql.Literal(_day((p + 1) * span))))
    for side in SIDES:
        session.execute(sql.SQL("INSERT INTO {} SELECT i, %s::date + (i %% %s), 'a note, number ' || i"
                                " FROM generate_series(1, %s) i").format(sql.Identifier(side)),
                        [_day(0), DAYS, args.rows])
        session.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(side)))
    session.execute("CREATE TABLE vectors (id integer, day date, embedding vector(384))")
    vectors = session.space.sample(args.rows, seed=3)
    with session.conn.cursor() as cur, cur.copy("COPY vectors FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int4", "date", "vector"])
        for i, vector in enumerate(vectors, 1):
            copy.write_row((i, _day(0) + datetime.timedelta(days=i % DAYS), vector))
    hook = session.hook()
    for side in SIDES:
        hook.create_project(side, side, ["id", "day"], ["body"], schedule="realtime")
        started = time.perf_counter()
        hook.import_embeddings(side, "vectors", ["id", "day"], "embedding")
        log(f"{side}: {args.rows:,} vectors imported in {time.perf_counter() - started:.0f} s")
        hook.generate_embeddings(side, pending_only=True)  # the model loaded, the project settled
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    for round_ in range(args.rounds):
        for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
            first = 1 + round_ * args.queued
            session.execute(sql.SQL("UPDATE {} SET body = body || ' (changed)' WHERE id >= %s AND id < %s").format(
                sql.Identifier(side)), [first, first + args.queued])
            session.settle()
            started = time.perf_counter()
            out = hook.generate_embeddings(side, pending_only=True)
            seconds[side].append(round(time.perf_counter() - started, 4))
            assert out["embedded"] == args.queued, out
    result = {side: {"median_ms": round(statistics.median(s) * 1000, 1), "all_seconds": s}
              for side, s in seconds.items()}
    result["partitioned_minus_plain_ms"] = round(result["partitioned"]["median_ms"] - result["plain"]["median_ms"], 1)
    log(f"realtime run of {args.queued} queued row(s), {args.rows:,} rows: {result}")
    return {"realtime_run": result, "delete": deletes(session, args)}


def deletes(session: BenchSession, args: argparse.Namespace) -> dict[str, Any]:
    """A third of the rows deleted from a partitioned table with no project, a realtime join project and an
    append project (rows without vectors: the trigger's condition skips them), ``--rounds`` // 2 rounds, the
    order turning; medians and ratios to no project."""
    from psycopg import sql

    sides = {"none": None, "join": {}, "append": {"table_method": "append"}}
    span = -(-DAYS // args.partitions)
    hook = session.hook()
    for side, arguments in sides.items():
        table = sql.Identifier(f"deletes_{side}")
        session.execute(sql.SQL("CREATE TABLE {} (id integer, day date NOT NULL, body text, PRIMARY KEY (id, day))"
                                " PARTITION BY RANGE (day)").format(table))
        for p in range(args.partitions):
            session.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(f"deletes_{side}_{p}"), table, sql.Literal(_day(p * span)),
                sql.Literal(_day((p + 1) * span))))
        if arguments is not None:
            hook.create_project(f"deletes_{side}", f"deletes_{side}", ["id", "day"], ["body"], schedule="realtime",
                                **arguments)
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    for round_ in range(max(1, args.rounds // 2)):
        for side in list(sides) if round_ % 2 == 0 else list(sides)[::-1]:
            table = sql.Identifier(f"deletes_{side}")
            session.execute(sql.SQL("TRUNCATE {}").format(table))
            if side != "none":
                session.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier("vectorize", f"_bulk_deletes_{side}")))
            session.execute(sql.SQL("INSERT INTO {} SELECT i, %s::date + (i %% %s), 'a note, number ' || i"
                                    " FROM generate_series(1, %s) i").format(table), [_day(0), DAYS, args.rows])
            session.execute(sql.SQL("VACUUM (ANALYZE) {}").format(table))
            session.settle()
            started = time.perf_counter()
            session.execute(sql.SQL("DELETE FROM {} WHERE id % 3 = 0").format(table))
            seconds[side].append(round(time.perf_counter() - started, 4))
    base = statistics.median(seconds["none"])
    result = {side: {"median_s": round(statistics.median(s), 4), "ratio": round(statistics.median(s) / base, 2),
                     "all_seconds": s} for side, s in seconds.items()}
    log(f"DELETE of a third of {args.rows:,} rows: {result}")
    return result


def _day(offset: int):
    import datetime

    return datetime.date(2026, 1, 1) + datetime.timedelta(days=offset)


if __name__ == "__main__":
    main()
