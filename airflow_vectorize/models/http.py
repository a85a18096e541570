"""What remote embedding and chat models share: an endpoint (an Airflow connection, read by
:mod:`.connection`), one pooled HTTP client per process, and retries with exponential backoff and jitter
that honour ``Retry-After``.

The API key is read from the connection when a model is built (and again when the server refuses it or
cannot be reached: :mod:`.connection`) and sent as a bearer header; it is never stored, logged, or put in an
error message: every text of a server or an error is masked before it is cut (``Endpoint.quote``).
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from airflow_vectorize.exceptions import (
    InvalidInputError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelInputRejectedError,
    ModelNotFoundError,
    ModelRateLimitError,
    ModelRequestError,
    ModelResponseError,
    ModelTimeoutError,
)

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
DEFAULT_MAX_RETRY_AFTER = 120.0  # seconds; the extra max_retry_after
_client_lock = threading.Lock()
_client = None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is retried (429, 5xx, timeouts, dropped connections), and the
    longest ``Retry-After`` waited for (a server asking for longer fails the request at once)."""

    max_retries: int = 6
    initial_delay: float = 0.5
    max_delay: float = 30.0
    timeout: float = 60.0
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER

    @classmethod
    def from_options(cls, options: dict[str, Any], conn_id: str) -> RetryPolicy:
        """The policy the extras of connection ``conn_id`` ask for (``max_retries``, ``timeout``,
        ``retry_*_delay``, ``max_retry_after``); InvalidInputError naming the connection and the extra."""
        values = {}
        for field_name, extra in (("max_retries", "max_retries"), ("timeout", "timeout"),
                                  ("initial_delay", "retry_initial_delay"), ("max_delay", "retry_max_delay"),
                                  ("max_retry_after", "max_retry_after")):
            value = options.get(extra, getattr(cls, field_name))
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = -1.0
            if (isinstance(value, bool) or not math.isfinite(number) or number < 0
                    or (field_name == "timeout" and number == 0)):
                raise InvalidInputError(
                    f"the extra {extra!r} of connection {conn_id!r} must be a finite number >= 0"
                    f"{' (> 0)' if field_name == 'timeout' else ''}, got {value!r}")
            values[field_name] = int(number) if field_name == "max_retries" else number
        return cls(**values)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff; a server's ``Retry-After`` (within ``max_retry_after``: the caller
        checks) is waited for at least."""
        if retry_after is None:
            return random.uniform(0, min(self.max_delay, self.initial_delay * 2 ** attempt))
        return retry_after + random.uniform(0, self.initial_delay)


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible API as an Airflow connection describes it; ``reload`` reads the connection again
    (into an equal endpoint unless it changed)."""

    conn_id: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    options: dict[str, Any] = field(default_factory=dict)
    reload: Callable[[], Endpoint] | None = field(default=None, repr=False, compare=False)

    @property
    def display_url(self) -> str:
        """The base URL without credentials, for messages (an IPv6 host in brackets)."""
        return display_url(self.base_url)

    def mask(self, text: str) -> str:
        """``text`` with every secret of the connection replaced by ``***``."""
        for secret in (self.api_key, *self.headers.values()):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def quote(self, text: Any, limit: int = 500) -> str:
        """``text`` (a server's message, an error) for a message: masked whole, then cut to ``limit``
        characters; cut first, a secret the cut split would no longer be found."""
        masked = self.mask(str(text)).strip()
        return masked if len(masked) <= limit else masked[:limit] + "…"


def display_url(url: str) -> str:
    """``url`` without its userinfo (a key may be written there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def client():
    """The process's HTTP client (keep-alive connection pool shared by every model and thread)."""
    global _client
    with _client_lock:
        if _client is None:
            import httpx

            _client = httpx.Client(limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
                                   follow_redirects=True)
        return _client


