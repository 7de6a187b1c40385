"""The chat page of ``lmforge serve --ui`` in a real headless browser.

Debian's chromium (``/usr/bin/chromium``; ``.ci/run`` installs it) driven by
Playwright pointed at that binary: no browser download. Types a question, waits
for the streamed answer, checks it equals the server's own answer, sets a system
prompt, clears the history, and saves a screenshot (docs/img/chat-ui.png when
``LMFORGE_SCREENSHOT`` names a path).
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from serving_testing import LiveServer  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system chromium (apt-get install chromium)")

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def ui_server(trained_tiny_llama):
    from lmforge.inference.serve import load_server

    server = load_server(trained_tiny_llama, served_model_name="tiny", dtype="float32")
    srv = LiveServer(server, ui=True)
    yield srv
    srv.close()


def test_chat_page_streams_an_answer(ui_server, tmp_path):
    from lmforge import Completion

    local = Completion(ui_server.server.models.completion.source, dtype="float32")
    question = "小红有4个苹果，又买了3个。现在有多少个苹果？"
    want = local.generate(question, max_new_tokens=32).text
    assert want
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS,
                                    env={**os.environ, "HOME": str(tmp_path)})
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            page.goto(ui_server.url + "/")
            assert page.title() == "lmforge chat"
            assert page.locator("#model").input_value() == "tiny"
            page.fill("#max_tokens", "32")
            page.fill("#prompt", question)
            page.click("#send")
            answer = page.locator(".msg.assistant").last
            page.wait_for_function("() => { const m = document.querySelectorAll('.msg.assistant');"
                                   " return m.length && m[m.length - 1].dataset.done === '1'; }", timeout=60000)
            assert page.locator(".msg.user").last.inner_text() == question
            assert answer.inner_text().strip() == want.strip()
            shot = os.environ.get("LMFORGE_SCREENSHOT") or str(tmp_path / "chat-ui.png")
            page.screenshot(path=shot)
            assert os.path.getsize(shot) > 5000

            # a second turn carries the history; clear forgets it
            page.fill("#system", "Answer briefly.")
            page.fill("#prompt", "What is 2 plus 3?")
            page.press("#prompt", "Enter")
            page.wait_for_function("() => document.querySelectorAll('.msg.assistant').length === 2 &&"
                                   " document.querySelectorAll('.msg.assistant')[1].dataset.done === '1'",
                                   timeout=60000)
            assert page.locator(".msg.error").count() == 0
            history = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question},
                       {"role": "assistant", "content": answer.inner_text()},
                       {"role": "user", "content": "What is 2 plus 3?"}]
            second = page.locator(".msg.assistant").nth(1).inner_text()
            assert second.strip() == local.generate(history, max_new_tokens=32).text.strip()
            page.click("#clear")
            assert page.locator(".msg").count() == 0
        finally:
            browser.close()
