"""``portkey/<provider>/<model>`` through Portkey's real open-source gateway (Node, started once per session)
in front of real upstreams: Infinity for embeddings, ``transformers serve`` for RAG, and the recording
server (which checks the provider key and echoes a wrong one) for the headers. The tests that need no
starting server come first: they run while Infinity and the chat server start."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from conftest import product_texts, snapshot

from airflow_vectorize.exceptions import (
    InvalidInputError,
    ModelAuthenticationError,
    ModelError,
    ModelInputRejectedError,
    ModelRequestError,
)
from airflow_vectorize.models import chat_model, embedding_model
from scripts.infinity_server import INFINITY_MODEL_NAME
from scripts.portkey_gateway import PortkeyGateway
from scripts.server_process import free_port

COLUMNS = ["name", "description"]
QUERY = "mobile phone with a good camera"
PORTKEY_KEY = "pk-portkey-secret-0123456789"
PROVIDER_KEY = "sk-provider-secret-9876543210"


@pytest.fixture(scope="session")
def gateway() -> Iterator[PortkeyGateway]:
    server = PortkeyGateway().start().wait(30)
    yield server
    server.stop()


@pytest.fixture
def connect(monkeypatch) -> Callable[..., None]:
    """Sets a Portkey connection (JSON, from the environment): host, Portkey's key, extras."""

    def set_connection(conn_id: str, host: str | None, password: str | None = PORTKEY_KEY, **extra) -> None:
        conn = {"conn_type": "portkey", "host": host, "password": password, "extra": extra}
        conn = {key: value for key, value in conn.items() if value}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))

    return set_connection


def test_the_connection_becomes_portkey_headers_and_keys_stay_out_of_reprs(connect):
    connect("pk_layout", None, virtual_key="vk-virtual-0123", custom_host="http://upstream:9000/v1/",
            provider_api_key=PROVIDER_KEY, headers={"x-portkey-trace-id": "run-1"}, max_batch_inputs=8)

    model = embedding_model("portkey/cohere/embed-english-v3.0", "pk_layout", 1024)
    chat = chat_model("portkey/together-ai/meta-llama/Llama-3-8b", "pk_layout")

    target = model.endpoint
    assert (model.model, chat.model, chat.endpoint.headers["x-portkey-provider"]) == (
        "embed-english-v3.0", "meta-llama/Llama-3-8b", "together-ai")
    assert target.base_url == "https://api.portkey.ai/v1" and target.api_key == PROVIDER_KEY  # Authorization
    assert target.headers == {"x-portkey-provider": "cohere", "x-portkey-api-key": PORTKEY_KEY,
                              "x-portkey-virtual-key": "vk-virtual-0123", "x-portkey-trace-id": "run-1",
                              "x-portkey-custom-host": "http://upstream:9000/v1"}
    assert model.limits.max_batch_inputs == 8 and set(target.options) == {"max_batch_inputs"}
    assert not {PORTKEY_KEY, PROVIDER_KEY, "vk-virtual-0123"} & set(repr(target).split("'"))
    echoed = f"cohere at http://upstream:9000/v1 refused {PROVIDER_KEY} / {PORTKEY_KEY} / vk-virtual-0123"
    assert target.mask(echoed) == "cohere at http://upstream:9000/v1 refused *** / *** / ***"


@pytest.mark.parametrize("name", ["portkey/openai", "portkey//text-embedding-3-small", "portkey/openai/"])
def test_a_name_without_provider_or_model_is_refused(products, hook, name):
    before = snapshot(products)
    with pytest.raises(InvalidInputError, match="portkey/<provider>/<model>"):
        hook.create_project("named", "products", "product_id", COLUMNS, transformer=name)
    with pytest.raises(InvalidInputError, match="portkey/<provider>/<model>"):
        hook.rag("named", QUERY, name)
    assert snapshot(products) == before


