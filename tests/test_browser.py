"""The product as a user meets it: `ragtune up` in a subprocess, headless Chromium asks a knowledge question
and then "make that shorter", and checks the route badges and a cited source; a second test checks the badge's
plain words, a readable upload name and the over-long message warning; a third gives a thumb down and a correction
and finds them in the database. Saves screenshots in test-artifacts/.
Needs the Debian `chromium` package and the `playwright` Python package (no downloaded browsers)."""

from __future__ import annotations

import os
import re
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


def test_badge_words_upload_names_and_the_over_long_warning(app_url, tmp_path):
    """What a newcomer reads: a badge in plain words with its details a click away, the full name of a file being
    uploaded, and a warning (not a silent cut) for a message over the length limit."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    upload = tmp_path / "quarterly-revenue-report-2026.txt"
    upload.write_text("The quarterly revenue of the brontal kettle line grew by twelve percent.\n", encoding="utf-8")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            page.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_selector("#rt-input textarea", timeout=60_000)
            page.fill("#rt-input textarea", "How do I train an adapter?")
            page.click("#rt-send")
            badge = page.locator("#rt-chat .rt-badge").first
            badge.wait_for(timeout=120_000)
            page.wait_for_function(  # the turn is stored: the session list shows it
                "() => [...document.querySelectorAll('#rt-sessions label')].some(l => l.textContent.includes('(1)'))",
                timeout=120_000,
            )
            label = badge.locator("summary").inner_text().strip()
            assert re.fullmatch(r"From your documents · \d+ sources?|Not in your documents", label), label
            details = badge.get_attribute("title")
            assert details.startswith("Route knowledge"), details
            assert not any(word in label + details for word in ("log-odds", "nearest examples", "[knowledge"))
            badge.locator("summary").click()  # the details open in place
            assert badge.locator(".rt-details").is_visible()
            page.screenshot(path=str(ARTIFACTS / "browser-badge.png"), full_page=True)

            long_text = ("The report says revenue grew. " * 700).strip()  # 20,999 characters: over the 8,000 limit
            page.fill("#rt-input textarea", long_text)
            notice = page.locator("#rt-notice")
            page.wait_for_function("() => document.querySelector('#rt-notice').innerText.includes('20,999')")
            assert "8,000" in notice.inner_text()
            page.click("#rt-send")
            page.wait_for_function("() => document.querySelector('#rt-notice').innerText.includes('Nothing was sent')")
            assert page.eval_on_selector("#rt-input textarea", "e => e.value.length") == len(long_text)
            assert page.locator("#rt-chat .rt-badge").count() == 1, "the over-long message must not be answered"
            page.screenshot(path=str(ARTIFACTS / "browser-long-message.png"), full_page=True)
            page.fill("#rt-input textarea", "")

            page.click("#rt-add-documents .label-wrap")
            page.set_input_files("#rt-files input[type=file]", [str(upload)])
            name = page.locator("#rt-files .filename").first
            name.wait_for(timeout=30_000)
            assert name.inner_text().replace("\n", "").replace(" ", "") == upload.name
            clipped = page.eval_on_selector(
                "#rt-files .filename .stem", "e => e.scrollWidth > e.clientWidth + 1 || e.offsetHeight === 0"
            )
            assert not clipped, "the file name must be readable, not cut to its extension"
            page.click("#rt-upload")
            page.wait_for_function(
                "() => /chunk|error/.test(document.querySelector('#rt-upload-status').innerText)", timeout=60_000
            )
            status = page.locator("#rt-upload-status").inner_text()
            assert f"{upload.name}: added" in status, status
            page.screenshot(path=str(ARTIFACTS / "browser-upload.png"), full_page=True)

            page.click("#rt-delete")  # asks first; then this test's conversation goes
            page.locator("#rt-delete-yes").wait_for(timeout=10_000)
            page.click("#rt-delete-yes")
            page.locator("#rt-confirm-delete").wait_for(state="hidden", timeout=10_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "browser-newcomer-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    for shot in ("browser-badge.png", "browser-long-message.png", "browser-upload.png"):
        assert (ARTIFACTS / shot).stat().st_size > 10_000


def test_thumb_down_and_a_correction_reach_the_database(app_url, state_root):
    """The team teaches the bot: a thumb down on an answer opens the correction box with the answer's text; the saved
    correction is the feedback row of that turn (rating down), ready for `ragtune train --from-feedback`."""
    import psycopg
    from playwright.sync_api import sync_playwright

    from bot.db import server

    ARTIFACTS.mkdir(exist_ok=True)
    question = "How do I train an adapter from feedback?"
    fixed = "Rate answers in the chat, then run: ragtune train --from-feedback --name team-tone"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            page.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_selector("#rt-input textarea", timeout=60_000)
            page.click("#rt-new")
            _send(page, question, 0)
            page.locator("#rt-chat").get_by_role("button", name="Dislike").first.click()
            status = page.locator("#rt-feedback-status")
            page.wait_for_function(
                "() => document.querySelector('#rt-feedback-status').innerText.includes('saved for training')",
                timeout=30_000,
            )
            assert "👎 on answer 1" in status.inner_text()
            box = page.locator("#rt-correction textarea")
            box.wait_for(state="visible", timeout=10_000)  # the correction box opened, with the answer to edit
            assert box.input_value().strip(), "the answer's text is in the box to edit"
            assert "train an adapter from feedback" in page.locator("#rt-correction-target").inner_text()
            box.fill(fixed)
            page.click("#rt-save-correction")
            page.wait_for_function(
                "() => document.querySelector('#rt-feedback-status').innerText.includes('correction of answer 1')",
                timeout=30_000,
            )
            assert page.locator("#rt-chat").get_by_role("button", name="Disliked").count() == 1
            page.screenshot(path=str(ARTIFACTS / "browser-feedback.png"), full_page=True)

            page.click("#rt-new")  # a new conversation shows no thumbs; the rated one shows its thumb again
            page.wait_for_function("() => !document.querySelector('#rt-chat .rt-badge')", timeout=10_000)
            page.locator("#rt-sessions label", has_text=question).click()
            page.locator("#rt-chat .rt-badge").first.wait_for(timeout=10_000)
            disliked = page.locator("#rt-chat").get_by_role("button", name="Disliked")
            disliked.wait_for(timeout=10_000)
            assert disliked.count() == 1
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "browser-feedback-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    uri = server.status(state_root / "browser-home" / "pgdata").uri
    with psycopg.connect(uri) as conn:
        rows = conn.execute(
            "SELECT f.rating, f.correction, a.turn, u.content FROM feedback f"
            " JOIN messages a ON a.id = f.message_id"
            " JOIN messages u ON u.session_id = a.session_id AND u.turn = a.turn AND u.role = 'user'"
            " WHERE f.correction = %s",
            (fixed,),
        ).fetchall()
    assert rows == [("down", fixed, 1, question)]
    assert (ARTIFACTS / "browser-feedback.png").stat().st_size > 10_000
