"""Every example DAG in dags/ runs end to end with dag.test() against the embedded PostgreSQL."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parent.parent / "dags"


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils.db import initdb

    initdb()


def load_dag(dag_id: str):
    spec = importlib.util.spec_from_file_location(dag_id, DAGS / f"{dag_id}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def task_states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def test_import_embeddings_example(airflow_db, database, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT", database.uri)
    dag = load_dag("vectorize_import_embeddings")

    dag_run = dag.test()

    assert task_states(dag_run) == {t: "success" for t in (
        "prepare_source_data", "create_project", "import_embeddings", "check_status", "drop_project",
        "drop_source_tables")}
    status = dag_run.get_task_instance("check_status").xcom_pull(task_ids="check_status")
    assert (status["total_rows"], status["embedded_rows"], status["pending"]) == (24, 24, 0)
    # cleaned up: no project, no demo tables
    assert database.execute("SELECT to_regclass('products'), to_regclass('vectorize._embeddings_product_search')") \
        == [(None, None)]
