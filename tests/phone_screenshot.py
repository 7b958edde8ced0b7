"""Take docs/phone.png: a conversation on the /phone page with the restaurant agent.

    python -m tests.phone_screenshot docs/phone.png

The same machinery as tests/test_phone_browser.py: the real server with the scripted model and
the repository's config/ in a thread, Debian's headless Chromium driven by Playwright. The
caller types (headless Chromium has no microphone), cuts one reply short, and presses 0 for a
person, which ends the relay session with handoffData.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.browser_support import launch_chromium, phone_settings, server_thread

ROOT = Path(__file__).resolve().parent.parent


def take(out: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        settings = phone_settings(
            Path(scratch), CONFIG_DIR=str(ROOT / "config"),
            STACK_USE_CASE="restaurantOrderingUseCase", TIME_ZONE="America/Los_Angeles",
            SCRIPTED_FIRST_TOKEN_DELAY_MS="150", SCRIPTED_TOKEN_DELAY_MS="40")
        with server_thread(settings) as server, sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 1240},
                                        device_scale_factor=1)
                page.set_default_timeout(15_000)
                by = page.get_by_test_id
                agent = by("agent-turn")

                def say(text: str, answers: int) -> None:
                    by("text-input").fill(text)
                    by("text-input").press("Enter")
                    expect(agent).to_have_count(answers)
                    expect(agent.nth(answers - 1)).to_contain_text("first word after")

                page.goto(server.url + "/phone")
                by("call").click()
                expect(by("status")).to_have_attribute("data-state", "live")
                say("Hi, what are your hours?", 2)
                page.wait_for_timeout(800)
                say("What's on the menu?", 3)
                expect(agent.nth(2).get_by_test_id("agent-text")).to_contain_text("sizes")
                by("interrupt").click()
                say("Can I get a large pepperoni pizza for pickup?", 4)
                page.wait_for_timeout(1500)
                by("key-0").click()                     # 0: a person, by handoff
                expect(by("call-end")).to_be_visible()
                page.screenshot(path=str(out))
            finally:
                browser.close()


if __name__ == "__main__":
    take(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "phone.png")
