"""Transformer strings to embedding models, as pg_vectorize spells them.

- ``sentence-transformers/<name>``, any other Hugging Face name, or a local directory: a local model
  (:mod:`.local`), loaded once per process — or, with a ``model_conn_id``, the same model computed by a
  self-hosted OpenAI-compatible server (Infinity, TEI, pg_vectorize's vector-serve; :mod:`.self_hosted`);
- ``openai/<model>`` and ``ollama/<model>``: the OpenAI protocol (:mod:`.openai_compatible`) at the Airflow
  connection ``model_conn_id`` (default ``openai_default`` / ``ollama_default``); any OpenAI-compatible
  server is ``openai/<model>`` with an ``openai`` connection whose host points at it;
- ``cohere/<model>`` (:mod:`.cohere`), ``voyage/<model>`` (:mod:`.voyage`) and
  ``portkey/<provider>/<model>`` (:mod:`.portkey`, the Portkey AI gateway) at their connections.
"""

from __future__ import annotations

import importlib
import os

from airflow_vectorize.exceptions import InvalidInputError
from airflow_vectorize.models.base import ChatModel, EmbeddingModel

# provider prefix -> (module, default connection id); the module's ``embeddings(transformer, conn_id,
# dimensions, shorten)`` makes the model, its ``chat(name, conn_id)`` (if any) a chat model.
PROVIDERS = {
    "openai": ("openai_compatible", "openai_default"),
    "ollama": ("openai_compatible", "ollama_default"),
    "cohere": ("cohere", "cohere_default"),
    "voyage": ("voyage", "voyage_default"),
    "portkey": ("portkey", "portkey_default"),
}
SUPPORTED = (
    "'sentence-transformers/<name>' or a local model directory (computed on the worker, or by a self-hosted"
    " server with model_conn_id), 'openai/<model>' (OpenAI, or any OpenAI-compatible server such as vLLM,"
    " Infinity, TEI or a LiteLLM proxy through an 'openai' connection whose host points at it),"
    " 'ollama/<model>', 'cohere/<model>', 'voyage/<model>' and 'portkey/<provider>/<model>'"
)

__all__ = ["ChatModel", "EmbeddingModel", "chat_conn_id", "chat_model", "embedding_model", "model_conn_id"]


def provider_name(transformer: str) -> str | None:
    """The remote provider of ``transformer`` ('openai', 'cohere', ...), None for a local model name."""
    if not isinstance(transformer, str) or not transformer.strip():
        raise InvalidInputError(f"transformer must be a model name such as 'openai/text-embedding-3-small',"
                                f" got {transformer!r}")
    prefix, _, model = transformer.partition("/")
    if os.path.isdir(transformer):
        return None
    if prefix == "vector-serve":
        raise InvalidInputError(
            f"transformer {transformer!r}: pg_vectorize's vector-serve is reached as the model it serves:"
            f" 'sentence-transformers/<name>' with model_conn_id set to an 'openai' connection whose host is"
            f" the server. Supported: {SUPPORTED}")
    if prefix in PROVIDERS:
        if not model.strip("/"):
            raise InvalidInputError(f"transformer {transformer!r} names no model: write '{prefix}/<model>'")
        return prefix
    return None


def model_conn_id(transformer: str, conn_id: str | None) -> str | None:
    """The connection a project's model uses: ``conn_id`` or its provider's default; None when the model is
    computed on the worker."""
    provider = provider_name(transformer)
    if conn_id is not None and (not isinstance(conn_id, str) or not conn_id.strip()):
        raise InvalidInputError(f"model_conn_id must be an Airflow connection id, got {conn_id!r}")
    if provider is None:
        return conn_id  # a local model name: computed on the worker, or by the self-hosted server at conn_id
    return conn_id or PROVIDERS[provider][1]


def embedding_model(transformer: str, conn_id: str | None = None, dimensions: int | None = None,
                    shorten: bool = False) -> EmbeddingModel:
    """The model behind ``transformer``: a local one (cached per process) or a client of the remote one.

    :param dimensions: the vector size when known (a project's); with ``shorten`` it is asked of the server.
    """
    provider = provider_name(transformer)
    if provider is None and conn_id is None:
        from airflow_vectorize.models.local import load_model

        return load_model(transformer)
    if provider is None:
        from airflow_vectorize.models.self_hosted import SelfHostedEmbeddings

        return SelfHostedEmbeddings.at(transformer, conn_id, dimensions)
    return _module(provider).embeddings(transformer, model_conn_id(transformer, conn_id), dimensions, shorten)


def chat_model(name: str, conn_id: str | None = None) -> ChatModel:
    """A client of the chat model ``name`` (``openai/<model>``, ``ollama/<model>``,
    ``portkey/<provider>/<model>``) at its connection."""
    conn_id = chat_conn_id(name, conn_id)  # InvalidInputError unless a remote chat model
    return _module(provider_name(name)).chat(name, conn_id)


def chat_conn_id(name: str, conn_id: str | None) -> str:
    """The connection the chat model ``name`` uses: ``conn_id`` or its provider's default (what an API
    checks the caller may use); InvalidInputError when ``name`` is not a remote chat model."""
    provider = provider_name(name)
    if provider is None or not hasattr(_module(provider), "chat"):
        raise InvalidInputError(
            f"chat_model {name!r} is not a remote chat model: use 'openai/<model>' (OpenAI, or any"
            " OpenAI-compatible server through an 'openai' connection whose host points at it),"
            " 'ollama/<model>' or 'portkey/<provider>/<model>'"
        )
    return model_conn_id(name, conn_id)


def _module(provider: str):
    return importlib.import_module(f"airflow_vectorize.models.{PROVIDERS[provider][0]}")

