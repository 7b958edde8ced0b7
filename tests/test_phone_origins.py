"""Who may reach a development server with signatures off (`voiceagent demo --web`, the
browser phone): this machine's own clients and PUBLIC_URL's tunnel, never another site's
page, whether by a rebound DNS name, a cross-site socket or a no-cors fetch."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio

from tests.server_harness import make_settings, running_server

FOREIGN = "rebind.evil.example"


def _demo_web_settings(tmp_path: Path, **overrides: str):   # type: ignore[no-untyped-def]
    """What `voiceagent demo --web` runs with (cli._demo): the page on, signatures off."""
    return make_settings(tmp_path, PHONE_PAGE="true", DEMO="true",
                         VALIDATE_SIGNATURES="false", **overrides)


def _post(url: str, body: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


async def _upgrade(base_url: str, path: str, headers: dict[str, str]) -> int:
    """The status of a WebSocket upgrade sent with exactly these Host/Origin headers."""
    host, port = base_url.removeprefix("http://").split(":")
    lines = [f"GET {path} HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
             *(f"{k}: {v}" for k, v in headers.items())]
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await stream.receive_some(4096)
    return int(head.split(b" ", 2)[1])


async def test_demo_web_refuses_foreign_origins_on_twiml_and_relay(
        tmp_path: Path) -> None:
    """docs/phone.md: "a DNS name rebound to 127.0.0.1 would otherwise reach the page ...
    such upgrades get 403". Only /phone checks Host and Origin: with `demo --web`'s
    settings (signatures off), a page on rebind.evil.example (rebound to 127.0.0.1) POSTs
    /twiml, reads the session token from the TwiML, and opens /relay from its own origin
    without any phone page token. Any other site can open /relay too (cross-site WebSocket
    hijacking): the upgrade's Origin is never looked at."""
    with trio.fail_after(20):
        async with running_server(_demo_web_settings(tmp_path)) as server:
            port = server.url.rsplit(":", 1)[1]
            foreign = {"Host": f"{FOREIGN}:{port}", "Origin": f"http://{FOREIGN}:{port}"}
            status, twiml = await trio.to_thread.run_sync(
                _post, server.url + "/twiml",
                "CallSid=CA" + "e" * 32 + "&From=%2B15555550100&To=%2B15555550199", foreign)
            minted = re.search(r'name="sessionToken" value="([^"]+)"', twiml)
            rebound = await _upgrade(server.url, "/relay", foreign)
            cross_site = await _upgrade(server.url, "/relay", {
                "Host": f"127.0.0.1:{port}", "Origin": "http://evil.example"})
    failures = []
    if status == 200 and minted is not None:
        failures.append(f"/twiml minted a session token for Host {FOREIGN}:{port}")
    if rebound != 403:
        failures.append(f"a rebound foreign origin's /relay upgrade got {rebound}")
    if cross_site != 403:
        failures.append(f"another site's /relay upgrade got {cross_site}")
    assert not failures, "; ".join(failures)


async def test_unsigned_requests_through_public_urls_tunnel_are_still_served(
        tmp_path: Path) -> None:
    """The rule keeps a tunnel working: addressed to PUBLIC_URL's host, through a proxy."""
    settings = _demo_web_settings(tmp_path, PUBLIC_URL="https://dev-tunnel.example")
    tunnel = {"Host": "dev-tunnel.example", "X-Forwarded-For": "203.0.113.9"}
    with trio.fail_after(20):
        async with running_server(settings) as server:
            status, twiml = await trio.to_thread.run_sync(
                _post, server.url + "/twiml",
                "CallSid=CA" + "f" * 32 + "&From=%2B15555550100&To=%2B15555550199", tunnel)
            upgraded = await _upgrade(server.url, "/relay", tunnel)
            elsewhere = await _upgrade(server.url, "/relay", {**tunnel, "Host": "other.example"})
    assert status == 200
    assert 'name="sessionToken"' in twiml
    assert upgraded == 101
    assert elsewhere == 403


def test_the_browser_phone_refuses_to_share_a_port_between_processes() -> None:
    """A page's ticket lives in the process that served it: with REUSE_PORT (the image's
    WORKERS > 1) about half of the Call clicks reached another process and were refused."""
    import pytest

    from voiceagent.errors import SettingsError
    from voiceagent.settings import Settings
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"PHONE_PAGE": "true", "REUSE_PORT": "1", "HOST": "127.0.0.1",
                           "TWILIO_AUTH_TOKEN": "t", "STORE": "sqlite", "LLM": "scripted"})
    assert any(p.startswith("PHONE_PAGE: a page's call ticket lives in the process")
               for p in caught.value.problems)


