"""Who may call the API, and on which database: Airflow's auth manager when mounted, tokens when standalone.

Every request is authenticated before anything else (``Authenticate``, an ASGI middleware: 401 without valid
credentials, before the body is read); each route then asks ``authorize`` for the connection it uses:

- ``read``: search, RAG, the project list and details, health, the page;
- ``write``: ``POST /api/v1/table`` (create a project), ``PATCH`` (alter) and ``DELETE /api/v1/table/{job_name}``.

``AirflowAuth`` (mounted in Airflow's api-server): the JWT that Airflow's REST API takes (``Authorization:
Bearer``, from ``POST /auth/token``) or the UI session's ``_token`` cookie, checked by Airflow's auth manager;
``read`` needs permission to read (GET) the Airflow connection, ``write`` to edit (PUT) it, as
``is_authorized_connection`` decides (simple auth manager: role Op or Admin; FAB: "can read" / "can edit" on
Connections). The model connection a request uses (the ``chat_conn_id`` / ``model_conn_id`` it names, or
left out the provider's default, ``openai_default``...) is checked the same (``read``).
A token's user is kept for ``VECTORIZE_API_AUTH_CACHE_SECONDS`` (default 5, 0: never; never past the token's
``exp``): Airflow's check asks the metadata database whether the token was revoked (logout), a blocking query
on every request otherwise, so a revoked token is refused at most that long after its logout.

``TokenAuth`` (standalone): bearer tokens from the environment or files; read-only tokens and tokens that may
also write; only the connections of an allow-list (databases and model connections, defaults included).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from airflow_vectorize.api.errors import ApiError, answer

Access = Literal["read", "write"]
PUBLIC_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
TOKEN_COOKIE = "vectorize_token"  # the standalone page keeps its token here
MIN_TOKEN_LENGTH = 16
TOKEN_CHARACTERS = re.compile(r"[!-~]+")  # printable ASCII, no space: what a header carries as sent


class Auth(Protocol):
    mode: str

    async def authenticate(self, request: Request) -> Any:
        """The caller (raise ApiError 401 when there is none)."""

    def authorize(self, principal: Any, conn_id: str, access: Access) -> None:
        """Raise ApiError 403 unless ``principal`` may use ``conn_id`` for ``access``."""

    def login_hint(self, path: str) -> str | None:
        """Where a browser without credentials logs in (None: it gives a token on the page)."""


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, detail, "NotAuthenticated", {"WWW-Authenticate": "Bearer"})


def forbidden(detail: str) -> ApiError:
    return ApiError(403, detail, "Forbidden")


class AirflowAuth:
    """Airflow's own authentication and authorization (see the module's docstring)."""

    mode = "airflow"
    METHODS: ClassVar[dict[str, str]] = {"read": "GET", "write": "PUT"}

    def __init__(self, cache_seconds: float | None = None) -> None:
        if cache_seconds is None:
            value = os.environ.get("VECTORIZE_API_AUTH_CACHE_SECONDS", str(DEFAULT_AUTH_CACHE_SECONDS))
            try:
                cache_seconds = float(value)
            except ValueError:
                raise ValueError(f"VECTORIZE_API_AUTH_CACHE_SECONDS must be a number of seconds (0: keep no"
                                 f" user), got {value!r}") from None
        self.users = UserCache(cache_seconds)

    async def authenticate(self, request: Request) -> Any:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
        from jwt import InvalidTokenError

        token = bearer(request) or request.cookies.get(COOKIE_NAME_JWT_TOKEN)
        if not token:
            raise unauthorized("Not authenticated: send Airflow's JWT as 'Authorization: Bearer <token>'"
                               " (POST /auth/token), or log in to Airflow's UI")
        key = _digest(token)
        if (user := self.users.get(key)) is not None:
            return user
        try:
            user = await get_auth_manager().get_user_from_token(token)
        except InvalidTokenError as error:  # expired, bad signature, malformed, revoked
            raise unauthorized(f"Not authenticated: the token is not valid ({type(error).__name__})") from None
        self.users.put(key, user, _expires(token))
        return user

    def authorize(self, principal: Any, conn_id: str, access: Access) -> None:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import ConnectionDetails

        method = self.METHODS[access]
        if not get_auth_manager().is_authorized_connection(
                method=method, details=ConnectionDetails(conn_id=conn_id), user=principal):
            verb = "read" if access == "read" else "edit"
            raise forbidden(f"Forbidden: user {principal.get_name()!r} may not {verb} Airflow connection"
                            f" {conn_id!r}, which this request uses ({access} access needs {method} on it)")

    def login_hint(self, path: str) -> str | None:
        from airflow.api_fastapi.app import get_auth_manager

        return get_auth_manager().get_url_login(next_url=path)


DEFAULT_AUTH_CACHE_SECONDS = 5.0


class UserCache:
    """Users of tokens Airflow accepted, by the token's SHA-256, each for ``seconds`` and never past the
    token's expiry; at most ``size`` of them (the oldest go first)."""

    def __init__(self, seconds: float, size: int = 4096) -> None:
        self.seconds, self.size = seconds, size
        self.entries: dict[bytes, tuple[float, Any]] = {}

    def get(self, key: bytes) -> Any:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.time():
            del self.entries[key]
            return None
        return entry[1]

    def put(self, key: bytes, user: Any, expires: float) -> None:
        now = time.time()
        expires = min(now + self.seconds, expires)
        if expires <= now:
            return
        if len(self.entries) >= self.size:
            self.entries = {k: e for k, e in self.entries.items() if e[0] > now}
            while len(self.entries) >= self.size:
                del self.entries[next(iter(self.entries))]
        self.entries[key] = (expires, user)


