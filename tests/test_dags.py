"""Every example DAG in dags/ runs end to end with dag.test() against the embedded PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts.infinity_server import INFINITY_MODEL_NAME
from scripts.run_example import load_dags, run_dag


@pytest.fixture(scope="module")
def dags(chat_server):
    from airflow.utils.db import initdb

    initdb()
    # The RAG example, parsed to ask the tiny chat server's model through the connection 'chat'.
    os.environ["VECTORIZE_CHAT_MODEL"] = f"openai/{chat_server.model}"
    os.environ["VECTORIZE_CHAT_CONN_ID"] = "chat"
    # The remote example, parsed to use the Infinity server's model through the connection 'infinity'.
    os.environ["VECTORIZE_REMOTE_MODEL"] = f"openai/{INFINITY_MODEL_NAME}"
    os.environ["VECTORIZE_MODEL_CONN_ID"] = "infinity"
    return load_dags()


@pytest.fixture
def default_connection(database, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT", database.uri)
    return database


def states(run: dict) -> set[str]:
    return {info["state"] for info in run["tasks"].values()}


def asset_extras(uri: str) -> list[dict]:
    """The extras of the events of the Asset ``uri``, oldest first, in Airflow's metadata database."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalars(select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                               .where(AssetModel.uri == uri).order_by(AssetEvent.id)).all()


def test_every_example_is_tested(dags):
    assert set(dags) == {"vectorize_import_embeddings", "vectorize_scheduled_ingestion",
                         "vectorize_embedding_backfill", "vectorize_remote_embeddings", "vectorize_rag",
                         "vectorize_realtime_setup", "vectorize_realtime", "vectorize_realtime_consumer",
                         "vectorize_long_documents", "vectorize_full_refresh", "vectorize_retrieval_gate"}


def test_import_embeddings_example(dags, default_connection):
    run = run_dag(dags["vectorize_import_embeddings"])

    assert run["state"] == "success" and states(run) == {"success"}
    tasks = run["tasks"]
    assert (tasks["import_embeddings"]["result"]["imported"], tasks["embed_the_rest"]["result"]["embedded"]) == (20, 4)
    assert tasks["check_status"]["result"]["missing_rows"] == 0
    assert [row["category"] for row in tasks["search"]["result"]] == ["phones"] * 3
    assert default_connection.execute(
        "SELECT to_regclass('products'), to_regclass('vectorize._embeddings_product_search')") == [(None, None)]


def test_long_documents_example_finds_a_late_sentence_by_its_chunk(dags, default_connection):
    run = run_dag(dags["vectorize_long_documents"])

    assert run["state"] == "success" and states(run) == {"success"}
    tasks = run["tasks"]
    prepared, status = tasks["prepare_documents"]["result"], tasks["status"]["result"]
    assert prepared["documents"] == status["total_rows"] == status["embedded_rows"] == 16
    assert status["chunks"] > 5 * 16  # 3-20 kB each, chunks of 200 tokens
    for found in (tasks["search"]["result"], tasks["hybrid_search"]["result"]):
        assert len(found) == len({row["doc_id"] for row in found}) == 3  # each document once
        assert found[0]["package"] == prepared["from_package"]
        assert prepared["query"] in " ".join(found[0]["chunk"].split())  # its best chunk holds the sentence
    assert default_connection.execute(
        "SELECT to_regclass('package_docs'), to_regclass('vectorize._chunks_package_docs')") == [(None, None)]


def test_retrieval_gate_example_passes_then_stops_a_regression(dags, default_connection):
    run = run_dag(dags["vectorize_retrieval_gate"])

    assert run["state"] == "success" and states(run) == {"success"}
    result = run["tasks"]["evaluate"]["result"]
    assert result["queries"] >= 30 and result["metrics"]["recall@10"] >= 0.6
    assert result["gate"] == {"passed": True, "failures": [], "previous": None}
    # The recall@k chart, next to the task's log.
    from airflow.configuration import conf

    logs = Path(conf.get("logging", "base_log_folder"))
    chart = Path(result["chart"])
    assert chart.parent == logs / "dag_id=vectorize_retrieval_gate" / f"run_id={run['run_id']}" / "task_id=evaluate"
    assert chart.name == f"retrieval-{result['evaluation_id']}.png" and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kept = default_connection.execute("SELECT passed, label FROM vectorize.evaluations")
    assert kept == [(True, "sampled-last-sentences")]
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        extras = session.scalars(select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                                 .where(AssetModel.uri == "vectorize://postgres_default/package_docs_quality/evaluation")
                                 ).all()
    assert {"job_name": "package_docs_quality", "task": "evaluate", "evaluation_id": result["evaluation_id"],
            "recall@10": result["metrics"]["recall@10"], "mrr": result["metrics"]["mrr"]}.items() <= extras[-1].items()

    # The same DAG when the last good run was much better: its MRR drop fails the task, downstream waits.
    default_connection.execute("UPDATE vectorize.evaluations SET metrics = jsonb_set(metrics, '{mrr}', '1.5')")
    failed = run_dag(dags["vectorize_retrieval_gate"])
    assert failed["state"] == "failed" and failed["tasks"]["evaluate"]["state"] == "failed"
    assert default_connection.execute("SELECT passed FROM vectorize.evaluations ORDER BY id") == [(True,), (False,)]
    failed_id = default_connection.scalar("SELECT max(id) FROM vectorize.evaluations")
    assert (logs / "dag_id=vectorize_retrieval_gate" / f"run_id={failed['run_id']}" / "task_id=evaluate"
            / f"retrieval-{failed_id}.png").stat().st_size > chart.stat().st_size  # also drawn: two curves
    assert default_connection.execute(
        "SELECT to_regclass('quality_docs'), to_regclass('vectorize._chunks_package_docs_quality')") == [(None, None)]