def _get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


async def test_another_site_cannot_mint_page_calls_or_evict_the_developers_token(
        tmp_path: Path) -> None:
    """GET /phone mints a call and a ticket for whoever asks, whatever site asked: a page on
    evil.example can fire `fetch("http://127.0.0.1:PORT/phone", {mode: "no-cors"})` (or 64
    <img> tags); it cannot read the answers, but each one prepares a session and takes one
    of MAX_TICKETS (64) places, the oldest going first. So the developer's open page, loaded
    before, is refused when they click Call ("invalid session token"). Browsers mark such
    requests Sec-Fetch-Site: cross-site; nothing looks at it."""
    from voiceagent.app.phone_page import MAX_TICKETS
    cross_site = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
                  "Sec-Fetch-Dest": "image", "Referer": "http://evil.example/"}
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path, PHONE_PAGE="true")) as server:
            port = server.url.rsplit(":", 1)[1]
            here = {"Host": f"127.0.0.1:{port}", "Origin": server.url}
            status, page = await trio.to_thread.run_sync(
                _get, server.url + "/phone", {"Sec-Fetch-Site": "none",
                                             "Sec-Fetch-Mode": "navigate"})
            assert status == 200
            token = re.search(r"sessionToken&quot;: &quot;([^&]+)&quot;", page)
            assert token is not None
            minted_cross_site = 0
            for _ in range(MAX_TICKETS):
                status, _body = await trio.to_thread.run_sync(
                    _get, server.url + "/phone", cross_site)
                minted_cross_site += status == 200
            admitted = await _upgrade(server.url, f"/relay?sessionToken={token.group(1)}",
                                      here)
    assert (minted_cross_site, admitted) == (0, 101), (
        f"{minted_cross_site} cross-site GET /phone minted calls; the developer's page "
        f"then got {admitted} on Call")


ASYNC_END = """
(() => {
  // As browsers do (Web Speech API: the end event is queued as a task), abort() fires "end"
  // after it returns, not inside it. Counts the recognisers started and not yet ended, and
  // the late ends whose aftermath is over: a timer the page's "end" handler set (listen()
  // again 250 ms on) is due before one set after the handler returned, 600 ms on.
  window.liveRecognisers = 0;
  window.settledEnds = 0;
  const Base = window.SpeechRecognition;
  class SpecRecognition extends Base {
    start() { super.start(); window.liveRecognisers += 1; }
    abort() {
      setTimeout(() => {
        window.liveRecognisers -= 1;
        super.abort();
        setTimeout(() => { window.settledEnds += 1; }, 600);
      }, 20);
    }
  }
  window.SpeechRecognition = window.webkitSpeechRecognition = SpecRecognition;
})();
"""


@pytest.mark.timeout(60)
def test_toggling_the_microphone_leaves_one_recogniser_listening(tmp_path: Path) -> None:
    """phone.js listen(): each recogniser's "end" handler sets the shared `recognition` to
    null whichever recogniser it belongs to. Unticking and ticking Microphone quickly (the
    old recogniser's "end" not in yet, as in browsers, where it comes as a later task)
    starts a second recogniser; the first one's late "end" then forgets the second and
    schedules listen() again, which starts a third while the second still listens: every
    utterance is then transcribed, and sent as a prompt, twice."""
    from tests.browser_support import CHROMIUM, launch_chromium, phone_settings, server_thread
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's Chromium")
    from playwright.sync_api import sync_playwright

    fake = Path(__file__).parent / "fixtures" / "fake_web_speech.js"
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            with server_thread(phone_settings(tmp_path)) as server:
                context = chromium.new_context()
                context.add_init_script(path=str(fake))
                context.add_init_script(script=ASYNC_END)
                try:
                    page = context.new_page()
                    page.set_default_timeout(10_000)
                    page.goto(server.url + "/phone")
                    page.get_by_test_id("call").click()
                    page.wait_for_function("() => window.liveRecognisers === 1")
                    page.get_by_test_id("mic").evaluate(     # off and on, within 20 ms
                        "m => { m.click(); m.click(); }")
                    # the first recogniser's late "end", and any listen() it scheduled
                    page.wait_for_function("() => window.settledEnds === 1")
                    live = page.evaluate("() => window.liveRecognisers")
                    page.get_by_test_id("hang-up").click()
                finally:
                    context.close()
        finally:
            chromium.close()
    assert live == 1, f"{live} speech recognisers listening at once after a mic toggle"
