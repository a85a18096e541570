"""A worker process for the memory measurement: one import or one generation run, then a JSON summary.

``python -m bench.worker import <job> <src_table>`` or ``python -m bench.worker generate <job>``; the
Airflow connection comes from the parent's environment. The import skips the HNSW build (it runs in the
server, not in the worker), so that the worker's peak RSS is what is measured, at a cost of seconds;
``import-indexed`` builds it (bench/scaling.py).
"""

from __future__ import annotations

import json
import os
import sys

from bench.session import CONN_ID, prepare_environment


def main(argv: list[str]) -> None:
    prepare_environment()
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    hook = VectorizeHook(postgres_conn_id=CONN_ID,
                         index_build_memory=os.environ.get("VECTORIZE_BENCH_INDEX_BUILD_MEMORY", "auto"))
    kind, job = argv[0], argv[1]
    if kind in ("import", "import-indexed"):  # import-indexed: with the HNSW build, as a user runs it
        from bench.phases import import_phases

        with import_phases(skip_index_build=kind == "import") as phases:
            result = hook.import_embeddings(job, argv[2], "product_id", "embedding")
        rows, result["phases"] = result["imported"], {k: round(v, 3) for k, v in phases.items()}
    elif kind == "generate":
        result = hook.generate_embeddings(job)
        rows = result["embedded"]
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")
    print(json.dumps({"kind": kind, "job": job, "rows": rows, "peak_rss_kib": peak_rss_kib(),
                      "seconds": result.get("seconds"), "phases": result.get("phases")}))


def peak_rss_kib() -> int:
    """This process's peak resident set size since its ``exec`` (``VmHWM``).

    Not ``getrusage().ru_maxrss``: Linux carries that high-water mark over ``exec`` from the forked parent,
    so a worker started by a parent that holds the model would report the parent's size.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    main(sys.argv[1:])
