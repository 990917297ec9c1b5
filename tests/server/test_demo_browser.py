"""The demo page in headless Chromium, serving the embedded demo model: its notice, an image
drawn with boxes and a table, and the score slider filtering both without a new request.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` package;
skipped with the reason when either is missing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dyhead_serve.data.synthetic import generate_synthetic_dataset
from dyhead_serve.server import ServerSettings, create_app
from tests.server.conftest import live_server

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
def base_url() -> Iterator[str]:
    """A real HTTP server (uvicorn on a thread, as `dyhead-serve serve` runs it) on loopback, with
    the embedded demo model."""
    from dyhead_serve.runtime.loader import load_backend
    from dyhead_serve.runtime.options import ModelOptions

    settings = ServerSettings(warmup=False)
    with live_server(create_app(settings, backend=load_backend(ModelOptions(device="cpu"))), settings) as url:
        yield url


def _wait_until(page, expression: str, timeout: float = 30.0) -> None:
    """Poll ``expression`` in the page. (``page.wait_for_function`` evaluates its predicate with
    ``eval`` inside the page, which the demo page's Content-Security-Policy rightly forbids;
    ``page.evaluate`` goes through the DevTools protocol.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {expression}")
        time.sleep(0.05)


def _set_score(page, value: float) -> None:
    page.eval_on_selector(
        "#score", f"el => {{ el.value = '{value}'; el.dispatchEvent(new Event('input')); }}"
    )


def _rows(page) -> int:
    return int(
        page.eval_on_selector_all("#detections tbody tr td:first-child:not(.empty)", "cells => cells.length")
    )


def test_demo_page_shows_boxes_and_a_table(base_url, tmp_path):
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip("no /usr/bin/chromium (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

    shapes = generate_synthetic_dataset(tmp_path / "shapes", num_train=0, num_val=1, image_size=320, seed=11)
    (image,) = shapes.image_root("val").glob("*.png")
    expected = httpx.post(f"{base_url}/v1/detect", files={"file": ("shapes.png", image.read_bytes())}).json()
    detections = expected["results"][0]["detections"]  # down to the model's threshold (0.05)
    shown = [d for d in detections if d["score"] >= 0.3]
    assert shown and len(shown) < len(detections), "needs detections on both sides of 0.3"

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            requested: list[str] = []
            errors: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(base_url + "/")
            _wait_until(page, "document.getElementById('model').textContent.includes('onnxruntime')")
            notice = page.inner_text("#notice")
            assert page.is_visible("#notice") and "six synthetic shapes" in notice
            assert "--model dyhead_r50_atss_fpn_1x" in notice
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#canvas", timeout=30_000)
            _wait_until(page, f"document.querySelectorAll('#detections tbody tr').length === {len(shown)}")
            size = page.eval_on_selector(
                "#canvas", "c => [c.dataset.width, c.dataset.height, c.width, c.height]"
            )
            assert size[:2] == ["320", "320"] and size[2] == size[3]  # drawn scaled, same aspect
            first_row = page.inner_text("#detections tbody tr")
            assert detections[0]["label"] in first_row and f"{detections[0]['score']:.3f}" in first_row
            assert f"{len(shown)} of {len(detections)} detections" in page.inner_text("#status")
            page.hover("#detections tbody tr")  # hovering a row highlights its box
            assert "active" in (page.get_attribute("#detections tbody tr", "class") or "")
            page.screenshot(path=str(tmp_path / "demo.png"))

            posts = sum("/v1/detect" in url for url in requested)
            _set_score(page, 0.0)  # the slider filters in the browser: every detection, no request
            assert _rows(page) == len(detections) and page.inner_text("#score-value") == "0.00"
            _set_score(page, 1.0)
            assert _rows(page) == 0 and "No detections with a score of at least 1.00" in page.inner_text(
                "#detections"
            )
            _set_score(page, 0.3)
            assert _rows(page) == len(shown)
            assert sum("/v1/detect" in url for url in requested) == posts == 1
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
