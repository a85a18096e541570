"""Rows the model cannot embed are recorded in vectorize._errors_<job> and skipped, the rest written;
retries are bounded; a fixed row clears its error; too many failures fail the run. Against the real
misbehaving HTTP server (it refuses over-long inputs with HTTP 400, as OpenAI does)."""

from __future__ import annotations

import re
from datetime import datetime
from types import SimpleNamespace

import pytest
from conftest import snapshot

from airflow_vectorize.exceptions import (
    EmbeddingFailuresError,
    InvalidInputError,
    ModelInputRejectedError,
    ModelRequestError,
)
from airflow_vectorize.operators import CreateVectorizeProjectOperator, GenerateEmbeddingsOperator

MODEL = "openai/MiniLM"
COLUMNS = ["name", "description"]
LONG = "a description far longer than the server accepts " * 4


def create(hook, job: str = "remote", **kwargs):
    return hook.create_project(job, "products", "product_id", COLUMNS, transformer=MODEL, model_conn_id="flaky",
                               **kwargs)


def errors(db, job: str = "remote") -> dict[int, tuple[int, str]]:
    return {key: (attempts, error) for key, attempts, error in
            db.execute(f"SELECT product_id, attempts, error FROM vectorize._errors_{job} ORDER BY 1")}


def test_refused_rows_are_recorded_and_the_rest_is_written(products, hook, embedding_server):
    products.execute("UPDATE products SET description = %s WHERE product_id IN (5, 17)", [LONG])
    create(hook)  # realtime: the update queued nothing yet (no project); queue the two rows now
    products.execute("UPDATE products SET name = name || ' ' WHERE product_id IN (5, 17)")
    embedding_server.reset(max_input_bytes=150)

    summary = hook.generate_embeddings("remote", batch_size=24)

    assert (summary["embedded"], summary["failed"]) == (22, 2)
    recorded = errors(products)
    assert list(recorded) == [5, 17] and {attempts for attempts, _ in recorded.values()} == {1}
    assert "ModelInputRejectedError" in recorded[5][1] and "HTTP 400" in recorded[5][1]
    status = hook.get_status("remote")
    assert (status["embedded_rows"], status["failed_rows"], status["pending"]) == (22, 2, 0)
    assert hook.get_freshness("remote")["failed"] == 2

    # Retried by later runs, up to max_attempts with the same text; then skipped, not tried again.
    assert hook.generate_embeddings("remote", max_attempts=3)["failed"] == 2
    assert hook.generate_embeddings("remote", max_attempts=3)["failed"] == 2
    requests = len(embedding_server.requests)
    last = hook.generate_embeddings("remote", max_attempts=3)
    assert (last["embedded"], last["failed"]) == (0, 0)
    assert len(embedding_server.requests) == requests
    assert {attempts for attempts, _ in errors(products).values()} == {3}
    assert hook.get_freshness("remote")["stale"] == 0  # given up on: not counted as stale

    # A fixed row is embedded by the next run and its error cleared; a deleted one takes its error along.
    products.execute("UPDATE products SET description = 'fixed' WHERE product_id = 5")
    products.execute("DELETE FROM products WHERE product_id = 17")
    assert hook.generate_embeddings("remote")["embedded"] == 1
    assert errors(products) == {} and hook.get_status("remote")["failed_rows"] == 0


@pytest.mark.parametrize("rebuild_index", [False, True], ids=["in-place", "swap"])
def test_an_imported_row_clears_its_error(products, hook, embedding_server, rebuild_index):
    """An import gives the row its vector: its error goes with it, as its queue entry does (before: failed_rows
    and freshness failed counted it until its text changed)."""
    products.execute("UPDATE products SET description = %s WHERE product_id IN (5, 17)", [LONG])
    create(hook, schedule="manual")
    embedding_server.reset(max_input_bytes=150)
    assert hook.generate_embeddings("remote")["failed"] == 2
    products.execute("CREATE TABLE fixed AS SELECT 5 AS product_id, array_fill(0.5::real, ARRAY[384]) AS embedding")

    result = hook.import_embeddings("remote", "fixed", "product_id", "embedding", rebuild_index=rebuild_index)

    assert (result["imported"], result["table_swapped"]) == (1, rebuild_index)
    assert list(errors(products)) == [17]
    status = hook.get_status("remote")
    assert (status["embedded_rows"], status["stale_rows"], status["failed_rows"]) == (23, 0, 1)
    assert hook.get_freshness("remote")["failed"] == 1


