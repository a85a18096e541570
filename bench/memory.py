"""Measurement 6: the worker's peak RSS at 4× the rows ÷ at 1×, for import and for generation.

Each run is its own process (``bench.worker``), which reports its peak RSS from ``/proc/self/status``
(``VmHWM``: the high-water mark of its own address space; ``ru_maxrss`` from ``getrusage``/``wait4`` would
include the parent's size at fork, which Linux carries over ``exec``). All four runs (import and
generation, 1× and 4×) run side by side: peak RSS is a property of each process, whatever else runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.imports import COLUMNS, PRODUCTS
from bench.measure import Measurement
from bench.session import BenchSession, log

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    def __init__(self, *args: str) -> None:
        self.args = args
        self.stdout = tempfile.TemporaryFile()
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen([sys.executable, "-m", "bench.worker", *args], cwd=ROOT,
                                        stdout=self.stdout, stderr=self.stderr)

    def wait(self) -> dict[str, Any]:
        self.process.wait()
        self.stdout.seek(0)
        self.stderr.seek(0)
        out, err = self.stdout.read().decode(), self.stderr.read().decode()
        if self.process.returncode != 0:
            raise RuntimeError(f"worker {self.args} failed ({self.process.returncode}):\n{err[-3000:]}")
        result = json.loads(out.strip().splitlines()[-1])
        result["peak_rss_mib"] = result["peak_rss_kib"] / 1024
        return result


def measure(session: BenchSession, import_rows: int, generate_rows: int) -> list[Measurement]:
    """Both kinds at 1× and 4×: four worker processes at once (peak RSS does not depend on the others)."""
    data = session.datasets[PRODUCTS]
    if 4 * import_rows > data.rows:
        raise ValueError(f"--memory-import-rows {import_rows} × 4 exceeds --rows {data.rows}")
    hook = session.hook()
    log(f"memory: import of {import_rows:,} and {4 * import_rows:,} rows, generation of {generate_rows:,}"
        f" and {4 * generate_rows:,} rows, one process each")
    jobs = []
    for scale, rows in (("1x", import_rows), ("4x", 4 * import_rows)):
        job = f"memory_import_{scale}"
        session.add_embeddings(job, data.product_ids[:rows], data.embeddings[:rows])
        hook.create_project(job, PRODUCTS, "product_id", COLUMNS, schedule="manual")
        jobs.append(("import", job, job))
    for scale, rows, seed in (("1x", generate_rows, 31), ("4x", 4 * generate_rows, 32)):
        job = f"memory_generate_{scale}"
        session.add_products(job, rows, seed=seed)
        hook.create_project(job, job, "product_id", COLUMNS, schedule="manual")
        jobs.append(("generate", job))
    workers = [Worker(*job) for job in jobs]
    results = {job[1]: worker.wait() for job, worker in zip(jobs, workers)}
    for job in jobs:
        hook.drop_project(job[1])
        session.drop_table(job[1])

    measurements = []
    for kind, noun in (("import", "an import"), ("generate", "a generation")):
        key, title = f"memory_{kind}_4x", f"Peak RSS of {noun} worker: 4× the rows ÷ 1×"
        one, four = results[f"memory_{kind}_1x"], results[f"memory_{kind}_4x"]
        log(f"  {kind}: peak RSS {one['peak_rss_mib']:.0f} MiB ({one['rows']:,} rows),"
            f" {four['peak_rss_mib']:.0f} MiB ({four['rows']:,} rows)")
        measurements.append(Measurement(
            key=key, title=title,
            ours_label=f"{kind} of {four['rows']:,} rows", baseline_label=f"{kind} of {one['rows']:,} rows",
            unit="MiB", ours=four["peak_rss_mib"], baseline=one["peak_rss_mib"], target=1.2,
            details={"1x": one, "4x": four},
        ))
    return measurements
