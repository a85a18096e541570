"""The Vectorize API and page mounted in a real Airflow api-server (the session's deployment, after the example
DAGs ran in it): Airflow's JWT and UI session, its auth manager's decisions (admin: yes; viewer: 403), and the
page in a real browser (Debian's Chromium driven by Playwright), logged in through Airflow's login page."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
import pytest

PREFIX = "/vectorize"
QUERY = "mobile phone with a good camera"  # product 1, "Pixel 9 smartphone ... 50 MP camera"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def admin(deployment, outcomes) -> httpx.Client:
    """An HTTP client with the admin's JWT, once the example DAGs have run (their projects exist)."""
    with httpx.Client(base_url=deployment.api_url + PREFIX, timeout=120,
                      headers={"Authorization": f"Bearer {deployment.token()}"}) as client:
        yield client


@pytest.fixture(scope="module")
def viewer(deployment) -> httpx.Client:
    with httpx.Client(base_url=deployment.api_url + PREFIX, timeout=120,
                      headers={"Authorization": f"Bearer {deployment.token('viewer')}"}) as client:
        yield client


def test_search_through_the_api_server(admin):
    hybrid = admin.get("/api/v1/search", params={"job_name": "product_catalog", "query": QUERY, "limit": 3})
    assert hybrid.status_code == 200, hybrid.text
    assert hybrid.json()[0]["product_id"] == 1 and "rrf_score" in hybrid.json()[0]
    vector = admin.post("/api/v1/search", json={"job_name": "product_catalog", "query": QUERY, "limit": 3,
                                                "mode": "vector", "filters": {"category": "phones"}})
    assert [row["category"] for row in vector.json()] == ["phones"] * 3
    projects = {p["name"]: p for p in admin.get("/api/v1/projects").json()}
    assert projects["product_catalog"]["status"]["embedded_rows"] == 24
    assert {"product_catalog", "product_archive"} <= projects.keys()
    health = admin.get("/health").json()
    assert health["auth"] == "airflow" and health["database"]["reachable"]


def test_create_and_drop_through_the_api_server(admin, deployment):
    job = f"api_{uuid.uuid4().hex[:8]}"
    body = {"job_name": job, "src_table": "catalog", "src_columns": ["name"], "primary_key": "product_id"}
    created = admin.post("/api/v1/table", json=body)
    assert created.status_code == 200 and created.json()["created"] is True, created.text
    assert admin.post("/api/v1/table", json=body).json()["created"] is False
    assert admin.delete(f"/api/v1/table/{job}").status_code == 200
    assert admin.delete(f"/api/v1/table/{job}").status_code == 404
    assert job not in {p["name"] for p in deployment.hook().list_projects()}


def test_a_viewer_may_not_use_the_connection(viewer, deployment):
    """The simple auth manager lets only Op and Admin use connections: a viewer gets 403 and changes nothing."""
    search = viewer.get("/api/v1/search", params={"job_name": "product_catalog", "query": QUERY})
    assert search.status_code == 403, search.text
    assert "'viewer'" in search.json()["detail"] and "'postgres_default'" in search.json()["detail"]
    before = {p["name"] for p in deployment.hook().list_projects()}
    create = viewer.post("/api/v1/table", json={"job_name": "viewer_made", "src_table": "catalog",
                                                "src_columns": ["name"], "primary_key": "product_id"})
    assert create.status_code == 403
    assert viewer.delete("/api/v1/table/product_catalog").status_code == 403
    assert {p["name"] for p in deployment.hook().list_projects()} == before


def test_a_logged_out_token_is_refused_once_its_cached_user_expires(deployment, outcomes):
    """The app keeps a token's user for VECTORIZE_API_AUTH_CACHE_SECONDS (5) instead of asking the metadata
    database on every request: after Airflow's logout revokes the token, it is refused within that time."""
    from airflow_vectorize.api.auth import DEFAULT_AUTH_CACHE_SECONDS

    headers = {"Authorization": f"Bearer {deployment.token()}"}
    with httpx.Client(base_url=deployment.api_url, timeout=60, headers=headers) as client:
        assert client.get(PREFIX + "/health").status_code == 200  # the user is cached now
        assert client.get("/api/v2/auth/logout").status_code in (302, 307)
        revoked = time.monotonic()
        assert client.get("/api/v2/dags", params={"limit": 1}).status_code == 403  # Airflow's own: at once
        assert client.get(PREFIX + "/health").status_code == 200  # ours: its cached user, for now
        while (answer := client.get(PREFIX + "/health")).status_code == 200:
            assert time.monotonic() - revoked < DEFAULT_AUTH_CACHE_SECONDS + 1, "still accepted"
            time.sleep(0.2)
        assert answer.status_code == 401, answer.text
        assert "not valid (InvalidTokenError)" in answer.json()["detail"]


def test_every_mounted_route_refuses_a_missing_or_bad_token(deployment, outcomes):
    with httpx.Client(base_url=deployment.api_url + PREFIX, timeout=60) as anonymous:
        paths = anonymous.get("/openapi.json").json()["paths"]
        routes = [(m.upper(), p.replace("{job_name}", "product_catalog")) for p, ms in paths.items() for m in ms]
        assert len(routes) == 9
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer not.a.jwt"}):
                response = anonymous.request(method, path, headers=headers,
                                             json={"job_name": "product_catalog"} if method in ("POST", "PATCH")
                                             else None)
                assert response.status_code == 401, (method, path, headers, response.text)
        # The page sends a browser without a session to Airflow's login, and back.
        page = anonymous.get("/ui", follow_redirects=False)
        assert page.status_code == 307 and page.headers["location"] == "/auth/login?next=%2Fvectorize%2Fui"
    assert "product_catalog" in {p["name"] for p in deployment.hook().list_projects()}


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)")
def test_the_vectorize_page_in_a_browser(deployment, outcomes, tmp_path):
    """Log in through Airflow's login page, open the Vectorize entry of Airflow's UI (the page in an iframe),
    see the demo's projects, search, and get the expected top row; an error shows the API's message."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{deployment.api_url}{PREFIX}/ui")
            page.get_by_label("Username").fill(deployment.username)
            page.get_by_label("Password").fill(deployment.password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"**{PREFIX}/ui")

            page.goto(f"{deployment.api_url}/plugin/vectorize")  # the entry in Airflow's navigation
            frame = page.frame_locator("iframe")
            expect(frame.locator("#projects tr[data-project='product_catalog']")).to_be_visible(timeout=60_000)
            expect(frame.locator("#projects tr[data-project='product_archive']")).to_be_visible()
            catalog = frame.locator("#projects tr[data-project='product_catalog'] td")
            expect(catalog.nth(5)).to_have_text("24")  # embedded rows

            frame.locator("#search-project").select_option("product_catalog")
            frame.locator("#search-query").fill(QUERY)
            frame.locator("#search-button").click()
            first = frame.locator("#search-results tbody tr").first
            expect(first).to_contain_text("Pixel 9 smartphone", timeout=60_000)
            screenshot = os.environ.get("VECTORIZE_PAGE_SCREENSHOT") or str(tmp_path / "vectorize-page.png")
            page.screenshot(path=screenshot)

            frame.locator("#search-filters").fill('{"colour": "red"}')
            frame.locator("#search-button").click()
            expect(frame.locator("#search-error")).to_contain_text("400 InvalidInputError: filter column 'colour'",
                                                                   timeout=30_000)
        finally:
            browser.close()
