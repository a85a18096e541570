"""Remote models over the OpenAI protocol: OpenAI itself, Ollama, and any compatible server (vLLM,
Infinity, TEI, a LiteLLM proxy, ``transformers serve``) behind an ``openai`` connection.

Embeddings (``POST {base_url}/embeddings``, batching and checks in :mod:`.remote`); a prompt is a prefix, the
protocol has no input type. Chat (``POST {base_url}/chat/completions``): one request per ``chat`` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from airflow_vectorize.exceptions import ModelResponseError
from airflow_vectorize.models.base import ChatModel, ChatResult
from airflow_vectorize.models.connection import ConnectionClient, endpoint
from airflow_vectorize.models.http import Endpoint
from airflow_vectorize.models.remote import Limits, Provider, RemoteEmbeddings, positive_int
from airflow_vectorize.models.tokens import token_counter

PROVIDERS = {
    "openai": Provider("openai", "openai_default", "https://api.openai.com/v1",
                       Limits(max_batch_inputs=2048, max_batch_tokens=300_000, max_input_tokens=8192),
                       encoding_format="base64"),
    # Ollama's OpenAI-compatible API; it truncates over-long inputs itself.
    "ollama": Provider("ollama", "ollama_default", "http://localhost:11434/v1",
                       Limits(max_batch_inputs=512, max_batch_tokens=None, max_input_tokens=None)),
}


def embeddings(transformer: str, conn_id: str, dimensions: int | None, shorten: bool) -> OpenAICompatibleEmbeddings:
    provider = transformer.split("/", 1)[0]
    return OpenAICompatibleEmbeddings(transformer, PROVIDERS[provider], openai_endpoint(provider, conn_id),
                                      dimensions, shorten)


def chat(name: str, conn_id: str) -> OpenAICompatibleChat:
    provider = name.split("/", 1)[0]
    return OpenAICompatibleChat(name, openai_endpoint(provider, conn_id))


def openai_endpoint(provider: str, conn_id: str) -> Endpoint:
    """The endpoint of an OpenAI-protocol ``provider`` at ``conn_id``; Ollama's OpenAI API is under /v1."""
    target = endpoint(conn_id, PROVIDERS[provider].default_url, provider=provider)
    if provider == "ollama" and not target.base_url.rstrip("/").endswith("/v1"):
        target = replace(target, base_url=target.base_url.rstrip("/") + "/v1",
                         reload=partial(openai_endpoint, provider, conn_id))
    return target


