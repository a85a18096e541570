"""Remote models over the OpenAI protocol: OpenAI itself, Ollama, and any compatible server (vLLM,
Infinity, TEI, a LiteLLM proxy, ``transformers serve``) behind an ``openai`` connection.

Embeddings (``POST {base_url}/embeddings``): a call to ``embed`` cuts over-long inputs to
``max_input_tokens``, groups the texts into requests of at most ``max_batch_inputs`` inputs and
``max_batch_tokens`` tokens, and checks that every answer has one vector per input, of the expected size,
before returning any. Chat (``POST {base_url}/chat/completions``): one request per ``chat`` call.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from airflow_vectorize.exceptions import InvalidInputError, ModelInputRejectedError, ModelResponseError
from airflow_vectorize.models.base import ChatModel, ChatResult, EmbeddingModel
from airflow_vectorize.models.http import Endpoint, RetryPolicy, post_json
from airflow_vectorize.models.tokens import token_counter

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Limits:
    """Request sizes and parallelism; per-provider defaults, overridden by the connection's extras."""

    max_batch_inputs: int
    max_batch_tokens: int | None
    max_input_tokens: int | None
    concurrency: int = 4

    def override(self, options: dict[str, Any], conn_id: str) -> Limits:
        changes = {}
        for name in ("max_batch_inputs", "max_batch_tokens", "max_input_tokens", "concurrency"):
            if name in options:
                changes[name] = positive_int(options[name], f"extra {name!r} of connection {conn_id!r}")
        return replace(self, **changes)


@dataclass(frozen=True)
class Provider:
    """A provider prefix of transformer strings (``openai/<model>``): its connection and defaults."""

    name: str
    default_conn_id: str
    default_url: str
    limits: Limits
    encoding_format: str  # "base64" (compact, exact float32) or "float"


PROVIDERS = {
    "openai": Provider("openai", "openai_default", "https://api.openai.com/v1",
                       Limits(max_batch_inputs=2048, max_batch_tokens=300_000, max_input_tokens=8192), "base64"),
    # Ollama's OpenAI-compatible API; it truncates over-long inputs itself.
    "ollama": Provider("ollama", "ollama_default", "http://localhost:11434/v1",
                       Limits(max_batch_inputs=512, max_batch_tokens=None, max_input_tokens=None), "float"),
}


