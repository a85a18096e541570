"""``cohere/<model>`` and ``voyage/<model>`` through the hook, against real HTTP servers that follow each API's
published format (tests/protocol_servers.py) and answer with the real local model's vectors: input types per
side, request caps, retries, typed errors at create, per-row refusals, no key anywhere."""

from __future__ import annotations

import json
import logging

import httpx
import numpy as np
import pytest
from conftest import product_texts, snapshot

from airflow_vectorize import models
from airflow_vectorize.exceptions import (
    InvalidInputError,
    ModelAuthenticationError,
    ModelInputRejectedError,
    ModelNotFoundError,
)

COLUMNS = ["name", "description"]
QUERY = "mobile phone with a good camera"  # the catalogue's phones answer it
SPEC = {
    "cohere": {"transformer": "cohere/embed-english-v3.0", "texts": "texts", "document": "search_document",
               "query": "search_query", "probe": "search_document"},
    "voyage": {"transformer": "voyage/voyage-3.5", "texts": "input", "document": "document", "query": "query",
               "probe": None},
}


@pytest.fixture(scope="session")
def protocol_servers():
    from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
    from airflow_vectorize.models.local import load_model
    from tests.protocol_servers import CohereServer, VoyageServer

    local = load_model(DEFAULT_TRANSFORMER)
    started = {"cohere": CohereServer(local), "voyage": VoyageServer(local)}
    yield started
    for server in started.values():
        server.close()


@pytest.fixture
def servers(protocol_servers, monkeypatch):
    """Both servers, reset; connections ``cohere_test`` (type cohere) and ``voyage_test`` to them."""
    for name, server in protocol_servers.items():
        server.reset()
        connect(monkeypatch, f"{name}_test", name, server.url, server.api_key)
    return protocol_servers


def connect(monkeypatch, conn_id: str, conn_type: str, url: str, key: str) -> None:
    extra = {"max_retries": 3, "retry_initial_delay": 0.05, "retry_max_delay": 0.2, "timeout": 10}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                       json.dumps({"conn_type": conn_type, "host": url, "password": key, "extra": extra}))


def create(hook, provider: str, job: str | None = None, table: str = "products", key: str = "product_id",
           columns=COLUMNS, **kwargs):
    kwargs.setdefault("model_conn_id", f"{provider}_test")
    return hook.create_project(job or provider, table, key, columns, transformer=SPEC[provider]["transformer"],
                               **kwargs)


def input_types(server) -> set:
    return {r.body.get("input_type") for r in server.requests}


@pytest.mark.parametrize("provider", ["cohere", "voyage"])
def test_documents_and_queries_are_encoded_as_the_provider_wants(products, hook, servers, model, provider):
    server, spec = servers[provider], SPEC[provider]

    summary = create(hook, provider)

    assert summary["created"] and summary["dimensions"] == 384 and summary["model_conn_id"] == f"{provider}_test"
    (probe,) = server.requests
    assert probe.headers["Authorization"] == f"Bearer {server.api_key}" and probe.body.get("input_type") == spec["probe"]
    assert hook.get_project(provider)["params"]["encoding"] == {"document_input_type": spec["document"],
                                                               "query_input_type": spec["query"]}
    assert server.api_key not in str(products.execute("SELECT * FROM vectorize.job"))

    server.reset()
    assert hook.generate_embeddings(provider)["embedded"] == 24
    assert input_types(server) == {spec["document"]}
    texts = product_texts(products)
    stored = dict(products.execute(f"SELECT product_id, embeddings FROM vectorize._embeddings_{provider}"))
    local = model.encode(list(texts.values()), show_progress_bar=False)
    assert all(np.allclose(stored[key].to_numpy(), vector, atol=1e-5) for key, vector in zip(texts, local))

    server.reset()
    rows = hook.search(provider, QUERY, return_columns=["product_id", "category"], num_results=3)
    assert [row["category"] for row in rows] == ["phones"] * 3
    (request,) = server.requests
    assert request.body[spec["texts"]] == [QUERY] and request.body.get("input_type") == spec["query"]


def test_cohere_requests_hold_at_most_96_texts_and_a_429_waits_for_retry_after(database, hook, servers, caplog):
    database.execute("CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL)")
    with database.conn.cursor() as cur:
        cur.executemany("INSERT INTO notes VALUES (%s, %s)", [(i, f"note {i} on topic {i % 7}") for i in range(200)])
    create(hook, "cohere", job="notes", table="notes", key="id", columns=["body"])
    server = servers["cohere"]
    server.reset(faults=[(429, 1, f"rate limited; key {server.api_key}")])  # a server that echoes the key

    with caplog.at_level(logging.DEBUG):
        summary = hook.generate_embeddings("notes", batch_size=200, concurrency=1)

    assert summary["embedded"] == 200
    sizes = [(r.status, len(r.body["texts"])) for r in server.requests]
    assert sizes == [(429, 96), (200, 96), (200, 96), (200, 8)]
    assert server.requests[1].started - server.requests[0].started >= 1.0  # Retry-After: 1 was waited for
    assert "HTTP 429: rate limited; key ***; retry 1 of 3" in caplog.text and server.api_key not in caplog.text

    # The cap is the server's: 97 texts are refused with Cohere's error body.
    answer = httpx.post(server.url + "/v2/embed", headers={"Authorization": f"Bearer {server.api_key}"},
                        json={"model": "embed-english-v3.0", "input_type": "search_document", "texts": ["a"] * 97})
    assert answer.status_code == 400
    assert answer.json()["message"] == "invalid request: total number of texts must be at most 96 - received 97"


