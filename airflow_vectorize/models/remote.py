"""What every remote embedding provider shares: limits per request, batching of texts into requests, the
dimension probe, and the checks of an answer (one finite vector per input, of the expected size) before any
is returned. A provider (``openai_compatible``, ``cohere``, ``voyage``, ``portkey``) says only how its
request is written and its answer read.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from airflow_vectorize.exceptions import InvalidInputError, ModelInputRejectedError, ModelResponseError
from airflow_vectorize.models.base import EmbeddingModel
from airflow_vectorize.models.connection import ConnectionClient
from airflow_vectorize.models.http import Endpoint, RetryPolicy
from airflow_vectorize.models.tokens import token_counter

if TYPE_CHECKING:
    import numpy as np

MAX_DIMENSIONS = 16_000  # pgvector's largest vector


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
    conn_type: str = "openai"  # the Airflow connection type named in messages
    encoding_format: str = "float"  # OpenAI protocol: "base64" (compact, exact float32) or "float"


def positive_int(value: Any, what: str) -> int:
    """``value`` as an int >= 1 (connection extras may hold numbers as strings)."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise InvalidInputError(f"{what} must be a positive integer, got {value!r}")
    return int(text)


class RemoteEmbeddings(ConnectionClient, EmbeddingModel):
    """``<provider>/<model>`` computed by a server at an Airflow connection's host.

    An input the server refuses (HTTP 400/413/422) is an input error; 429, 5xx and timeouts are retried
    (``Retry-After`` honoured), then fail the run.

    :param dimensions: the vector size; with ``shorten`` it is asked of the server (models that cut their
        vectors to a size), else it is learnt by ``probe``.
    """

    input_errors = (ModelInputRejectedError,)
    path = "/embeddings"

    def __init__(self, transformer: str, model: str, provider: Provider, target: Endpoint,
                 dimensions: int | None = None, shorten: bool = False) -> None:
        self.transformer = transformer
        self.provider = provider
        self.model = model
        self.use(target)
        self.concurrency = self.limits.concurrency  # threads a batching wrapper starts: kept as first read
        self.tokens = token_counter(model)
        self._dimensions = dimensions
        self.shorten = shorten

    def use(self, target: Endpoint) -> None:
        super().use(target)
        self.limits = self.provider.limits.override(target.options, target.conn_id)
        self.max_input_tokens = self.limits.max_input_tokens

    @abstractmethod
    def payload(self, texts: list[str], input_type: str | None) -> dict[str, Any]:
        """The request body for ``texts``."""

    @abstractmethod
    def vectors(self, body: dict[str, Any]) -> list[Any]:
        """The answer's vectors in input order (lists of numbers); KeyError/TypeError/ValueError when the
        answer has none."""

    def request_error(self, error: ModelInputRejectedError) -> Exception:
        """A refused request (HTTP 400/413/422) as the error it is: an input's (the default; generation then
        isolates the row), or the request's as a whole (a provider that answers 400 for an unknown model)."""
        return error

    @property
    def dimensions(self) -> int:
        return self._dimensions if self._dimensions is not None else self.probe(self.retry)

    def describe(self) -> str:
        return f"{self.transformer!r} through connection {self.endpoint.conn_id!r}"

    def tokenizer(self) -> Any:
        return self.tokens.encoding if self.tokens.exact else self.tokens.count

    def count_tokens(self, text: str) -> int:
        return self.tokens.count(text)

    def probe(self, retry: RetryPolicy | None = None) -> int:
        """One request to learn (or check) the vector size; fails fast on a wrong key, model or host."""
        vectors = self._request(["dimension probe"], retry or replace(self.retry, max_retries=1), None, None)
        self._dimensions = vectors.shape[1]
        return self._dimensions

    def embed(self, texts: Sequence[str], *, prompt: str | None = None, input_type: str | None = None) -> np.ndarray:
        """``prompt + text`` per text, in requests within the provider's limits, with ``input_type``."""
        import numpy as np

        limit = self.max_input_tokens
        if limit:
            limit -= self.count_tokens(prompt) if prompt else 0
            texts = [self.tokens.truncate(text, limit) for text in texts]
        if prompt:
            texts = [prompt + text for text in texts]
        parts = [self._request(group, self.retry, self._dimensions, input_type) for group in self.requests(texts)]
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

    def _request(self, texts: list[str], retry: RetryPolicy, expected: int | None,
                 input_type: str | None) -> np.ndarray:
        try:
            body = self.post(self.path, self.payload(texts, input_type), retry)
        except ModelInputRejectedError as error:
            raise self.request_error(error) from error
        where = f"connection {self.endpoint.conn_id!r}, model {self.model!r}"
        try:
            found = self.vectors(body)
            if not isinstance(found, list):
                raise TypeError(f"expected a list of embeddings, got {type(found).__name__}")
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:  # may quote the server:
            raise ModelResponseError(  # its key masked, as in every other answer's message
                f"{where}: the server's embeddings cannot be read ({type(error).__name__}:"
                f" {self.endpoint.quote(error)})"
            ) from error
        if len(found) != len(texts):
            raise ModelResponseError(
                f"{where}: the server answered {len(found)} embedding(s) for {len(texts)} input(s)"
            )
        try:
            vectors = [as_vector(value) for value in found]
        except (TypeError, ValueError) as error:  # numpy quotes the value: it may be an echoed key
            raise ModelResponseError(
                f"{where}: the server's embeddings cannot be read ({type(error).__name__}:"
                f" {self.endpoint.quote(error)})"
            ) from error
        return checked(vectors, expected, where)


def checked(vectors: list[np.ndarray], expected: int | None, where: str) -> np.ndarray:
    """The vectors of one answer as one array, when they are all of one size that pgvector stores (1 to
    MAX_DIMENSIONS, ``expected`` when given) and finite; else ModelResponseError."""
    import numpy as np

    sizes = sorted({vector.size for vector in vectors})
    if len(sizes) > 1:
        raise ModelResponseError(f"{where}: the server answered vectors of different sizes in one answer"
                                 f" ({', '.join(map(str, sizes[:5]))} dimensions)")
    size = sizes[0]
    if not 0 < size <= MAX_DIMENSIONS:
        raise ModelResponseError(f"{where}: the server answered vectors of {size} dimensions; pgvector stores"
                                 f" 1 to {MAX_DIMENSIONS}")
    if expected is not None and size != expected:
        raise ModelResponseError(f"{where}: the server answered vectors of {size} dimensions, expected {expected}")
    stacked = np.stack(vectors)
    if not np.isfinite(stacked).all():
        raise ModelResponseError(f"{where}: the server answered NaN or infinite values")
    return stacked


def as_vector(value: Any) -> np.ndarray:
    """A vector from an answer: a list of numbers, or base64 of little-endian float32."""
    import base64

    import numpy as np

    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    vector = np.asarray(value, dtype=np.float32)
    if vector.ndim != 1:
        raise ValueError(f"an embedding must be a list of numbers, got shape {list(vector.shape)}")
    return vector
