"""Real HTTP servers that speak Cohere's embed API v2 and Voyage AI's embeddings API as their references
publish them — request validation, caps, bearer keys, error bodies, answer shapes — with the vectors of a real
local model (the raw model: an ``input_type`` is recorded, not applied). Each records every request and
answers scripted faults.

Cohere (docs.cohere.com/reference/embed, /reference/errors): ``POST /v2/embed``; errors ``{"id", "message"}``;
unknown model 404. Voyage (docs.voyageai.com/reference/embeddings-api, /docs/error-codes): ``POST
/v1/embeddings``; errors ``{"detail"}``; an unknown model, like any invalid parameter, 400.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar


@dataclass
class Received:
    """One request as the server saw it, and the status it was answered with."""

    path: str
    headers: dict[str, str]
    body: Any
    started: float
    status: int | None = None


class Refused(Exception):
    """An error answer: HTTP ``status`` with the provider's error body for ``message``."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


class ProtocolServer:
    """The shared part: HTTP on 127.0.0.1 (random port), the bearer key, recording, scripted faults.

    ``reset(faults=[(status, retry_after or None, message), ...], reject="...")``: the next requests are
    answered with those errors, one each; a text containing ``reject`` is refused (HTTP 400) as the
    provider refuses an input it cannot embed.
    """

    path = ""  # the API's path; ``url`` is what a connection's host is set to

    def __init__(self, model, api_key: str) -> None:
        self.model = model  # airflow_vectorize.models.local.LocalModel
        self.api_key = api_key
        self.requests: list[Received] = []
        self.faults: deque = deque()
        self.reject: str | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self, faults=(), reject: str | None = None) -> None:
        self.faults, self.reject, self.requests = deque(faults), reject, []

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answered(self) -> list[Received]:
        """The requests answered with vectors."""
        return [r for r in self.requests if r.status == 200]

    # -- per provider ------------------------------------------------------------------------------
    def error_body(self, message: str) -> dict[str, Any]:
        raise NotImplementedError

    def answer(self, body: Any) -> dict[str, Any]:
        """The answer to a valid request; raises Refused for an invalid one."""
        raise NotImplementedError

    # -- shared checks -----------------------------------------------------------------------------
    def check_key(self, authorization: str | None) -> None:
        if authorization != f"Bearer {self.api_key}":
            raise Refused(401, self.bad_key_message(authorization))

    def bad_key_message(self, authorization: str | None) -> str:
        raise NotImplementedError

    def embed(self, texts: list[str]) -> list[list[float]]:
        if self.reject and any(self.reject in text for text in texts):
            raise Refused(400, self.rejected_message())
        return self.model.embed(texts).tolist()

    def rejected_message(self) -> str:
        raise NotImplementedError

    def _handle(self, handler: BaseHTTPRequestHandler, received: Received) -> tuple[int, dict, dict]:
        try:
            if received.path != self.path:
                raise Refused(404, f"{received.path} not found")
            self.check_key(handler.headers.get("Authorization"))
            with self._lock:
                fault = self.faults.popleft() if self.faults else None
            if fault is not None:
                status, retry_after, message = fault
                raise Refused(status, message, retry_after)
            if not isinstance(received.body, dict):
                raise Refused(400, "invalid request: the body must be a JSON object")
            return 200, self.answer(received.body), {}
        except Refused as refused:
            headers = {"Retry-After": f"{refused.retry_after:g}"} if refused.retry_after is not None else {}
            return refused.status, self.error_body(refused.message), headers

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                received = Received(self.path, dict(self.headers), body, time.monotonic())
                with server._lock:
                    server.requests.append(received)
                status, answer, headers = server._handle(self, received)
                received.status = status
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def _texts(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise Refused(400, f"invalid request: {field} must be a non-empty list of strings")
    return value


class CohereServer(ProtocolServer):
    """Cohere's ``POST /v2/embed``: model, input_type (required), texts (1-96), embedding_types, truncate,
    output_dimension (embed-v4 models); answers ``{"id", "embeddings": {"float": [...]}, "texts", "meta",
    "response_type"}``."""

    path = "/v2/embed"
    MODELS = ("embed-english-v3.0", "embed-multilingual-v3.0", "embed-english-light-v3.0",
              "embed-multilingual-light-v3.0", "embed-v4.0")
    INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")
    EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
    MAX_TEXTS = 96

    def __init__(self, model, api_key: str = "co-test-key-5f3a9c1e7b") -> None:
        super().__init__(model, api_key)

    def error_body(self, message: str) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "message": message}

    def bad_key_message(self, authorization: str | None) -> str:
        return "no api key supplied" if not authorization else "invalid api token"

    def rejected_message(self) -> str:
        return "invalid request: the input could not be embedded"

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Refused(400, "invalid request: model must be provided")
        if model not in self.MODELS:
            raise Refused(404, f"model '{model}' not found, make sure the correct model ID was used and that you"
                               " have access to the model.")
        if body.get("input_type") not in self.INPUT_TYPES:
            raise Refused(400, "invalid request: valid input_type must be provided with the provided model")
        texts = _texts(body.get("texts"), "texts")
        if len(texts) > self.MAX_TEXTS:
            raise Refused(400, f"invalid request: total number of texts must be at most {self.MAX_TEXTS}"
                               f" - received {len(texts)}")
        types = body.get("embedding_types", ["float"])
        if not isinstance(types, list) or not types or not set(types) <= set(self.EMBEDDING_TYPES):
            raise Refused(400, f"invalid request: embedding_types must be a list of {', '.join(self.EMBEDDING_TYPES)}")
        if types != ["float"]:
            raise Refused(400, "invalid request: this test server answers float embeddings only")
        if body.get("truncate", "END") not in ("NONE", "START", "END"):
            raise Refused(400, "invalid request: truncate must be one of NONE, START, END")
        if "output_dimension" in body and (model != "embed-v4.0" or body["output_dimension"] not in (256, 512, 1024, 1536)):
            raise Refused(400, f"invalid request: output_dimension {body['output_dimension']!r} is not supported"
                               f" for model '{model}'")
        tokens = sum(self.model.count_tokens(text) for text in texts)
        return {"id": str(uuid.uuid4()), "embeddings": {"float": self.embed(texts)}, "texts": texts,
                "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
                "response_type": "embeddings_by_type"}