def positive_int(value: Any, what: str) -> int:
    """``value`` as an int >= 1 (connection extras may hold numbers as strings)."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise InvalidInputError(f"{what} must be a positive integer, got {value!r}")
    return int(text)


class OpenAICompatibleEmbeddings(EmbeddingModel):
    """``<provider>/<model>`` served over the OpenAI embeddings protocol at an Airflow connection's host.

    An input the server refuses (HTTP 400/413/422) is an input error; 429, 5xx and timeouts are retried,
    then fail the run.

    :param dimensions: the vector size; with ``shorten`` it is asked of the server (OpenAI's
        text-embedding-3 models cut their vectors to it), else it is learnt by ``probe``.
    """

    input_errors = (ModelInputRejectedError,)

    def __init__(self, transformer: str, provider: Provider, target: Endpoint,
                 dimensions: int | None = None, shorten: bool = False) -> None:
        self.transformer = transformer
        self.provider = provider
        self.model = transformer.split("/", 1)[1]
        self.endpoint = target
        options = target.options
        self.limits = provider.limits.override(options, target.conn_id)
        self.concurrency = self.limits.concurrency
        self.max_input_tokens = self.limits.max_input_tokens
        self.retry = RetryPolicy.from_options(options)
        self.encoding_format = options.get("encoding_format", provider.encoding_format)
        self.tokens = token_counter(self.model)
        self._dimensions = dimensions
        self.shorten = shorten

    @property
    def dimensions(self) -> int:
        return self._dimensions if self._dimensions is not None else self.probe(self.retry)

    def describe(self) -> str:
        return f"{self.transformer!r} through connection {self.endpoint.conn_id!r}"

    def tokenizer(self) -> Any:
        return self.tokens.encoding if self.tokens.exact else self.tokens.count

    def probe(self, retry: RetryPolicy | None = None) -> int:
        """One request to learn (or check) the vector size; fails fast on a wrong key, model or host."""
        vectors = self._request(["dimension probe"], retry or replace(self.retry, max_retries=1), expected=None)
        self._dimensions = vectors.shape[1]
        return self._dimensions

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        if self.max_input_tokens:
            texts = [self.tokens.truncate(text, self.max_input_tokens) for text in texts]
        parts = [self._request(group, self.retry, self._dimensions) for group in self.requests(texts)]
        return np.vstack(parts) if parts else np.empty((0, self._dimensions or 0), dtype=np.float32)

    def requests(self, texts: Sequence[str]) -> Iterator[list[str]]:
        """Consecutive groups within ``max_batch_inputs`` inputs and ``max_batch_tokens`` tokens."""
        limit_inputs, limit_tokens = self.limits.max_batch_inputs, self.limits.max_batch_tokens
        if limit_tokens and sum(len(text.encode("utf-8")) for text in texts) <= limit_tokens:
            limit_tokens = None  # a token is at least one byte: no group can exceed the limit, skip counting
        group: list[str] = []
        tokens = 0
        for text in texts:
            size = self.tokens.count(text) if limit_tokens else 0
            if group and (len(group) == limit_inputs or (limit_tokens and tokens + size > limit_tokens)):
                yield group
                group, tokens = [], 0
            group.append(text)
            tokens += size
        if group:
            yield group

    def _request(self, texts: list[str], retry: RetryPolicy, expected: int | None) -> np.ndarray:
        import numpy as np

        payload: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": self.encoding_format}
        if self.shorten:
            payload["dimensions"] = self._dimensions
        body = post_json(self.endpoint, "/embeddings", payload, model=self.model, policy=retry)
        where = f"connection {self.endpoint.conn_id!r}, model {self.model!r}"
        data = body.get("data")
        if not isinstance(data, list) or len(data) != len(texts):
            found = len(data) if isinstance(data, list) else "no 'data' list"
            raise ModelResponseError(
                f"{where}: the server answered {found} embedding(s) for {len(texts)} input(s); nothing was"
                " written for this batch"
            )
        try:
            items = sorted(data, key=lambda item: item.get("index", 0))
            vectors = np.stack([_vector(item["embedding"]) for item in items])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ModelResponseError(
                f"{where}: the server's embeddings cannot be read ({type(error).__name__}: {error}); nothing"
                " was written for this batch"
            ) from error
        if expected is not None and vectors.shape[1] != expected:
            raise ModelResponseError(
                f"{where}: the server answered vectors of {vectors.shape[1]} dimensions, expected"
                f" {expected}; nothing was written for this batch"
            )
        if not np.isfinite(vectors).all():
            raise ModelResponseError(f"{where}: the server answered NaN or infinite values")
        return vectors


def _vector(value: Any) -> np.ndarray:
    import numpy as np

    if isinstance(value, str):  # encoding_format "base64": little-endian float32
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    vector = np.asarray(value, dtype=np.float32)
    if vector.ndim != 1 or not vector.size:
        raise ValueError(f"an embedding must be a list of numbers, got shape {list(vector.shape)}")
    return vector


# Context windows of OpenAI's chat models (the longest matching prefix wins); other models: the connection's
# ``context_window`` extra, else DEFAULT_CONTEXT_WINDOW.
CONTEXT_WINDOWS = {
    "gpt-3.5-turbo": 16_385, "gpt-4": 8_192, "gpt-4-turbo": 128_000, "gpt-4o": 128_000, "gpt-4.1": 1_047_576,
    "gpt-5": 400_000, "o1": 200_000, "o3": 200_000, "o4-mini": 200_000,
}
DEFAULT_CONTEXT_WINDOW = 8_192


class OpenAICompatibleChat(ChatModel):
    """``<provider>/<model>`` chat completions at an Airflow connection's host."""

    def __init__(self, chat_model: str, target: Endpoint) -> None:
        self.chat_model = chat_model
        self.model = chat_model.split("/", 1)[1]
        self.endpoint = target
        self.retry = RetryPolicy.from_options(target.options)
        self.tokens = token_counter(self.model)
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
        body = post_json(self.endpoint, "/chat/completions", payload, model=self.model, policy=self.retry)
        try:
            text = body["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
        except (KeyError, IndexError, TypeError) as error:
            raise ModelResponseError(
                f"connection {self.endpoint.conn_id!r}, model {self.model!r}: the server's answer has no"
                f" choices[0].message.content ({type(error).__name__}: {error})"
            ) from error
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return ChatResult(text=text, model=str(body.get("model") or self.model), usage=usage)


def _known_window(model: str) -> int:
    prefixes = [p for p in CONTEXT_WINDOWS if model == p or model.startswith(p + "-")]
    return CONTEXT_WINDOWS[max(prefixes, key=len)] if prefixes else DEFAULT_CONTEXT_WINDOW
