"""The benchmark harness runs end to end in --quick mode and writes its outputs.

Behaviour only: no timing is asserted (timings belong in bench/, and this machine is shared).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import ROOT

EXPECTED = {
    "import_vs_floor", "import_vs_pg_vectorize", "import_vs_airflow", "search_vs_raw_sql", "search_recall",
    "reimport_10_vs_naive", "reimport_100_vs_initial", "generate_vs_encode", "memory_import_4x",
    "memory_generate_4x", "remote_generate_vs_client", "remote_generate_vs_client_c1",
    "remote_generate_vs_client_c2", "chunking_embed_throughput",
    *(f"chunking_{corpus}_{what}" for corpus in ("man", "readme")
      for what in ("recall_last_third", "recall_gain", "recall_first_third", "hybrid_time", "search_time",
                   "search_time_all_rows", "search_time_sections", "search_time_sections_highest")),
}


def test_quick_benchmark_writes_table_json_and_chart(tmp_path):
    latest = [ROOT / "bench" / name for name in ("latest.json", "latest.png")]
    before = {path: path.stat().st_mtime_ns for path in latest if path.exists()}

    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ratio" in run.stdout and "target" in run.stdout

    (json_path,) = tmp_path.glob("bench-*-quick.json")
    (png_path,) = tmp_path.glob("bench-*-quick.png")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(json_path.read_text())
    assert result["config"]["quick"] is True

    measurements = {m["key"]: m for m in result["measurements"]}
    assert EXPECTED <= set(measurements)
    for key, m in measurements.items():
        assert m["ratio"] is not None and math.isfinite(m["ratio"]) and m["ratio"] > 0, (key, m)
        assert m["status"] in {"met", "MISSED", "info"}, (key, m)
    assert measurements["search_recall"]["details"]["ef_search"] >= 40  # reported with the recall
    remote = measurements["remote_generate_vs_client"]
    assert remote["target"] == 0.9 and remote["details"]["concurrency"] == 4
    for side in ("ours_rows_per_second", "bare_rows_per_second"):  # the rates at concurrency 1, 2 and 4
        assert set(remote["details"][side]) == {"1", "2", "4"}, remote["details"]

    chunking = measurements["chunking_embed_throughput"]["details"]  # every page embedded, in chunks
    assert chunking["embedded"] == chunking["documents"] == result["config"]["chunking_docs"]
    assert chunking["stored_chunks"] == chunking["chunks"] > chunking["documents"] and chunking["tokens"] > 0
    for corpus in ("man", "readme"):  # both corpora: queries from both thirds, the baseline as today's
        recall = measurements[f"chunking_{corpus}_recall_last_third"]["details"]
        assert recall["queries"]["last"] > 0 and recall["queries"]["first"] > 0
        assert 0 <= recall["recall_at_10"]["unchunked_last"] <= 1 and recall["query_words"]["min"] >= 12
        assert recall["query_block_start_min_last_third"] >= 2 / 3
        assert recall["query_block_end_max_first_third"] <= 1 / 3
        baseline = recall["unchunked_baseline"]
        assert baseline["stored_unchunked_vector_vs_model_encode_of_whole_text_min_cosine"] > 0.999
        hybrid = measurements[f"chunking_{corpus}_hybrid_time"]["details"]  # keyword queries, both projects
        assert hybrid["queries"] > 0 and all(len(q.split()) == 2 for q in hybrid["query_examples"]), hybrid
        assert all(found > 0 for found in hybrid["full_text_rows_found"].values()), hybrid
        for suffix in ("", "_all_rows"):  # a recall/time curve per side, both sides timed at equal recall
            search = measurements[f"chunking_{corpus}_search_time{suffix}"]["details"]
            assert set(search["curve"]) == set(search["projects"].values()) and len(search["projects"]) == 2
            assert all(len(points) >= 3 for points in search["curve"].values())
            chosen = {job: search["curve"][job][str(search["ef_search"][side])]["exact_recall"]
                      for side, job in search["projects"].items()}
            assert min(chosen.values()) >= search["matched_recall"], search
            alone, paired = search["chunk_index_alone"], search["paired_pass"]  # the floor, timed beside them
            assert alone["p50_ms"] == paired["chunk_index_alone"]["p50_ms"] > 0, search
            assert alone["ef_search"] == search["ef_search"]["chunked"], search
            server = search["server_execution_ms"]  # each side inside the server alone
            assert all(server[name] > 0 for name in (*search["projects"].values(), "chunk_index_alone")), server
        sections = measurements[f"chunking_{corpus}_search_time_sections"]["details"]
        assert 3 <= sections["chunks_per_row"]["min"] <= sections["chunks_per_row"]["max"] <= 10, sections
        assert sections["chunks"] > sections["rows"] > 0 and sections["queries"] > 0
        # measured at the recall the unchunked project gives at pgvector's default ef_search
        assert sections["matched_recall"] == sections["curve"][sections["projects"]["unchunked"]]["40"]["exact_recall"]

    # --quick never overwrites the committed bench/latest.* that the README shows.
    assert {path: path.stat().st_mtime_ns for path in latest if path.exists()} == before


def test_arguments_are_checked():
    run = subprocess.run([sys.executable, "-m", "bench", "--only", "search"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 2
    assert "add 'import'" in run.stderr
