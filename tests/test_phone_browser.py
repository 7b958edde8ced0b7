"""The /phone page (voiceagent/app/phone/) in a real browser, against the real server.

Headless Chromium (Debian's /usr/bin/chromium; .ci/run installs it) is driven by Playwright's
sync API from the test's thread; the server runs in a thread of its own
(tests/browser_support.py). Headless Chromium has no voices and no microphone, so speech
output fails and the page falls back on what it does there: typed text in, replies shown,
"what was heard" = the tokens received so far. Every test has a time limit, and every server
and browser is stopped by its fixture.

The last tests need no browser: the page's absence without PHONE_PAGE, the setting's refusal
off loopback, and how the relay route treats a page's token.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from trio_websocket import ConnectionClosed, open_websocket_url

from actors.history import History
from tests.browser_support import (
    CHROMIUM,
    ServerThread,
    launch_chromium,
    phone_settings,
    server_thread,
)
from tests.fakes import FakeLLM, words
from tests.server_harness import FIXTURE_CONFIG, make_settings, running_server
from tests.test_e2e import upgrade_status
from voiceagent.app import cli
from voiceagent.app.caller import release_transport
from voiceagent.errors import SettingsError
from voiceagent.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
FAKE_WEB_SPEECH = Path(__file__).parent / "fixtures" / "fake_web_speech.js"
ACTION_TIMEOUT_MS = 10_000
COUNTING = ("one two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen seventeen eighteen nineteen twenty")

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's Chromium: apt-get install -y chromium")


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's Chromium: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


class Phone:
    """One page load of /phone, and what its console said."""

    def __init__(self, page: Any, server: ServerThread) -> None:
        self.page = page
        self.server = server
        self.problems: list[str] = []
        self.sent: list[dict[str, Any]] = []         # every frame the page sent, in order
        page.on("console", lambda m: self.problems.append(m.text)
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.problems.append(str(e)))
        page.on("websocket", lambda ws: ws.on(
            "framesent", lambda payload: self.sent.append(json.loads(payload))))

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        return [frame for frame in self.sent if frame["type"] == kind]

    def by(self, testid: str) -> Any:
        return self.page.get_by_test_id(testid)

    def open(self, query: str = "") -> Any:
        response = self.page.goto(self.server.url + "/phone" + query)
        assert response is not None
        assert response.status == 200
        return response

    def call(self) -> None:
        self.by("call").click()
        self.expect(self.by("status")).to_have_attribute("data-state", "live")

    def say(self, text: str) -> None:
        self.by("text-input").fill(text)
        self.by("text-input").press("Enter")

    def agent_turns(self) -> Any:
        return self.by("agent-turn")

    def expect(self, locator: Any) -> Any:
        from playwright.sync_api import expect

        return expect(locator)


@pytest.fixture
def open_phone(browser: Any) -> Any:
    """``with open_phone(settings) as phone``: the server in its thread and one page in a
    fresh browser context; the page is closed before the server stops, so no keep-alive
    connection holds the server's shutdown."""
    @contextmanager
    def open_(settings: Settings, llm: FakeLLM | None = None, *,
              fake_speech: bool = False) -> Iterator[Phone]:
        with server_thread(settings, llm=llm) as server:
            context = browser.new_context(viewport={"width": 1000, "height": 720})
            if fake_speech:
                context.add_init_script(path=str(FAKE_WEB_SPEECH))
            try:
                page = context.new_page()
                page.set_default_timeout(ACTION_TIMEOUT_MS)
                yield Phone(page, server)
            finally:
                context.close()
    return open_


def _finished(server: ServerThread, calls: int = 1) -> None:
    """Until ``calls`` calls have been served and none is left."""
    server.wait_for(lambda c: c.total >= calls and c.active == 0)


def _texts(history: History | None, role: str) -> list[str]:
    assert history is not None
    return [block["text"] for m in history.messages if m["role"] == role
            for block in m["content"] if "text" in block]


