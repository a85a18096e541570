"""A real HTTP server for remote-model tests: OpenAI-compatible embeddings with the real model's vectors, and
chat completions forwarded to a real chat server — recording every request and misbehaving on request."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np


@dataclass
class Received:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    client_port: int
    started: float
    ended: float = 0.0
    status: int | None = None


@dataclass
class Behaviour:
    """What the server does with the next requests: a queue of one-shot faults, then ``default``."""

    faults: deque = field(default_factory=deque)
    default: tuple = ("ok",)
    max_input_bytes: int | None = None  # reject (HTTP 400) any input longer than this, as OpenAI does
    reject_message: str = "This model's maximum context length is exceeded"  # the message of that 400
    delay: float = 0.0  # every answer waits this long


class EmbeddingServer:
    """``POST /v1/embeddings`` on 127.0.0.1 with the real model's vectors, and scripted faults.

    Faults: ("status", code, retry_after or None, message), ("slow", seconds), ("trickle", seconds: the answer
    a piece at a time), ("drop",), ("bad_json",), ("error_200", message: an error body with HTTP 200),
    ("chat_answer", content, finish_reason: a chat completion as scripted),
    ("wrong_dims", n), ("tiled", n), ("wrong_count",), ("scaled", factor), ("mixed_dims",: the first vector
    cut to 100), ("empty_base64",), ("echo_key",: the key as the first value of every vector), ("raw_200",
    text: HTTP 200 with a body that is not JSON). ``requests`` records every request;
    ``in_flight_peak`` the most requests answered at once.
    """

    def __init__(self, model, api_key: str = "sk-test-0123456789abcdef") -> None:
        self.model = model
        self.api_key = api_key
        self.behaviour = Behaviour()
        self.chat_upstream: str | None = None  # base URL of a real chat server to forward chat requests to
        self.requests: list[Received] = []
        self.in_flight = self.in_flight_peak = 0
        self._lock = threading.Lock()
        self._sockets: set = set()  # the open connections, shut when the server closes
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def reset(self, **behaviour: Any) -> None:
        faults = deque(behaviour.pop("faults", ()))
        self.behaviour = Behaviour(faults=faults, **behaviour)
        self.requests = []
        self.in_flight_peak = 0

    def close(self) -> None:
        """Stop listening and shut every open connection, as a host that went away."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def inputs(self) -> list[str]:
        """Every input text of every successfully answered request, in arrival order."""
        return [text for r in self.requests if r.status == 200 for text in r.body.get("input", [])]

    def _answer(self, handler: BaseHTTPRequestHandler, received: Received) -> None:
        behaviour = self.behaviour
        with self._lock:
            action = behaviour.faults.popleft() if behaviour.faults else behaviour.default
        if handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._send(handler, 401, {"error": {"message": "Incorrect API key provided: "
                                                       f"{handler.headers.get('Authorization', '')[7:]}"}})
        kind = action[0]
        if behaviour.delay:
            time.sleep(behaviour.delay)
        if kind == "status":
            _, code, retry_after, message = action
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            return self._send(handler, code, {"error": {"message": message}}, headers)
        if kind == "slow":
            time.sleep(action[1])
        if kind == "drop":  # the connection is closed before any answer
            handler.close_connection = True
            return
        if kind == "raw_200":
            return self._send_raw(handler, 200, action[1].encode())
        if kind == "bad_json":
            return self._send_raw(handler, 200, b'{"object": "list", "data": [{"embedd')
        if kind == "error_200":  # an error answered with HTTP 200 (some proxies)
            return self._send(handler, 200, {"error": {"message": action[1]}})
        if kind == "chat_answer":  # a chat completion as given: ("chat_answer", content, finish_reason)
            return self._send(handler, 200, {
                "id": "chatcmpl-scripted", "object": "chat.completion", "model": received.body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": action[1]},
                             "finish_reason": action[2]}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        if received.path.endswith("/chat/completions"):
            return self._forward_chat(handler, received)
        texts = received.body.get("input", [])
        if received.body.get("model") != "MiniLM":
            return self._send(handler, 404, {"error": {"message": f"model {received.body.get('model')!r} not found"}})
        too_long = [t for t in texts if behaviour.max_input_bytes and len(t.encode()) > behaviour.max_input_bytes]
        if too_long:
            return self._send(handler, 400, {"error": {"message": behaviour.reject_message}})
        vectors = self.model.encode(texts, convert_to_numpy=True, show_progress_bar=False)
        if kind == "wrong_dims":
            vectors = vectors[:, : action[1]]
        if kind == "tiled":  # a wider model's vectors: the real ones repeated to action[1] dimensions
            vectors = np.tile(vectors, (1, -(-action[1] // vectors.shape[1])))[:, : action[1]]
        if kind == "wrong_count":
            vectors = vectors[1:]
        if kind == "scaled":
            vectors = vectors * action[1]
        rows = list(vectors)
        if kind == "mixed_dims":
            rows[0] = rows[0][:100]
        as_base64 = received.body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if as_base64 else v.tolist()}
                for i, v in enumerate(rows)]
        for item in data:
            if kind == "empty_base64":
                item["embedding"] = ""
            if kind == "echo_key":  # a proxy that echoes the request's header into its answer
                item["embedding"] = [self.api_key, *item["embedding"][1:]] if isinstance(item["embedding"], list) \
                    else [self.api_key, 0.5]
        data.reverse()  # servers may answer out of order: the index says where each belongs
        if kind == "indexes":  # indexes that do not say it: each half of the batch numbered from 0, one index
            half = (len(data) + 1) // 2  # twice, or numbers as text (which sort "10" before "2")
            for i, item in enumerate(data):
                item["index"] = {"halves": i % half, "repeated": max(item["index"], 1),
                                 "text": str(item["index"])}[action[1]]
        answer = {"object": "list", "data": data, "model": "MiniLM", "usage": {"prompt_tokens": 0, "total_tokens": 0}}
        if kind == "trickle":  # headers at once, then the body a piece at a time over action[1] seconds
            return self._send_raw(handler, 200, json.dumps(answer).encode(), pieces=40, over=action[1])
        self._send(handler, 200, answer)

    def _forward_chat(self, handler: BaseHTTPRequestHandler, received: Received) -> None:
        """Chat requests go to the real chat server (``chat_upstream``), its answer comes back unchanged."""
        request = urllib.request.Request(self.chat_upstream + "/v1/chat/completions",
                                         data=json.dumps(received.body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        self._send_raw(handler, status, payload)

    @staticmethod
    def _send(handler, status: int, body: dict, headers: dict | None = None) -> None:
        EmbeddingServer._send_raw(handler, status, json.dumps(body).encode(), headers)

    @staticmethod
    def _send_raw(handler, status: int, payload: bytes, headers: dict | None = None, pieces: int = 1,
                  over: float = 0.0) -> None:
        handler.sent_status = status
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        size = -(-len(payload) // pieces)
        try:
            for start in range(0, len(payload), size):
                handler.wfile.write(payload[start:start + size])
                if pieces > 1:
                    handler.wfile.flush()
                    time.sleep(over / pieces)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server._sockets.add(self.connection)

            def finish(self) -> None:
                with server._lock:
                    server._sockets.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                received = Received(self.path, dict(self.headers), body, self.client_address[1], time.monotonic())
                with server._lock:
                    server.requests.append(received)
                    server.in_flight += 1
                    server.in_flight_peak = max(server.in_flight_peak, server.in_flight)
                try:
                    server._answer(self, received)
                finally:
                    received.ended = time.monotonic()
                    received.status = getattr(self, "sent_status", None)
                    with server._lock:
                        server.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
