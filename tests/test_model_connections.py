"""Model connections as Airflow keeps them: a key rotated or a host moved while a process keeps its models
(the API's query models, a hook's chat models), and malformed connections refused before any request."""

from __future__ import annotations

import json
import os

import pytest
from conftest import set_model_connection, snapshot

from airflow_vectorize.exceptions import InvalidInputError, ModelAuthenticationError, ModelConnectionError
from scripts.server_process import free_port

MODEL = "openai/MiniLM"
JOB = "rotated"


@pytest.fixture
def other_server(model):
    """A second embeddings server (another host for the same model), closed at the end."""
    from tests.model_servers import EmbeddingServer

    server = EmbeddingServer(model)
    yield server
    server.close()


def keys_sent(server) -> list[str]:
    return [r.headers["Authorization"].removeprefix("Bearer ") for r in server.requests]


def searched_by_a_long_lived_hook(products, hook, model_conn_id: str):
    """Project JOB over ``model_conn_id``'s model, embedded, and a hook like the API's (``batch_queries``: its
    query model kept for the process) that has searched it once."""
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    hook.create_project(JOB, "products", "product_id", ["name", "description"], transformer=MODEL,
                        model_conn_id=model_conn_id)
    hook.generate_embeddings(JOB)
    api_hook = VectorizeHook(postgres_conn_id=products.conn_id, batch_queries=True)
    assert api_hook.search(JOB, "phone", num_results=1)
    return api_hook


def test_a_rotated_key_is_picked_up_by_long_lived_models(products, hook, embedding_server):
    """Before, a hook with batch_queries=True (the API's) kept its model, and its key, for the life of the
    process: after a rotation every search failed with ModelAuthenticationError until a restart."""
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    set_model_connection("rotating", embedding_server.url, embedding_server.api_key)
    api_hook = searched_by_a_long_lived_hook(products, hook, "rotating")
    old_key, new_key = embedding_server.api_key, "sk-rotated-5555555555555555"
    try:
        embedding_server.api_key = new_key  # rotated on the server, then in the connection
        set_model_connection("rotating", embedding_server.url, new_key)
        embedding_server.reset()

        rows = api_hook.search(JOB, "kettle", return_columns=["category"], num_results=1)
        again = VectorizeHook(postgres_conn_id=products.conn_id, batch_queries=True).search(JOB, "bike", num_results=1)

        assert rows == [{"category": "kitchen", "similarity_score": rows[0]["similarity_score"]}] and again
        assert keys_sent(embedding_server) == [old_key, new_key, new_key]  # one refusal, then the new key only
        assert [r.status for r in embedding_server.requests] == [401, 200, 200]
    finally:
        embedding_server.api_key = old_key


def test_a_key_that_is_still_wrong_fails_as_before(products, hook, embedding_server):
    """The connection is read again on a 401; unchanged, the error is raised and nothing is sent again."""
    set_model_connection("stale", embedding_server.url, "sk-stale-key-000000000")
    before = snapshot(products)

    with pytest.raises(ModelAuthenticationError) as error:
        hook.create_project(JOB, "products", "product_id", ["name"], transformer=MODEL, model_conn_id="stale")

    assert "HTTP 401, the server refused the credentials" in str(error.value)
    assert "password of connection 'stale'" in str(error.value) and "sk-stale-key" not in str(error.value)
    assert len(embedding_server.requests) == 1
    assert snapshot(products) == before


def test_a_moved_host_is_picked_up(products, hook, embedding_server, other_server):
    """The model's host goes away and the connection now names another: the request that found the old one
    unreachable is sent to the new one, and later ones go there."""

    other_server.api_key = embedding_server.api_key
    set_model_connection("moving", other_server.url, embedding_server.api_key)
    api_hook = searched_by_a_long_lived_hook(products, hook, "moving")
    other_server.close()  # the old host is gone (connections refused)
    set_model_connection("moving", embedding_server.url, embedding_server.api_key)

    assert api_hook.search(JOB, "kettle", num_results=1)
    assert api_hook.search(JOB, "bike", num_results=1)
    assert [r.body["input"] for r in embedding_server.requests] == [["kettle"], ["bike"]]