def test_scheduled_ingestion_embeds_each_interval_once(dags, default_connection):
    day1 = run_dag(dags["vectorize_scheduled_ingestion"], "2026-11-01")
    default_connection.execute("UPDATE catalog SET price = price + 1")  # not embedded: no new work
    day2 = run_dag(dags["vectorize_scheduled_ingestion"], "2026-11-02")
    rerun = run_dag(dags["vectorize_scheduled_ingestion"], "2026-11-01")

    assert {day1["state"], day2["state"], rerun["state"]} == {"success"}
    embedded = [r["tasks"]["embed_interval"]["result"]["embedded"] for r in (day1, day2, rerun)]
    assert embedded == [24, 0, 0]
    assert day1["tasks"]["phones_come_first"]["result"] in {"Pixel 9 smartphone", "iPhone 16", "Galaxy A55"}


def test_full_refresh_embeds_only_what_the_night_changed(dags, default_connection):
    nights = [run_dag(dags["vectorize_full_refresh"], day) for day in ("2026-11-01", "2026-11-02", "2026-11-02")]

    assert {night["state"] for night in nights} == {"success"}
    reports = [night["tasks"]["report"]["result"] for night in nights]
    assert reports == [
        "embedded 24 of 24 rows (0 unchanged); 0 vectors of rows no longer in the file removed",
        "embedded 4 of 23 rows (19 unchanged); 2 vectors of rows no longer in the file removed",
        "embedded 0 of 23 rows (23 unchanged); 0 vectors of rows no longer in the file removed",
    ]
    status = default_connection.execute("SELECT count(*) FROM vectorize._embeddings_catalogue_refresh")
    assert status == [(23,)]


def test_mapped_backfill_covers_every_row_once(dags, default_connection):
    run = run_dag(dags["vectorize_embedding_backfill"])

    assert run["state"] == "success"
    parts = [info["result"]["embedded"] for task, info in run["tasks"].items() if task.startswith("embed_partition[")]
    assert len(parts) == 4 and sum(parts) == 1000 and all(parts)
    assert run["tasks"]["check_complete"]["result"]["missing_rows"] == 0
    # Mapped tasks declare and emit the project's Asset too (Airflow's partial() passes outlets=[]).
    assert [a.uri for a in dags["vectorize_embedding_backfill"].task_dict["embed_partition"].partial_kwargs["outlets"]] \
        == ["vectorize://postgres_default/product_archive"]
    events = asset_extras("vectorize://postgres_default/product_archive")
    assert sorted(e["partition"] for e in events if e.get("task") == "embed_partition") == ["0/4", "1/4", "2/4", "3/4"]


def test_remote_embeddings_example(dags, default_connection, infinity):
    run = run_dag(dags["vectorize_remote_embeddings"])

    assert run["state"] == "success" and states(run) == {"success"}
    tasks = run["tasks"]
    assert tasks["create_project"]["result"]["model_conn_id"] == "infinity"
    assert tasks["embed"]["result"]["embedded"] == 24
    assert [row["category"] for row in tasks["search"]["result"]] == ["phones"] * 3
    assert default_connection.execute("SELECT to_regclass('remote_products')") == [(None,)]


def test_rag_example(dags, default_connection, chat):
    _, server = chat
    run = run_dag(dags["vectorize_rag"])

    assert run["state"] == "success" and states(run) == {"success"}
    answers = run["tasks"]["answer_questions"]["result"]
    assert [a["query"] for a in answers] == ["Which phone has the best camera?",
                                             "What can I use to make a cappuccino at home?",
                                             "What do I need for a camping trip in the mountains?"]
    assert answers[1]["context"][0]["record_id"] == 10  # the espresso machine
    assert len([r for r in server.requests if r.path.endswith("/chat/completions")]) == 3


def test_realtime_examples_embed_the_queue_and_emit_the_asset(dags, default_connection):
    (watched,) = dags["vectorize_realtime"].timetable.asset_condition.objects
    assert (watched.uri, type(watched.watchers[0].trigger).__name__) == (
        "vectorize://postgres_default/live_products/pending", "PendingRowsTrigger")
    setup = run_dag(dags["vectorize_realtime_setup"])  # creates the project, then 3 rows arrive
    assert default_connection.scalar("SELECT count(*) FROM vectorize._pending_live_products") == 3
    realtime = run_dag(dags["vectorize_realtime"])
    consumer = run_dag(dags["vectorize_realtime_consumer"])

    assert {setup["state"], realtime["state"], consumer["state"]} == {"success"}
    embedded = realtime["tasks"]["embed_pending"]["result"]
    assert (embedded["embedded"], embedded["pending_only"], embedded["pending_cleared"]) == (3, True, 3)
    extras = asset_extras("vectorize://postgres_default/live_products")
    assert {"job_name": "live_products", "task": "embed_pending", "embedded": 3, "failed": 0, "skipped": 0,
            "partition": "0/1"}.items() <= extras[-1].items()
    assert consumer["tasks"]["wait_until_fresh"]["result"]["pending"] == 0
    assert [row["name"] for row in consumer["tasks"]["search"]["result"]][:2] == ["Gadget one", "Gadget two"]
