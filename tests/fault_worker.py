"""A worker process for tests/test_faults.py: VectorizeHook calls in a process of their own, so a test can kill it.

    python tests/fault_worker.py

Prints ``ready`` once the hook's modules are imported, then runs one call per line read from stdin, a JSON
object: ``{"conn_id", "method", "kwargs", "env", "storage"}`` — ``env`` is added to the environment first
(the test's ``AIRFLOW_CONN_*`` connections), ``storage`` sets constants of ``airflow_vectorize.storage`` for
this call (e.g. ``REBUILD_INDEX_MIN_ROWS``, so a small table takes the bulk path). Each call prints one JSON
line, ``{"result": ...}`` or ``{"error": <exception type>, "message": ...}``. Only these lines go to stdout
(logs go to stderr).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package first
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed to stdout (logs) goes to stderr

    from airflow_vectorize import storage
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    defaults = {"REBUILD_INDEX_MIN_ROWS": storage.REBUILD_INDEX_MIN_ROWS}
    protocol.write("ready\n")
    for line in sys.stdin:
        command = json.loads(line)
        os.environ.update(command.get("env", {}))
        for name, value in {**defaults, **command.get("storage", {})}.items():
            setattr(storage, name, value)
        try:
            result = getattr(VectorizeHook(command["conn_id"]), command["method"])(**command["kwargs"])
        except Exception as error:  # noqa: BLE001 - reported to the test
            protocol.write(json.dumps({"error": type(error).__name__, "message": str(error)}) + "\n")
        else:
            protocol.write(json.dumps({"result": result}, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
