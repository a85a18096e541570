"""Chunking: long texts split by tokens of the project's own model, so all of a text reaches the index.

A chunked project (``create_project(..., chunk_size=N)``) stores one vector per chunk instead of one per row.
Texts are split with ``semchunk`` (a maintained recursive splitter: paragraphs, then sentences, then words,
then characters) into chunks of at most ``chunk_size`` tokens as the model's tokenizer counts them, the
model's special tokens aside; consecutive chunks share about ``chunk_overlap`` tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_vectorize.exceptions import InvalidInputError

CHUNKERS = ("recursive",)


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
    tiktoken encoding or a token-counting function), ``overlap`` tokens shared between neighbours."""

    def __init__(self, tokenizer: Any | Callable[[str], int], size: int, overlap: int = 0) -> None:
        import semchunk

        self._chunker = semchunk.chunkerify(tokenizer, size)
        self.overlap = overlap or None

    def split(self, text: str) -> list[Chunk]:
        if not text:
            return []
        pieces, offsets = self._chunker(text, offsets=True, overlap=self.overlap)
        return [Chunk(i, start, end, piece) for i, (piece, (start, end)) in enumerate(zip(pieces, offsets))]

    def split_all(self, texts: Sequence[str]) -> list[list[Chunk]]:
        return [self.split(text) for text in texts]
