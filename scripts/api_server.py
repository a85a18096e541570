"""The standalone Vectorize API (``python -m airflow_vectorize.api``) in a child process, for tests, the demo
and the bench: its own connections (``AIRFLOW_CONN_*``) and tokens, a throw-away ``AIRFLOW_HOME``."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Mapping

from scripts.server_process import ServerProcess


class ApiServer(ServerProcess):
    """``connections``: conn_id -> URI or JSON connection, all of them served (``VECTORIZE_API_CONN_IDS``);
    ``tokens`` may write, ``read_tokens`` only read. ``wait`` returns once ``/openapi.json`` answers."""

    name = "vectorize-api"
    ready_path = "/openapi.json"

    def __init__(self, connections: Mapping[str, str | dict], tokens: list[str], read_tokens: list[str] = (),
                 env: Mapping[str, str] | None = None, workers: int = 1) -> None:
        super().__init__()
        self.connections = dict(connections)
        self.tokens, self.read_tokens = list(tokens), list(read_tokens)
        self.extra_env = dict(env or {})
        self.workers = workers

    def environment(self) -> dict[str, str]:
        env = {f"AIRFLOW_CONN_{conn_id.upper()}": value if isinstance(value, str) else json.dumps(value)
               for conn_id, value in self.connections.items()}
        env.update({
            "AIRFLOW_HOME": tempfile.mkdtemp(prefix="vectorize-api-home-"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "VECTORIZE_API_CONN_IDS": ",".join(self.connections),
            "VECTORIZE_API_TOKENS": ",".join(self.tokens),
            "VECTORIZE_API_READ_TOKENS": ",".join(self.read_tokens),
        })
        env.update(self.extra_env)
        return env

    def start(self) -> ApiServer:
        self.launch([sys.executable, "-m", "airflow_vectorize.api", "--host", "127.0.0.1", "--port", str(self.port),
                     "--workers", str(self.workers), "--log-level", "warning"], self.environment())
        return self
