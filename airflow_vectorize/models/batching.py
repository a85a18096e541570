"""Dynamic batching: concurrent ``embed`` calls of many threads become one call of the model.

A server answering searches embeds one short query per request. One at a time, a model spends most of its
time on per-call work (a forward pass for one text, an HTTP round trip); 32 texts in one call cost a few
times one text's call (all-MiniLM-L6-v2 on 2 cores: 1 text ~10 ms, 32 texts ~65 ms). So, as embedding servers
such as Infinity and TEI do, calls that arrive while the model is busy wait and then go together:

- the model runs in one thread of its own (a remote model: ``concurrency`` threads, requests in flight at
  once), which takes everything queued (up to ``max_batch`` texts) for each call: an idle model starts on a
  lone call at once, a busy one finds the calls that came meanwhile;
- callers wait for their own vectors. When a batched call fails, each call in it runs again alone, so one
  bad input fails only the request that sent it.

One thread, not the callers' threads in turn: torch keeps a pool of OpenMP threads and the allocator an arena
per calling thread, so a model run by 32 request threads in turn had 32 of each (RSS +70 %, and idle pools
spinning on the cores).
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_vectorize.models.base import EmbeddingModel

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MAX_BATCH = 64  # texts per model call: 32-64 short queries are the fastest per text here


@dataclass(eq=False)
class _Call:
    texts: list[str]
    vectors: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class BatchStats:
    """What the batcher did: model calls, texts, and the largest batch (for health and the bench)."""

    calls: int = 0
    texts: int = 0
    largest: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, texts: int) -> None:
        with self.lock:
            self.calls += 1
            self.texts += texts
            self.largest = max(self.largest, texts)

    def as_dict(self) -> dict[str, Any]:
        return {"model_calls": self.calls, "texts": self.texts, "largest_batch": self.largest,
                "mean_batch": round(self.texts / self.calls, 2) if self.calls else None}


class BatchingModel(EmbeddingModel):
    """``model`` with concurrent ``embed`` calls merged into one (see the module's docstring); thread-safe."""

    def __init__(self, model: EmbeddingModel, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.model = model
        self.transformer = model.transformer
        self.concurrency = model.concurrency
        self.max_input_tokens = model.max_input_tokens
        self.input_errors = model.input_errors
        self.input_types = model.input_types
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._queue: list[_Call] = []
        self._cond = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._pid = os.getpid()

    @property
    def dimensions(self) -> int:
        return self.model.dimensions

    def tokenizer(self) -> Any:
        return self.model.tokenizer()

    def describe(self) -> str:
        return self.model.describe()

    def count_tokens(self, text: str) -> int:
        return self.model.count_tokens(text)

    def embed(self, texts: Sequence[str], *, prompt: str | None = None, input_type: str | None = None) -> np.ndarray:
        """``model.embed(texts)``, merged with concurrent calls (the wrapped model is one side of a project:
        its prompt and input type are its own)."""
        call = _Call(list(texts))
        with self._cond:
            if not self._workers or self._pid != os.getpid():
                self._pid = os.getpid()  # also after a fork, which keeps no thread
                self._workers = [threading.Thread(target=self._work, name=f"batching {self.transformer}",
                                                  daemon=True) for _ in range(self.concurrency)]
                for worker in self._workers:
                    worker.start()
            self._queue.append(call)
            self._cond.notify()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.vectors

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                batch = self._take()
            self._run(batch)

    def _take(self) -> list[_Call]:
        """The queued calls of the next model call: in arrival order, up to ``max_batch`` texts (at least one
        call, however long)."""
        batch, size = [], 0
        while self._queue and (not batch or size + len(self._queue[0].texts) <= self.max_batch):
            call = self._queue.pop(0)
            batch.append(call)
            size += len(call.texts)
        return batch

    def _run(self, batch: list[_Call]) -> None:
        texts = [text for call in batch for text in call.texts]
        try:
            vectors = self.model.embed(texts)
        except BaseException as error:  # noqa: BLE001 - each call gets its own outcome, in its own thread
            if len(batch) == 1:
                batch[0].error = error
                batch[0].done.set()
                return
            for call in batch:  # one call's bad input must not fail the others: each again, alone
                self._run([call])
            return
        self.stats.record(len(texts))
        start = 0
        for call in batch:
            call.vectors = vectors[start:start + len(call.texts)]
            start += len(call.texts)
            call.done.set()


_shared: dict[tuple, BatchingModel] = {}
_shared_lock = threading.Lock()


def shared(key: tuple, model: EmbeddingModel) -> BatchingModel:
    """The process's batching wrapper for the model identified by ``key`` (made around ``model`` on first
    use), so that every caller of the same model shares one queue.

    A new one also freezes the garbage collector's view of what the process holds (``gc.freeze``): a server
    with a model loaded holds ~600k objects (torch, transformers, Airflow), which a full collection scanned in
    ~310 ms here, stalling every request in flight (p99 of 0.5-1.1 s in ``bench/api.py``); frozen, they are
    never scanned again (a full collection then took < 1 ms)."""
    with _shared_lock:
        batcher = _shared.get(key)
        if batcher is None:
            batcher = _shared[key] = BatchingModel(model)
            gc.freeze()
        return batcher


def loaded() -> dict[str, dict[str, Any]]:
    """The batched models of this process, by transformer, with their statistics."""
    with _shared_lock:
        return {_name(batcher.model): {"dimensions": batcher.dimensions, **batcher.stats.as_dict()}
                for batcher in _shared.values()}


def _name(model: EmbeddingModel) -> str:
    """The model's name, with the query prompt or input type its side adds (``models.encoding.SideModel``)."""
    name = model.describe().strip("'")
    prompt, input_type = getattr(model, "prompt", None), getattr(model, "input_type", None)
    return name + (f" (prompt {prompt!r})" if prompt else "") + (f" (input_type {input_type!r})" if input_type else "")