# ------------------------------------------------------------------------------ in the browser

@needs_chromium
@pytest.mark.timeout(60)
def test_the_page_loads_under_its_policy(tmp_path: Path, open_phone: Any) -> None:
    with open_phone(phone_settings(tmp_path)) as phone:
        server = phone.server
        response = phone.open()
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self'" in policy
        assert "'unsafe-inline'" not in policy
        assert response.headers["cache-control"] == "no-store"     # it holds a session token
        phone.expect(phone.by("status")).to_have_text("Ready to call")
        phone.expect(phone.by("call-sid")).to_have_text(re.compile(r"^CA[0-9a-f]{32}$"))
        phone.expect(phone.by("use-case")).to_have_text("testUseCase")
        phone.expect(phone.by("text-input")).to_be_disabled()
        assert server.runtime.calls.total == 0       # a page load is not a call yet
        assert phone.problems == []                  # a CSP violation would be reported here


@needs_chromium
@pytest.mark.timeout(60)
def test_a_typed_turn_is_answered_in_the_transcript(tmp_path: Path, open_phone: Any) -> None:
    with open_phone(phone_settings(tmp_path)) as phone:
        server = phone.server
        phone.open()
        phone.call()
        greeting = phone.agent_turns().nth(0)
        phone.expect(greeting.get_by_test_id("agent-text")).to_have_text(
            "Hello, this is Test Pizza.")
        phone.say("what are your hours?")
        phone.expect(phone.by("caller-text").last).to_have_text("what are your hours?")
        reply = phone.agent_turns().nth(1)
        phone.expect(reply.get_by_test_id("agent-text")).to_have_text(
            "We are open from eleven in the morning to nine at night, Tuesday to Sunday.")
        phone.expect(reply.get_by_test_id("latency")).to_have_text(
            re.compile(r"^first word after \d+ ms$"))
        # headless Chromium cannot speak or listen: the page says so and types instead
        phone.expect(phone.by("speech-note")).to_contain_text("type what the caller says")
        phone.by("hang-up").click()
        _finished(server)
        report = server.runtime.calls.reports[-1]
        assert report.call_sid == phone.by("call-sid").text_content()
    setup, prompt = phone.sent[:2]
    assert setup["type"] == "setup"
    assert setup["callSid"] == report.call_sid
    assert set(setup["customParameters"]) == {"sessionToken"}
    assert prompt == {"type": "prompt", "voicePrompt": "what are your hours?",
                      "lang": "en-US", "last": True}
    assert _texts(report.history, "user") == ["what are your hours?"]
    assert report.frames.rejected == {}
    assert phone.problems == []


@needs_chromium
@pytest.mark.timeout(60)
def test_the_interrupt_button_cuts_a_streaming_reply(tmp_path: Path, open_phone: Any) -> None:
    llm = FakeLLM([words(COUNTING, gap_s=0.15, first_s=0.05), words("Okay, I will stop.")])
    with open_phone(phone_settings(tmp_path), llm) as phone:
        server = phone.server
        phone.open()
        phone.call()
        phone.say("count to twenty")
        streaming = phone.agent_turns().nth(1)
        phone.expect(streaming.get_by_test_id("agent-text")).to_contain_text("four")
        phone.by("interrupt").click()
        heard = streaming.get_by_test_id("heard")
        phone.expect(heard).to_contain_text("four")
        spoken = heard.text_content()
        assert not spoken.rstrip().endswith("twenty")        # cut, not finished
        phone.expect(phone.by("interrupt")).to_be_disabled()
        phone.say("stop please")
        phone.expect(phone.agent_turns().nth(2).get_by_test_id("agent-text")).to_have_text(
            "Okay, I will stop.")
        # nothing of the cut reply arrived after the barge-in
        assert heard.text_content() == spoken
        phone.by("hang-up").click()
        _finished(server)
        history = server.runtime.calls.reports[-1].history
    # the next turn's request and the call's history hold exactly what the caller heard
    second = llm.requests[1].messages
    assert [m["role"] for m in second[-2:]] == ["assistant", "user"]
    assert second[-2]["content"] == [{"text": spoken.strip()}]
    assert _texts(history, "assistant")[1] == spoken.strip()
    assert _texts(history, "user") == ["count to twenty", "stop please"]
    interrupt, = phone.sent_of("interrupt")
    assert interrupt["utteranceUntilInterrupt"] == spoken
    assert isinstance(interrupt["durationUntilInterruptMs"], int)


