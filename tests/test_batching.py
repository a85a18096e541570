"""Dynamic batching of query embeddings (models/batching.py) with real models: the local one, and a remote one
behind the recording, misbehaving server. Calls from many threads at once: each gets exactly its own vectors,
they reach the model in fewer calls, and one bad input fails only its own call."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from airflow_vectorize.exceptions import ModelInputRejectedError
from airflow_vectorize.models import embedding_model
from airflow_vectorize.models.batching import BatchingModel
from tests.conftest import concurrently

TEXTS = [f"query number {i} about {topic}" for i, topic in
         enumerate(["phones", "laptops", "tents", "knives", "shoes", "desks", "books", "drills"] * 4)]


def embed_at_once(model: BatchingModel, texts: list[str]) -> tuple[dict[str, np.ndarray], list[BaseException]]:
    """Every text embedded by its own thread, all threads released at the same moment."""
    start = threading.Barrier(len(texts))
    results: dict[str, np.ndarray] = {}
    order = iter(range(len(texts)))
    lock = threading.Lock()

    def call() -> None:
        with lock:
            text = texts[next(order)]
        start.wait()
        results[text] = model.embed([text])

    _, errors = concurrently(call, len(texts))
    return results, errors


def test_local_model_calls_are_merged_and_each_gets_its_own_vector(model):
    from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
    from airflow_vectorize.models.local import load_model

    batcher = BatchingModel(load_model(DEFAULT_TRANSFORMER))
    results, errors = embed_at_once(batcher, TEXTS)
    assert not errors
    expected = model.encode(TEXTS, convert_to_numpy=True)
    for text, vector in zip(TEXTS, expected):
        assert results[text].shape == (1, 384)
        np.testing.assert_allclose(results[text][0], vector, atol=1e-5)
    stats = batcher.stats.as_dict()
    assert stats["texts"] == len(TEXTS)
    assert stats["model_calls"] < len(TEXTS) and stats["largest_batch"] > 1


def test_an_idle_model_answers_a_single_call_alone(model):
    from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
    from airflow_vectorize.models.local import load_model

    batcher = BatchingModel(load_model(DEFAULT_TRANSFORMER))
    for text in TEXTS[:3]:
        batcher.embed([text])
    assert batcher.stats.as_dict() == {"model_calls": 3, "texts": 3, "largest_batch": 1, "mean_batch": 1.0}


@pytest.fixture
def remote(embedding_server):
    """The remote model (openai/MiniLM at connection ``flaky``), batched; no retries of rejected inputs."""
    return BatchingModel(embedding_model("openai/MiniLM", "flaky", 384))


def test_remote_calls_are_merged_into_fewer_requests(remote, embedding_server, model):
    embedding_server.reset(delay=0.05)  # each request takes a while: calls pile up behind it
    results, errors = embed_at_once(remote, TEXTS)
    assert not errors
    requests = [r for r in embedding_server.requests if r.status == 200]
    assert sum(len(r.body["input"]) for r in requests) == len(TEXTS)
    assert len(requests) < len(TEXTS) / 2
    expected = model.encode(TEXTS, convert_to_numpy=True)
    for text, vector in zip(TEXTS, expected):
        np.testing.assert_allclose(results[text][0], vector, atol=1e-5)


def test_one_rejected_input_fails_only_its_own_call(remote, embedding_server):
    """The server rejects inputs over 200 bytes (HTTP 400, as OpenAI does): the batch that holds it fails, each
    of its calls runs again alone, and only the long one fails."""
    embedding_server.reset(delay=0.05, max_input_bytes=200)
    texts = TEXTS[:12] + ["a very long query " * 20]
    results, errors = embed_at_once(remote, texts)
    assert len(errors) == 1 and isinstance(errors[0], ModelInputRejectedError)
    assert "maximum context length" in str(errors[0])
    assert set(results) == set(texts[:12])
