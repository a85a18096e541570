"""The main job: run the example DAG end to end with ``dag.test()`` and print a readable summary.

Uses an embedded PostgreSQL + pgvector unless ``AIRFLOW_CONN_POSTGRES_DEFAULT`` already points at a server.
Airflow itself runs from a throw-away ``AIRFLOW_HOME`` with SQLite.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_dag(dag_id: str) -> dict:
    """Run ``dags/<dag_id>.py`` with dag.test(); return its state and every task's state and XCom."""
    import importlib.util

    from airflow.utils.db import initdb

    initdb()
    spec = importlib.util.spec_from_file_location(dag_id, ROOT / "dags" / f"{dag_id}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = next(v for v in vars(module).values() if getattr(v, "dag_id", None) == dag_id)
    dag_run = dag.test()
    tasks = {}
    for ti in sorted(dag_run.get_task_instances(), key=lambda ti: (ti.start_date is None, ti.start_date)):
        tasks[ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"] = {
            "state": str(ti.state), "result": ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index)
        }
    return {"dag_id": dag_id, "state": str(dag_run.state), "tasks": tasks}


def print_summary(run: dict) -> None:
    print(f"\n=== {run['dag_id']}: {run['state']} ===")
    for task_id, info in run["tasks"].items():
        print(f"- {task_id}: {info['state']}")
        result = info["result"]
        if isinstance(result, list):  # search results: one line a row
            for row in result:
                print("    " + json.dumps(row, default=str))
        elif result is not None:
            print("    " + json.dumps(result, default=str))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dag_ids", nargs="*", default=["vectorize_import_embeddings"])
    args = parser.parse_args()
    server = None
    if "AIRFLOW_CONN_POSTGRES_DEFAULT" not in os.environ:
        from airflow_vectorize.embedded_postgres import EmbeddedPostgres

        server = EmbeddedPostgres().start()
        server.use_as_airflow_connection("postgres_default")
        print(f"Embedded PostgreSQL + pgvector at {server.data_dir}")
    try:
        runs = [run_dag(dag_id) for dag_id in args.dag_ids]
    finally:
        if server is not None:
            server.stop()
    logging.shutdown()
    for run in runs:
        print_summary(run)
    return 0 if all(run["state"] == "success" for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