def test_a_400_for_every_request_fails_the_run_and_records_no_row(products, hook, embedding_server):
    """A server that refuses every request with HTTP 400 (a LiteLLM proxy whose budget is spent): before, each
    batch was halved down to single rows (39 requests for 20 rows), every row was recorded as failed, the next
    runs passed with all rows failing, and after 3 runs the whole table was given up on for good. Now one
    control request of a short text, refused too, makes it the request's failure: the run fails, nothing is
    recorded, and the rows stay due."""
    create(hook)
    before = snapshot(products)
    embedding_server.reset(default=("status", 400, None, "Budget has been exceeded! Current cost: 10.1"))

    with pytest.raises(ModelRequestError) as error:
        hook.generate_embeddings("remote", batch_size=24, concurrency=1)

    assert not isinstance(error.value, ModelInputRejectedError)
    assert str(error.value) == (
        f"connection 'flaky' (http://127.0.0.1:{embedding_server.port}/v1), model 'MiniLM': HTTP 400, the server"
        " rejected the request: Budget has been exceeded! Current cost: 10.1; a control request of one short text"
        " was refused too (ModelInputRejectedError): the model refuses every request, not these rows' texts. None"
        " of the batch's 24 row(s) was recorded as failed; they stay due for the next run")
    assert [len(r.body["input"]) for r in embedding_server.requests] == [24, 1]  # the batch, the control
    assert snapshot(products) == before and errors(products) == {}
    assert hook.get_freshness("remote")["failed"] == 0

    embedding_server.reset()  # the budget is topped up: the next run embeds every row
    assert hook.generate_embeddings("remote")["embedded"] == 24
    assert hook.get_status("remote")["failed_rows"] == 0


def test_rows_all_too_long_are_still_recorded(products, hook, embedding_server):
    """The control request is accepted: a batch whose every row the server refuses is the rows' fault."""
    products.execute("UPDATE products SET description = %s WHERE product_id IN (5, 17)", [LONG])
    create(hook)
    products.execute("UPDATE products SET name = name || ' ' WHERE product_id IN (5, 17)")
    hook.generate_embeddings("remote", batch_size=24)  # every row, the server has no limit yet
    products.execute("UPDATE products SET name = name || '!' WHERE product_id IN (5, 17)")  # due: these two
    embedding_server.reset(max_input_bytes=150)

    summary = hook.generate_embeddings("remote", batch_size=24, concurrency=1, max_failed_share=1)

    assert (summary["embedded"], summary["failed"]) == (0, 2) and list(errors(products)) == [5, 17]
    assert [len(r.body["input"]) for r in embedding_server.requests] == [2, 1, 1, 1]  # batch, control, each row


def test_freshness_judges_rows_given_up_on_as_the_last_run_did(products, hook, embedding_server):
    """A run's max_attempts is kept with the project: before, freshness judged by the default 3, so
    a row a max_attempts=1 run had given up on stayed stale for good (a freshness sensor never passed)."""
    products.execute("UPDATE products SET description = %s WHERE product_id = 5", [LONG])
    create(hook)
    embedding_server.reset(max_input_bytes=150)

    hook.generate_embeddings("remote", max_attempts=1, max_failed_share=1)
    assert hook.generate_embeddings("remote", max_attempts=1)["failed"] == 0  # given up on: not tried again
    assert hook.get_freshness("remote")["stale"] == 0
    assert hook.get_project("remote")["params"]["max_attempts"] == 1

    assert hook.generate_embeddings("remote", max_attempts=4, max_failed_share=1)["failed"] == 1  # 2 of 4
    assert hook.get_freshness("remote")["stale"] == 1  # to be tried again
    hook.generate_embeddings("remote", max_failed_share=1)  # the default again: 3 attempts, given up on
    assert hook.get_freshness("remote")["stale"] == 0 and "max_attempts" not in hook.get_project("remote")["params"]


