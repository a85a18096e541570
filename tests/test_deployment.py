"""The example DAGs under a real Airflow 3 (scheduler, dag-processor, triggerer, api-server, LocalExecutor,
metadata DB on the embedded PostgreSQL), checked through the REST API and, for the project data, the hook.

The components start once for the session (the ``deployment`` fixture of conftest.py, shared with
test_deployment_api.py) and every DAG runs at the same time (``outcomes``; see scripts/deployment.py).
"""

from __future__ import annotations

import itertools
import os
from datetime import datetime

import pytest

from scripts.deployment import (
    COMMANDS,
    LOCAL_DAGS,
    MIGRATE,
    ROOT,
    SCHEDULED_DAG,
    AirflowDeployment,
    RunOutcome,
    outcome,
)
from tests.conftest import BACKFILL_ROWS



def tasks(result: RunOutcome) -> dict[str, dict]:
    return {t["task_id"] if t["map_index"] < 0 else f"{t['task_id']}[{t['map_index']}]": t for t in result.tasks}


def assert_all_succeeded(result: RunOutcome) -> None:
    assert result.state == "success", result
    assert not result.failed_tasks, f"{result.dag_id} {result.run_id}: {result.failed_tasks} did not succeed"


# Variables whose value depends on where the deployment runs (paths, hosts, secrets); every other one must have
# the same value in docker-compose.yml as in scripts/deployment.py.
SITE_SPECIFIC = {
    "AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__API__BASE_URL", "AIRFLOW__API__HOST", "AIRFLOW__API__PORT",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER", "AIRFLOW_CONN_POSTGRES_DEFAULT", "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND", "PYTHONPATH",
}


def test_docker_compose_runs_the_same_deployment(tmp_path):
    """docker-compose.yml (not runnable here: no Docker engine) has the script's commands and variables."""
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["airflow-init"]["command"] == MIGRATE
    for name, arguments in COMMANDS.items():
        extra = services[name]["command"][len(arguments):]
        assert services[name]["command"][: len(arguments)] == arguments, name
        assert extra == (["--host", "0.0.0.0", "--port", "8080"] if name == "api-server" else []), name
    script: dict[str, str] = {}
    for executor in ("LocalExecutor", "CeleryExecutor"):
        script.update(AirflowDeployment(executor, home=tmp_path).environment(
            "postgresql+psycopg://postgres@/airflow?host=/x", "postgresql://postgres@/vectorize?host=/x"))
    script.pop("AIRFLOW_HOME")  # the image's /opt/airflow
    for name in ("airflow-init", "api-server", "scheduler", "dag-processor", "triggerer", "celery-worker"):
        compose = services[name]["environment"]
        assert set(compose) == set(script), (name, set(compose) ^ set(script))
        differing = {k: (compose[k], script[k]) for k in script if k not in SITE_SPECIFIC and compose[k] != script[k]}
        assert not differing, (name, differing)
        for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
            assert compose[key].split("://")[0] == script[key].split("://")[0], key  # psycopg 3 both


def test_components_are_up_and_the_dags_parse_quickly(deployment):
    health = deployment.api("GET", "/monitor/health")
    for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        assert health[component]["status"] == "healthy", health
    assert deployment.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    assert deployment.import_errors() == []
    assert set(LOCAL_DAGS) <= deployment.dags().keys()
    # Heavy imports (torch, sentence-transformers) stay inside tasks: a file parses in about a second even
    # on a busy 2-core machine.
    durations = deployment.parse_durations()
    assert durations and max(durations.values()) < 10, durations


def test_import_embeddings_through_the_scheduler(deployment, outcomes):
    [result] = outcomes["vectorize_import_embeddings"]
    assert_all_succeeded(result)
    by_id = tasks(result)
    assert list(by_id) == ["prepare_source_data", "create_project", "import_embeddings", "embed_the_rest",
                           "check_status", "search", "drop_project", "drop_source_tables"]
    assert by_id["import_embeddings"]["result"]["imported"] == 20
    assert by_id["embed_the_rest"]["result"]["embedded"] == 4
    status = by_id["check_status"]["result"]
    assert (status["total_rows"], status["missing_rows"], status["pending"]) == (24, 0, 0)
    assert by_id["search"]["result"][0]["category"] == "phones"
    # The run cleans up after itself: no project left, no tables.
    assert "product_search" not in {p["name"] for p in deployment.hook().list_projects()}
    with deployment.data_connection() as conn:
        assert conn.execute("SELECT to_regclass('public.products')").fetchone()[0] is None