@needs_chromium
@pytest.mark.timeout(60)
def test_a_key_on_the_keypad_gets_the_dtmf_reply(tmp_path: Path, open_phone: Any) -> None:
    with open_phone(phone_settings(tmp_path)) as phone:
        server = phone.server
        phone.open()
        phone.call()
        phone.by("key-1").click()
        phone.expect(phone.by("keypress")).to_contain_text("pressed 1")
        phone.expect(phone.agent_turns().nth(1).get_by_test_id("agent-text")).to_have_text(
            "We are open from eleven to nine.")
        phone.by("hang-up").click()
        _finished(server)
        history = server.runtime.calls.reports[-1].history
    assert _texts(history, "assistant")[-1] == "We are open from eleven to nine."
    assert phone.sent_of("dtmf") == [{"type": "dtmf", "digit": "1"}]


@needs_chromium
@pytest.mark.timeout(60)
def test_hanging_up_ends_the_call(tmp_path: Path, open_phone: Any) -> None:
    with open_phone(phone_settings(tmp_path)) as phone:
        server = phone.server
        phone.open()
        phone.call()
        server.wait_for(lambda c: c.active == 1)
        phone.by("hang-up").click()
        phone.expect(phone.by("status")).to_have_attribute("data-state", "ended")
        phone.expect(phone.by("end-reason")).to_have_text("You hung up.")
        _finished(server)
        report = server.runtime.calls.reports[-1]
        phone.expect(phone.by("call")).to_have_text("New call")
        assert report.call_sid == phone.by("call-sid").text_content()
    assert report.ended_by == "hangup"


@needs_chromium
@pytest.mark.timeout(60)
def test_the_agent_ending_the_call_shows_its_handoff_data(tmp_path: Path,
                                                          open_phone: Any) -> None:
    settings = phone_settings(tmp_path, CONFIG_DIR=str(ROOT / "config"),
                              STACK_USE_CASE="restaurantOrderingUseCase",
                              SCRIPTED_FIRST_TOKEN_DELAY_MS="20", SCRIPTED_TOKEN_DELAY_MS="5")
    with open_phone(settings) as phone:
        server = phone.server
        phone.open()
        phone.call()
        phone.say("can I talk to a person please")
        phone.expect(phone.by("call-end")).to_be_visible()
        phone.expect(phone.by("end-reason")).to_have_text("The agent ended the call.")
        data = json.loads(phone.by("handoff-data").text_content())
        phone.expect(phone.by("status")).to_have_attribute("data-state", "ended")
        _finished(server)
    assert data["reasonCode"] == "user-requested"


