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
