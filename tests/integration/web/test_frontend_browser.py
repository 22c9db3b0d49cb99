"""ComfyUI's official frontend, served by genserve's ComfyUI listener, in a real headless Chromium:
it loads with no console error and no request to another host, queues a graph built from the
demo models and shows the image; the main port's /docs and /redoc load with nothing from
another host either. Screenshots are kept in test-artifacts/browser/."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from genserve.workflows.demo import demo_workflow
from tests.conftest import small_settings
from tests.integration.conftest import LiveServer, live_server, make_data_root

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "browser"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)",
    ),
]


@pytest.fixture(scope="module")
def web_server(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path, demo_images: Path
) -> Iterator[LiveServer]:
    data = make_data_root(tmp_path_factory.mktemp("web") / "data", demo_images)
    with live_server(small_settings(demo_models, data), data, comfy=True) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    driver.set_script_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for since the last call (Chrome's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def foreign(urls: list[str], base: str) -> list[str]:
    host = urlsplit(base).netloc
    return [
        u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).netloc != host
    ]


def severe(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait_js(driver: Any, script: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for: {script}")


def test_the_web_ui_loads_queues_the_demo_graph_and_shows_the_image(
    web_server: LiveServer, browser: Any
) -> None:
    base = web_server.comfy_url
    assert base is not None
    browser.get(base + "/")
    wait_js(browser, "return window.comfyAPI && window.app && window.app.graph && window.app.vueAppReady", 45)
    time.sleep(2)  # the page's first round of API calls
    browser.save_screenshot(str(ARTIFACTS / "01-loaded.png"))
    loaded = requested_urls(browser)
    assert any(u.endswith("/api/object_info") for u in loaded), loaded
    assert foreign(loaded, base) == [], foreign(loaded, base)
    errors = severe(browser)
    assert errors == [], "\n".join(errors)

    graph = json.dumps(demo_workflow("text-to-image"))
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"window.app.loadApiJson({graph}, 'demo.json');"
        "window.app.queuePrompt(0, 1).then(() => done(true), (e) => done(String(e)));"
    )
    image = wait_js(
        browser,
        "const imgs = [...document.querySelectorAll('img')].filter(i => i.src.includes('/view?')"
        " && i.complete && i.naturalWidth > 0); return imgs.length ? imgs[0].src : null;",
        60,
    )
    browser.save_screenshot(str(ARTIFACTS / "02-queued.png"))
    assert "type=output" in image
    history = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.app.api.getHistory(10).then((h) => done(JSON.stringify(h)), (e) => done(String(e)));"
    )
    assert "images" in history
    assert foreign(requested_urls(browser), base) == []
    errors = severe(browser)
    assert errors == [], "\n".join(errors)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_load_with_nothing_from_another_host(
    web_server: LiveServer, browser: Any, page: str
) -> None:
    browser.get("about:blank")  # leaving the web UI: its unsaved-graph prompt is the last page's
    severe(browser), requested_urls(browser)
    browser.get(web_server.url + page)
    marker = ".swagger-ui .info" if page == "/docs" else "redoc-wrap, .redoc-wrap, [role=navigation]"
    wait_js(browser, f"return document.querySelector('{marker}')", 20)
    browser.save_screenshot(str(ARTIFACTS / f"docs-{page.strip('/')}.png"))
    urls = requested_urls(browser)
    assert urls and foreign(urls, web_server.url) == []
    errors = severe(browser)
    assert errors == [], "\n".join(errors)
