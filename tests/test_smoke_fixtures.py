from conftest import create_embeddings_table


def test_create_and_import(products, hook, model):
    create_embeddings_table(products, model)
    hook.create_project("product_search", "products", "product_id", ["name", "description"])
    result = hook.import_embeddings("product_search", "product_embeddings", "product_id", "embedding")
    assert result["imported"] == 24
