"""Chunking: long texts split by tokens of the project's own model, so all of a text reaches the index.

A chunked project (``create_project(..., chunk_size=N)``) stores one vector per chunk instead of one per row.
Texts are split with ``semchunk`` (a maintained recursive splitter: paragraphs, then sentences, then words,
then characters) into chunks of at most ``chunk_size`` tokens as the model's tokenizer counts them, the
model's special tokens aside; consecutive chunks share about ``chunk_overlap`` tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from airflow_vectorize.exceptions import InvalidInputError
from airflow_vectorize.models.tokens import count_all, plain_core

CHUNKERS = ("recursive",)
# A chunk is cut at chunk_size × this many characters whatever its tokens: a text the tokenizer reads as a few
# tokens (words joined by control characters it deletes: one unknown token) would otherwise be one chunk, whose
# full-text column (``chunk_fts``) PostgreSQL cannot hold past 1 MB. Real text is ~4 characters a token.
MAX_CHARACTERS_PER_TOKEN = 64


@dataclass(frozen=True)
class Chunk:
    """One piece of a text: its position in the row's chunks, its character offsets, its text."""

    number: int
    start: int
    end: int
    text: str


def check_options(chunk_size: Any, chunk_overlap: Any, chunker: Any) -> None:
    """Checks that need no model: sizes are integers, overlap below size, a known chunker."""
    if chunk_size is None:
        if chunk_overlap not in (0, None):
            raise InvalidInputError(f"chunk_overlap={chunk_overlap!r} needs a chunk_size")
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be a positive integer (tokens) or None, got {chunk_size!r}")
    if isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int) or chunk_overlap < 0:
        raise InvalidInputError(f"chunk_overlap must be an integer >= 0 (tokens), got {chunk_overlap!r}")
    if chunk_overlap >= chunk_size:
        raise InvalidInputError(
            f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})")
    if chunker not in CHUNKERS:
        raise InvalidInputError(f"chunker {chunker!r} is unknown; use one of {', '.join(CHUNKERS)}")


def check_size(chunk_size: int, max_input_tokens: int | None, model: str) -> None:
    """A chunk must fit the model's input."""
    if max_input_tokens is not None and chunk_size > max_input_tokens:
        raise InvalidInputError(
            f"chunk_size {chunk_size} is above what {model} reads at once ({max_input_tokens} tokens);"
            f" use chunk_size <= {max_input_tokens}"
        )


class TextSplitter:
    """Splits texts into chunks of at most ``size`` tokens of ``tokenizer`` (a Hugging Face tokenizer, a
    tiktoken encoding or a token-counting function), ``overlap`` tokens shared between neighbours.

    semchunk asks for the token count of the same pieces of a text many times: counts are kept for the text
    being split only (semchunk's own cache would keep every piece of every text a worker ever split: ~6.6 MB
    a megabyte of text, for the life of the process).
    """

    def __init__(self, tokenizer: Any | Callable[[str], int], size: int, overlap: int = 0) -> None:
        import semchunk

        count, max_token_chars = _token_counter(tokenizer)
        self._counts: dict[str, int] = {}

        def counted(text: str) -> int:
            n = self._counts.get(text)
            if n is None:
                n = self._counts[text] = max(count(text), len(text) // MAX_CHARACTERS_PER_TOKEN)
            return n

        self._chunker = semchunk.chunkerify(counted, size, max_token_chars=max_token_chars, memoize=False)
        self.overlap = overlap or None

    def split(self, text: str) -> list[Chunk]:
        if not text:
            return []
        try:
            pieces, offsets = self._chunker(text, offsets=True, overlap=self.overlap)
        finally:
            self._counts.clear()
        if not pieces:  # only whitespace, which semchunk drops: one chunk of it, as an unchunked project embeds it
            return [Chunk(0, 0, len(text), text)]
        return [Chunk(i, start, end, piece) for i, (piece, (start, end)) in enumerate(zip(pieces, offsets))]

    def split_all(self, texts: Sequence[str]) -> list[list[Chunk]]:
        return [self.split(text) for text in texts]


def _token_counter(tokenizer: Any) -> tuple[Callable[[str], int], int | None]:
    """A function text -> tokens as the model counts them (its special tokens aside), and the longest token
    in characters when the vocabulary is known (semchunk then tokenizes only the start of a long text).

    A fast Hugging Face tokenizer counts with its Rust core (``tokens.plain_core``): the same count as
    ``tokenizer.encode(text, add_special_tokens=False)`` without the Python layers around it, nor the offsets
    it tracks (0.5-0.7x the time to split 100 man pages with all-MiniLM-L6-v2, the same chunks).
    """
    core = plain_core(tokenizer)
    if core is not None:
        return (lambda text: count_all(core, [text], add_special_tokens=False)[0]), _longest_token(tokenizer)
    if hasattr(tokenizer, "encode_ordinary"):  # tiktoken: special tokens' text counted as ordinary text
        return (lambda text: len(tokenizer.encode_ordinary(text))), _longest_token(tokenizer)
    if hasattr(tokenizer, "encode"):  # a Hugging Face tokenizer without a Rust core
        return (lambda text: len(tokenizer.encode(text, add_special_tokens=False))), _longest_token(tokenizer)
    return tokenizer, None


@lru_cache(maxsize=8)
def _longest_token(tokenizer: Any) -> int:
    """The vocabulary's longest token, in characters (tiktoken: bytes); once per tokenizer, not per splitter
    (every run makes one): ``get_vocab()`` copies the vocabulary."""
    vocabulary = tokenizer.token_byte_values() if hasattr(tokenizer, "token_byte_values") else tokenizer.get_vocab()
    return max(len(token) for token in vocabulary)
