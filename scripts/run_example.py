"""The main job: run the example DAGs end to end with ``dag.test()`` and print a readable summary.

Uses an embedded PostgreSQL + pgvector unless ``AIRFLOW_CONN_POSTGRES_DEFAULT`` already points at a server.
Airflow itself runs from a throw-away ``AIRFLOW_HOME`` with SQLite.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
if "AIRFLOW_HOME" not in os.environ:
    from airflow_vectorize.embedded_postgres import throwaway_dir

    os.environ["AIRFLOW_HOME"] = throwaway_dir("airflow-home-")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (dag_id, logical date or None for "now"): two days of scheduled ingestion show the incremental runs.
DEFAULT_RUNS = [
    ("vectorize_import_embeddings", None),
    ("vectorize_scheduled_ingestion", "2026-11-01"),
    ("vectorize_scheduled_ingestion", "2026-11-02"),
    ("vectorize_embedding_backfill", None),
    ("vectorize_remote_embeddings", None),  # these two only with a model connection in the environment
    ("vectorize_rag", None),
]
# DAG id -> (the environment variable naming its connection id, default id, what else to set)
NEEDS_CONNECTION = {
    "vectorize_remote_embeddings": ("VECTORIZE_MODEL_CONN_ID", "openai_default",
                                    "VECTORIZE_REMOTE_MODEL (default openai/text-embedding-3-small)"),
    "vectorize_rag": ("VECTORIZE_CHAT_CONN_ID", "openai_default", "VECTORIZE_CHAT_MODEL (default openai/gpt-4o-mini)"),
}


def missing_connection(dag_id: str) -> str | None:
    """Why ``dag_id`` cannot run here (its model connection is not in the environment), or None."""
    if dag_id not in NEEDS_CONNECTION:
        return None
    variable, default, other = NEEDS_CONNECTION[dag_id]
    env = "AIRFLOW_CONN_" + os.environ.get(variable, default).upper()
    return None if env in os.environ else f"set {env} (a JSON 'openai' connection) and {other} to run it"


def load_dags() -> dict:
    """Every DAG defined in dags/, by dag_id."""
    from airflow.sdk import DAG

    dags = {}
    for path in sorted(DAGS.glob("*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        dags.update({v.dag_id: v for v in vars(module).values() if isinstance(v, DAG)})
    return dags


def run_dag(dag, logical_date: str | None = None) -> dict:
    """dag.test() once; its state, and every task instance's state and XCom result."""
    when = datetime.fromisoformat(logical_date).replace(tzinfo=timezone.utc) if logical_date else None
    dag_run = dag.test(logical_date=when) if when else dag.test()
    tasks = {}
    for ti in sorted(dag_run.get_task_instances(), key=lambda ti: (ti.start_date is None, ti.start_date)):
        name = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        tasks[name] = {"state": str(ti.state),
                       "result": ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index)}
    return {"dag_id": dag.dag_id, "logical_date": logical_date, "state": str(dag_run.state), "tasks": tasks}


def print_summary(run: dict) -> None:
    when = f" ({run['logical_date']})" if run["logical_date"] else ""
    print(f"\n=== {run['dag_id']}{when}: {run['state']} ===")
    for task_id, info in run["tasks"].items():
        print(f"- {task_id}: {info['state']}")
        result = info["result"]
        answers = result if isinstance(result, list) else [result]
        if answers and all(isinstance(a, dict) and "chat_response" in a and "query" in a for a in answers):
            for a in answers:  # RAG: the question, the answer, the rows it was given
                ids = [c["record_id"] for c in a["context"]]
                answer = a["chat_response"] if len(a["chat_response"]) <= 160 else a["chat_response"][:160] + "…"
                print(f"    Q: {a['query']}\n    A: {answer!r}\n       context rows {ids}, usage {a['usage']}")
        elif isinstance(result, list):  # search results: one line a row
            for row in result:
                print("    " + json.dumps(row, default=str))
        elif result is not None:
            print("    " + json.dumps(result, default=str))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dag_ids", nargs="*", help="DAGs to run (default: every example, in a meaningful order)")
    args = parser.parse_args()
    server = None
    if "AIRFLOW_CONN_POSTGRES_DEFAULT" not in os.environ:
        from airflow_vectorize.embedded_postgres import EmbeddedPostgres

        server = EmbeddedPostgres().start()
        server.use_as_airflow_connection("postgres_default")
        print(f"Embedded PostgreSQL + pgvector at {server.data_dir}")
    try:
        from airflow.utils.db import initdb

        initdb()
        dags = load_dags()
        plan = [(dag_id, None) for dag_id in args.dag_ids] or DEFAULT_RUNS
        skipped = {dag_id: why for dag_id, _ in plan if (why := missing_connection(dag_id))}
        plan = [(dag_id, when) for dag_id, when in plan if dag_id not in skipped]
        runs = [run_dag(dags[dag_id], when) for dag_id, when in plan]
    finally:
        if server is not None:
            server.stop()
    logging.shutdown()
    for run in runs:
        print_summary(run)
    for dag_id, why in skipped.items():
        print(f"\n=== {dag_id}: skipped: {why} ===")
    # A run whose clean-up tasks succeeded is "success" in Airflow even when a task before them failed.
    return 0 if all(info["state"] in ("success", "skipped") for run in runs for info in run["tasks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