def test_a_chunked_row_fails_whole_and_the_rows_beside_it_are_written(products, hook, embedding_server):
    """A row one of whose chunks the model refuses is recorded, none of its chunks written; the rows encoded
    in the same batch are written."""
    products.execute("UPDATE products SET description = %s WHERE product_id IN (5, 17)", ["x" * 400])
    create(hook, chunk_size=32)  # texts of the other rows (<= 89 bytes) are one chunk each; 'x' * 400 is five
    embedding_server.reset(max_input_bytes=90)

    summary = hook.generate_embeddings("remote", batch_size=24)

    assert (summary["embedded"], summary["failed"]) == (22, 2)
    assert list(errors(products)) == [5, 17]
    written = dict(products.execute("SELECT product_id, count(*) FROM vectorize._chunks_remote GROUP BY 1"))
    assert sorted(written) == [k for k in range(1, 25) if k not in (5, 17)] and set(written.values()) == {1}
    status = hook.get_status("remote")
    assert (status["embedded_rows"], status["failed_rows"], status["chunks"]) == (22, 2, 22)


def test_a_changed_text_starts_its_attempts_again(products, hook, embedding_server):
    products.execute("UPDATE products SET description = %s WHERE product_id = 3", [LONG])
    create(hook)
    embedding_server.reset(max_input_bytes=150)
    for _ in range(3):
        hook.generate_embeddings("remote")
    products.execute("UPDATE products SET description = %s WHERE product_id = 3", [LONG + "!"])

    assert errors(products)[3][0] == 3
    assert hook.generate_embeddings("remote", max_failed_share=1)["failed"] == 1  # tried again
    assert errors(products)[3][0] == 1


def test_too_many_failures_fail_the_run_but_keep_what_was_embedded(products, hook, embedding_server):
    products.execute("UPDATE products SET description = %s WHERE product_id <= 5", [LONG])  # 5 of 24: 21 %
    create(hook)
    embedding_server.reset(max_input_bytes=150)

    with pytest.raises(EmbeddingFailuresError) as error:
        hook.generate_embeddings("remote", batch_size=8)

    assert re.match(r"project 'remote': 5 row\(s\) could not be embedded \(5 for the first time: 21% of the"
                    r" rows tried\), recorded in vectorize._errors_remote; e.g. [1-5]: ModelInputRejectedError:",
                    str(error.value))
    assert "More than the allowed 10%: the run fails (the 19 row(s) embedded are kept)" in str(error.value)
    assert hook.get_status("remote")["embedded_rows"] == 19 and len(errors(products)) == 5
    assert hook.generate_embeddings("remote")["failed"] == 5  # known failures retried: a warning only
    products.execute("UPDATE products SET description = %s WHERE product_id = 24", [LONG])
    with pytest.raises(EmbeddingFailuresError, match=r"\(1 for the first time: 17% of the rows tried\)"):
        hook.generate_embeddings("remote")  # 1 new failure among 6 rows tried
    products.execute("UPDATE products SET description = %s WHERE product_id = 23", [LONG])
    # 1-5 have failed 3 times now (given up on); 23 fails for the first time, 24 again: 1 of 2 is allowed
    assert hook.generate_embeddings("remote", max_failed_share=0.5)["failed"] == 2


def test_a_retry_of_the_task_fails_as_its_first_try_did(products, hook, embedding_server):
    """Airflow retries a failed task in the same DAG run: the rows its first try failed are not 'known' to
    the retry, which fails too (before, it passed with 100 % of its rows failing). The next DAG run only warns."""
    products.execute("UPDATE products SET description = %s WHERE product_id <= 5", [LONG])
    create(hook)
    embedding_server.reset(max_input_bytes=150)
    task = GenerateEmbeddingsOperator(task_id="embed", postgres_conn_id=products.conn_id, job_name="remote")
    assert fails_then_its_retry_too(task, products)["failed"] == 5  # the next DAG run: known failures, a warning
    assert {attempts for attempts, _ in errors(products).values()} == {3}


def fails_then_its_retry_too(task, products) -> dict:
    """Run ``task`` as Airflow does: a try that fails on 5 of 24 rows, its retry in the same DAG run, which
    fails too, then the next DAG run's, whose summary is returned."""
    run = SimpleNamespace(start_date=products.scalar("SELECT clock_timestamp()"))
    with pytest.raises(EmbeddingFailuresError, match=r"5 row\(s\) could not be embedded \(5 for the first time: 21%"):
        task.execute({"dag_run": run})
    with pytest.raises(EmbeddingFailuresError, match=r"\(5 for the first time: 100% of the rows tried\)"):
        task.execute({"dag_run": run})  # the retry
    return task.execute({"dag_run": SimpleNamespace(start_date=products.scalar("SELECT clock_timestamp()"))})