class OpenAICompatibleEmbeddings(RemoteEmbeddings):
    """``<provider>/<model>`` over the OpenAI embeddings protocol; ``shorten`` asks for ``dimensions``
    (OpenAI's text-embedding-3 models cut their vectors to it)."""

    def __init__(self, transformer: str, provider: Provider, target: Endpoint,
                 dimensions: int | None = None, shorten: bool = False, model: str | None = None) -> None:
        super().__init__(transformer, model or transformer.split("/", 1)[1], provider, target, dimensions, shorten)

    def use(self, target: Endpoint) -> None:
        super().use(target)
        self.encoding_format = target.options.get("encoding_format", self.provider.encoding_format)

    def payload(self, texts: list[str], input_type: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": self.encoding_format}
        if self.shorten:
            payload["dimensions"] = self._dimensions
        return payload

    def vectors(self, body: dict[str, Any]) -> list[Any]:
        return data_vectors(body)


def data_vectors(body: dict[str, Any]) -> list[Any]:
    """The vectors of an OpenAI-shaped answer (``{"data": [{"embedding", "index"}]}``), in input order: each
    item's ``index`` says which input it is (0..n-1, each once); without any, the order given."""
    if "data" not in body and "error" in body:  # an error answered with HTTP 200
        error = body["error"]
        message = (error.get("message") if isinstance(error, dict) else None) or error
        raise ValueError(f"the answer is an error, not embeddings: {message}")  # masked, then cut, by the caller
    data = body["data"]
    if not isinstance(data, list):
        raise TypeError(f"'data' is {type(data).__name__}, not a list")
    if all("index" not in item for item in data):
        return [item["embedding"] for item in data]
    indexes = [item.get("index") for item in data]
    if any(type(i) is not int for i in indexes) or sorted(indexes) != list(range(len(data))):
        raise ValueError(f"the items' 'index' values are not 0..{len(data) - 1}, each once: {indexes[:20]}")
    ordered: list[Any] = [None] * len(data)
    for item in data:
        ordered[item["index"]] = item["embedding"]
    return ordered


# Context windows of OpenAI's chat models (the longest matching prefix wins); other models: the connection's
# ``context_window`` extra, else DEFAULT_CONTEXT_WINDOW.
CONTEXT_WINDOWS = {
    "gpt-3.5-turbo": 16_385, "gpt-4": 8_192, "gpt-4-turbo": 128_000, "gpt-4o": 128_000, "gpt-4.1": 1_047_576,
    "gpt-5": 400_000, "o1": 200_000, "o3": 200_000, "o4-mini": 200_000,
}
DEFAULT_CONTEXT_WINDOW = 8_192


class OpenAICompatibleChat(ConnectionClient, ChatModel):
    """``<provider>/<model>`` chat completions at an Airflow connection's host."""

    def __init__(self, chat_model: str, target: Endpoint, model: str | None = None) -> None:
        self.chat_model = chat_model
        self.model = model or chat_model.split("/", 1)[1]
        self.tokens = token_counter(self.model)
        self.use(target)

    def use(self, target: Endpoint) -> None:
        super().use(target)
        window = target.options.get("context_window")
        self.context_window = (positive_int(window, f"extra 'context_window' of connection {target.conn_id!r}")
                               if window is not None else _known_window(self.model))

    def describe(self) -> str:
        return f"{self.chat_model!r} through connection {self.endpoint.conn_id!r}"

    def chat(self, messages: Sequence[dict[str, str]], max_tokens: int | None = None,
             temperature: float | None = None) -> ChatResult:
        payload: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        if temperature is not None:
            payload["temperature"] = temperature
        body = self.post("/chat/completions", payload)
        where = f"connection {self.endpoint.conn_id!r}, model {self.model!r}"
        if "choices" not in body and "error" in body:  # an error answered with HTTP 200 (gateways, proxies)
            error = body["error"]
            message = (error.get("message") if isinstance(error, dict) else None) or error
            raise ModelResponseError(
                f"{where}: the answer is an error, not a chat completion: {self.endpoint.quote(message)}"
            )
        try:
            choice = body["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
        except (KeyError, IndexError, TypeError) as error:
            raise ModelResponseError(
                f"{where}: the server's answer has no choices[0].message.content ({type(error).__name__}:"
                f" {self.endpoint.quote(error)})"
            ) from error
        reason = choice.get("finish_reason")
        reason = reason if isinstance(reason, str) else None
        if reason == "content_filter":  # withheld or cut by the provider's filter: not an answer to pass on
            raise ModelResponseError(
                f"{where}: the server's content filter stopped the answer (finish_reason 'content_filter',"
                f" {len(text)} character(s) given); nothing of it is returned"
            )
        if reason == "length" and not text.strip():
            raise ModelResponseError(
                f"{where}: the answer was cut before it began (finish_reason 'length', empty content;"
                f" max_tokens {max_tokens if max_tokens is not None else 'not set'}): the prompt left no room for"
                " an answer in the model's context window, or max_tokens is too small"
            )
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return ChatResult(text=text, model=str(body.get("model") or self.model), usage=usage, finish_reason=reason)


def _known_window(model: str) -> int:
    prefixes = [p for p in CONTEXT_WINDOWS if model == p or model.startswith(p + "-")]
    return CONTEXT_WINDOWS[max(prefixes, key=len)] if prefixes else DEFAULT_CONTEXT_WINDOW
