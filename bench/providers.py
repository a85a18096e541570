"""``python -m bench.providers``: each remote provider's generation throughput against a bare client loop of
the same requests on the same server (issue 32), ``make bench-providers``.

Providers and servers: ``cohere/…`` and ``voyage/…`` against the protocol servers of the tests (each API's
format, the real local model computing the vectors in the server), ``portkey/openai/…`` through Portkey's
gateway in front of Infinity, and ``sentence-transformers/…`` computed by Infinity (self-hosted). Ours:
``generate_embeddings(batch_size, concurrency=4)`` on a manual project of ``--rows`` rows (read, request,
write, commit, index). Bare: ``httpx`` posting the very request bodies our client would send (the same
batches, input type and headers) from 4 threads, no database. The sides alternate (bare, ours, bare, ours,
bare, ours) and each side's median counts. Target: ours ÷ bare ≥ 0.9 for every provider.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.imports import COLUMNS  # noqa: E402
from bench.measure import Measurement, timed  # noqa: E402
from bench.output import add_output_arguments, write_results  # noqa: E402
from bench.session import BenchSession, log, prepare_environment  # noqa: E402

TABLE = "products_providers"
CONCURRENCY = 4
ROUNDS = 3


def connect(conn_id: str, conn: dict[str, Any]) -> None:
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)


def start_servers() -> tuple[dict[str, dict[str, Any]], list[Any]]:
    """The providers to measure ({name: transformer, model_conn_id}) and the servers to stop afterwards."""
    from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
    from airflow_vectorize.models.local import load_model
    from scripts.infinity_server import INFINITY_MODEL_NAME, InfinityServer
    from scripts.portkey_gateway import PortkeyGateway
    from tests.protocol_servers import CohereServer, VoyageServer

    infinity, gateway = InfinityServer().start(), PortkeyGateway().start()
    local = load_model(DEFAULT_TRANSFORMER)
    cohere, voyage = CohereServer(local), VoyageServer(local)
    infinity.wait()
    gateway.wait()
    connect("bench_cohere", {"conn_type": "cohere", "host": cohere.url, "password": cohere.api_key})
    connect("bench_voyage", {"conn_type": "voyage", "host": voyage.url, "password": voyage.api_key})
    connect("bench_self_hosted", {"conn_type": "openai", "host": infinity.url, "extra": {"model": INFINITY_MODEL_NAME}})
    connect("bench_portkey", {"conn_type": "portkey", "host": gateway.api_url,
                              "extra": {"custom_host": infinity.url}})
    providers = {
        "cohere": {"transformer": "cohere/embed-english-light-v3.0", "model_conn_id": "bench_cohere"},
        "voyage": {"transformer": "voyage/voyage-3.5-lite", "model_conn_id": "bench_voyage"},
        "portkey": {"transformer": f"portkey/openai/{INFINITY_MODEL_NAME}", "model_conn_id": "bench_portkey"},
        "self-hosted": {"transformer": DEFAULT_TRANSFORMER, "model_conn_id": "bench_self_hosted"},
    }
    return providers, [infinity, gateway, cohere, voyage]


def measure_provider(session: BenchSession, name: str, spec: dict[str, Any], texts: list[str],
                     batch_size: int) -> Measurement:
    import httpx

    from airflow_vectorize import models
    from airflow_vectorize.models.encoding import Encoding, SideModel

    hook = session.hook()
    job = f"providers_{name.replace('-', '_')}"
    hook.create_project(job, TABLE, "product_id", COLUMNS, schedule="manual", **spec)  # its size and encoding
    project = hook.get_project(job)
    hook.drop_project(job)
    remote = models.embedding_model(spec["transformer"], spec["model_conn_id"], project["dimensions"])
    side = SideModel(remote, Encoding.from_params(project["params"].get("encoding")), "document")
    target = remote.endpoint
    headers = {"Content-Type": "application/json", **target.headers}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    url = target.base_url + remote.path
    bodies = [remote.payload(texts[i:i + batch_size], side.input_type) for i in range(0, len(texts), batch_size)]
    client = httpx.Client(limits=httpx.Limits(max_connections=16))
    client.post(url, json=bodies[0], headers=headers, timeout=120).raise_for_status()  # warm

    def bare() -> float:
        def send(body: dict[str, Any]) -> None:
            client.post(url, json=body, headers=headers, timeout=120).raise_for_status()

        session.settle()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            seconds, _ = timed(lambda: list(pool.map(send, bodies)))
        return seconds

    def ours() -> float:
        hook.create_project(job, TABLE, "product_id", COLUMNS, schedule="manual", **spec)
        session.settle()
        try:
            seconds, result = timed(lambda: hook.generate_embeddings(job, batch_size=batch_size,
                                                                     concurrency=CONCURRENCY))
        finally:
            hook.drop_project(job)
        assert result["embedded"] == len(texts), result
        return seconds

    bare_runs, ours_runs = [], []
    for _ in range(ROUNDS):
        bare_runs.append(bare())
        ours_runs.append(ours())
        log(f"{name}: bare {len(texts) / bare_runs[-1]:.0f} rows/s, ours {len(texts) / ours_runs[-1]:.0f} rows/s")
    client.close()
    rows = len(texts)
    return Measurement(
        key=f"generate / {name}", title=f"Generate {rows:,} embeddings with {spec['transformer']} ({name})",
        ours_label=f"generate_embeddings(batch_size={batch_size}, concurrency={CONCURRENCY})",
        baseline_label=f"httpx, the same {len(bodies)} request bodies, {CONCURRENCY} threads, no database",
        unit="rows/s", ours=rows / statistics.median(ours_runs), baseline=rows / statistics.median(bare_runs),
        target=0.9, op=">=", details={"ours_seconds": ours_runs, "bare_seconds": bare_runs, "requests": len(bodies)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    add_output_arguments(parser, "providers")
    args = parser.parse_args(argv)
    prepare_environment()
    session = BenchSession.start()
    servers: list[Any] = []
    results = []
    try:
        providers, servers = start_servers()
        session.add_products(TABLE, args.rows, seed=32)
        texts = [r[0] for r in session.execute(
            f"SELECT concat_ws(', ', {', '.join(COLUMNS)}) FROM {TABLE} ORDER BY product_id")]
        for name, spec in providers.items():
            results.append(measure_provider(session, name, spec, texts, args.batch_size).as_dict())
    finally:
        for server in servers:
            (server.close if hasattr(server, "close") else server.stop)()
        session.stop()
    meta = {"rows": args.rows, "batch_size": args.batch_size, "concurrency": CONCURRENCY, "rounds": ROUNDS,
            "machine": platform.machine(), "python": sys.version.split()[0]}
    path = write_results(args, "providers", meta, results)
    print(report(results))
    log(f"results: {path}")


def report(results: list[dict[str, Any]]) -> str:
    lines = ["| provider | ours rows/s | bare client rows/s | ratio | target |", "|---|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['key'].split(' / ')[1]} | {r['ours']:.0f} | {r['baseline']:.0f} | {r['ratio']:.2f}"
                     f" ({r['status']}) | {r['target_text']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
