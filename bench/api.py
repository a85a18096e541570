"""``python -m bench.api``: the HTTP API under load (``make bench-api``): 1 / 8 / 32 concurrent clients for 60 s
each, against the standalone server and the app mounted in Airflow's api-server, on a project of 100k rows.

One Airflow deployment (scripts/deployment.py, LocalExecutor; its embedded PostgreSQL holds the project data
too); the standalone server (``python -m airflow_vectorize.api``) serves the same database. The project: the
bench's product catalogue with clustered pre-computed embeddings (``bench.data``) imported and indexed (HNSW,
cosine); queries are product-like sentences, each embedded by the server with the real model (so the vectors
of the table are synthetic: cost, not relevance, is measured). Searches are vector searches (``mode=vector``)
so that ``hook.search`` is the baseline, and, for the record, one hybrid level.

Per level: requests/s, p50 / p99 latency, errors (anything but a 200 with a JSON array), the server's RSS at
start and end, CPU seconds of the server, PostgreSQL and the client, and the batcher's statistics (texts per
model call) from ``/health``. The baseline: ``hook.search`` in this process, one query at a time, and single
HTTP requests to each server (same queries, same project), in blocks taking turns (see ``baseline``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.data import (
    ADJECTIVES,
    CATEGORIES,
    FEATURES,
    USES,
    VectorSpace,
    create_embeddings_table,
    create_products,
    make_dataset,
)
from bench.measure import median, percentile
from bench.output import add_output_arguments, write_results
from bench.session import log, prepare_environment

JOB = "api_bench"
TABLE = "api_products"
SEARCH = "/api/v1/search"


def queries(count: int = 500) -> list[str]:
    """Product-like questions, all different."""
    nouns = [noun for nouns in CATEGORIES.values() for noun in nouns]
    out = []
    for i in range(count):
        out.append(f"{ADJECTIVES[i % len(ADJECTIVES)]} {nouns[(i * 7) % len(nouns)]} with"
                   f" {FEATURES[(i * 3) % len(FEATURES)]} for {USES[(i * 5) % len(USES)]}")
    return out


def prepare(deployment: Any, rows: int) -> None:
    """The catalogue, its embeddings and the project (import builds the HNSW index) in the data database."""
    import psycopg
    from pgvector.psycopg import register_vector

    data = make_dataset(rows, VectorSpace(), seed=11)
    uri = deployment.env["AIRFLOW_CONN_POSTGRES_DEFAULT"]
    with psycopg.connect(uri, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}, {TABLE}_embeddings")
        create_products(conn, data, TABLE)
        create_embeddings_table(conn, f"{TABLE}_embeddings", data.product_ids, data.embeddings)
    hook = deployment.hook()
    hook.drop_project(JOB, missing_ok=True)
    hook.create_project(JOB, TABLE, "product_id", ["name", "description"])
    summary = hook.import_embeddings(JOB, f"{TABLE}_embeddings", "product_id", "embedding")
    # No autovacuum of the fresh rows, and no checkpoint writing out the import, while measuring.
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {TABLE}")
        conn.execute(f"VACUUM (ANALYZE) vectorize._embeddings_{JOB}")
        conn.execute("CHECKPOINT")
    log(f"project {JOB}: {summary['imported']:,} embeddings imported in {summary['seconds']:.1f} s")


def tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rss(pid: int) -> int:
    total = 0
    for proc in tree(pid):
        try:
            total += proc.memory_info().rss
        except Exception:  # noqa: BLE001 - a child that just ended
            pass
    return total


def cpu(pid: int) -> float:
    total = 0.0
    for proc in tree(pid):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except Exception:  # noqa: BLE001
            pass
    return total


class Target:
    """A server under test: its search URL, token, and the process whose tree serves it."""

    def __init__(self, name: str, base_url: str, token: str, pid: int) -> None:
        self.name, self.base_url, self.token, self.pid = name, base_url, token, pid

    def health(self) -> dict[str, Any]:
        import httpx

        return httpx.get(self.base_url + "/health", headers={"Authorization": f"Bearer {self.token}"},
                         timeout=60).json()


def batch_stats(target: Target) -> dict[str, Any]:
    models = target.health().get("models", {})
    return next(iter(models.values()), {})


def level(target: Target, clients: int, seconds: float, postmaster: int, mode: str = "vector") -> dict[str, Any]:
    """One load level: ``clients`` clients for ``seconds`` seconds."""
    before = {"rss": rss(target.pid), "server_cpu": cpu(target.pid), "postgres_cpu": cpu(postmaster),
              "batches": batch_stats(target), "wall": time.monotonic()}
    command = [sys.executable, "-m", "bench.load_client", "--url", target.base_url + SEARCH, "--token",
               target.token, "--job-name", JOB, "--queries", json.dumps(queries()), "--clients", str(clients),
               "--seconds", str(seconds), "--mode", mode]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(command, stdout=subprocess.PIPE, cwd=ROOT, check=True).stdout
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the client's CPU, once it has ended
    client_cpu = usage.ru_utime + usage.ru_stime - children.ru_utime - children.ru_stime
    wall = time.monotonic() - before["wall"]
    result = json.loads(out)
    after_batches = batch_stats(target)
    requests = result["requests"]
    latencies = [d * 1000 for _, d, status in requests if status == 200]
    slow = [(round(at, 2), round(d * 1000)) for at, d, status in requests
            if status == 200 and latencies and d * 1000 > 5 * median(latencies)]
    errors = [status for _, _, status in requests if status != 200]
    model_calls = after_batches.get("model_calls", 0) - before["batches"].get("model_calls", 0)
    texts = after_batches.get("texts", 0) - before["batches"].get("texts", 0)
    duration = result["end"] - result["begin"]
    row = {
        "server": target.name, "mode": mode, "clients": clients, "seconds": round(duration, 1),
        "requests": len(requests), "errors": len(errors), "error_statuses": sorted(set(errors)),
        "requests_per_second": round(len(latencies) / duration, 1),
        "p50_ms": round(median(latencies), 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 2) if latencies else None,
        "max_ms": round(max(latencies), 2) if latencies else None,
        "slow_requests": len(slow), "first_slow": slow[:10],  # (s into the level, ms): over 5x the p50
        "rss_mb_start": round(before["rss"] / 2 ** 20, 1), "rss_mb_end": round(rss(target.pid) / 2 ** 20, 1),
        "cpu_cores": {  # average busy cores over the level
            "server": round((cpu(target.pid) - before["server_cpu"]) / wall, 2),
            "postgres": round((cpu(postmaster) - before["postgres_cpu"]) / wall, 2),
            "client": round(client_cpu / wall, 2)},
        "texts_per_model_call": round(texts / model_calls, 2) if model_calls else None,
    }
    log(f"{target.name} {mode} {clients:>2} clients: {row['requests_per_second']:7.1f} req/s, p50"
        f" {row['p50_ms']} ms, p99 {row['p99_ms']} ms, max {row['max_ms']} ms, {row['errors']} errors, {row['texts_per_model_call']}"
        f" texts/model call, cores {row['cpu_cores']}, RSS {row['rss_mb_start']} -> {row['rss_mb_end']} MB,"
        f" {len(slow)} over 5x p50 {slow[:5]}")
    return row


def baseline(deployment: Any, targets: list[Target], count: int, block: int = 25) -> dict[str, Any]:
    """p50 of ``hook.search`` here and of one HTTP request at a time to each server (a keep-alive
    ``http.client`` connection): the same queries, in blocks of ``block`` queries taking turns (hook, each
    server, then the reverse order), ``count`` queries each; the first query of a block is not counted.

    Blocks, not single queries in turn: this process and the servers each run torch, whose idle OpenMP threads
    spin for a while after a forward pass; a query right after another process's measured ~1-1.5 ms slower (at
    10k rows: 13.1 / 15.8 ms interleaved query by query, 11.3 / 12.7 ms in runs of their own). A server's
    ``over_hook_ms`` is the median, over the rounds, of its block's p50 minus the hook's block p50 of the same
    round: the machine's speed drifts over minutes here (the bare model's queries/s moved by 20 % between runs),
    and pairs of neighbouring blocks see the same speed."""
    import http.client
    from urllib.parse import urlencode, urlsplit

    hook = deployment.hook()
    texts = queries()
    connections = {t.name: http.client.HTTPConnection("127.0.0.1", urlsplit(t.base_url).port, timeout=60)
                   for t in targets}
    paths = {t.name: urlsplit(t.base_url).path + SEARCH for t in targets}

    def run(name: str, text: str) -> float:
        """Milliseconds of one search (a request again on a new connection when the server had closed the
        idle one: uvicorn closes keep-alive connections idle for 5 s)."""
        started = time.perf_counter()
        if name == "hook.search":
            hook.search(JOB, text, num_results=10)
            return (time.perf_counter() - started) * 1000
        target = next(t for t in targets if t.name == name)
        path = f"{paths[name]}?" + urlencode({"job_name": JOB, "query": text, "mode": "vector", "limit": 10})
        try:
            connections[name].request("GET", path, headers={"Authorization": f"Bearer {target.token}"})
            response = connections[name].getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            connections[name].close()
            started = time.perf_counter()
            connections[name].request("GET", path, headers={"Authorization": f"Bearer {target.token}"})
            response = connections[name].getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"{name}: HTTP {response.status} {body[:300]!r}")
        timing = response.getheader("Server-Timing", "")
        if timing.startswith("search;dur="):
            inside[name].append(float(timing.removeprefix("search;dur=")))
        return elapsed

    names = ["hook.search", *[t.name for t in targets]]
    inside: dict[str, list[float]] = {t.name: [] for t in targets}  # the servers' time in hook.search
    for i in range(20):  # warm: model loaded, statements prepared, connections open
        for name in names:
            run(name, texts[i])
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds: list[dict[str, float]] = []
    for round_ in range(max(1, count // block)):
        medians = {}
        for name in (names if round_ % 2 == 0 else names[::-1]):
            block_times = [run(name, texts[(round_ * block + i + 20) % len(texts)]) for i in range(block + 1)][1:]
            times[name] += block_times
            medians[name] = median(block_times)
        rounds.append(medians)
    for connection in connections.values():
        connection.close()
    result = {name: {"p50_ms": round(median(v), 3), "p99_ms": round(percentile(v, 0.99), 3), "queries": len(v)}
              for name, v in times.items()}
    for t in targets:
        result[t.name]["over_hook_ms"] = round(median([r[t.name] - r["hook.search"] for r in rounds]), 3)
        result[t.name]["server_search_p50_ms"] = round(median(inside[t.name][20:]), 3)
    log(f"1 at a time ({len(times['hook.search'])} queries each, blocks of {block}): " + ", ".join(
        f"{name} p50 {r['p50_ms']} ms" + (f" (+{r['over_hook_ms']} ms; its hook.search"
                                          f" {r['server_search_p50_ms']} ms)" if "over_hook_ms" in r else "")
        for name, r in result.items()))
    return result


def model_ceiling(batch_sizes: tuple[int, ...] = (1, 4, 16, 32), seconds: float = 3.0) -> dict[int, float]:
    """Queries per second of the bare model (``LocalModel.embed``, this process) at each batch size: what the
    servers' model thread can do at most at the batch sizes it gets."""
    from airflow_vectorize.catalog import DEFAULT_TRANSFORMER
    from airflow_vectorize.models.local import load_model

    model, texts = load_model(DEFAULT_TRANSFORMER), queries()
    ceiling = {}
    for size in batch_sizes:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.embed(texts[done % 400:done % 400 + size])
            done += size
        ceiling[size] = round(done / (time.perf_counter() - started), 1)
    log("the bare model, queries/s by batch size: " + ", ".join(f"{k}: {v}" for k, v in ceiling.items()))
    return ceiling