@needs_chromium
@pytest.mark.timeout(60)
def test_speech_in_and_out_with_barge_in(tmp_path: Path, open_phone: Any) -> None:
    """The Web Speech paths, with a stand-in engine (tests/fixtures/fake_web_speech.js) that
    speaks a word every 80 ms with boundary events and plays a caller's speech: partial and
    final prompts, speaker and tokens-played events (this use case subscribes), and barge-in
    by speech while a reply is being spoken, reporting the words spoken up to that moment."""
    config = _config_with(tmp_path, partialPrompts=True, debug="speaker-events tokens-played")
    with open_phone(phone_settings(tmp_path, CONFIG_DIR=str(config)),
                    fake_speech=True) as phone:
        server = phone.server
        page = phone.page
        phone.open()
        phone.call()
        page.wait_for_function("() => window.fakeCaller.listening")
        page.wait_for_function("g => window.fakeSpeech.spoken.includes(g)",   # greeted
                               arg="Hello, this is Test Pizza.")
        page.evaluate("() => window.fakeCaller.say('what are your hours')")
        reply = phone.agent_turns().nth(1)
        phone.expect(reply.get_by_test_id("agent-text")).to_have_text(re.compile("^We are open"))
        words_before = page.evaluate("() => window.fakeSpeech.words")
        page.wait_for_function("n => window.fakeSpeech.words >= n", arg=words_before + 4)
        page.evaluate("() => window.fakeCaller.say('stop')")                # barge-in by speech
        heard = reply.get_by_test_id("heard")
        phone.expect(heard).to_have_text(re.compile("^We are open"))
        spoken = heard.text_content()
        unheard = reply.get_by_test_id("unheard").text_content()
        phone.expect(phone.agent_turns().nth(2).get_by_test_id("agent-text")).to_have_text(
            "Sorry, I did not catch that.")
        phone.by("hang-up").click()
        _finished(server)
        history = server.runtime.calls.reports[-1].history
    full = "We are open from eleven in the morning to nine at night, Tuesday to Sunday."
    assert spoken + unheard == full                 # the whole reply arrived, not all was heard
    assert unheard
    assert len(spoken.split()) >= 4
    assert _texts(history, "assistant")[1] == spoken.strip()
    prompts = phone.sent_of("prompt")
    assert [p["voicePrompt"] for p in prompts if not p["last"]] == [
        "what", "what are", "what are your"]                      # partials are cumulative
    assert [p["voicePrompt"] for p in prompts if p["last"]] == ["what are your hours", "stop"]
    assert {p["lang"] for p in prompts} == {"en-US"}
    interrupt, = phone.sent_of("interrupt")
    assert interrupt["utteranceUntilInterrupt"] == spoken
    assert interrupt["durationUntilInterruptMs"] >= 3 * 80      # the 4th word began at 240 ms
    events = [(f["name"], f["value"]) for f in phone.sent_of("info")]
    assert ("clientSpeaking", "on") in events
    assert ("agentSpeaking", "on") in events
    assert ("tokensPlayed", "Hello, this is Test Pizza.") in events
    assert phone.problems == []


# ------------------------------------------------------------------------------ no browser

async def test_without_the_setting_there_is_no_phone_page(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            for path in ("/phone", "/phone/phone.js", "/phone/phone.css"):
                assert await _status(server.url + path) == 404
            # a token in the socket URL changes nothing: the upgrade is signature-checked
            assert await upgrade_status(server.url, "/relay?sessionToken=anything") == 403


def test_the_setting_is_refused_off_loopback() -> None:
    base = {"TWILIO_AUTH_TOKEN": "x", "LLM": "scripted", "PHONE_PAGE": "true"}
    with pytest.raises(SettingsError, match=r"PHONE_PAGE: .*loopback HOST, not on '0\.0\.0\.0'"):
        Settings.from_env(base)                              # HOST defaults to 0.0.0.0
    with pytest.raises(SettingsError, match="PHONE_PAGE"):
        Settings.from_env({**base, "HOST": "192.168.1.20"})
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert Settings.from_env({**base, "HOST": host}).phone_page
    assert Settings.from_env({**base, "HOST": "0.0.0.0", "DEMO": "true"}).phone_page
    assert not Settings.from_env({"TWILIO_AUTH_TOKEN": "x"}).phone_page   # never by default


@pytest.mark.timeout(60)                 # were it not refused: serve, in this process
def test_serve_refuses_to_start_with_the_page_off_loopback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)                      # no ./.env
    for name, value in {"TWILIO_AUTH_TOKEN": "x", "LLM": "scripted", "PHONE_PAGE": "true",
                        "HOST": "0.0.0.0", "DATA_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DEMO", raising=False)
    assert cli.main(["serve"]) == 2
    assert "PHONE_PAGE: the browser phone (/phone) is for development" in capsys.readouterr().err


