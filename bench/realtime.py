"""Realtime lag under a real Airflow: insert-to-searchable time of rows written at a steady rate.

``python -m bench.realtime`` starts ``scripts.deployment.AirflowDeployment`` (LocalExecutor: scheduler,
dag-processor, triggerer, api-server; metadata DB and data on an embedded PostgreSQL), runs
``vectorize_realtime_setup``, unpauses ``vectorize_realtime`` (scheduled on the project's queue Asset, whose
``PendingRowsTrigger`` runs in the triggerer), then inserts ``--rate`` rows/s, one transaction each, for
``--seconds``. A watcher polls the embeddings table every 0.1 s; a row's lag is the time from its insert's
commit to the poll that first sees its embedding (i.e. a search can find it). At the end: p50/p95/max lag,
rows lost (never embedded within ``--drain`` s), rows embedded more than once (sum of the runs' ``embedded``
over rows inserted), and the number of DAG runs (bursts coalesce). Results: ``bench/latest-realtime.json``.

The model: the local one by default, imported once by the scheduler's forkserver (``preload``) so that a
task process does not import torch; ``--remote`` uses a local Infinity server instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from scripts.deployment import AirflowDeployment

BENCH_DIR = Path(__file__).resolve().parent
JOB = "live_products"
SETUP, REALTIME = "vectorize_realtime_setup", "vectorize_realtime"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Watcher(threading.Thread):
    """Polls the embeddings table; records when each awaited key is first seen."""

    def __init__(self, deployment: AirflowDeployment, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.conn = deployment.data_connection()
        self.interval = interval
        self.awaited: dict[int, float] = {}  # key -> insert commit time (monotonic)
        self.seen: dict[int, float] = {}  # key -> lag in seconds
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def expect(self, key: int, committed_at: float) -> None:
        with self.lock:
            self.awaited[key] = committed_at

    def run(self) -> None:
        while not self.stopped.is_set():
            with self.lock:
                keys = list(self.awaited)
            if keys:
                found = [k for (k,) in self.conn.execute(
                    "SELECT product_id FROM vectorize._embeddings_live_products WHERE product_id = ANY(%s)",
                    [keys]).fetchall()]
                now = time.monotonic()
                with self.lock:
                    for key in found:
                        self.seen[key] = now - self.awaited.pop(key)
            self.stopped.wait(self.interval)
        self.conn.close()

    def outstanding(self) -> int:
        with self.lock:
            return len(self.awaited)


def insert(conn: Any, key: int) -> float:
    conn.execute("INSERT INTO live_products (product_id, name, description) VALUES (%s, %s, %s)",
                 [key, f"Gadget {key}", f"a brand new gadget, model {key}, with a long battery life"])
    return time.monotonic()  # autocommit: committed when execute returns


def wait_for(watcher: Watcher, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while watcher.outstanding() and time.monotonic() < deadline:
        time.sleep(0.2)


def measure(rate: float, seconds: float, drain: float, remote: bool) -> dict[str, Any]:
    env: dict[str, str] = {}
    infinity = None
    if remote:
        from scripts.infinity_server import INFINITY_MODEL_NAME, InfinityServer

        infinity = InfinityServer().start()
        env = {"AIRFLOW_CONN_INFINITY": json.dumps({"conn_type": "openai", "host": infinity.url}),
               "VECTORIZE_REALTIME_MODEL": f"openai/{INFINITY_MODEL_NAME}",
               "VECTORIZE_REALTIME_MODEL_CONN_ID": "infinity"}
    preload = () if remote else ("sentence_transformers", "airflow_vectorize.operators")
    try:
        with AirflowDeployment("LocalExecutor", env=env, preload=preload) as deployment:
            deployment.wait_for_dags([SETUP, REALTIME])
            deployment.unpause(SETUP)
            setup = deployment.wait_for_run(SETUP, deployment.trigger(SETUP))
            if setup["state"] != "success":
                raise RuntimeError(f"{SETUP}: {setup['state']}; see {deployment.logs_dir}")
            deployment.unpause(REALTIME)  # its first run embeds the setup's first rows
            watcher = Watcher(deployment)
            watcher.start()
            writer = deployment.data_connection()
            # Warm-up: a row goes through the whole chain (watcher -> run -> task) before timing.
            first_rows = writer.execute("SELECT count(*) FROM live_products").fetchone()[0]
            warm_started = time.monotonic()
            watcher.expect(0, insert(writer, 0))
            wait_for(watcher, 180)
            if watcher.outstanding():
                raise RuntimeError(f"warm-up row not embedded in 180 s; see {deployment.logs_dir}")
            warm_up = time.monotonic() - warm_started
            watcher.seen.clear()
            runs_before = len(deployment.dag_runs(REALTIME))

            count = int(rate * seconds)
            started = time.monotonic()
            for i in range(1000, 1000 + count):
                delay = started + (i - 999) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                watcher.expect(i, insert(writer, i))
            wait_for(watcher, drain)
            watcher.stopped.set()
            watcher.join()
            lost = watcher.outstanding()
            time.sleep(2)
            runs = [r for r in deployment.dag_runs(REALTIME)]
            deployment.pause(REALTIME)
            finished = deployment.wait_for_runs([(REALTIME, r["dag_run_id"]) for r in runs], timeout=120)
            embedded = sum((deployment.xcom(REALTIME, run_id, "embed_pending") or {}).get("embedded", 0)
                           for _, run_id in finished)
            states = [r["state"] for r in finished.values()]
            lags = list(watcher.seen.values())
            writer.close()
    finally:
        if infinity is not None:
            infinity.stop()
    return {
        "model": "remote (Infinity)" if remote else "local (preloaded by the forkserver)",
        "rate_per_second": rate,
        "seconds": seconds,
        "rows": count,
        "warm_up_seconds": round(warm_up, 2),
        "lag_p50_seconds": round(statistics.median(lags), 2) if lags else None,
        "lag_p95_seconds": round(percentile(lags, 0.95), 2) if lags else None,
        "lag_max_seconds": round(max(lags), 2) if lags else None,
        "lost_rows": lost,
        "embedded_by_runs": embedded,
        "embedded_more_than_once": embedded - (count + 1 + first_rows),  # + the warm-up and setup's rows
        "dag_runs": len(runs) - runs_before,
        "dag_runs_failed": states.count("failed"),
        "targets": {"lag_p50_seconds": 5, "lag_p95_seconds": 15},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.realtime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10.0, help="inserts per second (10)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to insert (60)")
    parser.add_argument("--drain", type=float, default=120.0, help="wait for the last rows at most (120 s)")
    parser.add_argument("--remote", action="store_true", help="embed through a local Infinity server")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "latest-realtime.json")
    args = parser.parse_args(argv)
    result = measure(args.rate, args.seconds, args.drain, args.remote)
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
