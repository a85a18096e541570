"""Query vs document encoding (issue 32): prompts per side, kept in the catalog, used by every path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import product_texts, snapshot

from airflow_vectorize.exceptions import InvalidInputError, ProjectConflictError

COLUMNS = ["name", "description"]
DOCUMENT, QUERY = "passage: ", "query: "


def stored(db, job: str, table: str = "_embeddings_{job}") -> dict:
    return {key: vector.to_numpy() for key, vector in db.execute(
        f"SELECT product_id, embeddings FROM vectorize.{table.format(job=job)}")}


def encode(model, texts: list[str]) -> np.ndarray:
    return model.encode(texts, show_progress_bar=False)


def test_prompts_are_used_on_their_side_and_kept(products, hook, model):
    summary = hook.create_project("asym", "products", "product_id", COLUMNS, document_prompt=DOCUMENT,
                                  query_prompt=QUERY)
    assert summary["created"]
    params = hook.get_project("asym")["params"]
    assert params["encoding"] == {"document_prompt": DOCUMENT, "query_prompt": QUERY}

    hook.generate_embeddings("asym")
    texts = product_texts(products)
    vectors = stored(products, "asym")
    expected = encode(model, [DOCUMENT + text for text in texts.values()])
    plain = encode(model, list(texts.values()))
    for (key, _), want, without in zip(texts.items(), expected, plain):
        assert np.allclose(vectors[key], want, atol=1e-5)
        assert not np.allclose(vectors[key], without, atol=1e-3)  # the prompt made a difference

    query = "something to make coffee"
    assert np.allclose(hook.encode("asym", [query])[0], encode(model, [QUERY + query])[0], atol=1e-5)
    assert np.allclose(hook.encode("asym", ["x"], side="document")[0], encode(model, [DOCUMENT + "x"])[0], atol=1e-5)
    # search ranks by the query-side vector: its similarities are those of encode(QUERY + query)
    q = encode(model, [QUERY + query])[0]
    rows = hook.search("asym", query, num_results=5)
    assert len(rows) == 5
    for row in rows:
        v = vectors[row["product_id"]]
        assert row["similarity_score"] == pytest.approx(float(q @ v / np.linalg.norm(q) / np.linalg.norm(v)), abs=1e-4)
    best = max(vectors, key=lambda k: float(q @ vectors[k] / np.linalg.norm(vectors[k])))
    hybrid = hook.hybrid_search("asym", query, num_results=24)
    assert next(r["product_id"] for r in hybrid if r["semantic_rank"] == 1) == best


def test_the_encoding_is_configuration(products, hook):
    hook.create_project("asym", "products", "product_id", COLUMNS, query_prompt=QUERY)
    before = snapshot(products)
    # the same call, or one that leaves the encoding unsaid, answers the existing project
    assert not hook.create_project("asym", "products", "product_id", COLUMNS, query_prompt=QUERY)["created"]
    assert not hook.create_project("asym", "products", "product_id", COLUMNS)["created"]
    for change in (dict(query_prompt="search_query: "), dict(query_prompt=""), dict(document_prompt=DOCUMENT)):
        with pytest.raises(ProjectConflictError, match="encoding: existing"):
            hook.create_project("asym", "products", "product_id", COLUMNS, **change)
    assert snapshot(products) == before


def test_a_project_from_before_encodes_both_sides_alike(products, hook, model):
    hook.create_project("old", "products", "product_id", COLUMNS)
    assert "encoding" not in hook.get_project("old")["params"]  # what earlier versions stored
    hook.generate_embeddings("old")
    texts = product_texts(products)
    assert np.allclose(np.stack(list(stored(products, "old").values())),
                       encode(model, [texts[k] for k in stored(products, "old")]), atol=1e-5)
    assert np.allclose(hook.encode("old", ["ride to work"])[0], encode(model, ["ride to work"])[0], atol=1e-5)


@pytest.fixture
def prompted_model(tmp_path):
    """The default model as a directory whose configuration ships query and document prompts (as E5 / BGE /
    nomic models do)."""
    from airflow_vectorize.models.local import bundled_path
    from airflow_vectorize.catalog import DEFAULT_TRANSFORMER

    folder = tmp_path / "prompted-minilm"
    shutil.copytree(bundled_path(DEFAULT_TRANSFORMER), folder)
    config_file = folder / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config["prompts"] = {"query": QUERY, "document": DOCUMENT}
    config_file.write_text(json.dumps(config))
    return str(folder)


def test_a_model_s_own_prompts_are_its_default(products, hook, model, prompted_model):
    hook.create_project("shipped", "products", "product_id", COLUMNS, transformer=prompted_model)
    assert hook.get_project("shipped")["params"]["encoding"] == {"document_prompt": DOCUMENT, "query_prompt": QUERY}
    hook.create_project("overridden", "products", "product_id", COLUMNS, transformer=prompted_model,
                        document_prompt="", query_prompt="")
    assert "encoding" not in hook.get_project("overridden")["params"]
    hook.generate_embeddings("shipped")
    texts = product_texts(products)
    vectors = stored(products, "shipped")
    assert np.allclose(np.stack([vectors[k] for k in texts]), encode(model, [DOCUMENT + t for t in texts.values()]),
                       atol=1e-5)


def test_chunks_are_encoded_with_the_document_prompt(products, hook, model):
    hook.create_project("chunked", "products", "product_id", COLUMNS, chunk_size=16, document_prompt=DOCUMENT)
    hook.generate_embeddings("chunked")
    rows = products.execute("SELECT chunk, embeddings FROM vectorize._chunks_chunked ORDER BY product_id, chunk_no")
    assert rows
    assert np.allclose(np.stack([v.to_numpy() for _, v in rows]), encode(model, [DOCUMENT + c for c, _ in rows]),
                       atol=1e-5)


def test_the_prompt_counts_against_what_the_model_reads(products, hook):
    hook.create_project("fits", "products", "product_id", COLUMNS, chunk_size=254)  # 256 less [CLS] and [SEP]
    before = snapshot(products)
    with pytest.raises(InvalidInputError, match=r"chunk_size 254 is above what .* reads at once \(252 tokens\)"):
        hook.create_project("too_long", "products", "product_id", COLUMNS, chunk_size=254, document_prompt=DOCUMENT)
    assert snapshot(products) == before