def test_a_retry_of_a_create_task_whose_initial_load_failed_fails_too(products, hook, embedding_server):
    """CreateVectorizeProjectOperator(embed_existing=True): the initial load ran without the DAG run's start,
    so Airflow's retry found the rows its first try failed 'known from before' and passed."""
    products.execute("UPDATE products SET description = %s WHERE product_id <= 5", [LONG])  # 5 of 24: 21 %
    embedding_server.reset(max_input_bytes=150)
    task = CreateVectorizeProjectOperator(task_id="create", postgres_conn_id=products.conn_id, job_name="remote",
                                          table="products", primary_key="product_id", columns=COLUMNS,
                                          transformer=MODEL, model_conn_id="flaky", embed_existing=True)
    summary = fails_then_its_retry_too(task, products)  # the next DAG run: known failures, a warning only
    assert (summary["created"], summary["initial_load"]["failed"]) == (False, 5)
    tolerant = CreateVectorizeProjectOperator(task_id="create", postgres_conn_id=products.conn_id, job_name="remote",
                                              table="products", primary_key="product_id", columns=COLUMNS,
                                              transformer=MODEL, model_conn_id="flaky", embed_existing=True,
                                              max_attempts=4, max_failed_share=1)
    later_run = SimpleNamespace(start_date=products.scalar("SELECT clock_timestamp()"))
    assert tolerant.execute({"dag_run": later_run})["initial_load"]["failed"] == 5  # the 4th attempt, allowed
    assert {attempts for attempts, _ in errors(products).values()} == {4}


def test_bad_failure_options_of_a_create_change_nothing(products, hook):
    before = snapshot(products)
    with pytest.raises(InvalidInputError, match=r"max_failed_share must be a number in \[0, 1\], got 2"):
        create(hook, embed_existing=True, max_failed_share=2)
    assert snapshot(products) == before


def test_a_realtime_run_tries_the_rows_refused_before_until_max_attempts(products, hook, embedding_server):
    """A refused row leaves the queue for the errors table; a pending_only run read the queue only, so
    Airflow's retry of the realtime task passed with nothing to do and no later realtime run tried the rows
    again. Now it reads the errors table too: the retry fails, later runs try them up to max_attempts."""
    create(hook)
    embedding_server.reset(max_input_bytes=150)
    products.execute("UPDATE products SET description = %s WHERE product_id IN (7, 8)", [LONG])  # queued
    task = GenerateEmbeddingsOperator(task_id="embed_pending", postgres_conn_id=products.conn_id, job_name="remote",
                                      pending_only=True)
    run = SimpleNamespace(start_date=products.scalar("SELECT clock_timestamp()"))

    with pytest.raises(EmbeddingFailuresError, match=r"2 row\(s\) could not be embedded \(2 for the first time: 100%"):
        task.execute({"dag_run": run})
    assert hook.get_freshness("remote")["pending"] == 0  # off the queue, in the errors table
    with pytest.raises(EmbeddingFailuresError, match=r"\(2 for the first time: 100% of the rows tried\)"):
        task.execute({"dag_run": run})  # the retry

    next_run = SimpleNamespace(start_date=products.scalar("SELECT clock_timestamp()"))
    summary = task.execute({"dag_run": next_run})  # known failures: a warning only
    assert (summary["embedded"], summary["failed"]) == (0, 2)
    assert errors(products).keys() == {7, 8} and {attempts for attempts, _ in errors(products).values()} == {3}
    requests = len(embedding_server.requests)
    assert task.execute({"dag_run": next_run})["failed"] == 0  # given up on
    assert len(embedding_server.requests) == requests


@pytest.mark.parametrize("kwargs, message", [
    ({"max_attempts": 0}, "max_attempts must be a positive integer"),
    ({"failures_since": datetime(2026, 12, 1)}, "failures_since must be a datetime with a time zone, got"),
    ({"max_failed_share": 1.5}, r"max_failed_share must be a number in \[0, 1\], got 1.5"),
    ({"max_failed_share": "0.1"}, r"max_failed_share must be a number in \[0, 1\], got '0.1'"),
])
def test_bad_failure_options_change_nothing(products, hook, embedding_server, kwargs, message):
    create(hook)
    before = snapshot(products)
    with pytest.raises(InvalidInputError, match=message):
        hook.generate_embeddings("remote", **kwargs)
    assert snapshot(products) == before
