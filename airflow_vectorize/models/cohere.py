"""``cohere/<model>``: Cohere's embed API v2 (``POST {base_url}/v2/embed``) at a ``cohere`` connection.

The connection is Airflow's Cohere provider's (type ``cohere``, default ``cohere_default``): password = API key,
host = base URL (default ``https://api.cohere.com``). At most 96 texts per request; over-long texts are cut
by the server (``truncate: END``). ``shorten`` asks for ``output_dimension`` (embed-v4 and later).

Documents are sent as ``search_document``, queries as ``search_query`` unless a project chose otherwise. The
API requires an ``input_type`` (v3 models and later): where none is given — the dimension probe, a project
created with ``input_types={}`` — ``search_document`` is sent, the same on both sides.
"""

from __future__ import annotations

from typing import Any

from airflow_vectorize.models.connection import endpoint
from airflow_vectorize.models.remote import Limits, Provider, RemoteEmbeddings

PROVIDER = Provider("cohere", "cohere_default", "https://api.cohere.com",
                    Limits(max_batch_inputs=96, max_batch_tokens=None, max_input_tokens=None),
                    conn_type="cohere")
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")


def embeddings(transformer: str, conn_id: str, dimensions: int | None, shorten: bool) -> CohereEmbeddings:
    target = endpoint(conn_id, PROVIDER.default_url, provider=PROVIDER.name, conn_type=PROVIDER.conn_type)
    return CohereEmbeddings(transformer, transformer.split("/", 1)[1], PROVIDER, target, dimensions, shorten)


class CohereEmbeddings(RemoteEmbeddings):
    """``cohere/<model>`` over the embed API v2, float vectors."""

    path = "/v2/embed"
    input_types = INPUT_TYPES
    fallback_input_type = "search_document"  # sent when none is given: the API requires one

    def default_encoding(self) -> dict[str, str]:
        return {"document_input_type": "search_document", "query_input_type": "search_query"}

    def payload(self, texts: list[str], input_type: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.model, "texts": texts,
                                   "input_type": input_type or self.fallback_input_type,
                                   "embedding_types": ["float"], "truncate": "END"}
        if self.shorten and self._dimensions is not None:
            payload["output_dimension"] = self._dimensions
        return payload

    def vectors(self, body: dict[str, Any]) -> list[Any]:
        if "embeddings" not in body and body.get("message"):  # an error answered with HTTP 200
            raise ValueError(f"the answer is an error, not embeddings: {body['message']}")  # masked by the caller
        found = body["embeddings"]["float"]
        if not isinstance(found, list):
            raise TypeError(f"'embeddings.float' is {type(found).__name__}, not a list")
        return found