@pytest.mark.parametrize(("provider", "custom_host", "error", "message"), [
    ("openai", "http://127.0.0.1:{port}/v1", ModelRequestError, "fetch failed"),  # nothing listens there
    ("no-such-provider", "http://127.0.0.1:{port}/v1", ModelInputRejectedError, "Invalid provider passed"),
])
def test_the_routing_headers_reach_the_gateway(products, hook, gateway, connect, provider, custom_host, error,
                                               message):
    connect("portkey_default", gateway.api_url, custom_host=custom_host.format(port=free_port()),
            provider_api_key=PROVIDER_KEY, retry_initial_delay=0.05)
    before = snapshot(products)
    with pytest.raises(error, match=message) as raised:
        hook.create_project("routed", "products", "product_id", COLUMNS, transformer=f"portkey/{provider}/m")
    assert isinstance(raised.value, ModelError) and "'portkey_default'" in str(raised.value)
    assert PROVIDER_KEY not in str(raised.value) and PORTKEY_KEY not in str(raised.value)
    assert snapshot(products) == before


def test_the_provider_key_reaches_the_upstream_and_a_wrong_one_is_masked(products, hook, gateway,
                                                                        embedding_server, connect):
    connect("portkey_default", gateway.api_url, custom_host=embedding_server.url,
            provider_api_key=embedding_server.api_key)
    hook.create_project("good", "products", "product_id", COLUMNS, transformer="portkey/openai/MiniLM")
    (probe,) = embedding_server.requests
    headers = {k.lower(): v for k, v in probe.headers.items()}
    assert headers["authorization"] == f"Bearer {embedding_server.api_key}"
    assert probe.body["model"] == "MiniLM"
    assert PORTKEY_KEY not in json.dumps(headers)  # Portkey's key stays at the gateway

    wrong = "sk-wrong-provider-key-123456"
    connect("portkey_default", gateway.api_url, custom_host=embedding_server.url, provider_api_key=wrong)
    before = snapshot(products)
    with pytest.raises(ModelAuthenticationError, match=r"HTTP 401.*\*\*\*") as error:  # the server echoed it
        hook.create_project("bad", "products", "product_id", COLUMNS, transformer="portkey/openai/MiniLM")
    assert wrong not in str(error.value) and PORTKEY_KEY not in str(error.value)
    assert snapshot(products) == before


def test_embeddings_through_the_gateway_match_the_local_model(products, hook, gateway, infinity, model,
                                                              connect):
    connect("portkey_default", gateway.api_url, custom_host=infinity.url, provider_api_key=PROVIDER_KEY)

    created = hook.create_project("gw", "products", "product_id", COLUMNS,
                                  transformer=f"portkey/openai/{INFINITY_MODEL_NAME}")
    assert (created["dimensions"], created["model_conn_id"]) == (384, "portkey_default")
    assert hook.generate_embeddings("gw", batch_size=10)["embedded"] == 24

    texts = product_texts(products)
    rows = products.execute("SELECT product_id, embeddings FROM vectorize._embeddings_gw")
    stored = {key: vector.to_numpy() for key, vector in rows}
    local = model.encode(list(texts.values()), normalize_embeddings=True, show_progress_bar=False)
    assert np.allclose(np.stack([stored[key] for key in texts]), local, atol=1e-4)
    query = model.encode([QUERY], normalize_embeddings=True, show_progress_bar=False)[0]
    best = list(texts)[int(np.argmax(local @ query))]
    assert hook.search("gw", QUERY, num_results=1)[0]["product_id"] == best


def test_rag_through_the_gateway_answers(products, hook, gateway, chat_server, connect):
    hook.create_project("shop", "products", "product_id", COLUMNS)  # the local model
    hook.generate_embeddings("shop")
    connect("portkey_chat", gateway.api_url, custom_host=f"{chat_server.url}/v1",
            provider_api_key=PROVIDER_KEY, context_window=2048)

    result = hook.rag("shop", QUERY, f"portkey/openai/{chat_server.model}", chat_conn_id="portkey_chat",
                      num_context=3, max_tokens=8)

    assert isinstance(result["chat_response"], str) and len(result["context"]) == 3
    assert 0 < result["usage"]["completion_tokens"] <= 8 and result["usage"]["prompt_tokens"] > 0
    assert result["finish_reason"] in ("stop", "length")  # the gateway passes it through; the same chat client
