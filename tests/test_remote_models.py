"""Remote embedding models through Airflow connections, against a real HTTP server that misbehaves on
request (429 + Retry-After, 500, slow answers, 401, 404, malformed JSON, wrong sizes and counts)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from conftest import product_texts, set_model_connection, snapshot

from airflow_vectorize.exceptions import (
    InvalidInputError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelNotFoundError,
    ModelRequestError,
    ModelResponseError,
)
from scripts.server_process import free_port

MODEL = "openai/MiniLM"
COLUMNS = ["name", "description"]
JOB = "remote"


def create(hook, job: str = JOB, **kwargs):
    return hook.create_project(job, "products", "product_id", COLUMNS, transformer=MODEL,
                               model_conn_id=kwargs.pop("model_conn_id", "flaky"), **kwargs)


def embedded_count(db, job: str = JOB) -> int:
    return db.scalar(f"SELECT count(*) FROM vectorize._embeddings_{job}")


def test_create_probes_the_server_and_keeps_only_the_connection_id(products, hook, embedding_server):
    summary = create(hook)

    assert summary["created"] and summary["dimensions"] == 384 and summary["model_conn_id"] == "flaky"
    assert len(embedding_server.requests) == 1  # one probe
    assert embedding_server.requests[0].headers["Authorization"] == f"Bearer {embedding_server.api_key}"
    row = products.execute("SELECT transformer, params FROM vectorize.job")[0]
    assert row[0] == MODEL and row[1]["model_conn_id"] == "flaky" and "dimensions" not in row[1]
    assert embedding_server.api_key not in str(row) and "127.0.0.1" not in str(row)
    assert create(hook)["created"] is False  # the same call again: no-op


def test_generation_search_and_encode_use_the_projects_model(products, hook, embedding_server, model):
    create(hook)

    summary = hook.generate_embeddings(JOB, batch_size=8)

    texts = product_texts(products)
    assert summary["embedded"] == len(texts) and summary["concurrency"] == 4
    stored = {k: v.to_numpy() for k, v in products.execute("SELECT product_id, embeddings FROM vectorize._embeddings_remote")}
    local = model.encode(list(texts.values()), show_progress_bar=False)
    assert all(np.allclose(stored[key], vector, atol=1e-6) for key, vector in zip(texts, local))
    assert all(len(r.body["input"]) <= 8 for r in embedding_server.requests[1:])

    rows = hook.search(JOB, "mobile phone with a good camera", return_columns=["product_id", "category"],
                       num_results=3)
    assert [row["category"] for row in rows] == ["phones"] * 3
    assert embedding_server.inputs()[-1] == "mobile phone with a good camera"
    assert np.allclose(hook.encode(JOB, ["kettle"])[0], model.encode(["kettle"])[0], atol=1e-6)


def test_one_http_connection_serves_every_query_of_a_process(products, hook, embedding_server):
    create(hook)
    hook.generate_embeddings(JOB, concurrency=1)
    embedding_server.reset()

    for query in ("phone", "kettle", "bicycle", "laptop"):
        hook.search(JOB, query, num_results=1)
    hook.hybrid_search(JOB, "phone camera", num_results=1)

    assert len(embedding_server.requests) == 5
    assert len({r.client_port for r in embedding_server.requests}) == 1  # keep-alive: one TCP connection


@pytest.mark.parametrize("fault, error_type, message", [
    (("status", 401, None, "bad key"), ModelAuthenticationError,
     "connection 'flaky' (http://127.0.0.1:{port}/v1), model 'MiniLM': HTTP 401, the server refused the credentials"),
    (("status", 403, None, "no access to this model"), ModelAuthenticationError, "HTTP 403"),
    (("status", 400, None, "input is invalid"), ModelRequestError,
     "HTTP 400, the server rejected the request: input is invalid"),
], ids=["401", "403", "400"])
def test_create_fails_clearly_and_creates_nothing(products, hook, embedding_server, fault, error_type, message):
    before = snapshot(products)
    embedding_server.reset(faults=[fault])

    with pytest.raises(error_type) as error:
        create(hook)

    assert message.format(port=embedding_server.port) in str(error.value)
    assert len(embedding_server.requests) == 1  # not retried
    assert snapshot(products) == before


def test_unknown_model_wrong_key_and_unreachable_host(products, hook, embedding_server):
    before = snapshot(products)
    with pytest.raises(ModelNotFoundError, match="model 'nope': HTTP 404 .* model 'nope' not found. Check the model"):
        hook.create_project(JOB, "products", "product_id", COLUMNS, transformer="openai/nope", model_conn_id="flaky")

    set_model_connection("wrong_key", embedding_server.url, "sk-wrong-key-9876", max_retries=0)
    embedding_server.reset()
    with pytest.raises(ModelAuthenticationError, match="password of connection 'wrong_key'") as wrong:
        create(hook, model_conn_id="wrong_key")
    assert "sk-wrong-key-9876" not in str(wrong.value)  # the server echoed it; the message masks it
    assert len(embedding_server.requests) == 1  # the connection read again is unchanged: not sent again

    # Refused at once (before, retried with backoff: 7 attempts, up to ~31 s, with the default extras).
    port = free_port()
    set_model_connection("nowhere", f"http://127.0.0.1:{port}/v1", "k")
    with pytest.raises(ModelConnectionError) as unreachable:
        create(hook, model_conn_id="nowhere")
    assert str(unreachable.value) == (
        f"connection 'nowhere' (http://127.0.0.1:{port}/v1), model 'MiniLM': the host cannot be reached"
        " (ConnectError: [Errno 111] Connection refused). Check the host of connection 'nowhere' and that the"
        " server is up and reachable from here")  # no "failed after N attempt(s)": not retried
    assert snapshot(products) == before


def test_dimensions_are_asked_of_the_server_and_checked(products, hook, embedding_server):
    before = snapshot(products)

    with pytest.raises(InvalidInputError, match="dimensions=128 was requested, but 'openai/MiniLM' through"
                                                " connection 'flaky' produces 384-dimensional vectors"):
        create(hook, dimensions=128)

    assert embedding_server.requests[0].body["dimensions"] == 128
    assert snapshot(products) == before


def test_rate_limits_and_server_errors_are_retried_honouring_retry_after(products, hook, embedding_server):
    create(hook)
    embedding_server.reset(faults=[("status", 429, 1, "Rate limit reached"), ("status", 500, None, "oops"),
                                   ("status", 503, None, "overloaded")])

    summary = hook.generate_embeddings(JOB, batch_size=100, concurrency=1)

    assert summary["embedded"] == 24 and embedded_count(products) == 24
    first, second = embedding_server.requests[:2]
    assert second.started - first.ended >= 1.0  # Retry-After: 1 was honoured
    assert len(embedding_server.requests) == 4


def test_slow_answers_dropped_connections_and_malformed_json_are_retried(products, hook, embedding_server):
    create(hook)
    embedding_server.reset(faults=[("slow", 3), ("drop",), ("bad_json",)])

    assert hook.generate_embeddings(JOB, batch_size=100, concurrency=1)["embedded"] == 24
    assert len(embedding_server.requests) == 4


def test_the_timeout_bounds_a_whole_attempt(products, hook, embedding_server):
    """An answer trickled over 6 s, each piece well within the 2 s timeout, is timed out at 2 s and retried
    (before, httpx's timeout, which bounds each read, let it through after 6 s)."""
    create(hook)
    embedding_server.reset(faults=[("trickle", 6)])

    started = time.monotonic()
    assert hook.generate_embeddings(JOB, batch_size=100, concurrency=1)["embedded"] == 24
    assert len(embedding_server.requests) == 2 and time.monotonic() - started < 5


def test_persistent_failure_names_everything_and_keeps_committed_batches(products, hook, embedding_server, caplog):
    create(hook)
    embedding_server.reset(faults=[("ok",), ("ok",)], default=("status", 500, None, "GPU on fire"))

    with caplog.at_level(logging.DEBUG), pytest.raises(ModelRequestError) as error:
        hook.generate_embeddings(JOB, batch_size=5, concurrency=1)

    assert (f"connection 'flaky' (http://127.0.0.1:{embedding_server.port}/v1), model 'MiniLM': failed after 4 attempt(s); last error:"
            " HTTP 500: GPU on fire") in str(error.value)
    assert embedded_count(products) == 10  # the two batches answered before the outage stay committed
    done = set(embedding_server.inputs())

    embedding_server.reset()
    assert hook.generate_embeddings(JOB, batch_size=5, concurrency=1)["embedded"] == 14
    assert not done & set(embedding_server.inputs())  # the next run embeds only the rest
    assert embedding_server.api_key not in caplog.text


@pytest.mark.parametrize("fault, message", [
    (("wrong_dims", 3), "the server answered vectors of 3 dimensions, expected 384; nothing of this batch was written"),
    (("wrong_count",), "the server answered 23 embedding(s) for 24 input(s); nothing of this batch was written"),
    # Before, these were sorted by index and written: rows got other rows' vectors, without an error.
    (("indexes", "halves"), "the items' 'index' values are not 0..23, each once: [0, 1, 2,"),
    (("indexes", "repeated"), "the items' 'index' values are not 0..23, each once: [23, 22,"),
    (("indexes", "text"), "the items' 'index' values are not 0..23, each once: ['23', '22',"),
    (("error_200", "Rate limit reached for requests"),  # was "cannot be read (KeyError: 'data')"
     "the answer is an error, not embeddings: Rate limit reached for requests"),
])
def test_wrong_answers_write_nothing(products, hook, embedding_server, fault, message):
    create(hook)
    embedding_server.reset(faults=[fault])

    with pytest.raises(ModelResponseError) as error:
        hook.generate_embeddings(JOB, batch_size=100)

    assert message in str(error.value) and "connection 'flaky', model 'MiniLM'" in str(error.value)
    assert embedded_count(products) == 0


def test_a_wrong_answer_to_a_query_says_nothing_of_writes(products, hook, embedding_server):
    """A search writes nothing: its error names the connection and the fault, not a batch left unwritten."""
    create(hook)
    embedding_server.reset(faults=[("wrong_dims", 3)])

    with pytest.raises(ModelResponseError) as error:
        hook.search(JOB, "phone")

    assert str(error.value) == ("connection 'flaky', model 'MiniLM': the server answered vectors of 3 dimensions,"
                                " expected 384")


def test_an_error_answered_with_http_200_is_quoted_with_the_key_masked(products, hook, embedding_server):
    """The server's message in an HTTP-200 error body is quoted; before, a key it echoed was quoted too (every
    other answer's message is masked by the connection)."""
    create(hook)
    embedding_server.reset(faults=[("error_200", f"Quota exceeded for key {embedding_server.api_key}")])

    with pytest.raises(ModelResponseError) as error:
        hook.search(JOB, "phone")

    assert str(error.value) == ("connection 'flaky', model 'MiniLM': the server's embeddings cannot be read"
                                " (ValueError: the answer is an error, not embeddings: Quota exceeded for key ***)")


def test_values_beyond_a_chunked_projects_index_fail_the_run_clearly(products, hook, embedding_server):
    """A chunked project's index holds its vectors at half precision: a model answering values beyond ±65504
    fails the run with a ModelResponseError, and writes nothing (the same answer fits an unchunked project)."""
    create(hook, chunk_size=32)
    create(hook, job="whole")
    before = snapshot(products)
    embedding_server.reset(default=("scaled", 1e6))  # a unit vector's largest value times 10^6: > 65504

    with pytest.raises(ModelResponseError) as error:
        hook.generate_embeddings(JOB, batch_size=100)

    assert str(error.value) == (f"project {JOB!r}: the model returned values beyond ±65504, which the"
                                " project's index (halfvec, half precision) cannot hold; nothing of this batch"
                                " was written")
    assert snapshot(products) == before
    assert hook.generate_embeddings("whole")["embedded"] == 24


def test_requests_respect_input_and_token_limits_and_long_inputs_are_cut(products, hook, embedding_server):
    products.execute("UPDATE products SET description = repeat('very long text ', 500) WHERE product_id = 7")
    set_model_connection("limited", embedding_server.url, embedding_server.api_key, max_batch_inputs=5,
                         max_batch_tokens=60, max_input_tokens=50)
    create(hook, model_conn_id="limited")
    embedding_server.reset(max_input_bytes=150)  # rejects (400) any input over 150 bytes, as OpenAI would

    summary = hook.generate_embeddings(JOB, batch_size=100, concurrency=1)

    assert summary["embedded"] == 24
    requests = embedding_server.requests
    assert len(requests) > 24 // 5 and all(len(r.body["input"]) <= 5 for r in requests)
    assert all(sum(-(-len(t.encode()) // 3) for t in r.body["input"]) <= 60 for r in requests if len(r.body["input"]) > 1)
    long_input = [t for t in embedding_server.inputs() if "very long text" in t]
    assert len(long_input) == 1 and len(long_input[0].encode()) <= 150


def test_concurrency_keeps_that_many_requests_in_flight(products, hook, embedding_server):
    create(hook)
    embedding_server.reset(delay=0.3)

    summary = hook.generate_embeddings(JOB, batch_size=3, concurrency=4)

    assert summary["embedded"] == 24 and summary["batches"] == 8
    assert embedding_server.in_flight_peak == 4


def test_the_key_appears_in_no_log_error_result_or_catalog(products, hook, embedding_server, caplog):
    create(hook)
    embedding_server.reset(faults=[("status", 429, 0, "slow down")])
    with caplog.at_level(logging.DEBUG):
        summary = hook.generate_embeddings(JOB, concurrency=1)
        rows = hook.search(JOB, "phone")
        entry = hook.get_project(JOB)

    key = embedding_server.api_key
    assert "slow down; retry 1 of 3" in caplog.text
    assert key not in caplog.text and key not in str(summary) and key not in str(rows) and key not in str(entry)
    assert key not in str(products.execute("SELECT * FROM vectorize.job"))


def test_only_model_connections_are_model_endpoints(monkeypatch):
    """A database's connection (or any type but a model's) is refused by name and type, its password never
    read as a key; only a connection of the provider's own type without a host means the provider's default
    URL: a Unix-socket PostgreSQL connection (no host) never becomes an api.openai.com endpoint."""
    from airflow_vectorize.models import chat_model, embedding_model
    from airflow_vectorize.models.connection import endpoint

    monkeypatch.setenv("AIRFLOW_CONN_SOCKET_DB", "postgresql://app:db-password@/appdb?host=/var/run/postgresql")
    monkeypatch.setenv("AIRFLOW_CONN_SSH_BOX", '{"conn_type": "ssh", "host": "box", "password": "ssh-password"}')
    monkeypatch.setenv("AIRFLOW_CONN_COHERE_NO_HOST", '{"conn_type": "cohere", "password": "co-key-123"}')
    for conn_id, conn_type in (("socket_db", "postgres"), ("ssh_box", "ssh")):
        for make in (lambda c: chat_model("openai/gpt-4o-mini", c), lambda c: embedding_model("openai/x", c, 8),
                     lambda c: embedding_model("voyage/voyage-3.5", c, 8),
                     lambda c: embedding_model("sentence-transformers/all-MiniLM-L6-v2", c, 384),
                     lambda c: endpoint(c, "https://api.openai.com/v1", provider="openai")):
            with pytest.raises(InvalidInputError, match=f"connection '{conn_id}' is of type '{conn_type}', not a"
                               " model connection") as raised:
                make(conn_id)
            assert "db-password" not in str(raised.value) and "ssh-password" not in str(raised.value)
    with pytest.raises(InvalidInputError, match="'cohere_no_host' \\(type 'cohere'\\) has no host: only an?"
                       " 'openai' connection without one reaches the openai provider's https://api.openai.com/v1"):
        embedding_model("openai/x", "cohere_no_host", 8)
    assert endpoint("cohere_no_host", "https://api.cohere.com", provider="cohere",
                    conn_type="cohere").base_url == "https://api.cohere.com"  # its own provider's default
    monkeypatch.setenv("AIRFLOW_CONN_GPU_BOX", "http://:key-9@gpu-box:7997")  # Airflow's HTTP connection, as a URI
    monkeypatch.setenv("AIRFLOW_CONN_HTTP_NO_HOST", '{"conn_type": "http", "password": "key-9"}')
    assert endpoint("gpu_box", "https://api.openai.com/v1", provider="openai").base_url == "http://gpu-box:7997"
    with pytest.raises(InvalidInputError, match="'http_no_host' \\(type 'http'\\) has no host"):
        embedding_model("openai/x", "http_no_host", 8)
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_KEY_ONLY", '{"conn_type": "openai", "password": "sk-1234"}')
    assert endpoint("openai_key_only", "https://api.openai.com/v1", provider="openai").base_url \
        == "https://api.openai.com/v1"


def key_parts(text: str, key: str) -> list[str]:
    """The prefixes of ``key`` of 8 characters or more that ``text`` holds."""
    return [key[:n] for n in range(8, len(key) + 1) if key[:n] in text]


@pytest.mark.parametrize("fault", [
    ("status", 401, None, "x" * 450 + " Incorrect API key provided: {key}"),  # the key from character 479
    ("raw_200", "<html>" + "y" * 280 + " key {key} </html>"),
    ("echo_key",),
], ids=["401-near-500th-character", "200-not-json-near-300th", "key-in-vector-values"])
def test_a_key_the_server_echoes_is_masked_before_its_message_is_cut(products, hook, embedding_server, caplog, fault):
    """Before, a server's message was cut (500 or 300 characters) before the key was masked: a key cut short
    was no longer found, and up to 31 of its characters were shown; a key in the vector values was not masked
    at all."""
    create(hook)
    before = snapshot(products)
    key = embedding_server.api_key
    embedding_server.reset(default=tuple(part.format(key=key) if isinstance(part, str) else part for part in fault))

    with caplog.at_level(logging.DEBUG), pytest.raises((ModelAuthenticationError, ModelResponseError)) as error:
        hook.search(JOB, "phone")

    assert "connection 'flaky'" in str(error.value) and "model 'MiniLM'" in str(error.value)
    assert "***" in str(error.value) or "…" in str(error.value)
    assert key_parts(str(error.value), key) == [] and key_parts(caplog.text, key) == []
    assert snapshot(products) == before


def test_a_refused_rows_error_keeps_no_part_of_the_key(products, hook, embedding_server):
    """A 400 quoting the key near its 500th character: the row's error in the errors table held 26 of its 35
    characters."""
    key = embedding_server.api_key
    products.execute("UPDATE products SET description = repeat('long text ', 40) WHERE product_id = 5")
    create(hook)
    embedding_server.reset(max_input_bytes=200, reject_message="z" * 460 + f" input rejected for key {key}")

    summary = hook.generate_embeddings(JOB, batch_size=24, concurrency=1)

    assert (summary["embedded"], summary["failed"]) == (23, 1)
    (error,) = [row[0] for row in products.execute("SELECT error FROM vectorize._errors_remote")]
    assert "ModelInputRejectedError" in error and "HTTP 400" in error and key_parts(error, key) == []


@pytest.mark.parametrize("fault, message", [
    (("empty_base64",), "the server answered vectors of 0 dimensions; pgvector stores 1 to 16000"),
    (("tiled", 16001), "the server answered vectors of 16001 dimensions; pgvector stores 1 to 16000"),
], ids=["empty", "over-16000"])
def test_vector_sizes_pgvector_cannot_store_are_refused(products, hook, embedding_server, fault, message):
    """Before, an empty base64 vector passed the probe as 0 dimensions and 16001 as 16001, and create_project
    failed in PostgreSQL (raw InvalidParameterValue)."""
    before = snapshot(products)
    embedding_server.reset(default=fault)

    with pytest.raises(ModelResponseError) as error:
        create(hook)

    assert str(error.value) == f"connection 'flaky', model 'MiniLM': {message}"
    assert snapshot(products) == before


def test_vectors_of_different_sizes_in_one_answer_write_nothing(products, hook, embedding_server):
    """Before: "cannot be read (ValueError: all input arrays must have the same shape)"."""
    create(hook)
    embedding_server.reset(faults=[("mixed_dims",)])

    with pytest.raises(ModelResponseError) as error:
        hook.generate_embeddings(JOB, batch_size=100)

    assert str(error.value) == ("connection 'flaky', model 'MiniLM': the server answered vectors of different"
                                " sizes in one answer (100, 384 dimensions); nothing of this batch was written")
    assert embedded_count(products) == 0


@pytest.mark.parametrize("retry_after", ["3600", "Wed, 01 Jan 2099 00:00:00 GMT"], ids=["seconds", "http-date"])
def test_a_retry_after_beyond_the_limit_fails_at_once(products, hook, embedding_server, retry_after):
    """Before, a Retry-After of an hour (or a date decades ahead) was waited for 120 s, then retried."""
    create(hook)
    embedding_server.reset(faults=[("status", 429, retry_after, "Rate limit reached for requests")])

    with pytest.raises(ModelRequestError) as error:
        hook.generate_embeddings(JOB, batch_size=100, concurrency=1)

    assert type(error.value).__name__ == "ModelRateLimitError"  # a ModelRequestError
    assert len(embedding_server.requests) == 1  # not waited for, nor retried
    waited = "3600" if retry_after == "3600" else ""
    assert (f"connection 'flaky' (http://127.0.0.1:{embedding_server.port}/v1), model 'MiniLM': HTTP 429: Rate"
            f" limit reached for requests; the server asks to wait {waited}") in str(error.value)
    assert str(error.value).endswith(" s (Retry-After) before the next request, longer than the 120 s this"
                                     " connection waits: not retried. The extra 'max_retry_after' of connection"
                                     " 'flaky' raises the limit")
    assert embedded_count(products) == 0
    assert products.scalar("SELECT count(*) FROM vectorize._errors_remote") == 0


def test_the_connection_sets_the_longest_retry_after_waited(products, hook, embedding_server):
    set_model_connection("impatient", embedding_server.url, embedding_server.api_key, max_retry_after=0.5)
    create(hook, model_conn_id="impatient")
    before = snapshot(products)
    embedding_server.reset(faults=[("status", 429, 1, "slow down")])

    with pytest.raises(ModelRequestError) as error:
        hook.generate_embeddings(JOB)

    assert type(error.value).__name__ == "ModelRateLimitError"
    assert "HTTP 429: slow down; the server asks to wait 1 s (Retry-After) before the next request, longer than" \
           " the 0.5 s this connection waits: not retried. The extra 'max_retry_after' of connection 'impatient'" \
           " raises the limit" in str(error.value)
    assert len(embedding_server.requests) == 1 and snapshot(products) == before
