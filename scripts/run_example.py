"""The main job: run the example DAGs end to end with ``dag.test()`` and print a readable summary.

Uses an embedded PostgreSQL + pgvector unless ``AIRFLOW_CONN_POSTGRES_DEFAULT`` already points at a server.
Airflow itself runs from a throw-away ``AIRFLOW_HOME`` with SQLite.

The console shows a line as each DAG run starts and ends, the embedding progress and the summary. Everything
else written to stdout and stderr -- Airflow's logs and the tasks' (``dag.test()`` runs each task in this
process, through the same logging handlers), model loading bars, warnings -- goes to a log file whose path is
printed at the start and at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
if str(ROOT) not in sys.path:  # run as ``python scripts/run_example.py``: scripts.* importable
    sys.path.insert(0, str(ROOT))
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
    # A nightly full refresh (TRUNCATE + COPY): the second night embeds only the rows its file changed.
    ("vectorize_full_refresh", "2026-11-01"),
    ("vectorize_full_refresh", "2026-11-02"),
    # Realtime (here run one after the other; deployed, the second runs on its own when rows are queued,
    # the third when the second has emitted fresh embeddings).
    ("vectorize_realtime_setup", None),
    ("vectorize_realtime", None),
    ("vectorize_realtime_consumer", None),
    ("vectorize_long_documents", None),
    ("vectorize_retrieval_gate", None),  # sample queries from the rows, evaluate, fail on a regression
    ("vectorize_remote_embeddings", None),  # these two only with a model connection in the environment
    ("vectorize_rag", None),
]
SHOWN_CHARS = 160  # of an answer, or of any text in a result (a chunk, a query)
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
    return {"dag_id": dag.dag_id, "run_id": dag_run.run_id, "logical_date": logical_date, "state": str(dag_run.state),
            "tasks": tasks}


def print_summary(run: dict, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    when = f" ({run['logical_date']})" if run["logical_date"] else ""
    print(f"\n=== {run['dag_id']}{when}: {run['state']} ===", file=out)
    for task_id, info in run["tasks"].items():
        print(f"- {task_id}: {info['state']}", file=out)
        result = info["result"]
        answers = result if isinstance(result, list) else [result]
        if answers and all(isinstance(a, dict) and "chat_response" in a and "query" in a for a in answers):
            for a in answers:  # RAG: the question, the answer, the rows it was given
                ids = [c["record_id"] for c in a["context"]]
                answer = a["chat_response"]
                answer = answer if len(answer) <= SHOWN_CHARS else answer[:SHOWN_CHARS] + "…"
                print(f"    Q: {a['query']}\n    A: {answer!r}\n       context rows {ids}, usage {a['usage']}",
                      file=out)
        elif isinstance(result, list):  # search results: one line a row
            for row in result:
                print("    " + json.dumps(shortened(row), default=str, ensure_ascii=False), file=out)
        elif result is not None:
            print("    " + json.dumps(shortened(result), default=str, ensure_ascii=False), file=out)


def shortened(value: Any) -> Any:
    """``value`` with every text longer than SHOWN_CHARS (a chunk, a query of the retrieval gate) cut short."""
    if isinstance(value, str):
        return value[:SHOWN_CHARS] + "…" if len(value) > SHOWN_CHARS else value
    if isinstance(value, dict):
        return {k: shortened(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [shortened(v) for v in value]
    return value


def failed_tasks(run: dict) -> list[str]:
    """The tasks of ``run`` that did not succeed (a run whose clean-up tasks succeeded is "success" in Airflow
    even when a task before them failed)."""
    return [task_id for task_id, info in run["tasks"].items() if info["state"] not in ("success", "skipped")]


def run_label(dag_id: str, logical_date: str | None) -> str:
    return f"{dag_id} ({logical_date})" if logical_date else dag_id


@contextmanager
def output_to_file(path: Path) -> Iterator[TextIO]:
    """Send everything written to file descriptors 1 and 2 from here on to ``path``; yield the console.

    Redirecting the descriptors, not ``sys.stdout``, catches every writer however it holds its stream:
    Airflow's logging handlers (which keep the ``sys.stdout`` of the moment logging was configured),
    structlog's loggers, tqdm bars, warnings, and child processes such as the embedded PostgreSQL.
    An exception escaping the block is printed on the console too (Python prints it to the file).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "ab", buffering=0) as log_file:
        console = open(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8",  # noqa: SIM115
                       errors="replace")
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
    try:
        yield console
    except BaseException as error:
        if not isinstance(error, (SystemExit, KeyboardInterrupt)):
            traceback.print_exc(file=console)
        print(f"Airflow and task logs: {path}", file=console)
        raise
    finally:
        console.flush()


