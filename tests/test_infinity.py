"""A project whose model is served by a real Infinity server (OpenAI protocol) matches the local model."""

from __future__ import annotations

import numpy as np
from conftest import product_texts

from scripts.infinity_server import INFINITY_MODEL_NAME

COLUMNS = ["name", "description"]
QUERIES = ["mobile phone with a good camera", "something to make coffee", "ride to work", "warm clothes"]


def test_infinity_project_matches_the_local_model(products, hook, infinity, model):
    remote = hook.create_project("served", "products", "product_id", COLUMNS,
                                 transformer=f"openai/{INFINITY_MODEL_NAME}", model_conn_id="infinity")
    hook.create_project("local", "products", "product_id", COLUMNS)

    assert remote["dimensions"] == 384
    assert hook.generate_embeddings("served", batch_size=7)["embedded"] == 24
    hook.generate_embeddings("local")

    texts = product_texts(products)
    served = {k: v.to_numpy() for k, v in products.execute("SELECT product_id, embeddings FROM vectorize._embeddings_served")}
    local = model.encode(list(texts.values()), normalize_embeddings=True, show_progress_bar=False)
    cosine = [float(np.dot(served[key], vector) / np.linalg.norm(served[key])) for key, vector in zip(texts, local)]
    assert min(cosine) >= 0.9999

    for query in QUERIES:
        assert ([r["product_id"] for r in hook.search("served", query, num_results=10)]
                == [r["product_id"] for r in hook.search("local", query, num_results=10)])
        assert ([r["product_id"] for r in hook.hybrid_search("served", query, num_results=10)]
                == [r["product_id"] for r in hook.hybrid_search("local", query, num_results=10)])


def test_a_local_model_name_served_by_a_self_hosted_server(products, hook, infinity, model):
    """``sentence-transformers/<name>`` with a ``model_conn_id``: the project keeps its model name, Infinity
    computes it; vectors (with a document prompt) and searches equal the local model's."""
    from conftest import set_model_connection

    set_model_connection("self_hosted", infinity.url, model=INFINITY_MODEL_NAME)
    served = hook.create_project("hosted", "products", "product_id", COLUMNS, model_conn_id="self_hosted",
                                 document_prompt="passage: ")
    hook.create_project("worker", "products", "product_id", COLUMNS, document_prompt="passage: ")
    assert served["transformer"] == "sentence-transformers/all-MiniLM-L6-v2" and served["dimensions"] == 384
    assert hook.get_project("hosted")["params"]["model_conn_id"] == "self_hosted"
    hook.generate_embeddings("hosted", batch_size=10)
    hook.generate_embeddings("worker")

    texts = product_texts(products)
    hosted = {k: v.to_numpy() for k, v in products.execute("SELECT product_id, embeddings FROM vectorize._embeddings_hosted")}
    local = model.encode(["passage: " + t for t in texts.values()], normalize_embeddings=True, show_progress_bar=False)
    assert min(float(np.dot(hosted[k], v) / np.linalg.norm(hosted[k])) for k, v in zip(texts, local)) >= 0.9999
    for query in QUERIES:
        assert ([r["product_id"] for r in hook.search("hosted", query, num_results=10)]
                == [r["product_id"] for r in hook.search("worker", query, num_results=10)])
