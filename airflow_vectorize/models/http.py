"""What remote embedding and chat models share: an Airflow connection as an endpoint, one pooled HTTP
client per process, and retries with exponential backoff and jitter that honour ``Retry-After``.

The API key is read from the connection when a request is made and sent as a bearer header; it is never
stored, logged, or put in an error message (a server that echoes it gets it masked).
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from airflow_vectorize.exceptions import (
    InvalidInputError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelInputRejectedError,
    ModelNotFoundError,
    ModelRequestError,
    ModelResponseError,
    ModelTimeoutError,
)

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 120.0
_client_lock = threading.Lock()
_client = None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is retried (429, 5xx, timeouts, dropped connections)."""

    max_retries: int = 6
    initial_delay: float = 0.5
    max_delay: float = 30.0
    timeout: float = 60.0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RetryPolicy:
        """The policy a connection's extras ask for (``max_retries``, ``timeout``, ``retry_*_delay``)."""
        values = {}
        for field_name, extra in (("max_retries", "max_retries"), ("timeout", "timeout"),
                                  ("initial_delay", "retry_initial_delay"), ("max_delay", "retry_max_delay")):
            value = options.get(extra, getattr(cls, field_name))
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = -1.0
            if isinstance(value, bool) or number < 0 or (field_name == "timeout" and number == 0):
                raise InvalidInputError(f"the connection extra {extra!r} must be a number >= 0"
                                        f"{' (> 0)' if field_name == 'timeout' else ''}, got {value!r}")
            values[field_name] = int(number) if field_name == "max_retries" else number
        return cls(**values)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff; a server's ``Retry-After`` is waited for at least."""
        backoff = random.uniform(0, min(self.max_delay, self.initial_delay * 2 ** attempt))
        if retry_after is None:
            return backoff
        return min(retry_after, MAX_RETRY_AFTER_SECONDS) + random.uniform(0, self.initial_delay)


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible API as an Airflow connection describes it."""

    conn_id: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def display_url(self) -> str:
        """The base URL without credentials, for messages."""
        parts = urlsplit(self.base_url)
        return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))

    def mask(self, text: str) -> str:
        """``text`` with every secret of the connection replaced by ``***``."""
        for secret in (self.api_key, *self.headers.values()):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text


# The connection types a model connection may have: the types of the providers' connections (openai: OpenAI,
# Ollama and any OpenAI-compatible server; cohere, voyage, portkey), and Airflow's HTTP connection (a server
# written as http://host:port; its host is then required). Any other (a database's, an SSH host's...) is
# refused: its password is no model's key, and must never be sent as one.
MODEL_CONN_TYPES = ("openai", "cohere", "voyage", "portkey", "http")


def endpoint(conn_id: str, default_url: str, *, provider: str, conn_type: str = "openai") -> Endpoint:
    """The Airflow connection ``conn_id`` as an endpoint: host (or extra ``base_url``) is the base URL,
    password the API key; extra ``headers`` are sent with every request, other extras are options.

    The connection must be of a model connection type (``MODEL_CONN_TYPES``), else InvalidInputError (naming
    the connection and its type, never a secret); only a connection of the provider's own type (``conn_type``)
    without a host means the provider's ``default_url``: any other needs its host.
    """
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as error:  # AirflowNotFoundException, or the task runtime's own error type
        raise ModelConnectionError(
            f"the Airflow connection {conn_id!r} for the {provider} provider is not defined ({type(error).__name__})."
            f" Add it in the UI or set AIRFLOW_CONN_{conn_id.upper()}='{{\"conn_type\": \"{conn_type}\","
            f" \"host\": \"<base URL>\", \"password\": \"<API key>\"}}', or pass model_conn_id"
        ) from error
    if conn.conn_type not in MODEL_CONN_TYPES:
        raise InvalidInputError(
            f"the Airflow connection {conn_id!r} is of type {conn.conn_type!r}, not a model connection: the"
            f" {provider} provider takes a connection of type {conn_type!r} (model connection types:"
            f" {', '.join(MODEL_CONN_TYPES)}), whose password is the model's API key and host its base URL"
        )
    extra = dict(conn.extra_dejson or {})
    client_kwargs = extra.pop("openai_client_kwargs", None) or {}  # apache-airflow-providers-openai's spelling
    headers = {str(k): str(v) for k, v in (extra.pop("headers", None) or client_kwargs.get("default_headers")
                                           or {}).items()}
    url = extra.pop("base_url", None) or client_kwargs.get("base_url") or conn.host
    if url and conn.conn_type == "http" and "://" not in url:  # as Airflow's HttpHook: its schema is the scheme
        url = f"{conn.schema if conn.schema in ('http', 'https') else 'http'}://{url}{f':{conn.port}' if conn.port else ''}"
    if not url and default_url and conn.conn_type != conn_type:
        raise InvalidInputError(
            f"the Airflow connection {conn_id!r} (type {conn.conn_type!r}) has no host: only a {conn_type!r}"
            f" connection without one reaches the {provider} provider's {default_url}; set the host to the base"
            f" URL of the server it is meant for"
        )
    return Endpoint(
        conn_id=conn_id,
        base_url=_base_url(url, conn.port, conn.schema) if url else default_url,
        api_key=conn.password or client_kwargs.get("api_key") or extra.pop("api_key", None),
        headers=headers,
        options=extra,
    )


def _base_url(host: str, port: int | None, path: str | None) -> str:
    """A connection's host as a base URL: kept as given when it has a scheme, else built from its parts."""
    if "://" in host:
        return host.rstrip("/")
    scheme = "http" if host in ("localhost", "127.0.0.1", "::1") else "https"
    return f"{scheme}://{host}{f':{port}' if port else ''}{'/' + path.strip('/') if path else ''}"


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

    Retried: 429, 408/409/425, 5xx, timeouts, dropped or refused connections, and a 2xx whose body is not
    JSON. Not retried: 401/403 (ModelAuthenticationError), 404 (ModelNotFoundError), other 4xx
    (ModelRequestError). Every error names the connection, the model and the server's message.
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
        except httpx.TransportError as error:
            failure = f"{type(error).__name__}: {target.mask(str(error))}"
            final = ModelConnectionError
        else:
            body = _json_object(response) if 200 <= response.status_code < 300 else None
            if body is not None:
                return body
            failure, final, retry_after = _retryable_failure(target, where, path, response)
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
        return (f"HTTP {status} with a body that is not a JSON object: {target.mask(response.text[:300])}",
                ModelResponseError, None)
    message = target.mask(_server_message(response))
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
        return f"HTTP {status}: {message}", ModelRequestError, _retry_after(response.headers.get("Retry-After"))
    rejected = ModelInputRejectedError if status in (400, 413, 422) else ModelRequestError
    raise rejected(f"{where}: HTTP {status}, the server rejected the request: {message}")


def _server_message(response) -> str:
    """The error message of an OpenAI-style body ({"error": {"message"}}, {"detail"}), else the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip() or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        for key in ("error", "detail", "message"):
            if body.get(key):
                return str(body[key])[:500]
    return str(body)[:300]


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
