"""The demo page in headless Chromium: choose an image, see it drawn with boxes and a table.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` package;
skipped with the reason when either is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dyhead_serve.server import ServerSettings, create_app
from tests.server.conftest import live_server, photo_bytes

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def base_url(served_backend) -> Iterator[str]:
    """A real HTTP server (uvicorn on a thread) on loopback."""
    settings = ServerSettings(warmup=False)
    with live_server(create_app(settings, backend=served_backend), settings) as url:
        yield url


def test_demo_page_shows_boxes_and_a_table(base_url, tmp_path):
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip("no /usr/bin/chromium (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

    image = tmp_path / "street.png"
    image.write_bytes(photo_bytes(120, 160, seed=11))
    expected = httpx.post(f"{base_url}/v1/detect", files={"file": ("street.png", image.read_bytes())}).json()
    detections = expected["results"][0]["detections"]
    assert detections

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            requested: list[str] = []
            errors: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(base_url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('onnxruntime')")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#canvas", timeout=30_000)
            page.wait_for_function(
                f"document.querySelectorAll('#detections tbody tr').length === {len(detections)}",
                timeout=30_000,
            )
            size = page.eval_on_selector(
                "#canvas", "c => [c.dataset.width, c.dataset.height, c.width, c.height]"
            )
            assert size[:2] == ["160", "120"] and size[2] * 120 == size[3] * 160  # drawn scaled, same aspect
            first_row = page.inner_text("#detections tbody tr")
            assert detections[0]["label"] in first_row and f"{detections[0]['score']:.3f}" in first_row
            assert f"{len(detections)} detections" in page.inner_text("#status")
            page.hover("#detections tbody tr")  # hovering a row highlights its box
            assert "active" in (page.get_attribute("#detections tbody tr", "class") or "")
            page.screenshot(path=str(tmp_path / "demo.png"))
        finally:
            browser.close()
    assert not errors, errors
    assert all(url.startswith((base_url, "blob:", "data:")) for url in requested), requested


def test_docs_render_without_internet(base_url):
    """/docs and /redoc in headless Chromium with every request off this server blocked: both
    render the API's operations. Swagger UI asks for nothing elsewhere; ReDoc only for the logo of
    its "API docs by Redocly" footer link, which then stays blank."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip("no /usr/bin/chromium (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            blocked: list[str] = []

            def only_this_server(route) -> None:
                if route.request.url.startswith((base_url, "data:", "blob:")):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            page.route("**/*", only_this_server)
            page.goto(base_url + "/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            assert "/v1/detect" in page.content()
            assert not blocked, blocked
            page.goto(base_url + "/redoc")
            page.wait_for_selector("[data-section-id]", timeout=30_000)
            assert "/v1/detect" in page.content()
        finally:
            browser.close()
    assert all(url.endswith("/redoc/logo-mini.svg") for url in blocked), blocked
