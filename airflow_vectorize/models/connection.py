"""Model connections: an Airflow connection read (and checked) as an :class:`~.http.Endpoint`, and the
client side of it that picks up a changed connection.

A model is built once and kept for the life of a process (the API's query models, a hook's chat models):
its endpoint is read from the connection then, never per request. When the server refuses the key
(401/403) or the host cannot be reached, the connection is read once more: if it changed (a rotated key, a
moved host, other extras) the model takes the new endpoint and sends the request once more; if not, the
error is raised as it is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from airflow_vectorize.exceptions import (
    InvalidInputError,
    ModelAuthenticationError,
    ModelConnectionError,
)
from airflow_vectorize.models.http import Endpoint, RetryPolicy, post_json

log = logging.getLogger(__name__)

# The connection types a model connection may have: the types of the providers' connections (openai: OpenAI,
# Ollama and any OpenAI-compatible server; cohere, voyage, portkey), and Airflow's HTTP connection (a server
# written as http://host:port; its host is then required). Any other (a database's, an SSH host's...) is
# refused: its password is no model's key, and must never be sent as one.
MODEL_CONN_TYPES = ("openai", "cohere", "voyage", "portkey", "http")
_reread_lock = threading.Lock()


def endpoint(conn_id: str, default_url: str, *, provider: str, conn_type: str = "openai") -> Endpoint:
    """The Airflow connection ``conn_id`` as an endpoint: host (or extra ``base_url``) is the base URL,
    password the API key; extra ``headers`` are sent with every request, other extras are options. Its
    ``reload`` reads the connection again the same way.

    The connection must be of a model connection type (``MODEL_CONN_TYPES``), else InvalidInputError (naming
    the connection and its type, never a secret); only a connection of the provider's own type (``conn_type``)
    without a host means the provider's ``default_url``: any other needs its host. A malformed one (a port out
    of range, no host name, ``headers`` that are not an object...) is an InvalidInputError naming the
    connection and the field.
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
    client_kwargs = _object(extra.pop("openai_client_kwargs", None), conn_id, "extra 'openai_client_kwargs'")
    headers = _object(extra.pop("headers", None) or client_kwargs.get("default_headers"), conn_id,
                      "extra 'headers' (or openai_client_kwargs.default_headers)")
    url = extra.pop("base_url", None) or client_kwargs.get("base_url") or conn.host
    if url is not None and not isinstance(url, str):
        raise InvalidInputError(f"the base URL of connection {conn_id!r} must be a text, got {type(url).__name__}")
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
        base_url=_checked_url(conn_id, _base_url(url, conn.port, conn.schema)) if url else default_url,
        api_key=conn.password or client_kwargs.get("api_key") or extra.pop("api_key", None),
        headers={str(k): str(v) for k, v in headers.items()},
        options=extra,
        reload=partial(endpoint, conn_id, default_url, provider=provider, conn_type=conn_type),
    )


def _object(value: Any, conn_id: str, what: str) -> Mapping[str, Any]:
    """An extra that must be a JSON object (None: empty)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"the {what} of connection {conn_id!r} must be a JSON object, got"
                                f" {type(value).__name__}")
    return value


def _base_url(host: str, port: int | None, path: str | None) -> str:
    """A connection's host as a base URL: kept as given when it has a scheme, else built from its parts."""
    if "://" in host:
        return host.rstrip("/")
    scheme = "http" if host in ("localhost", "127.0.0.1", "::1") else "https"
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host  # an IPv6 address
    return f"{scheme}://{host}{f':{port}' if port else ''}{'/' + path.strip('/') if path else ''}"


def _checked_url(conn_id: str, url: str) -> str:
    """``url`` when it is an http(s) URL with a host name and a valid port; else InvalidInputError naming the
    connection (and the URL without any userinfo, where a key may be written)."""
    parts = urlsplit(url)
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    problem = None
    if parts.scheme not in ("http", "https"):
        problem = "is not an http:// or https:// URL"
    elif not parts.hostname:
        problem = "names no host"
    else:
        try:
            _ = parts.port  # urlsplit checks the port when it is read
        except ValueError:
            problem = "has a port out of range (0-65535) or not a number"
    if problem:
        raise InvalidInputError(f"the host (base URL) of connection {conn_id!r} {problem}: {shown!r}")
    return url


class ConnectionClient:
    """What a remote model posts through: ``endpoint`` (set by ``use``), and ``post``, which picks up a
    changed connection (see the module's docstring)."""

    endpoint: Endpoint
    model: str
    retry: RetryPolicy

    def use(self, target: Endpoint) -> None:
        """Take ``target`` and the settings its extras give; a subclass adds its own."""
        self.endpoint = target
        self.retry = RetryPolicy.from_options(target.options, target.conn_id)

    def post(self, path: str, payload: dict[str, Any], policy: RetryPolicy | None = None) -> dict[str, Any]:
        """``post_json`` to the endpoint; on a refused key or an unreachable host, once more with the
        connection as it is now, if it changed."""
        target = self.endpoint
        try:
            return post_json(target, path, payload, model=self.model, policy=policy or self.retry)
        except (ModelAuthenticationError, ModelConnectionError):
            fresh = self._reread(target)
            if fresh is None:
                raise
        return post_json(fresh, path, payload, model=self.model, policy=policy or self.retry)

    def _reread(self, failed: Endpoint) -> Endpoint | None:
        """The connection's endpoint as it is now, taken in place of ``failed``; None when it is the same."""
        with _reread_lock:
            if self.endpoint is not failed:  # another thread of this model read it meanwhile
                return self.endpoint
            if failed.reload is None:
                return None
            fresh = failed.reload()
            if fresh == failed:
                return None
            log.warning("connection %r changed since model %r was set up: using it as it is now",
                        failed.conn_id, self.model)
            self.use(fresh)
            return fresh
