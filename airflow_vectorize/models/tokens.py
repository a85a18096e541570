"""Token counts.

Remote models: exact with tiktoken for OpenAI's models, an upper estimate otherwise — used to keep each
request under the provider's token limit and to cut an over-long input before it is sent (so one long row
never fails its whole batch). tiktoken fetches its vocabulary once and caches it (``TIKTOKEN_CACHE_DIR``);
where it cannot, the estimate is used and a warning says so.

Local models (and the chunker): ``plain_core`` counts with a Hugging Face fast tokenizer's Rust core.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

BYTES_PER_TOKEN = 3  # below what BPE vocabularies average on prose (~4), so the estimate errs high


class TokenCounter:
    """Counts and cuts texts; the estimate (UTF-8 bytes / 3, rounded up) when no vocabulary is known."""

    exact = False

    def count(self, text: str) -> int:
        return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)

    def truncate(self, text: str, limit: int) -> str:
        """``text`` cut to at most ``limit`` tokens (whole characters)."""
        data = text.encode("utf-8")
        if len(data) <= limit * BYTES_PER_TOKEN:
            return text
        return data[: limit * BYTES_PER_TOKEN].decode("utf-8", errors="ignore")


class TiktokenCounter(TokenCounter):
    """Exact counts with an OpenAI vocabulary."""

    exact = True

    def __init__(self, encoding) -> None:
        self.encoding = encoding

    def count(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text))

    def truncate(self, text: str, limit: int) -> str:
        if len(text.encode("utf-8")) <= limit:  # a token is at least one byte
            return text
        tokens = self.encoding.encode_ordinary(text)
        return text if len(tokens) <= limit else self.encoding.decode(tokens[:limit])


@lru_cache(maxsize=16)
def token_counter(model: str) -> TokenCounter:
    """tiktoken's vocabulary for OpenAI model names it knows (text-embedding-3-*, gpt-*); else the estimate."""
    try:
        import tiktoken

        name = tiktoken.encoding_name_for_model(model)
    except (ImportError, KeyError):
        return TokenCounter()
    try:
        return TiktokenCounter(tiktoken.get_encoding(name))
    except Exception as error:  # noqa: BLE001 - no network and no cached vocabulary
        log.warning("tiktoken cannot load %r for %r (%s); token counts are estimated", name, model, error)
        return TokenCounter()


@lru_cache(maxsize=8)
def plain_core(tokenizer: Any) -> Any | None:
    """A copy of a fast Hugging Face tokenizer's Rust core that neither truncates nor pads, or None for a
    tokenizer without one. The tokenizer's own core is set up anew by each of its calls: a model's encode
    leaves it truncating and padding to that batch. Once per tokenizer (a model is loaded once per process)."""
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        return None
    from tokenizers import Tokenizer

    core = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    core.no_truncation()
    core.no_padding()
    return core


def count_all(core: Any, texts: list[str], add_special_tokens: bool) -> list[int]:
    """Each text's tokens under ``core`` (a ``plain_core``), without the offsets an encode also tracks."""
    if hasattr(core, "encode_batch_fast"):  # tokenizers >= 0.21: ~0.7x the time of encode_batch
        encodings = core.encode_batch_fast(texts, add_special_tokens=add_special_tokens)
    else:
        encodings = core.encode_batch(texts, add_special_tokens=add_special_tokens)
    return [len(encoding) for encoding in encodings]
