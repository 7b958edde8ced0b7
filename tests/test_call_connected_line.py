"""A call's relay socket connecting, as the operator filtering on the CallSid reads it.

A call's story started with "session prepared" at /twiml, then its first "turn done": a
call that ended with no turn could be Twilio never connecting the socket or a caller who
said nothing, and no line told them apart. Now the socket's setup, once the call is found,
writes "call connected": one line per relay session (not per frame), naming Twilio's
relay session and, after a failed session, which reconnect it is."""

from __future__ import annotations

import html
import json
import logging
import re
import urllib.request
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import (
    Identity,
    RelayCall,
    RelayTarget,
    open_call,
    open_relay,
    reconnect_target,
)
from voiceagent.logs import JsonFormatter

pytestmark = pytest.mark.timeout(60)


async def test_each_relay_session_of_a_call_says_it_connected(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    identity = Identity()
    sid = identity.call_sid
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                for _ in range(2):
                    await call.say("what are your hours?")
                    await call.read_reply()
                first_session = call.session_id
                await call.fail()                   # the relay session fails mid-call
            target = await reconnect_target(server.url, sid, first_session,
                                            auth_token=AUTH_TOKEN)
            async with open_relay(target, identity, auth_token=AUTH_TOKEN) as again:
                await again.say("and tomorrow?")
                await again.read_reply()
                await again.hang_up()
            await server.runtime.calls.wait_idle()
    story = [r for r in records if vars(r).get("call_sid") == sid]
    events = [r.getMessage() for r in story]
    assert events.count("call connected") == 2
    assert events.index("session prepared") < events.index("call connected") < events.index(
        "turn done")
    first, second = [json.loads(JsonFormatter().format(r)) for r in story
                     if r.getMessage() == "call connected"]
    assert first["call_sid"] == sid
    assert {k: first[k] for k in ("via", "session_id", "generation", "resumed_messages",
                                  "direction", "frames_before_setup")} == {
        "via": "twilio", "session_id": first_session, "generation": 0,
        "resumed_messages": 0, "direction": "inbound", "frames_before_setup": 0}
    assert first["use_case"] == "testUseCase"               # STACK_USE_CASE
    assert first["model_id"] == "scripted (offline)"          # LLM=scripted
    assert first["setup_ms"] >= 0
    assert (second["session_id"], second["generation"]) == (again.session_id, 1)
    assert second["resumed_messages"] >= 4          # greeting, two questions, two answers
    for line in (first, second):                    # the caller's number: masked elsewhere
        assert "5550100" not in json.dumps(line)


def _page(url: str) -> dict[str, str]:
    """GET /phone as the developer's browser loads it: the call it minted."""
    request = urllib.request.Request(url, headers={"Sec-Fetch-Site": "none"})
    with urllib.request.urlopen(request, timeout=10) as response:
        page = response.read().decode()
    found = re.search(r'data-call="([^"]+)"', page)
    assert found is not None, page[:500]
    config: dict[str, str] = json.loads(html.unescape(found.group(1)))
    return config


async def test_a_phone_page_socket_says_so(tmp_path: Path,
                                           records: list[logging.LogRecord]) -> None:
    """The browser phone's socket is admitted by its page's token, not Twilio's signature:
    its call's line says which it was."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path, PHONE_PAGE="true")) as server:
            page = await trio.to_thread.run_sync(_page, server.url + "/phone")
            url = (server.url.replace("http", "ws", 1) + page["relayPath"]
                   + f"?sessionToken={page['sessionToken']}")
            async with open_websocket_url(url, extra_headers=[
                    (b"Origin", server.url.encode())]) as ws:
                call = RelayCall(ws, RelayTarget(url, "", None, {}, {
                    "sessionToken": page["sessionToken"]}),
                    Identity(call_sid=page["callSid"]))
                await call.setup()
                await call.say("what are your hours?")
                await call.read_reply()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    (line,) = [vars(r) for r in records if r.getMessage() == "call connected"]
    assert (line["call_sid"], line["via"]) == (page["callSid"], "phone-page")