def test_scheduled_ingestion_catches_up_day_by_day(deployment, outcomes):
    runs = sorted(outcomes[SCHEDULED_DAG], key=lambda r: r.run_id)
    assert len(runs) == 2
    for result in runs:
        assert_all_succeeded(result)
    details = [deployment.dag_run(SCHEDULED_DAG, r.run_id) for r in runs]
    assert [d["run_type"] for d in details] == ["scheduled", "scheduled"]
    assert [datetime.fromisoformat(d["data_interval_start"]).date().isoformat() for d in details] == [
        "2026-11-01", "2026-11-02"]
    first, second = (tasks(r) for r in runs)
    # Day one lands and embeds the whole catalogue; day two finds nothing changed and embeds nothing.
    assert first["land_daily_changes"]["result"]["changed_rows"] == 24
    assert first["embed_interval"]["result"]["embedded"] == 24
    assert first["embed_interval"]["result"]["since"].startswith("2026-11-01")
    assert second["land_daily_changes"]["result"]["changed_rows"] == 0
    assert second["embed_interval"]["result"]["embedded"] == 0
    assert first["search_check"]["result"][0]["category"] == "phones"
    assert second["phones_come_first"]["result"]
    status = deployment.hook().get_status("product_catalog")
    assert (status["total_rows"], status["embedded_rows"], status["missing_rows"]) == (24, 24, 0)


def test_backfill_maps_partitions_over_the_executor(deployment, outcomes):
    [result] = outcomes["vectorize_embedding_backfill"]
    assert_all_succeeded(result)
    by_id = tasks(result)
    partitions = [by_id[f"embed_partition[{i}]"]["result"] for i in range(4)]
    assert [p["partition"] for p in partitions] == ["0/4", "1/4", "2/4", "3/4"]
    assert sum(p["embedded"] for p in partitions) == BACKFILL_ROWS  # the run's conf {"rows": N} was used
    assert by_id["prepare_archive"]["result"] == BACKFILL_ROWS
    status = deployment.hook().get_status("product_archive")
    assert (status["total_rows"], status["embedded_rows"], status["missing_rows"]) == (BACKFILL_ROWS,) * 2 + (0,)
    # The mapped tasks ran side by side in separate task processes.
    tis = [t for t in deployment.task_instances(result.dag_id, result.run_id) if t["task_id"] == "embed_partition"]
    assert len({t["pid"] for t in tis}) == 4
    spans = sorted((t["start_date"], t["end_date"]) for t in tis)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), spans  # overlapping


def test_task_logs_through_the_api(deployment, outcomes):
    [result] = outcomes["vectorize_embedding_backfill"]
    log = deployment.task_log(result.dag_id, result.run_id, "check_complete")
    assert "Done. Returned value was" in log or "check_complete" in log, log[-2000:]


@pytest.mark.skipif(not os.environ.get("VECTORIZE_TEST_CELERY"),
                    reason="a second deployment (~2-4 min on 2 cores): set VECTORIZE_TEST_CELERY=1")
def test_celery_executor_spreads_the_backfill_over_two_workers():
    with AirflowDeployment("CeleryExecutor", workers=2, env={"AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"}) as celery:
        celery.wait_for_dags(["vectorize_embedding_backfill"])
        celery.unpause("vectorize_embedding_backfill")
        run_id = celery.trigger("vectorize_embedding_backfill", conf={"rows": 200})
        result = outcome(celery, celery.wait_for_run("vectorize_embedding_backfill", run_id))
        assert_all_succeeded(result)
        assert sum(t["result"]["embedded"] for t in result.tasks if t["task_id"] == "embed_partition") == 200
        # Each worker ran some of the run's tasks (Celery logs every task it receives).
        received = [w.output().count("execute_workload[") for w in celery.celery_workers]
        assert all(received), received
        assert celery.hook().get_status("product_archive")["missing_rows"] == 0