def _expires(token: str) -> float:
    """The ``exp`` claim of a token Airflow has just validated (now when it has none: not kept)."""
    import jwt

    exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    return float(exp) if isinstance(exp, (int, float)) else 0.0


@dataclass(frozen=True)
class TokenGrant:
    name: str
    write: bool


class TokenAuth:
    """Bearer tokens (only their SHA-256 is kept in memory) and an allow-list of connections."""

    mode = "tokens"

    def __init__(self, tokens: dict[str, bool], conn_ids: frozenset[str]) -> None:
        if not tokens:
            raise ValueError("no tokens: the API is never open")
        short = [i for i, token in enumerate(tokens, 1) if len(token) < MIN_TOKEN_LENGTH]
        if short:
            raise ValueError(f"tokens must have at least {MIN_TOKEN_LENGTH} characters (token(s) #{short})")
        unsendable = [i for i, token in enumerate(tokens, 1) if not TOKEN_CHARACTERS.fullmatch(token)]
        if unsendable:
            raise ValueError("tokens must be printable ASCII without spaces, as an HTTP header carries them"
                             f" (token(s) #{unsendable})")
        if not conn_ids:
            raise ValueError("no connections allowed")
        self.grants = {_digest(token): TokenGrant(f"token #{i}", write)
                       for i, (token, write) in enumerate(tokens.items(), 1)}
        self.conn_ids = conn_ids

    async def authenticate(self, request: Request) -> TokenGrant:
        token = bearer(request) or request.cookies.get(TOKEN_COOKIE)
        if not token:
            raise unauthorized("Not authenticated: send a token as 'Authorization: Bearer <token>'")
        grant = self.grants.get(_digest(token))
        if grant is None:
            raise unauthorized("Not authenticated: the token is not valid")
        return grant

    def authorize(self, principal: TokenGrant, conn_id: str, access: Access) -> None:
        if conn_id not in self.conn_ids:
            raise forbidden(f"Forbidden: connection {conn_id!r} is not served here; allowed:"
                            f" {', '.join(sorted(self.conn_ids))} (VECTORIZE_API_CONN_IDS)")
        if access == "write" and not principal.write:
            raise forbidden(f"Forbidden: {principal.name} is read-only (VECTORIZE_API_READ_TOKENS); creating,"
                            " altering and dropping projects needs a token of VECTORIZE_API_TOKENS")

    def login_hint(self, path: str) -> str | None:
        return None

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> TokenAuth:
        """Tokens from ``VECTORIZE_API_TOKENS`` (read and write) and ``VECTORIZE_API_READ_TOKENS`` (read
        only), comma-separated, or from files named by ``*_FILE`` (a token per line: a mounted secret); the
        connections from ``VECTORIZE_API_CONN_IDS`` (comma-separated; default ``postgres_default``)."""
        env = os.environ if env is None else env
        tokens = {token: False for token in _tokens(env, "VECTORIZE_API_READ_TOKENS")}
        tokens.update({token: True for token in _tokens(env, "VECTORIZE_API_TOKENS")})
        if not tokens:
            raise ValueError(
                "refusing to start without authentication: set VECTORIZE_API_TOKENS (or VECTORIZE_API_READ_TOKENS,"
                " or their *_FILE variants) to one or more bearer tokens, e.g. $(python -c 'import secrets;"
                " print(secrets.token_urlsafe(32))')")
        conn_ids = frozenset(c.strip() for c in env.get("VECTORIZE_API_CONN_IDS", "postgres_default").split(",")
                             if c.strip())
        return cls(tokens, conn_ids)


def _tokens(env: dict[str, str], name: str) -> list[str]:
    """The tokens of ``name`` (comma-separated) and of the file ``name_FILE`` (a token per line; blank lines
    and lines starting with ``#`` are not tokens)."""
    values = env.get(name, "").split(",")
    if env.get(name + "_FILE"):
        values += [line for line in Path(env[name + "_FILE"]).read_text().splitlines()
                   if not line.lstrip().startswith("#")]
    return [value.strip() for value in values if value.strip()]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


class Authenticate:
    """ASGI middleware: every request but the OpenAPI documents is authenticated first (401 otherwise), and
    a query string that is not valid UTF-8 is refused (400) rather than read with replacement characters.
    The caller is ``request.state.principal``."""

    def __init__(self, app: ASGIApp, auth: Auth, on_unauthenticated: Callable[[Request, ApiError],
                 Awaitable[Any] | None] | None = None) -> None:
        self.app, self.auth, self.on_unauthenticated = app, auth, on_unauthenticated

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if path in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        request = Request(scope)
        try:
            unquote_to_bytes(scope.get("query_string", b"").decode("latin-1").replace("+", " ")).decode("utf-8")
        except UnicodeDecodeError:
            return await answer(400, "the query string is not valid UTF-8 (after percent-decoding)",
                                "InvalidInputError")(scope, receive, send)
        try:
            principal = await self.auth.authenticate(request)
        except ApiError as error:
            response = self.on_unauthenticated and await self.on_unauthenticated(request, error)
            response = response or answer(error.status, error.detail, error.kind, error.headers)
            return await response(scope, receive, send)
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
