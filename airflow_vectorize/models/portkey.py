"""``portkey/<provider>/<model>``: any provider through Portkey's AI gateway, which speaks the OpenAI
protocol (embeddings and chat) and forwards to ``<provider>`` (``openai``, ``cohere``, ``anthropic``, ...).

The Airflow connection (``portkey_default`` unless ``model_conn_id`` / ``chat_conn_id`` says otherwise):

- host (or extra ``base_url``): the gateway's API, default ``https://api.portkey.ai/v1`` (hosted Portkey);
  a self-hosted gateway is e.g. ``http://localhost:8787/v1``;
- password: Portkey's API key, sent as ``x-portkey-api-key`` (hosted Portkey; omitted when unset);
- extra ``virtual_key``: a Portkey virtual key (``x-portkey-virtual-key``), the provider's key kept by
  hosted Portkey;
- extra ``provider_api_key``: the provider's own key, sent as ``Authorization: Bearer`` (what a self-hosted
  gateway forwards, or hosted Portkey without a virtual key);
- extra ``custom_host``: the provider's base URL (``x-portkey-custom-host``), e.g. a self-hosted
  OpenAI-compatible server behind ``portkey/openai/<model>``;
- extra ``headers`` (more ``x-portkey-*`` headers, e.g. ``x-portkey-config``), and the options of
  :mod:`.openai_compatible` (``max_retries``, ``timeout``, ``max_batch_inputs``, ``context_window``, ...).

Keys are read when a model is built (and again when refused: :mod:`.connection`), sent only as headers, and
masked in every message.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

from airflow_vectorize.exceptions import InvalidInputError
from airflow_vectorize.models.connection import endpoint
from airflow_vectorize.models.http import Endpoint
from airflow_vectorize.models.openai_compatible import PROVIDERS as OPENAI_PROVIDERS
from airflow_vectorize.models.openai_compatible import OpenAICompatibleChat, OpenAICompatibleEmbeddings
from airflow_vectorize.models.remote import Limits, Provider

DEFAULT_URL = "https://api.portkey.ai/v1"
DEFAULT_CONN_ID = "portkey_default"
# Request limits by upstream provider (the connection's extras override them); others: DEFAULT_LIMITS.
UPSTREAM_LIMITS = {"openai": OPENAI_PROVIDERS["openai"].limits}
DEFAULT_LIMITS = Limits(max_batch_inputs=96, max_batch_tokens=None, max_input_tokens=None)
EXTRA_HEADERS = {"virtual_key": "x-portkey-virtual-key", "custom_host": "x-portkey-custom-host"}
PROVIDER_HEADER = "x-portkey-provider"


def embeddings(transformer: str, conn_id: str, dimensions: int | None,
               shorten: bool) -> OpenAICompatibleEmbeddings:
    upstream, model = split_name(transformer, "transformer")
    limits = UPSTREAM_LIMITS.get(upstream, DEFAULT_LIMITS)
    provider = Provider("portkey", DEFAULT_CONN_ID, DEFAULT_URL, limits, conn_type="portkey")
    return OpenAICompatibleEmbeddings(transformer, provider, portkey_endpoint(conn_id, upstream), dimensions,
                                      shorten, model=model)


def chat(name: str, conn_id: str) -> OpenAICompatibleChat:
    upstream, model = split_name(name, "chat_model")
    return OpenAICompatibleChat(name, portkey_endpoint(conn_id, upstream), model=model)


def split_name(name: str, what: str) -> tuple[str, str]:
    """``portkey/<provider>/<model>`` as (provider, model); the model may contain slashes."""
    parts = name.split("/", 2)
    if len(parts) < 3 or not parts[1].strip() or not parts[2].strip("/ "):
        raise InvalidInputError(f"{what} {name!r} must be 'portkey/<provider>/<model>' (e.g. 'portkey/openai/"
                                "text-embedding-3-small'): the provider or the model is missing")
    return parts[1], parts[2]


def portkey_endpoint(conn_id: str, upstream: str) -> PortkeyEndpoint:
    """The gateway at ``conn_id`` with the headers that route a request to ``upstream``."""
    target = endpoint(conn_id, DEFAULT_URL, provider="portkey", conn_type="portkey")
    options = dict(target.options)
    headers = {**target.headers, PROVIDER_HEADER: upstream}
    if target.api_key:  # the password (or extra api_key): Portkey's own key
        headers["x-portkey-api-key"] = target.api_key
    for extra, header in EXTRA_HEADERS.items():
        value = options.pop(extra, None)
        if value:
            headers[header] = str(value).rstrip("/") if extra == "custom_host" else str(value)
    provider_key = options.pop("provider_api_key", None)
    return PortkeyEndpoint(conn_id=target.conn_id, base_url=target.base_url, headers=headers, options=options,
                           api_key=str(provider_key) if provider_key else None,
                           reload=partial(portkey_endpoint, conn_id, upstream))


@dataclass(frozen=True)
class PortkeyEndpoint(Endpoint):
    """An endpoint whose messages keep the provider name and a credential-free custom host readable (the
    gateway's errors name them); every other header value and the key are masked."""

    def mask(self, text: str) -> str:
        public = {self.headers.get(PROVIDER_HEADER)}
        host = self.headers.get(EXTRA_HEADERS["custom_host"])
        if host and "@" not in urlsplit(host).netloc:
            public.add(host)
        for secret in (self.api_key, *self.headers.values()):
            if secret and len(secret) >= 4 and secret not in public:
                text = text.replace(secret, "***")
        return text
