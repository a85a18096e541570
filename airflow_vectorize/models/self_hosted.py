"""A local model's name (``sentence-transformers/<name>``) with a ``model_conn_id``: the same model computed
by a self-hosted OpenAI-compatible embeddings server (Infinity, TEI, pg_vectorize's vector-serve), so that
encoding moves off the Airflow workers while the project keeps its model name.

The request names the model as the project does (the connection's extra ``model`` when the server serves it
under another name). Tokens are counted with the model's own tokenizer when it is on this machine (so chunks
are cut exactly as on a worker), else estimated; the server truncates over-long inputs as the model does.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from airflow_vectorize.exceptions import InvalidInputError
from airflow_vectorize.models.connection import endpoint
from airflow_vectorize.models.openai_compatible import OpenAICompatibleEmbeddings
from airflow_vectorize.models.remote import Limits, Provider

log = logging.getLogger(__name__)

SELF_HOSTED = Provider("self-hosted", "", "", Limits(max_batch_inputs=256, max_batch_tokens=None,
                                                      max_input_tokens=None))


class SelfHostedEmbeddings(OpenAICompatibleEmbeddings):
    """A sentence-transformers model served over the OpenAI embeddings protocol."""

    @classmethod
    def at(cls, transformer: str, conn_id: str, dimensions: int | None) -> SelfHostedEmbeddings:
        target = endpoint(conn_id, "", provider=f"self-hosted {transformer}")
        if not target.base_url:
            raise InvalidInputError(f"connection {conn_id!r} has no host: set it to the base URL of the server that"
                                    f" computes {transformer!r} (e.g. http://infinity:7997)")
        return cls(transformer, SELF_HOSTED, target, dimensions, model=str(target.options.get("model") or transformer))

    def tokenizer(self) -> Any:
        return _tokenizer(self.transformer) or super().tokenizer()

    def count_tokens(self, text: str) -> int:
        tokenizer = _tokenizer(self.transformer)
        if tokenizer is None:
            return super().count_tokens(text)
        return len(tokenizer.encode(text, add_special_tokens=False))


@lru_cache(maxsize=8)
def _tokenizer(transformer: str) -> Any:
    """The model's Hugging Face tokenizer from this machine (the bundled default model, or the cache); None
    when it is not here (the server has it, the worker need not)."""
    from airflow_vectorize.models.local import bundled_path

    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(bundled_path(transformer) or transformer, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means: not on this machine
        log.info("no local tokenizer for %r (%s): token counts are estimated", transformer, type(error).__name__)
        return None
