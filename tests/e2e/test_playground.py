"""The browser playground end to end: Debian's chromium driven by Playwright against the real stack.

Screenshots are saved under $SWITCHBOARD_TEST_ARTIFACTS (default: the test's tmp dir); with
SWITCHBOARD_UPDATE_SCREENSHOT=1 the main one is also written to docs/playground.png for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.stack import API_KEY, ROOT, Process, Stack, free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (scripts/test.sh installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    root = os.environ.get("SWITCHBOARD_TEST_ARTIFACTS")
    path = Path(root) / "playground" if root else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    assert stack.envoy is not None
    page.goto(f"{stack.envoy}/playground")
    yield page
    context.close()


def _login(page: Page, key: str = API_KEY) -> None:
    page.fill("#api-key", key)
    page.click("#load-models")


def _pick(page: Page, pane: str, model: str) -> None:
    expect(page.locator(f"{pane} select.model option[value='{model}']")).to_have_count(1)
    page.select_option(f"{pane} select.model", model)


def test_streamed_request_renders_events_text_and_usage(page: Page, artifacts: Path) -> None:
    _login(page)
    _pick(page, "#pane-a", "fake/echo")
    page.fill("#prompt", "hello playground")
    page.click("#send")
    pane = page.locator("#pane-a")
    expect(pane.locator(".state")).to_contain_text("completed")
    expect(pane.locator(".output")).to_have_text("echo: hello playground")
    expect(pane.locator(".usage")).to_contain_text("fake/echo")
    expect(pane.locator(".usage")).to_contain_text("$")
    rows = pane.locator("table.events tbody tr")
    types = rows.evaluate_all("rows => rows.map(r => r.dataset.type)")
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    sequence = [int(s) for s in rows.evaluate_all("rows => rows.map(r => r.cells[2].textContent)")]
    assert sequence == sorted(sequence) and len(set(sequence)) == len(sequence)
    # The payload cell holds the event as JSON.
    payload = json.loads(rows.nth(len(types) - 1).locator("pre").text_content() or "{}")
    assert payload["response"]["status"] == "completed"
    page.screenshot(path=str(artifacts / "playground-stream.png"), full_page=True)
    if os.environ.get("SWITCHBOARD_UPDATE_SCREENSHOT") == "1":
        shutil.copy(artifacts / "playground-stream.png", ROOT / "docs" / "playground.png")

    # The finished response opens by id, with its input items.
    page.click("#lookup")
    expect(page.locator("#lookup-summary")).to_contain_text("echo: hello playground")
    expect(page.locator("#lookup-items")).to_contain_text("hello playground")


def test_two_models_side_by_side(page: Page, artifacts: Path) -> None:
    _login(page)
    page.check("#compare")
    _pick(page, "#pane-a", "fake/echo")
    _pick(page, "#pane-b", "tiny-context")
    page.fill("#prompt", "compare me")
    page.click("#send")
    for pane in ("#pane-a", "#pane-b"):
        expect(page.locator(f"{pane} .state")).to_contain_text("completed")
        expect(page.locator(f"{pane} .output .text")).to_have_text("echo: compare me")
    expect(page.locator("#pane-a .usage")).to_contain_text("fake/echo")
    expect(page.locator("#pane-b .usage")).to_contain_text("tiny-context")
    page.screenshot(path=str(artifacts / "playground-compare.png"), full_page=True)


def test_json_body_editor_sends_the_full_request(page: Page) -> None:
    _login(page)
    _pick(page, "#pane-a", "fake/echo")
    page.check("#use-body")
    page.fill("#body-editor", json.dumps({"model": "fake/echo", "input": "from the editor", "stream": False}))
    page.click("#send")
    expect(page.locator("#pane-a .output")).to_have_text("echo: from the editor")
    expect(page.locator("#pane-a table.events tbody tr")).to_have_count(1)
    # Any model id goes through the editor, streamed too: reasoning is rendered apart from the answer.
    page.fill("#body-editor", json.dumps({"model": "fake/reasoning", "input": "think", "stream": True}))
    page.click("#send")
    expect(page.locator("#pane-a .state")).to_contain_text("completed")
    expect(page.locator("#pane-a .output .reasoning")).to_have_text("thinking hard")
    expect(page.locator("#pane-a .output .text")).to_have_text("echo: think")
    page.fill("#body-editor", "{not json")
    page.click("#send")
    expect(page.locator("#status")).to_contain_text("does not parse")


def test_a_wrong_key_shows_the_error(page: Page) -> None:
    _login(page, "sk-wrong")
    expect(page.locator("#status")).to_contain_text("HTTP 401")


def test_page_is_static_and_api_calls_need_the_key(stack: Stack) -> None:
    for base in (stack.http, stack.envoy):
        page = httpx.get(f"{base}/playground/", timeout=30)
        assert page.status_code == 200 and "Switchboard playground" in page.text
        assert httpx.get(f"{base}/playground/app.js", timeout=30).status_code == 200
        # The page loads nothing from elsewhere (no CDN): every src/href is relative.
        assert "http://" not in page.text and "https://" not in page.text
        assert httpx.get(f"{base}/v1/models", timeout=30).status_code == 401


def test_playground_off_is_a_404(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "edge.yaml"
    config.write_text(yaml.safe_dump({"server": {"http": f"127.0.0.1:{port}", "grpc": f"127.0.0.1:{free_port()}",
                                                 "playground": False}}))
    edge = Process([sys.executable, "-m", "switchboard.cli.main", "edge", "--config", str(config)], name="edge")
    try:
        reply = None
        for _ in range(300):
            try:
                reply = httpx.get(f"http://127.0.0.1:{port}/playground/", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert reply is not None, "".join(edge.output)
        assert reply.status_code == 404
        assert reply.json()["error"]["type"] == "not_found_error"
    finally:
        edge.stop()
