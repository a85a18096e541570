"""A database with projects taken to another server the usual way (pg_dump, pg_restore): its projects search,
count, queue, reconcile and drop there as they did, on the real database and model."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import fresh_database

from airflow_vectorize.hooks.vectorize import VectorizeHook

PROJECTS = {"joined": {}, "appended": {"table_method": "append"}, "chunked": {"chunk_size": 12}}
QUERY = "mobile phone with a good camera"


def project_objects(db) -> list[tuple]:
    """What is left of the projects: relations named after them, an append project's columns, triggers."""
    return db.execute(
        "SELECT relname::text FROM pg_class WHERE relname ~ %(jobs)s"
        " UNION ALL SELECT attname::text FROM pg_attribute WHERE attrelid = 'products'::regclass AND attname ~ %(jobs)s"
        " AND NOT attisdropped UNION ALL SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal",
        {"jobs": "|".join(PROJECTS)})


def test_a_dumped_and_restored_database_keeps_its_projects_working(products, hook, postgres, tmp_path):
    for job, arguments in PROJECTS.items():
        hook.create_project(job, "products", "product_id", ["name", "description"], **arguments)
        assert hook.generate_embeddings(job)["embedded"] == 24
    searched = {job: [(r["product_id"], round(r["similarity_score"], 6)) for r in hook.search(job, QUERY)]
                for job in PROJECTS}
    status = {job: hook.get_status(job) for job in PROJECTS}
    assert len(project_objects(products)) > 30  # what the check at the end sees go

    bin_path = Path(postgres._server.bin_path)
    dump = tmp_path / "products.dump"
    subprocess.run([str(bin_path / "pg_dump"), "-Fc", "-f", str(dump), "-d", products.uri], check=True,
                   capture_output=True)
    with fresh_database(postgres) as restored:
        subprocess.run([str(bin_path / "pg_restore"), "--exit-on-error", "-d", restored.uri, str(dump)], check=True,
                       capture_output=True)
        there = VectorizeHook(restored.conn_id)
        for job in PROJECTS:
            assert [(r["product_id"], round(r["similarity_score"], 6)) for r in there.search(job, QUERY)] == searched[job]
            assert there.get_status(job) == status[job]
            assert there.hybrid_search(job, "camera")[0]["product_id"] in {1, 2, 3}

        restored.execute("INSERT INTO products (product_id, name, description) VALUES (100, 'Garden hose', '30 m')")
        restored.execute("DELETE FROM products WHERE product_id = 24")
        for job in PROJECTS:  # realtime triggers queue, removal triggers record, runs reconcile
            assert there.get_status(job)["pending"] == 1
            run = there.generate_embeddings(job, pending_only=True)
            assert run["embedded"] == 1 and run["vectors_removed"] >= 1
            assert there.get_status(job)["embedded_rows"] == 24
        for job in PROJECTS:
            assert there.drop_project(job)["dropped"] is True
        assert project_objects(restored) == []