def test_voyage_requests_stay_within_1000_inputs_and_the_models_tokens(servers):
    current = models.embedding_model("voyage/voyage-3.5", "voyage_test")
    assert (current.limits.max_batch_inputs, current.limits.max_batch_tokens) == (1000, 320_000)
    assert [len(group) for group in current.requests(["short text"] * 2500)] == [1000, 1000, 500]
    large = models.embedding_model("voyage/voyage-3-large", "voyage_test")
    text = "x" * 3000  # 1,000 tokens by the upper estimate
    assert [len(group) for group in large.requests([text] * 250)] == [120, 120, 10]
    assert models.embedding_model("voyage/voyage-new", "voyage_test").limits.max_batch_tokens == 120_000

    server = servers["voyage"]
    answer = httpx.post(server.url + "/embeddings", headers={"Authorization": f"Bearer {server.api_key}"},
                        json={"model": "voyage-3.5", "input": ["a"] * 1001})
    assert (answer.status_code, answer.json()) == (400, {"detail": "The batch size limit is 1000. Your batch size"
                                                                   " is 1001."})


@pytest.mark.parametrize("provider, wrong, error_type, message", [
    ("cohere", "key", ModelAuthenticationError, "HTTP 401, the server refused the credentials: invalid api token"),
    ("cohere", "model", ModelNotFoundError, "HTTP 404 for http://127.0.0.1:{port}/v2/embed: model 'nope' not found"),
    ("voyage", "key", ModelAuthenticationError, "HTTP 401, the server refused the credentials: Provided API key is"),
    ("voyage", "model", ModelNotFoundError, "HTTP 400, the server rejected the request: Model nope is not"),
], ids=["cohere-key", "cohere-model", "voyage-key", "voyage-model"])
def test_a_wrong_key_or_model_fails_create_and_creates_nothing(products, hook, servers, monkeypatch, caplog,
                                                               provider, wrong, error_type, message):
    server, bad_key = servers[provider], "wrong-key-31415926"
    connect(monkeypatch, "wrong", provider, server.url, bad_key)
    before = snapshot(products)

    with caplog.at_level(logging.DEBUG), pytest.raises(error_type) as error:
        if wrong == "key":
            create(hook, provider, model_conn_id="wrong")
        else:
            hook.create_project(provider, "products", "product_id", COLUMNS, transformer=f"{provider}/nope",
                                model_conn_id=f"{provider}_test")

    assert message.format(port=server.port) in str(error.value)
    assert len(server.requests) == 1  # not retried
    assert snapshot(products) == before
    for key in (bad_key, server.api_key):
        assert key not in str(error.value) and key not in caplog.text


def test_a_refused_row_is_recorded_and_the_others_embedded(products, hook, servers):
    products.execute("UPDATE products SET description = description || ' [refused]' WHERE product_id = 5")
    create(hook, "voyage")
    servers["voyage"].reset(reject="[refused]")

    summary = hook.generate_embeddings("voyage", batch_size=24)

    assert (summary["embedded"], summary["failed"]) == (23, 1)
    ((key, error),) = products.execute("SELECT product_id, error FROM vectorize._errors_voyage")
    assert key == 5 and "ModelInputRejectedError" in error and "HTTP 400" in error
    assert "the input could not be embedded" in error and servers["voyage"].api_key not in error
    assert products.scalar("SELECT count(*) FROM vectorize._embeddings_voyage") == 23


def test_explicit_input_types_are_kept_and_sent_and_unknown_ones_refused(products, hook, servers):
    server = servers["cohere"]
    create(hook, "cohere", input_types={"document": "classification", "query": "classification"})
    assert hook.get_project("cohere")["params"]["encoding"] == {"document_input_type": "classification",
                                                               "query_input_type": "classification"}
    server.reset()
    hook.generate_embeddings("cohere")
    hook.search("cohere", QUERY, num_results=1)
    assert input_types(server) == {"classification"} and len(server.answered()) == 2

    before = snapshot(products)
    with pytest.raises(InvalidInputError) as error:
        create(hook, "cohere", job="other", input_types={"document": "nope"})
    assert ("input_types['document']='nope': 'cohere/embed-english-v3.0' through connection 'cohere_test' takes one"
            " of 'search_document', 'search_query', 'classification', 'clustering'") in str(error.value)
    assert snapshot(products) == before
    assert products.scalar("SELECT count(*) FROM vectorize.job") == 1


def test_cohere_quotes_an_error_answered_with_http_200_with_the_key_masked(products, hook, servers):
    """Before: "the server's embeddings cannot be read (KeyError: 'embeddings')", the server's message lost."""
    from airflow_vectorize.exceptions import ModelResponseError

    server = servers["cohere"]
    create(hook, "cohere")
    before = snapshot(products)
    trial = f"You are using a Trial key ({server.api_key}), which is limited to 40 API calls / minute"
    server.reset(faults=[(200, None, trial)])

    with pytest.raises(ModelResponseError) as error:
        hook.generate_embeddings("cohere")

    assert str(error.value) == (
        "connection 'cohere_test', model 'embed-english-v3.0': the server's embeddings cannot be read (ValueError:"
        " the answer is an error, not embeddings: You are using a Trial key (***), which is limited to 40 API"
        " calls / minute); nothing of this batch was written")
    assert snapshot(products) == before