def test_a_hooks_chat_model_picks_up_a_rotated_key(hook, embedding_server):
    set_model_connection("chat_rotating", embedding_server.url, embedding_server.api_key)
    embedding_server.reset(default=("chat_answer", "fine", "stop"))
    assert hook.generate("hello", "openai/tiny-chat", chat_conn_id="chat_rotating")["chat_response"] == "fine"
    old_key, new_key = embedding_server.api_key, "sk-rotated-chat-77777777"
    try:
        embedding_server.api_key = new_key
        set_model_connection("chat_rotating", embedding_server.url, new_key)

        assert hook.generate("hello again", "openai/tiny-chat", chat_conn_id="chat_rotating")["chat_response"] == "fine"
        assert keys_sent(embedding_server) == [old_key, old_key, new_key]
    finally:
        embedding_server.api_key = old_key


def connection(conn_id: str, **fields) -> None:
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps({"conn_type": "openai", **fields})


@pytest.mark.parametrize("fields, message", [
    ({"host": "http://127.0.0.1:99999/v1"},
     ("the host (base URL) of connection 'malformed' has a port out of range (0-65535) or not a number:"
      " 'http://127.0.0.1:99999/v1'")),
    ({"host": "http://:8000/v1"}, "the host (base URL) of connection 'malformed' names no host: 'http://:8000/v1'"),
    ({"host": "ftp://models.example/v1"},
     "the host (base URL) of connection 'malformed' is not an http:// or https:// URL: 'ftp://models.example/v1'"),
    ({"host": "http://h/v1", "extra": {"headers": "x-api-key: 123"}},
     ("the extra 'headers' (or openai_client_kwargs.default_headers) of connection 'malformed' must be a JSON"
      " object, got str")),
    ({"host": "http://h/v1", "extra": {"headers": ["x-api-key", "123"]}},
     ("the extra 'headers' (or openai_client_kwargs.default_headers) of connection 'malformed' must be a JSON"
      " object, got list")),
    ({"host": "http://h/v1", "extra": {"openai_client_kwargs": "base_url=http://h"}},
     "the extra 'openai_client_kwargs' of connection 'malformed' must be a JSON object, got str"),
    ({"host": "http://h/v1", "extra": {"max_retries": "inf"}},
     "the extra 'max_retries' of connection 'malformed' must be a finite number >= 0, got 'inf'"),
    ({"host": "http://h/v1", "extra": {"timeout": "nan"}},
     "the extra 'timeout' of connection 'malformed' must be a finite number >= 0 (> 0), got 'nan'"),
    ({"host": "http://h/v1", "extra": {"timeout": "inf"}},
     "the extra 'timeout' of connection 'malformed' must be a finite number >= 0 (> 0), got 'inf'"),
    ({"host": "http://h/v1", "extra": {"retry_max_delay": -1}},
     "the extra 'retry_max_delay' of connection 'malformed' must be a finite number >= 0, got -1"),
], ids=["port", "no-hostname", "scheme", "headers-str", "headers-list", "client-kwargs-str", "retries-inf",
        "timeout-nan", "timeout-inf", "negative-delay"])
def test_a_malformed_connection_is_refused_before_any_request(products, hook, embedding_server, fields, message):
    """Before: ValueError, TypeError, AttributeError or OverflowError from inside httpx or the endpoint (HTTP
    500 through the API)."""
    connection("malformed", password="sk-malformed-secret-1234", **fields)
    before = snapshot(products)
    try:
        with pytest.raises(InvalidInputError) as error:
            hook.create_project(JOB, "products", "product_id", ["name"], transformer=MODEL,
                                model_conn_id="malformed")
    finally:
        os.environ.pop("AIRFLOW_CONN_MALFORMED", None)

    assert str(error.value) == message
    assert embedding_server.requests == [] and snapshot(products) == before


@pytest.mark.parametrize("fields", [{"host": "http://[::1]:{port}/v1"}, {"host": "::1", "port": "{port}"}],
                         ids=["url", "host-and-port"])
def test_ipv6_hosts_are_written_in_brackets(products, hook, fields):
    """Before, an IPv6 host was shown as http://::1:1/v1, and a bare one made the base URL http://::1:7997."""
    port = free_port()
    connection("v6", password="k", extra={"max_retries": 0}, **{k: v.format(port=port) for k, v in fields.items()})
    before = snapshot(products)
    try:
        with pytest.raises(ModelConnectionError) as error:
            hook.create_project(JOB, "products", "product_id", ["name"], transformer=MODEL, model_conn_id="v6")
    finally:
        os.environ.pop("AIRFLOW_CONN_V6", None)

    suffix = "/v1" if "/v1" in fields["host"] else ""
    assert str(error.value).startswith(f"connection 'v6' (http://[::1]:{port}{suffix}), model 'MiniLM': ")
    assert snapshot(products) == before
