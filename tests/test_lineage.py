"""OpenLineage: the operators that read and write tables report them (with schema facets), as seen by the
OpenLineage provider's own listener writing to its file transport during dag.test()."""

from __future__ import annotations

import importlib
import json

import pytest


@pytest.fixture
def default_connection(database, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT", database.uri)
    return database


@pytest.fixture
def lineage_file(tmp_path, monkeypatch):
    from airflow.utils.db import initdb

    initdb()
    path = tmp_path / "openlineage.jsonl"
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT",
                       json.dumps({"type": "file", "log_file_path": str(path), "append": True}))
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__NAMESPACE", "vectorize-tests")
    # The provider's plugin registers its listener only if OpenLineage was configured when the process first
    # loaded plugins (an earlier dag.test() in this session did, without it): register it for this test.
    from airflow.providers.openlineage.plugins.listener import get_openlineage_listener

    listener = get_openlineage_listener()
    added = []
    for module in ("airflow.sdk.listener", "airflow.listeners.listener"):
        manager = importlib.import_module(module).get_listener_manager()
        if not manager.pm.is_registered(listener):
            manager.add_listener(listener)
            added.append(manager)
    yield path  # the provider's config is not cached under pytest
    for manager in added:
        manager.pm.unregister(listener)


def events_by_task(path) -> dict[str, dict]:
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {e["job"]["name"].split(".")[-1]: e for e in events if e["eventType"] == "COMPLETE"}


def datasets(event: dict, kind: str) -> dict[str, list[tuple[str, str]]]:
    return {d["name"]: [(f["name"], f["type"]) for f in d["facets"].get("schema", {}).get("fields", [])]
            for d in event[kind]}


def test_operators_report_their_tables_with_schemas(default_connection, lineage_file):
    from scripts.run_example import load_dags, run_dag

    run = run_dag(load_dags()["vectorize_import_embeddings"])

    assert run["state"] == "success"
    events = events_by_task(lineage_file)
    db = default_connection.name
    source, storage = f"{db}.public.products", f"{db}.vectorize._embeddings_product_search"
    assert datasets(events["create_project"], "inputs")[source][:2] == [("product_id", "integer"), ("name", "text")]
    assert {("product_id", "integer"), ("embeddings", "vector(384)")} <= set(
        datasets(events["create_project"], "outputs")[storage])
    assert list(datasets(events["import_embeddings"], "inputs")) == [f"{db}.public.product_embeddings"]
    assert list(datasets(events["import_embeddings"], "outputs")) == [storage]
    assert (list(datasets(events["embed_the_rest"], "inputs")),
            list(datasets(events["embed_the_rest"], "outputs"))) == ([source], [storage])
    (dropped,) = events["drop_project"]["outputs"]
    assert dropped["name"] == storage
    assert dropped["facets"]["lifecycleStateChange"]["lifecycleStateChange"] == "DROP"
    namespaces = {d["namespace"] for e in events.values() for d in e["inputs"] + e["outputs"]}
    assert len(namespaces) == 1 and namespaces.pop().startswith("postgres://")


def test_a_generation_that_fails_after_writing_reports_its_tables(products, embedding_server):
    """A run that fails on refused rows (EmbeddingFailuresError) has written the others: the failed task's
    lineage names the source it read and the table it wrote."""
    from airflow_vectorize.exceptions import EmbeddingFailuresError
    from airflow_vectorize.hooks.vectorize import VectorizeHook
    from airflow_vectorize.operators import GenerateEmbeddingsOperator

    embedding_server.reset(max_input_bytes=150)
    products.execute("UPDATE products SET description = repeat('far too long ', 20) WHERE product_id <= 5")
    VectorizeHook(products.conn_id).create_project("r", "products", "product_id", ["name", "description"],
                                                   transformer="openai/MiniLM", model_conn_id="flaky")
    task = GenerateEmbeddingsOperator(task_id="g", postgres_conn_id=products.conn_id, job_name="r")
    with pytest.raises(EmbeddingFailuresError):
        task.execute({})
    assert products.scalar("SELECT count(*) FROM vectorize._embeddings_r") == 19

    lineage = task.get_openlineage_facets_on_failure(None)
    assert ([d.name for d in lineage.inputs], [d.name for d in lineage.outputs]) == (
        [f"{products.name}.public.products"], [f"{products.name}.vectorize._embeddings_r"])
