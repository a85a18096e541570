"""scripts/run_example.py (make demo): the console shows the runs, the progress and the summary; the logs go to a file."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from scripts.run_example import ProgressOnConsole

ROOT = Path(__file__).resolve().parent.parent


def test_demo_prints_the_summary_and_sends_the_logs_to_a_file(tmp_path):
    log_file = tmp_path / "logs" / "demo.log"
    # As `make demo` runs it: its own Airflow home and embedded PostgreSQL, no model connection, not under pytest.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW_HOME", "AIRFLOW_CONN_", "PYTEST_", "VECTORIZE_"))}
    result = subprocess.run(
        [sys.executable, "scripts/run_example.py", "vectorize_import_embeddings", "vectorize_scheduled_ingestion",
         "vectorize_rag",
         "--log-file", str(log_file)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert result.stderr == ""
    lines = out.splitlines()
    assert lines[0] == lines[-1] == f"Airflow and task logs: {log_file}"
    assert "[1/2] vectorize_import_embeddings: running" in lines
    assert any(line.startswith("[1/2] vectorize_import_embeddings: success in ") for line in lines)
    assert "    Project 'product_search': embedded 4 of 4 rows (100%)," in out  # generation's progress line
    assert "=== vectorize_import_embeddings: success ===" in lines
    assert "- search: success" in lines
    assert '"name": "Pixel 9 smartphone"' in out
    assert any(line.startswith("=== vectorize_rag: skipped: set AIRFLOW_CONN_OPENAI_DEFAULT") for line in lines)
    # One search through the HTTP API (the standalone server), on the project the scheduled DAG left.
    http = lines.index("=== HTTP API (python -m airflow_vectorize.api, standalone) ===")
    assert "/api/v1/search?job_name=product_catalog&query=mobile+phone+with+a+good+camera" in lines[http + 1]
    assert lines[http + 2].startswith("  HTTP 200 in ")
    assert lines[http + 3] == '    {"product_id": 1, "name": "Pixel 9 smartphone", "rrf_score": ' \
        + lines[http + 3].split('"rrf_score": ')[1]
    for airflow_output in ("[DAG TEST]", "[info", "Task instance state updated", "Loading weights", "loc="):
        assert airflow_output not in out

    logs = log_file.read_text()
    assert "[DAG TEST] starting task_id=search" in logs  # Airflow's
    assert "Search in project 'product_search' returned 3 row(s)" in logs  # the operator's task logger
    assert "Embedding run finished" in logs  # a module logger of the package, inside a task
    assert "Loading weights" in logs  # the model's progress bar, on stderr


def test_generation_progress_is_shown_with_rate_and_eta():
    from airflow_vectorize import generation

    console = io.StringIO()
    logger = logging.getLogger("airflow_vectorize.generation")
    handler, level = ProgressOnConsole(console), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        project, scope = SimpleNamespace(name="archive"), generation.Scope(partition_index=1, partition_count=4)
        generation._log_progress(project, scope, 120, 480, 2.0)
        generation._log_progress(project, scope, 480, 480, 7.5, finished=True)
        generation._log_progress(project, generation.Scope(), 0, 0, 0.2, finished=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert console.getvalue().splitlines() == [
        "    Project 'archive' partition 1/4: embedded 120 of 480 rows (25%), 60 rows/s, ETA 6 s",
        "    Project 'archive' partition 1/4: embedded 480 of 480 rows (100%), 64 rows/s, done in 7.5 s",
        "    Project 'archive': nothing to embed, done in 0.2 s",
    ]