class VoyageServer(ProtocolServer):
    """Voyage's ``POST /v1/embeddings``: input (1-1,000 texts, within the model's total tokens), model,
    input_type (null, query, document), truncation, output_dimension; answers OpenAI-shaped
    ``{"object": "list", "data": [{"object", "embedding", "index"}], "model", "usage"}``."""

    path = "/v1/embeddings"
    MODELS: ClassVar[dict[str, int]] = {  # model -> total tokens per request
        "voyage-3.5": 320_000, "voyage-3.5-lite": 1_000_000, "voyage-3-large": 120_000, "voyage-code-3": 120_000}
    MAX_INPUTS = 1000

    def __init__(self, model, api_key: str = "pa-test-key-8d2e4b6f0a") -> None:
        super().__init__(model, api_key)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def error_body(self, message: str) -> dict[str, Any]:
        return {"detail": message}

    def bad_key_message(self, authorization: str | None) -> str:
        return ("No API key provided." if not authorization else
                "Provided API key is invalid. Please check your API key at https://dash.voyageai.com.")

    def rejected_message(self) -> str:
        return "Request failed: the input could not be embedded."

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        if model not in self.MODELS:
            raise Refused(400, f"Model {model} is not supported. Supported models are {', '.join(self.MODELS)}.")
        value = body.get("input")
        texts = [value] if isinstance(value, str) else _texts(value, "input")
        if len(texts) > self.MAX_INPUTS:
            raise Refused(400, f"The batch size limit is {self.MAX_INPUTS}. Your batch size is {len(texts)}.")
        if body.get("input_type") not in (None, "query", "document"):
            raise Refused(400, "Value error, input_type must be one of None, 'query', 'document'.")
        if not isinstance(body.get("truncation", True), bool):
            raise Refused(400, "truncation must be a boolean")
        if "output_dimension" in body and body["output_dimension"] not in (None, 256, 512, 1024, 2048):
            raise Refused(400, f"output_dimension {body['output_dimension']!r} is not supported for {model}")
        tokens = sum(self.model.count_tokens(text) for text in texts)
        if tokens > self.MODELS[model]:
            raise Refused(400, f"The max allowed tokens per submitted batch is {self.MODELS[model]}. Your batch has"
                               f" {tokens} tokens after truncation. Please lower the number of tokens in the batch.")
        data = [{"object": "embedding", "embedding": vector, "index": i} for i, vector in enumerate(self.embed(texts))]
        data.reverse()  # the index says where each belongs
        return {"object": "list", "data": data, "model": model, "usage": {"total_tokens": tokens}}
