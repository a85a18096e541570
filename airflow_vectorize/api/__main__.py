"""``python -m airflow_vectorize.api``: the API on its own, without Airflow's api-server.

Configuration (environment): ``VECTORIZE_API_TOKENS`` / ``VECTORIZE_API_READ_TOKENS`` (or ``*_FILE``) — the
bearer tokens, required; ``VECTORIZE_API_CONN_IDS`` — the Airflow connections it serves (default
``postgres_default``), themselves from ``AIRFLOW_CONN_<ID>`` variables or Airflow's secrets backend;
``VECTORIZE_API_POOL_SIZE`` — database sessions per connection and process (default 8);
``VECTORIZE_API_WARM_UP=0`` — no warm-up at start (``airflow_vectorize.api.warm_up``). Stateless: run as many
replicas as needed behind a load balancer (``--workers`` processes each).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_vectorize.api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="processes (each loads the models it uses once)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    from airflow_vectorize.api.app import pool_size
    from airflow_vectorize.api.auth import TokenAuth

    try:
        TokenAuth.from_environment()
        pool_size()
    except (ValueError, OSError) as error:
        print(f"airflow-vectorize API: {error}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run("airflow_vectorize.api.app:standalone_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
