"""``python -m bench.scaling``: import with the HNSW index at 100k / 300k / 1M rows (issue 34, point 2),
``make bench-scaling``.

The bench's product table and clustered 384-dimension vectors (bench/data.py), made once at the largest size;
each size is a copy of its first n rows and a project of its own, imported by a worker process of its own
(``bench.worker import-indexed``: ``import_embeddings`` as a user runs it, ending with the HNSW build sized by
``index_build``). Reported per size: seconds, seconds per row (and its ratio to the smallest size's), the
phases, the worker's peak RSS (``VmHWM``), the server's memory while it ran (sampled every 0.2 s: the largest
PostgreSQL process's RSS, which holds the graph of a serial build, and the sum over its processes, which counts
shared buffers once per process), the index's size. A plot of seconds per row: bench/scaling.png.
Reported, not asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.output import add_output_arguments, run_standalone
from bench.session import BenchSession, log

CHART = ROOT / "bench" / "scaling.png"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda text: [int(n) for n in text.split(",")],
                        default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--index-build-memory", default="auto",
                        help="the hook's index_build_memory cap (auto: 4GB; the graph of 3M rows needs ≈ 8GB)")
    add_output_arguments(parser, "scaling")
    args = parser.parse_args(argv)
    os.environ["VECTORIZE_BENCH_INDEX_BUILD_MEMORY"] = args.index_build_memory  # for the workers
    results = run_standalone("scaling", args, argv, lambda session: run(session, args.sizes), sizes=args.sizes,
                             index_build_memory=args.index_build_memory)
    chart(results, CHART if args.latest else args.output_dir / "scaling.png")


class ServerMemory:
    """The PostgreSQL processes' RSS, sampled in a thread: the peak of the largest one and of their sum."""

    def __init__(self, postmaster_pid: int) -> None:
        import psutil

        self.postmaster = psutil.Process(postmaster_pid)
        self.largest = self.total = 0
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        import psutil

        while self.running:
            sizes = []
            for process in [self.postmaster, *self.postmaster.children()]:
                try:
                    sizes.append(process.memory_info().rss)
                except psutil.Error:
                    pass
            self.largest, self.total = max(self.largest, max(sizes)), max(self.total, sum(sizes))
            time.sleep(0.2)

    def stop(self) -> dict[str, float]:
        self.running = False
        self.thread.join()
        return {"largest_process_mib": round(self.largest / 2**20), "all_processes_mib": round(self.total / 2**20)}


def run(session: BenchSession, sizes: list[int]) -> dict[str, Any]:
    from psycopg import sql

    from bench.memory import Worker

    largest = max(sizes)
    started = time.perf_counter()
    data = session.add_products("products_all", largest, seed=11)
    session.add_embeddings("vectors_all", data.product_ids, data.embeddings)
    log(f"{largest:,} rows and vectors made in {time.perf_counter() - started:.0f} s")
    pid = session.scalar("SELECT pg_backend_pid()")
    postmaster = int(Path(f"/proc/{pid}/status").read_text().split("PPid:")[1].split()[0])
    rows_out: dict[str, Any] = {}
    for n in sizes:
        table, vectors, job = f"products_{n}", f"vectors_{n}", f"scale_{n}"
        for target, source in ((table, "products_all"), (vectors, "vectors_all")):
            session.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM {} WHERE product_id <= %s").format(
                sql.Identifier(target), sql.Identifier(source)), [n])
            session.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (product_id)").format(sql.Identifier(target)))
            session.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(target)))
        session.hook().create_project(job, table, "product_id", ["name", "description"], schedule="manual")
        session.settle()
        memory = ServerMemory(postmaster)
        worker = Worker("import-indexed", job, vectors).wait()
        server = memory.stop()
        index = session.scalar("SELECT pg_relation_size(%s::regclass)", [f"vectorize.{job}_hnsw_cos_idx"])
        rows_out[str(n)] = {"seconds": worker["seconds"], "seconds_per_row": worker["seconds"] / n,
                            "phases": worker["phases"], "worker_peak_rss_mib": round(worker["peak_rss_mib"]),
                            "server_memory": server, "index_mib": round(index / 2**20)}
        log(f"  {n:,} rows: {worker['seconds']:.1f} s ({worker['seconds'] / n * 1e6:.1f} µs a row), phases"
            f" {worker['phases']}, worker {worker['peak_rss_mib']:.0f} MiB, server {server}, index {index / 2**20:.0f} MiB")
        session.hook().drop_project(job)
        session.execute(sql.SQL("DROP TABLE {}, {}").format(sql.Identifier(table), sql.Identifier(vectors)))
    base = rows_out[str(min(sizes))]
    for entry in rows_out.values():
        entry["per_row_ratio_to_smallest"] = round(entry["seconds_per_row"] / base["seconds_per_row"], 3)
        entry["worker_rss_ratio_to_smallest"] = round(entry["worker_peak_rss_mib"] / base["worker_peak_rss_mib"], 3)
    return {"sizes": rows_out}


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(int(n) for n in results["sizes"])
    per_row = [results["sizes"][str(n)]["seconds_per_row"] * 1e6 for n in sizes]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.plot(sizes, per_row, marker="o")
    axes.set(xscale="log", xlabel="rows", ylabel="µs per row", ylim=(0, max(per_row) * 1.2),
             title="import_embeddings with the HNSW build, per row")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    main()
