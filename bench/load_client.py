"""``python -m bench.load_client``: N HTTP clients sending searches back to back for S seconds; JSON on stdout.

A process of its own (its CPU and GIL apart from the bench's), each client a thread with one keep-alive
connection (``http.client``: little CPU per request), each request a different query (cycling through
``--queries``, a JSON list). A request counts as an error unless it answers 200 with a JSON array; a connection
that fails is counted and opened again.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlencode, urlsplit


def client(number: int, args: argparse.Namespace, queries: list[str], deadline: float, start: threading.Event,
           results: list[tuple[float, float, int]]) -> None:
    url = urlsplit(args.url)
    headers = {"Authorization": f"Bearer {args.token}"}
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    start.wait()
    i = number
    while True:
        sent = time.perf_counter()
        if sent >= deadline:
            break
        params = {"job_name": args.job_name, "query": queries[i % len(queries)], "limit": args.limit,
                  "mode": args.mode, "conn_id": args.conn_id}
        status = 0
        try:
            connection.request("GET", f"{url.path}?{urlencode(params)}", headers=headers)
            response = connection.getresponse()
            body = response.read()
            status = response.status
            if status == 200 and not body.startswith(b"["):
                status = -2  # not a JSON array
        except (OSError, http.client.HTTPException):
            status = -1
            connection.close()
            connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        results.append((sent, time.perf_counter() - sent, status))
        i += args.clients
    connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load_client")
    parser.add_argument("--url", required=True, help="the search route, e.g. http://127.0.0.1:8000/api/v1/search")
    parser.add_argument("--token", required=True)
    parser.add_argument("--job-name", required=True)
    parser.add_argument("--queries", required=True, help="a JSON list of query texts")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--mode", default="vector")
    parser.add_argument("--conn-id", default="postgres_default")
    args = parser.parse_args(argv)
    queries = json.loads(args.queries)
    results: list[tuple[float, float, int]] = []
    start = threading.Event()
    begin = time.perf_counter() + 0.2
    deadline = begin + args.seconds
    threads = [threading.Thread(target=client, args=(n, args, queries, deadline, start, results))
               for n in range(args.clients)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, begin - time.perf_counter()))
    start.set()
    for thread in threads:
        thread.join()
    json.dump({"begin": begin, "end": deadline, "requests": [[round(s - begin, 6), round(d, 6), c]
                                                            for s, d, c in results]}, sys.stdout)


if __name__ == "__main__":
    main()
