"""The interfaces every model offers: embedding models (local or remote) and chat models."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


class EmbeddingModel(ABC):
    """Texts in, float32 vectors out; one instance serves every call of a process (thread-safe).

    ``concurrency``: how many batches generation keeps in flight by default (1 for a model computed on
    this machine's CPU, several for a remote server). ``max_input_tokens``: the longest input the model
    reads; longer ones are cut to it (None: the server decides). ``input_errors``: the errors ``embed``
    raises because of one of its inputs (not the model or the server as a whole): generation then finds
    the offending rows and records them instead of failing the run. ``input_types``: the values of the
    provider's ``input_type`` (none: it takes none).
    """

    transformer: str
    concurrency: int = 1
    max_input_tokens: int | None = None
    input_errors: tuple[type[Exception], ...] = ()
    input_types: tuple[str, ...] = ()

    @property
    @abstractmethod
    def dimensions(self) -> int:
        """The size of the vectors ``embed`` returns."""

    @abstractmethod
    def embed(self, texts: Sequence[str], *, prompt: str | None = None, input_type: str | None = None) -> np.ndarray:
        """One float32 row per text, in order: of ``prompt + text`` (the prompt's tokens never cut), with the
        provider's ``input_type`` when given (``models.encoding``)."""

    def default_encoding(self) -> dict[str, str]:
        """The encoding a new project gets unless told otherwise (``models.encoding.Encoding``'s fields):
        the prompts a local model's configuration ships, a provider's input types; none by default."""
        return {}

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as the model counts them; here an upper estimate (UTF-8 bytes / 3)."""
        from airflow_vectorize.models.tokens import TokenCounter

        return TokenCounter().count(text)

    def tokenizer(self) -> Any:
        """What counts tokens as this model does: a Hugging Face tokenizer, a tiktoken encoding, or a
        function text -> count (an upper estimate when the vocabulary is unknown)."""
        raise NotImplementedError

    def probe(self) -> int:
        """The vector size, checked by computing one vector where that is how it is learnt."""
        return self.dimensions

    def describe(self) -> str:
        return repr(self.transformer)


@dataclass(frozen=True)
class ChatResult:
    """A chat completion: the answer, the model that gave it, the server's token ``usage``, and why the model
    stopped (``finish_reason``: ``stop`` for a complete answer, ``length`` for one cut at ``max_tokens`` or the
    context window, ...; None when the server does not say)."""

    text: str
    model: str
    usage: dict[str, Any] = field(default_factory=dict)
    finish_reason: str | None = None


class ChatModel(ABC):
    """Messages in, one answer out. ``context_window``: prompt plus answer tokens the model accepts;
    ``tokens``: counts tokens as the model does (or errs high)."""

    chat_model: str
    context_window: int
    tokens: Any

    @abstractmethod
    def chat(self, messages: Sequence[dict[str, str]], max_tokens: int | None = None,
             temperature: float | None = None) -> ChatResult:
        """The model's answer to ``messages`` ([{"role": ..., "content": ...}, ...])."""

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        """Tokens the messages take, with OpenAI's per-message overhead (4 each, 3 to prime the answer)."""
        return sum(self.tokens.count(m["content"]) + 4 for m in messages) + 3

    def describe(self) -> str:
        return repr(self.chat_model)