def post_json(
    target: Endpoint, path: str, payload: dict[str, Any], *, model: str, policy: RetryPolicy
) -> dict[str, Any]:
    """POST ``payload`` to ``base_url + path``; the decoded JSON object of a 2xx answer.

    Retried: 429, 408/409/425, 5xx, timeouts, dropped connections, and a 2xx whose body is not JSON. Not
    retried: a host that cannot be reached (refused, unknown name: ModelConnectionError), 401/403
    (ModelAuthenticationError), 404 (ModelNotFoundError), other 4xx (ModelRequestError), and a
    ``Retry-After`` longer than ``policy.max_retry_after`` (ModelRateLimitError for a 429). Every error names
    the connection, the model and the server's message.
    """
    import httpx

    url = target.base_url + path
    headers = {"Content-Type": "application/json", **target.headers}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    where = f"connection {target.conn_id!r} ({target.display_url}), model {model!r}"
    for attempt in range(policy.max_retries + 1):
        retry_after = None
        try:
            response = _post_within(url, payload, headers, policy.timeout)
        except httpx.TimeoutException as error:
            failure = f"no answer within {policy.timeout:g} s ({type(error).__name__})"
            final = ModelTimeoutError
        except httpx.ConnectError as error:  # refused, unknown host name: no retry makes it reachable
            raise ModelConnectionError(
                f"{where}: the host cannot be reached ({type(error).__name__}: {target.quote(error)}). Check the"
                f" host of connection {target.conn_id!r} and that the server is up and reachable from here"
            ) from error
        except httpx.TransportError as error:
            failure = f"{type(error).__name__}: {target.quote(error)}"
            final = ModelConnectionError
        else:
            body = _json_object(response) if 200 <= response.status_code < 300 else None
            if body is not None:
                return body
            failure, final, retry_after = _retryable_failure(target, where, path, response)
            if retry_after is not None and retry_after > policy.max_retry_after:
                raise final(
                    f"{where}: {failure}; the server asks to wait {retry_after:.0f} s (Retry-After) before the"
                    f" next request, longer than the {policy.max_retry_after:g} s this connection waits: not"
                    f" retried. The extra 'max_retry_after' of connection {target.conn_id!r} raises the limit"
                )
        if attempt == policy.max_retries:
            attempts = policy.max_retries + 1
            hint = (" Check that the host is reachable from the worker." if final is ModelConnectionError
                    else " Lower concurrency or raise max_retries if the server is rate limiting.")
            raise final(f"{where}: failed after {attempts} attempt(s); last error: {failure}.{hint}")
        delay = policy.delay(attempt, retry_after)
        log.warning("%s: %s; retry %d of %d in %.1f s", where, failure, attempt + 1, policy.max_retries, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


def _post_within(url: str, payload: dict[str, Any], headers: dict[str, str], timeout: float):
    """The answer to a POST, read whole within ``timeout`` seconds: httpx's timeout bounds each read, and a
    server that trickles its answer a byte at a time would never reach it."""
    import httpx

    deadline = time.monotonic() + timeout
    with client().stream("POST", url, json=payload, headers=headers, timeout=timeout) as streamed:
        body = bytearray()
        for chunk in streamed.iter_bytes():  # decoded (gzip...): the answer below has no encoding
            body += chunk
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(f"the answer took over {timeout:g} s", request=streamed.request)
    return httpx.Response(streamed.status_code, content=bytes(body), request=streamed.request,
                          headers=[(k, v) for k, v in streamed.headers.items() if k.lower() != "content-encoding"])


def _json_object(response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _retryable_failure(target: Endpoint, where: str, path: str, response) -> tuple[str, type, float | None]:
    """(what failed, the error to raise if it keeps failing, Retry-After) of a failed answer; a failure that
    no retry can mend (401/403, 404, other 4xx) is raised at once."""
    status = response.status_code
    if 200 <= status < 300:
        return (f"HTTP {status} with a body that is not a JSON object: {target.quote(response.text, 300)}",
                ModelResponseError, None)
    message = target.quote(_server_message(response))
    if status in (401, 403):
        raise ModelAuthenticationError(
            f"{where}: HTTP {status}, the server refused the credentials: {message}. Check the API key"
            f" (the password of connection {target.conn_id!r}) and its access to the model"
        )
    if status == 404:
        raise ModelNotFoundError(
            f"{where}: HTTP 404 for {target.display_url}{path}: {message}. Check the model name and"
            " the connection's host (the base URL, e.g. ending in /v1 for OpenAI's API)"
        )
    if status in RETRY_STATUSES or status >= 500:
        final = ModelRateLimitError if status == 429 else ModelRequestError
        return f"HTTP {status}: {message}", final, _retry_after(response.headers.get("Retry-After"))
    rejected = ModelInputRejectedError if status in (400, 413, 422) else ModelRequestError
    raise rejected(f"{where}: HTTP {status}, the server rejected the request: {message}")


def _server_message(response) -> str:
    """The whole error message of an OpenAI-style body ({"error": {"message"}}, {"detail"}), else the text;
    not cut (``Endpoint.quote`` masks it first)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("error", "detail", "message"):
            if body.get(key):
                return str(body[key])
    return str(body)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