async def test_demo_web_prints_the_page_url_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    # not the developer's environment: an LLM, STORE or AWS_* there would change the demo
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT), "AWS_EC2_METADATA_DISABLED": "true"}
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "voiceagent", "demo", "--web"], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert process.stdout is not None
            printed = b""
            while b"\n" not in printed:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "voiceagent demo --web exited before printing its URL"
                printed += chunk
            found = re.search(rb"http://127\.0\.0\.1:\d+/phone\b", printed)
            assert found is not None, printed
            status, body = await trio.to_thread.run_sync(_get, found.group().decode())
            assert status == 200
            assert "Restaurant Ordering" in body
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130      # as `serve` and the terminal demo exit
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_a_page_token_opens_one_socket_for_its_own_call_only(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(phone_settings(tmp_path)) as server:
            ws_url = server.url.replace("http", "ws")
            here = {"Origin": server.url}
            # from another site's page: refused, and the token is spent
            path = _relay_path(await _page_call(server.url))
            assert await upgrade_status(server.url, path, {"Origin": "http://evil.example"}) \
                == 403
            assert await upgrade_status(server.url, path, here) == 403
            # a token nobody minted, or none and no signature: refused
            assert await upgrade_status(server.url, "/relay?sessionToken=forged", here) == 403
            assert await upgrade_status(server.url, "/relay", here) == 403
            # a fresh page: its socket may claim its own CallSid, and nothing else
            call = await _page_call(server.url)
            async with open_websocket_url(ws_url + _relay_path(call),
                                          extra_headers=_headers(here)) as ws:
                await ws.send_message(json.dumps(_setup(call, call_sid="CA" + "1" * 32)))
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                await release_transport(ws)
            assert closed.value.reason.code == 1008
            assert await upgrade_status(server.url, _relay_path(call), here) == 403  # spent
            # a third page, its own call: served
            call = await _page_call(server.url)
            async with open_websocket_url(ws_url + _relay_path(call),
                                          extra_headers=_headers(here)) as ws:
                await ws.send_message(json.dumps(_setup(call)))
                await ws.send_message(json.dumps({"type": "prompt", "last": True,
                                                  "voicePrompt": "what are your hours?"}))
                first = json.loads(await ws.get_message())
                await ws.aclose()
            await server.runtime.calls.wait_idle()
    assert first["type"] == "text"
    assert server.runtime.calls.total == 1


# ------------------------------------------------------------------------------ helpers

def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


async def _status(url: str) -> int:
    return (await trio.to_thread.run_sync(_get, url))[0]


async def _page_call(base_url: str) -> dict[str, Any]:
    """What /phone embeds for the page: the call it minted."""
    status, body = await trio.to_thread.run_sync(_get, base_url + "/phone")
    assert status == 200
    found = re.search(r'data-call="([^"]*)"', body)
    assert found is not None
    call: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return call


def _config_with(tmp_path: Path, **relay: Any) -> Path:
    """The fixture config with these attributes added to the test use case's relay."""
    config = tmp_path / "config"
    shutil.copytree(FIXTURE_CONFIG, config)
    path = config / "usecases" / "testUseCase.yaml"
    use_case = yaml.safe_load(path.read_text())
    use_case["relay"].update(relay)
    path.write_text(yaml.safe_dump(use_case))
    return config


def _relay_path(call: dict[str, Any]) -> str:
    return f"{call['relayPath']}?sessionToken={call['sessionToken']}"


def _setup(call: dict[str, Any], call_sid: str | None = None) -> dict[str, Any]:
    return {"type": "setup", "sessionId": "VX1", "callSid": call_sid or call["callSid"],
            "from": call["from"], "to": call["to"],
            "customParameters": {"sessionToken": call["sessionToken"]}}


def _headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]