def markdown(results: dict[str, Any]) -> str:
    """The levels of a run as a Markdown table, then each server's summary."""
    lines = ["| server | mode | clients | req/s | p50 ms | p99 ms | max ms | errors | texts / model call |"
             " busy cores: server, PostgreSQL, client | RSS MB start → end |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in results["levels"]:
        cores = r["cpu_cores"]
        lines.append(f"| {r['server']} | {r['mode']} | {r['clients']} | {r['requests_per_second']} | {r['p50_ms']} |"
                     f" {r['p99_ms']} | {r['max_ms']} | {r['errors']} | {r['texts_per_model_call']} |"
                     f" {cores['server']}, {cores['postgres']}, {cores['client']} | {r['rss_mb_start']} →"
                     f" {r['rss_mb_end']} |")
    one = results["one_at_a_time"]
    lines.append("")
    lines.append("One at a time, p50: " + ", ".join(
        f"{name} {r['p50_ms']} ms" + (f" (+{r['over_hook_ms']} ms over hook.search; its own hook.search"
                                      f" {r.get('server_search_p50_ms')} ms)" if "over_hook_ms" in r else "")
        for name, r in one.items()) + ". The bare model, queries/s by batch size: " + ", ".join(
        f"{k}: {v}" for k, v in results["model_queries_per_second"].items()) + ".")
    for target, summary in results["summary"].items():
        lines.append(f"{target}: {json.dumps(summary)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the project (100000)")
    parser.add_argument("--seconds", type=float, default=60, help="seconds per load level (60)")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts (1,8,32)")
    parser.add_argument("--baseline-queries", type=int, default=400,
                        help="queries of the 1-at-a-time p50, per side (400)")
    parser.add_argument("--pool-size", type=int, default=8, help="VECTORIZE_API_POOL_SIZE of both servers (8)")
    parser.add_argument("--report", nargs="?", const=ROOT / "bench" / "latest-api.json", type=Path,
                        help="print a results file as a Markdown table (default bench/latest-api.json); run nothing")
    add_output_arguments(parser, "api")
    args = parser.parse_args(argv)
    if args.report:
        print(markdown(json.loads(args.report.read_text())["measurements"]))
        return {}
    counts = [int(n) for n in args.clients.split(",") if n.strip()]
    prepare_environment()
    from scripts.api_server import ApiServer
    from scripts.deployment import AirflowDeployment

    started = time.perf_counter()
    # The api-server logs every request at INFO (a line per search): not what is measured.
    env = {"VECTORIZE_API_POOL_SIZE": str(args.pool_size), "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"}
    rows: list[dict[str, Any]] = []
    # torch_threads=None: the api-server's torch on every core, as the standalone server's (no task runs here)
    with AirflowDeployment("LocalExecutor", env=env, torch_threads=None) as deployment:
        prepare(deployment, args.rows)
        token = secrets.token_urlsafe(24)
        standalone = ApiServer({"postgres_default": deployment.env["AIRFLOW_CONN_POSTGRES_DEFAULT"]},
                               tokens=[token], env=env).start()
        try:
            standalone.wait(120)
            api_server = next(c for c in deployment.components if c.name == "api-server")
            targets = [Target("standalone", standalone.url, token, standalone.process.pid),
                       Target("mounted", deployment.api_url + "/vectorize", deployment.token(),
                              api_server.process.pid)]
            postmaster = int((deployment.postgres.data_dir / "postmaster.pid").read_text().split()[0])
            deadline = time.monotonic() + 120  # the standalone server's warm-up must not run under a measurement
            while targets[0].health()["warm_up"]["state"] == "running" and time.monotonic() < deadline:
                time.sleep(0.5)
            one_at_a_time = baseline(deployment, targets, args.baseline_queries)
            ceiling = model_ceiling()
            start_rss = {t.name: rss(t.pid) for t in targets}
            for target in targets:
                for clients in counts:
                    rows.append(level(target, clients, args.seconds, postmaster))
                rows.append(level(target, max(counts), args.seconds / 2, postmaster, mode="hybrid"))
            end_rss = {t.name: rss(t.pid) for t in targets}
        finally:
            standalone.stop()

    summary = {}
    for target in ("standalone", "mounted"):
        levels = {r["clients"]: r for r in rows if r["server"] == target and r["mode"] == "vector"}
        low, high = levels[min(counts)], levels[max(counts)]
        summary[target] = {
            "errors": sum(r["errors"] for r in rows if r["server"] == target),
            "http_p50_over_hook_ms": one_at_a_time[target]["over_hook_ms"],
            "throughput_gain": round(high["requests_per_second"] / low["requests_per_second"], 2),
            "p99_over_p50": {c: round(r["p99_ms"] / r["p50_ms"], 2) for c, r in levels.items()},
            "rss_growth": round(end_rss[target] / start_rss[target], 3),
        }
        log(f"{target}: {summary[target]}")
    meta = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "python -m bench.api " + " ".join(argv if argv is not None else sys.argv[1:]),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "load_average_after": os.getloadavg()},
            "wall_seconds": round(time.perf_counter() - started, 1)}
    results = {"one_at_a_time": one_at_a_time, "model_queries_per_second": ceiling, "levels": rows,
               "summary": summary}
    path = write_results(args, "api", meta, results)
    log(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
