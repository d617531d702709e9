"""The product as a user meets it: `ragtune up` in a subprocess, headless Chromium asks a knowledge question
and then "make that shorter", and checks the route badges and a cited source. Saves a screenshot in
test-artifacts/. Needs the Debian `chromium` package and the `playwright` Python package (no downloaded
browsers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(state_root: Path):
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    home = state_root / "browser-home"
    home.mkdir(exist_ok=True)
    shared_models = state_root / "models"  # share the de-quantised model cache with the other tests
    shared_models.mkdir(exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to(shared_models)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGTUNE_") and k != "DATABASE_URL"}
    env.update(RAGTUNE_HOME=str(home), RAGTUNE_PORT=str(port), RAGTUNE_CHAT_MAX_NEW_TOKENS="60", HF_HUB_OFFLINE="1")
    log = (state_root / "browser-app.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "up"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(
                    f"ragtune up exited with {proc.returncode}:\n{(state_root / 'browser-app.log').read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("ragtune up did not answer /healthz within 240 s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        from bot.db import server

        server.stop(home / "pgdata")


def _send(page, text: str, answers_before: int) -> None:
    page.fill("#rt-input textarea", text)
    page.click("#rt-send")
    page.wait_for_function(
        "n => document.querySelectorAll('#rt-chat .rt-badge').length > n", arg=answers_before, timeout=120_000
    )
    # the answer is complete when the session list shows the new turn (updated at the end of the turn)
    page.wait_for_function(
        "n => [...document.querySelectorAll('#rt-sessions label')].some(l => l.textContent.includes('(' + n + ')'))",
        arg=answers_before + 1,
        timeout=120_000,
    )


def test_knowledge_then_skill_in_the_browser(app_url):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            page.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_selector("#rt-input textarea", timeout=60_000)
            _send(page, "How do I train an adapter?", 0)
            badges = page.locator("#rt-chat .rt-badge")
            assert "rt-route-knowledge" in badges.nth(0).get_attribute("class")
            sources = page.get_by_text("Sources (").first
            assert sources.is_visible()
            sources.click()
            assert page.locator("#rt-chat").get_by_text("[1]").first.is_visible()
            assert "training" in page.locator("#rt-chat").inner_text().lower()

            _send(page, "make that shorter", 1)
            second = badges.nth(1)
            assert "rt-skill" in second.get_attribute("class"), f"the rewrite went to {second.inner_text()}"
            sources.click()  # fold the sources again so both answers and their badges fit the screenshot
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "browser-chat.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "browser-chat-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert (ARTIFACTS / "browser-chat.png").stat().st_size > 10_000