class ProgressOnConsole(logging.Handler):
    """Generation's progress records (``record.vectorize_progress``, a ``generation.Progress``) as lines on
    the console: after its first batch, every 10 s, and when it ends."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        progress = getattr(record, "vectorize_progress", None)
        if progress is not None:
            self.out.write(f"    {progress}\n")
            self.out.flush()


def show_progress(out: TextIO) -> None:
    """Generation's progress records on ``out`` (they still reach Airflow's handlers, i.e. the log file)."""
    logger = logging.getLogger("airflow_vectorize.generation")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(ProgressOnConsole(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dag_ids", nargs="*", help="DAGs to run (default: every example, in a meaningful order)")
    parser.add_argument("--log-file", type=Path,
                        help="where Airflow's and the tasks' logs go (default: a new file in the temp directory)")
    args = parser.parse_args()
    if args.log_file:
        log_path = args.log_file.resolve()
    else:
        fd, name = tempfile.mkstemp(prefix="vectorize-demo-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    print(f"Airflow and task logs: {log_path}", flush=True)
    with output_to_file(log_path) as console:
        runs, skipped, http = run_all(args.dag_ids, console)
        logging.shutdown()
        for run in runs:
            print_summary(run, console)
        for dag_id, why in skipped.items():
            print(f"\n=== {dag_id}: skipped: {why} ===", file=console)
        print_http_search(http, console)
        print(f"\nAirflow and task logs: {log_path}", file=console)
    http_failed = http.get("status", 200) != 200  # no project left to search is no failure
    return 0 if not any(failed_tasks(run) for run in runs) and not http_failed else 1


def run_all(dag_ids: list[str], console: TextIO) -> tuple[list[dict], dict[str, str], dict]:
    """Run ``dag_ids`` (default: DEFAULT_RUNS) with a line on ``console`` as each starts and ends, then one
    search through the HTTP API (``http_search``)."""
    server = None
    if "AIRFLOW_CONN_POSTGRES_DEFAULT" not in os.environ:
        from airflow_vectorize.embedded_postgres import EmbeddedPostgres

        server = EmbeddedPostgres().start()
        server.use_as_airflow_connection("postgres_default")
        print(f"Embedded PostgreSQL + pgvector at {server.data_dir}", file=console)
    try:
        from airflow.utils.db import initdb

        initdb()
        show_progress(console)
        dags = load_dags()
        plan = [(dag_id, None) for dag_id in dag_ids] or DEFAULT_RUNS
        skipped = {dag_id: why for dag_id, _ in plan if (why := missing_connection(dag_id))}
        plan = [(dag_id, when) for dag_id, when in plan if dag_id not in skipped]
        runs = []
        for number, (dag_id, when) in enumerate(plan, 1):
            label = f"[{number}/{len(plan)}] {run_label(dag_id, when)}"
            print(f"{label}: running", file=console)
            started = time.monotonic()
            run = run_dag(dags[dag_id], when)
            failed = failed_tasks(run)
            print(f"{label}: {run['state']} in {time.monotonic() - started:.1f} s"
                  + (f" (failed: {', '.join(failed)})" if failed else ""), file=console)
            runs.append(run)
        print("HTTP API: one search through the standalone server", file=console)
        http = http_search()
    finally:
        if server is not None:
            server.stop()
    return runs, skipped, http


HTTP_QUERY = "mobile phone with a good camera"


def http_search() -> dict:
    """Start the standalone API (``python -m airflow_vectorize.api``) on a local port with a new token, wait
    for its warm-up (as a load balancer's readiness check would), and search a project the DAGs left
    (product_catalog, else the first) as an application would."""
    import secrets

    import httpx

    from scripts.api_server import ApiServer

    token = secrets.token_urlsafe(24)
    api = ApiServer({"postgres_default": os.environ["AIRFLOW_CONN_POSTGRES_DEFAULT"]}, tokens=[token]).start()
    try:
        api.wait(120)
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
            deadline = time.monotonic() + 120
            while (warm := client.get("/health").json()["warm_up"])["state"] == "running" \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            projects = [p["name"] for p in client.get("/api/v1/projects", params={"status": False}).json()]
            if not projects:
                return {"error": "no project left to search"}
            job = "product_catalog" if "product_catalog" in projects else projects[0]
            params = {"job_name": job, "query": HTTP_QUERY, "limit": 3, "return_columns": "product_id,name"}
            started = time.monotonic()
            response = client.get("/api/v1/search", params=params)
            seconds = time.monotonic() - started
        return {"url": f"{api.url}/api/v1/search", "params": params, "status": response.status_code,
                "rows": response.json(), "seconds": seconds, "warm_up": warm}
    finally:
        api.stop()


def print_http_search(http: dict, out: TextIO) -> None:
    print("\n=== HTTP API (python -m airflow_vectorize.api, standalone) ===", file=out)
    if "error" in http:
        print(f"- {http['error']}", file=out)
        return
    query = "&".join(f"{k}={v}" for k, v in http["params"].items()).replace(" ", "+")
    print(f"- curl -H 'Authorization: Bearer $TOKEN' '{http['url']}?{query}'", file=out)
    warm = http["warm_up"]
    warmed = (f"after the server's warm-up: {len(warm['searched'])} project(s) searched in {warm['seconds']:.1f} s"
              if warm["state"] == "done" else f"the server's warm-up: {warm['state']}")
    print(f"  HTTP {http['status']} in {http['seconds'] * 1000:.0f} ms (hybrid search, the default; {warmed}):",
          file=out)
    for row in http["rows"] if isinstance(http["rows"], list) else [http["rows"]]:
        print("    " + json.dumps(row, default=str, ensure_ascii=False), file=out)


if __name__ == "__main__":
    sys.exit(main())
