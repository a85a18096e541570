"""Transformer strings to embedding models, as pg_vectorize spells them.

- ``sentence-transformers/<name>``, any other Hugging Face name, or a local directory: a local model
  (:mod:`.local`), loaded once per process;
- ``openai/<model>`` and ``ollama/<model>``: a remote model over the OpenAI protocol (:mod:`.openai_compatible`)
  at the Airflow connection ``model_conn_id`` (default ``openai_default`` / ``ollama_default``); any
  OpenAI-compatible server is ``openai/<model>`` with an ``openai`` connection whose host points at it.
"""

from __future__ import annotations

import os
from dataclasses import replace

from airflow_vectorize.exceptions import InvalidInputError
from airflow_vectorize.models.base import ChatModel, EmbeddingModel
from airflow_vectorize.models.openai_compatible import PROVIDERS

# pg_vectorize's other providers: refused with the list of what works.
UNSUPPORTED_PROVIDERS = ("cohere", "voyage", "portkey", "vector-serve")

__all__ = ["ChatModel", "EmbeddingModel", "chat_model", "embedding_model", "model_conn_id"]


def provider_name(transformer: str) -> str | None:
    """The remote provider of ``transformer`` ('openai', 'ollama'), None for a local model."""
    if not isinstance(transformer, str) or not transformer.strip():
        raise InvalidInputError(f"transformer must be a model name such as 'openai/text-embedding-3-small',"
                                f" got {transformer!r}")
    prefix, _, model = transformer.partition("/")
    if os.path.isdir(transformer):
        return None
    if prefix in UNSUPPORTED_PROVIDERS:
        raise InvalidInputError(
            f"transformer {transformer!r}: the provider {prefix!r} is not supported. Supported:"
            " 'sentence-transformers/<name>' or a local model directory (computed on the worker),"
            " 'openai/<model>' (OpenAI, or any OpenAI-compatible server such as vLLM, Infinity, TEI or a LiteLLM"
            " proxy through an 'openai' connection whose host points at it) and 'ollama/<model>'"
        )
    if prefix in PROVIDERS:
        if not model:
            raise InvalidInputError(f"transformer {transformer!r} names no model: write '{prefix}/<model>'")
        return prefix
    return None


def model_conn_id(transformer: str, conn_id: str | None) -> str | None:
    """The connection a project's model uses: ``conn_id`` or its provider's default; None when local."""
    provider = provider_name(transformer)
    if provider is None:
        if conn_id is not None:
            raise InvalidInputError(
                f"model_conn_id={conn_id!r} is for remote models ('openai/<model>', 'ollama/<model>'), but"
                f" {transformer!r} is computed locally"
            )
        return None
    if conn_id is not None and (not isinstance(conn_id, str) or not conn_id.strip()):
        raise InvalidInputError(f"model_conn_id must be an Airflow connection id, got {conn_id!r}")
    return conn_id or PROVIDERS[provider].default_conn_id


def embedding_model(transformer: str, conn_id: str | None = None, dimensions: int | None = None,
                    shorten: bool = False) -> EmbeddingModel:
    """The model behind ``transformer``: a local one (cached per process) or a client of the remote one.

    :param dimensions: the vector size when known (a project's); with ``shorten`` it is asked of the server.
    """
    provider = provider_name(transformer)
    if provider is None:
        from airflow_vectorize.models.local import load_model

        return load_model(transformer)
    from airflow_vectorize.models.openai_compatible import OpenAICompatibleEmbeddings

    return OpenAICompatibleEmbeddings(transformer, PROVIDERS[provider], _endpoint(provider, transformer, conn_id),
                                      dimensions, shorten)


def chat_model(name: str, conn_id: str | None = None) -> ChatModel:
    """A client of the chat model ``name`` (``openai/<model>``, ``ollama/<model>``) at its connection."""
    from airflow_vectorize.models.openai_compatible import OpenAICompatibleChat

    provider = provider_name(name)
    if provider is None:
        raise InvalidInputError(
            f"chat_model {name!r} is not a remote chat model: use 'openai/<model>' (OpenAI, or any"
            " OpenAI-compatible server through an 'openai' connection whose host points at it) or"
            " 'ollama/<model>'"
        )
    return OpenAICompatibleChat(name, _endpoint(provider, name, conn_id))


def _endpoint(provider: str, name: str, conn_id: str | None):
    """The endpoint of ``provider`` at ``conn_id`` (or its default); Ollama's OpenAI API is under /v1."""
    from airflow_vectorize.models.http import endpoint

    target = endpoint(model_conn_id(name, conn_id), PROVIDERS[provider].default_url, provider=provider)
    if provider == "ollama" and not target.base_url.rstrip("/").endswith("/v1"):
        target = replace(target, base_url=target.base_url.rstrip("/") + "/v1")
    return target
