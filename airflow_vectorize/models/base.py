"""The one interface every embedding model offers, local or remote."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


class EmbeddingModel(ABC):
    """Texts in, float32 vectors out; one instance serves every call of a process (thread-safe).

    ``concurrency``: how many batches generation keeps in flight by default (1 for a model computed on
    this machine's CPU, several for a remote server). ``max_input_tokens``: the longest input the model
    reads; longer ones are cut to it (None: the server decides).
    """

    transformer: str
    concurrency: int = 1
    max_input_tokens: int | None = None

    @property
    @abstractmethod
    def dimensions(self) -> int:
        """The size of the vectors ``embed`` returns."""

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One float32 row per text, in order."""

    def probe(self) -> int:
        """The vector size, checked by computing one vector where that is how it is learnt."""
        return self.dimensions

    def describe(self) -> str:
        return repr(self.transformer)
