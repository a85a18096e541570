"""Operators: thin wrappers that return the hook's JSON-serialisable summary; provider registration."""

from __future__ import annotations

import json
import re
from importlib.metadata import entry_points

import pytest
from conftest import create_embeddings_table, snapshot

from airflow_vectorize.exceptions import InvalidInputError
from airflow_vectorize.operators import (
    AlterVectorizeProjectOperator,
    CreateVectorizeProjectOperator,
    DropVectorizeProjectOperator,
    EvaluateRetrievalOperator,
    ImportEmbeddingsOperator,
    VectorSearchOperator,
)


def test_operators_run_the_project_lifecycle(products, model):
    create_embeddings_table(products, model)
    conn = {"postgres_conn_id": products.conn_id}
    create = CreateVectorizeProjectOperator(task_id="create", job_name="product_search", table="products",
                                            primary_key="product_id", columns=["name", "description"], **conn)
    load = ImportEmbeddingsOperator(task_id="import", job_name="product_search", src_table="product_embeddings",
                                    src_primary_key="product_id", src_embeddings_col="embedding", **conn)
    pause = AlterVectorizeProjectOperator(task_id="pause", job_name="product_search", schedule="manual", **conn)
    reindex = AlterVectorizeProjectOperator(task_id="reindex", job_name="product_search", halfvec_index=True, **conn)
    drop = DropVectorizeProjectOperator(task_id="drop", job_name="product_search", **conn)

    results = [op.execute(context={}) for op in (create, load, pause, reindex, drop)]

    assert [results[0]["created"], results[1]["imported"], results[4]["dropped"]] == [True, 24, True]
    assert results[2]["changed"] == {"schedule": ["realtime", "manual"]}
    assert results[3]["changed"] == {"halfvec_index": [False, True]} and results[3]["index"]["rebuilt"]
    assert len(json.dumps(results)) < 3000  # XCom-safe: JSON, small, no vectors


def test_columns_given_as_one_string_are_refused_as_the_hook_refuses_them(products):
    """Before, the operators split "name" into ['n', 'a', 'm', 'e']: a create of a project of other columns,
    or an alter that said it changed nothing."""
    conn = {"postgres_conn_id": products.conn_id}
    CreateVectorizeProjectOperator(task_id="c", job_name="shop", table="products", primary_key="product_id",
                                   columns=("name",), schedule="manual", **conn).execute(context={})
    before = snapshot(products)
    for op in (CreateVectorizeProjectOperator(task_id="c2", job_name="other", table="products",
                                              primary_key="product_id", columns="name", **conn),
               AlterVectorizeProjectOperator(task_id="a", job_name="shop", columns="description", **conn)):
        with pytest.raises(InvalidInputError, match=re.escape("columns must be a list of column names, got")):
            op.execute(context={})
    search = VectorSearchOperator(task_id="s", job_name="shop", query="phone", return_columns="name", **conn)
    with pytest.raises(InvalidInputError, match=re.escape("return_columns must be a list of column names, got 'name'")):
        search.execute(context={})  # before: "unknown: n, a, m, e"
    assert snapshot(products) == before


def test_an_evaluation_with_nothing_to_sample_says_so(products, hook):
    """sample= on rows without a sentence of 12-60 words: sample_queries found none, and the error was about
    queries= 'must be a non-empty list', an argument the task was not given."""
    hook.create_project("names", "products", "product_id", ["name"], schedule="manual")
    before = snapshot(products)
    task = EvaluateRetrievalOperator(task_id="evaluate", job_name="names", sample=5, chart=False,
                                     postgres_conn_id=products.conn_id)

    with pytest.raises(InvalidInputError) as error:
        task.execute({})

    assert str(error.value) == (
        "no query could be sampled from project 'names' (sample=5): none of its rows holds a sentence of 12-60"
        " words (short texts such as names or titles have none). Pass queries= (labelled queries, or a table of"
        " them)")
    assert snapshot(products) == before


def test_template_fields_cover_names_tables_and_columns():
    assert {"job_name", "table", "schema", "primary_key", "columns", "update_col"} <= set(
        CreateVectorizeProjectOperator.template_fields)
    assert {"job_name", "src_table", "src_schema", "src_primary_key", "src_embeddings_col"} <= set(
        ImportEmbeddingsOperator.template_fields)
    assert DropVectorizeProjectOperator.template_fields == ("job_name",)
    assert set(AlterVectorizeProjectOperator.template_fields) == {"job_name", "schedule", "columns", "update_col"}


def test_alter_s_default_serializes_the_same_at_every_parse():
    """A template field's default that printed its memory address would make every parse a new DAG version."""
    from airflow.serialization.helpers import serialize_template_field

    op = AlterVectorizeProjectOperator(task_id="pause", job_name="shop", schedule="manual")
    assert serialize_template_field(op.update_col, "update_col") == "KEEP"


def test_templates_render_from_the_context():
    op = ImportEmbeddingsOperator(task_id="import", job_name="shop_{{ params.env }}", src_table="emb_{{ ds_nodash }}",
                                  src_primary_key="id", src_embeddings_col="v")
    op.render_template_fields({"params": {"env": "prod"}, "ds_nodash": "20261123"})
    assert (op.job_name, op.src_table) == ("shop_prod", "emb_20261123")


def test_registered_as_an_airflow_provider():
    (entry,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_vectorize")]
    info = entry.load()()
    assert info["package-name"] == "airflow-vectorize"
    assert info["hooks"][0]["python-modules"] == ["airflow_vectorize.hooks.vectorize"]


def test_index_build_memory_reaches_the_hook_and_a_bad_size_fails_at_parse():
    """Before, no operator took it, though the README and the build's warning tell users to set it."""
    op = ImportEmbeddingsOperator(task_id="load", job_name="shop", src_table="t", src_primary_key="k",
                                  src_embeddings_col="e", index_build_memory="8GB")
    assert op.hook._build_cap == 8 * 1024**3
    with pytest.raises(InvalidInputError, match="index_build_memory must be 'auto' or a size such as '512MB'"):
        CreateVectorizeProjectOperator(task_id="c", job_name="shop", table="t", primary_key="k", columns=["a"],
                                       index_build_memory="lots")
