"""``python -m bench.backfill``: backfill throughput through a real Airflow 3 with CeleryExecutor at 1, 2 and 4
workers (``make bench-backfill``).

One deployment (scripts/deployment.py: scheduler, dag-processor, triggerer, api-server, Redis, the metadata DB
and the project data on one embedded PostgreSQL). For each worker count the Celery workers are restarted,
the archive table and its project are dropped, and ``vectorize_embedding_backfill`` is triggered through the
REST API with conf ``{"rows": N}``: four hash partitions, one mapped ``embed_partition`` task each, each
worker running one task at a time (concurrency 1) with torch on ``--torch-threads`` threads.

Throughput is rows / the partition phase (first ``embed_partition`` start to last end, from the REST API's
task instances), so it includes what a worker pays per task (process fork, DAG file import, model load)
but not the run's set-up tasks. CPU seconds are read from /proc for the worker process trees, the PostgreSQL
server, and the whole machine (other processes on it included), to tell where it saturates.
A reference run with 1 worker and torch on every core shows what one worker alone gets out of the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.output import add_output_arguments, write_results
from bench.session import log, prepare_environment
from scripts.deployment import AirflowDeployment

DAG_ID = "vectorize_embedding_backfill"
JOB = "product_archive"


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants, reaped ones included (via children times)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def cpu_snapshot(deployment: AirflowDeployment) -> dict[str, float]:
    import psutil

    machine = psutil.cpu_times()
    postmaster = int((deployment.postgres.data_dir / "postmaster.pid").read_text().split()[0])
    return {
        "workers": sum(_tree_cpu(w.process.pid) for w in deployment.celery_workers),
        "postgres": _tree_cpu(postmaster),
        "airflow": sum(_tree_cpu(c.process.pid) for c in deployment.components
                       if c.name in ("scheduler", "api-server", "dag-processor", "triggerer", "redis")),
        "machine_busy": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
        "wall": time.monotonic(),
    }


def reset(deployment: AirflowDeployment) -> None:
    """No project, no archive table: every measurement embeds every row."""
    deployment.hook().drop_project(JOB, missing_ok=True)
    with deployment.data_connection() as conn:
        conn.execute("DROP TABLE IF EXISTS archive")


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def measure(deployment: AirflowDeployment, rows: int, timeout: float) -> dict[str, Any]:
    """One backfill run of ``rows`` rows; its timings, rates and CPU use."""
    reset(deployment)
    before = cpu_snapshot(deployment)
    run_id = deployment.trigger(DAG_ID, conf={"rows": rows})
    run = deployment.wait_for_run(DAG_ID, run_id, timeout=timeout, poll=0.5)
    after = cpu_snapshot(deployment)
    tis = deployment.task_instances(DAG_ID, run_id)
    if run["state"] != "success" or any(ti["state"] != "success" for ti in tis):
        raise RuntimeError(f"run {run_id} {run['state']}: " + ", ".join(f"{t['task_id']}[{t['map_index']}]"
                                                                        f" {t['state']}" for t in tis))
    parts = [ti for ti in tis if ti["task_id"] == "embed_partition"]
    results = [deployment.xcom(DAG_ID, run_id, "embed_partition", ti["map_index"]) for ti in parts]
    embedded = sum(r["embedded"] for r in results)
    if embedded != rows:
        raise RuntimeError(f"embedded {embedded} rows, expected {rows}")
    phase = max(_ts(ti["end_date"]) for ti in parts) - min(_ts(ti["start_date"]) for ti in parts)
    run_seconds = _ts(run["end_date"]) - _ts(run["start_date"])
    wall = after["wall"] - before["wall"]
    return {
        "run_id": run_id,
        "rows": rows,
        "phase_seconds": round(phase, 2),
        "rows_per_second": round(rows / phase, 1),
        "run_seconds": round(run_seconds, 2),
        "run_rows_per_second": round(rows / run_seconds, 1),
        "partition_seconds": [round(ti["duration"], 2) for ti in parts],
        # inside the tasks: generation's own clock (no fork, DAG import or model load)
        "generation_seconds": [r["seconds"] for r in results],
        "hosts": sorted({ti["hostname"] for ti in parts}),
        "cpu_seconds": {k: round(after[k] - before[k], 1) for k in ("workers", "postgres", "airflow", "machine_busy")},
        # average busy cores while the run was measured: all processes on the machine, and this deployment's
        # (workers, PostgreSQL, scheduler, api-server...): on a shared machine the difference is the others'
        "machine_busy_cores": round((after["machine_busy"] - before["machine_busy"]) / wall, 2),
        "deployment_cores": round(sum(after[k] - before[k] for k in ("workers", "postgres", "airflow")) / wall, 2),
        # the cost of a row, whatever share of the machine the run got
        "rows_per_worker_cpu_second": round(rows / max(after["workers"] - before["workers"], 1e-9), 1),
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the archive table (10000)")
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts (1,2,4)")
    parser.add_argument("--torch-threads", type=int, default=1, help="OMP_NUM_THREADS of every task (1)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per worker count; the median is kept (1)")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also 1 worker with torch on every core (yes)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for one run (1800)")
    add_output_arguments(parser, "backfill")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    prepare_environment()

    started = time.perf_counter()
    load_before = os.getloadavg()
    measurements: list[dict[str, Any]] = []
    threads_env = {"OMP_NUM_THREADS": str(args.torch_threads)}
    log(f"starting Airflow (CeleryExecutor, {counts[0]} worker(s)); {args.rows:,} rows, workers {counts}")
    with AirflowDeployment("CeleryExecutor", workers=counts[0], torch_threads=args.torch_threads,
                           start_timeout=300) as deployment:
        deployment.wait_for_dags([DAG_ID])
        deployment.unpause(DAG_ID)
        log(f"up in {deployment.timings['start']:.0f} s; warm-up run ({min(args.rows, 1000)} rows)")
        measure(deployment, min(args.rows, 1000), args.timeout)
        plan = [(n, args.torch_threads, threads_env) for n in counts]
        if args.reference:
            cores = os.cpu_count() or 1
            plan.append((1, cores, {"OMP_NUM_THREADS": str(cores)}))
        current = (counts[0], args.torch_threads)
        for workers, threads, env in plan:
            if (workers, threads) != current:
                log(f"restarting the workers: {workers} worker(s), torch threads {threads}")
                deployment.set_workers(workers, env=env)
                current = (workers, threads)
            runs = []
            for repeat in range(args.repeats):
                log(f"{workers} worker(s), {threads} thread(s): run {repeat + 1}/{args.repeats}")
                runs.append(measure(deployment, args.rows, args.timeout))
                log(f"  {runs[-1]['rows_per_second']:.0f} rows/s over {runs[-1]['phase_seconds']:.1f} s, "
                    f"machine busy {runs[-1]['machine_busy_cores']:.2f} cores")
            best = sorted(runs, key=lambda r: r["rows_per_second"])[len(runs) // 2]
            measurements.append({"workers": workers, "torch_threads": threads,
                                 "reference": threads != args.torch_threads, **best,
                                 "all_rows_per_second": [r["rows_per_second"] for r in runs]})
        start_seconds = deployment.timings["start"]

    base = next((m for m in measurements if m["workers"] == 1 and not m["reference"]), None)
    for m in measurements:
        m["ratio_vs_1_worker"] = round(m["rows_per_second"] / base["rows_per_second"], 2) if base else None
    meta = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m bench.backfill " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "deployment_start_seconds": round(start_seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    path = write_results(args, "backfill", meta, measurements)
    print(table(measurements, args.rows))
    print(f"\nwall time {meta['wall_seconds']:.0f} s (deployment up in {start_seconds:.0f} s); wrote {path}"
          + (" and bench/latest-backfill.json" if args.latest else ""))
    return {"json": path, "measurements": measurements, "meta": meta}


def table(measurements: list[dict[str, Any]], rows: int) -> str:
    header = (f"{'workers':>7} {'threads':>7} {'rows/s':>8} {'ratio':>6} {'phase s':>8} {'run s':>7} "
              f"{'worker CPU s':>12} {'rows/CPU s':>10} {'pg CPU s':>8} {'ours/busy cores':>15}  partitions s")
    lines = [f"backfill of {rows:,} rows, 4 hash partitions (vectorize_embedding_backfill), CeleryExecutor", header]
    for m in measurements:
        ratio = f"{m['ratio_vs_1_worker']:.2f}x" if m["ratio_vs_1_worker"] is not None else "-"
        lines.append(
            f"{m['workers']:>7} {m['torch_threads']:>7} {m['rows_per_second']:>8.0f} {ratio:>6} "
            f"{m['phase_seconds']:>8.1f} {m['run_seconds']:>7.1f} {m['cpu_seconds']['workers']:>12.1f} "
            f"{m.get('rows_per_worker_cpu_second', 0):>10.0f} {m['cpu_seconds']['postgres']:>8.1f} "
            f"{m.get('deployment_cores', 0):>7.2f}/{m['machine_busy_cores']:<7.2f}  "
            + " ".join(f"{s:.1f}" for s in m["partition_seconds"])
            + ("  (reference: one worker, torch on every core)" if m["reference"] else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
    sys.exit(0)
