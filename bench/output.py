"""Where a standalone bench (``python -m bench.<name>``) writes its results: a timestamped JSON file in
``--output-dir``, and with ``--latest`` a copy as ``bench/latest-<name>.json``."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent


def add_output_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--output-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--latest", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also copy the results to bench/latest-{name}.json (yes)")


def write_results(args: argparse.Namespace, name: str, meta: dict[str, Any], measurements: Any) -> Path:
    """``{"meta", "measurements"}`` as ``<output-dir>/<name>-<time>.json`` (and bench/latest-<name>.json)."""
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"meta": meta, "measurements": measurements}, indent=2) + "\n")
    if args.latest:
        shutil.copyfile(path, BENCH_DIR / f"latest-{name}.json")
    return path


def run_standalone(name: str, args: argparse.Namespace, argv: list[str] | None,
                   run: Callable[[Any], Any], **meta: Any) -> Any:
    """A standalone bench: the embedded server for the run, then its results written (``write_results``)
    with the command, the time and the Python version. Returns what ``run(session)`` returned."""
    import platform
    import sys

    from bench.session import BenchSession, log, prepare_environment

    prepare_environment()
    session = BenchSession.start()
    try:
        results = run(session)
    finally:
        session.stop()
    meta = {"command": " ".join([f"python -m bench.{name}", *(argv if argv is not None else sys.argv[1:])]),
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(), **meta}
    log(f"results: {write_results(args, name, meta, results)}")
    return results
