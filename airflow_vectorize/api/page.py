"""The Vectorize page (``GET /ui``): the projects of a connection, a search box and a RAG box.

One static HTML file (``page.html``, no build step) that calls the API from the browser with the same
credentials: in Airflow's UI the session's cookie, standalone a token kept in a cookie. A browser without
credentials is sent to Airflow's login page (mounted) or shown a token form (standalone).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from airflow_vectorize.api.auth import TOKEN_COOKIE
from airflow_vectorize.api.errors import ApiError

router = APIRouter(include_in_schema=False)
PAGE = Path(__file__).with_name("page.html")

TOKEN_FORM = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Vectorize: sign in</title>
<style>body{font:15px system-ui,sans-serif;margin:3rem auto;max-width:28rem}input,button{font:inherit;
padding:.4rem;width:100%;box-sizing:border-box;margin:.3rem 0}</style></head><body>
<h1>Vectorize</h1><p>This server needs a token (one of <code>VECTORIZE_API_TOKENS</code> or
<code>VECTORIZE_API_READ_TOKENS</code>).</p>
<form id="f"><input id="t" type="password" placeholder="token" autocomplete="off" required>
<button>Sign in</button></form>
<script>document.getElementById("f").onsubmit = (e) => { e.preventDefault();
document.cookie = "COOKIE=" + encodeURIComponent(document.getElementById("t").value) +
"; path=/; SameSite=Strict" + (location.protocol === "https:" ? "; Secure" : ""); location.reload(); };</script>
</body></html>""".replace("COOKIE", TOKEN_COOKIE)


@cache
def _html() -> str:
    return PAGE.read_text(encoding="utf-8")


@router.get("/ui", response_class=HTMLResponse)
def page() -> HTMLResponse:
    return HTMLResponse(_html(), headers={"Cache-Control": "no-store"})


async def on_unauthenticated(request: Request, error: ApiError) -> Response | None:
    """For the page: Airflow's login (then back here), or the token form; for the API: None (a 401)."""
    if not request.url.path.rstrip("/").endswith("/ui") or request.method != "GET":
        return None
    login = request.app.state.vectorize.auth.login_hint(str(request.url.path))
    if login:
        return RedirectResponse(login, status_code=307)
    return HTMLResponse(TOKEN_FORM, status_code=401, headers=error.headers)
