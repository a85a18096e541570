"""Portkey's open-source AI gateway (npm ``@portkey-ai/gateway`` 1.9.8, on Node) for tests and benchmarks of
``portkey/<provider>/<model>`` models. ``make`` installs it in ``.portkey/`` (1.15 answers 500 on Node 20)."""

from __future__ import annotations

import shutil

from scripts.server_process import ROOT, ServerProcess

START_SERVER = ROOT / ".portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"

__all__ = ["PortkeyGateway"]


class PortkeyGateway(ServerProcess):
    """``start`` returns at once; ``wait`` blocks until ``GET /`` answers (~1 s). Its OpenAI-protocol API
    is ``api_url`` (``<url>/v1``)."""

    name = "portkey-gateway"
    ready_path = "/"

    @property
    def api_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> PortkeyGateway:
        node = shutil.which("node")
        if node is None or not START_SERVER.exists():
            raise RuntimeError(f"{START_SERVER} or node is missing: run `make portkey` (npm, into .portkey/)")
        # --headless: no log UI; the port is start-server.js's --port= (8787 by default)
        self.launch([node, str(START_SERVER), f"--port={self.port}", "--headless"],
                    {"NODE_ENV": "production"})
        return self
