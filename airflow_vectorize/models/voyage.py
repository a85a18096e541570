"""``voyage/<model>``: Voyage AI's embeddings API (``POST {base_url}/embeddings``) at a ``voyage`` connection.

Default connection ``voyage_default``: password = API key, host = base URL (default
``https://api.voyageai.com/v1``). A request holds at most 1,000 texts and at most the model's total tokens
(:data:`BATCH_TOKENS`; 120,000 for a model not listed, counted by an upper estimate); over-long texts are cut
by the server (its ``truncation`` default). ``shorten`` asks for ``output_dimension``.

Documents are sent as ``document``, queries as ``query`` unless a project chose otherwise; with none the
model embeds the text as it is (the API's ``null``).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from airflow_vectorize.exceptions import ModelInputRejectedError, ModelNotFoundError
from airflow_vectorize.models.connection import endpoint
from airflow_vectorize.models.openai_compatible import data_vectors
from airflow_vectorize.models.remote import Limits, Provider, RemoteEmbeddings

DEFAULT_BATCH_TOKENS = 120_000
# Total tokens per request by model, from Voyage's API reference.
BATCH_TOKENS = {
    "voyage-2": 320_000, "voyage-3": 320_000, "voyage-3.5": 320_000, "voyage-4": 320_000,
    "voyage-3-lite": 1_000_000, "voyage-3.5-lite": 1_000_000, "voyage-4-lite": 1_000_000,
}
PROVIDER = Provider("voyage", "voyage_default", "https://api.voyageai.com/v1",
                    Limits(max_batch_inputs=1000, max_batch_tokens=DEFAULT_BATCH_TOKENS, max_input_tokens=None),
                    conn_type="voyage")
INPUT_TYPES = ("document", "query")


def embeddings(transformer: str, conn_id: str, dimensions: int | None, shorten: bool) -> VoyageEmbeddings:
    model = transformer.split("/", 1)[1]
    provider = replace(PROVIDER, limits=replace(PROVIDER.limits, max_batch_tokens=batch_tokens(model)))
    target = endpoint(conn_id, PROVIDER.default_url, provider=PROVIDER.name, conn_type=PROVIDER.conn_type)
    return VoyageEmbeddings(transformer, model, provider, target, dimensions, shorten)


def batch_tokens(model: str) -> int:
    """The total tokens one request of ``model`` may hold."""
    return BATCH_TOKENS.get(model, DEFAULT_BATCH_TOKENS)


class VoyageEmbeddings(RemoteEmbeddings):
    """``voyage/<model>`` over Voyage's embeddings API (OpenAI-shaped answers), float vectors."""

    path = "/embeddings"
    input_types = INPUT_TYPES

    def default_encoding(self) -> dict[str, str]:
        return {"document_input_type": "document", "query_input_type": "query"}

    def request_error(self, error: ModelInputRejectedError) -> Exception:
        """Voyage answers 400 for an unknown model ("Model … is not supported"): not one input's fault."""
        if re.search(r"\bModel \S+ is not supported", str(error)):
            return ModelNotFoundError(f"{error}. Check the model name (voyage/<model>)")
        return error

    def payload(self, texts: list[str], input_type: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"input": texts, "model": self.model}
        if input_type is not None:
            payload["input_type"] = input_type
        if self.shorten and self._dimensions is not None:
            payload["output_dimension"] = self._dimensions
        return payload

    def vectors(self, body: dict[str, Any]) -> list[Any]:
        return data_vectors(body)
