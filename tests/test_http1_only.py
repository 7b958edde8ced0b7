"""The server speaks HTTP/1.1 only (``voiceagent.app.http1_only``): Twilio and the ALB use
nothing else, and HTTP/2 cleartext would put its stream machinery in front of anyone who
reaches a task. Through the real server, with raw TCP clients."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_edge_attacks import raw_answer, raw_response
from voiceagent.app.caller import open_call
from voiceagent.app.http1_only import H2C, PREFACE

SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"     # an empty HTTP/2 SETTINGS


@pytest.mark.timeout(60)
async def test_h2c_by_preface_or_upgrade_is_refused_and_calls_still_work(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    """A prior-knowledge preface got HTTP/2 frames back, and ``Upgrade: h2c`` a 101 and an
    HTTP/2 connection: now a 505 and a close, and an HTTP/1.1 answer. Each is logged once as
    an edge refusal; a real call (its /twiml, its WebSocket) goes on as before."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            host = server.url.removeprefix("http://")
            for _ in range(2):
                answer = await raw_answer(
                    server.url, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SETTINGS_FRAME)
                assert answer.startswith(b"HTTP/1.1 505 "), answer[:60]
                assert b"connection: close" in answer.lower()
                answer = await raw_response(server.url, (
                    f"GET /twiml HTTP/1.1\r\nHost: {host}\r\n"
                    "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n").encode())
                assert answer.startswith(b"HTTP/1.1 "), answer[:60]
                assert not answer.startswith(b"HTTP/1.1 101"), answer[:60]
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open")
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    messages = [r.getMessage() for r in records]
    assert messages.count(PREFACE) == 1                                 # then counted
    assert messages.count(H2C) == 1
    assert vars(next(r for r in records if r.getMessage() == PREFACE))["peer"] == "127.0.0.1"


@pytest.mark.timeout(60)
async def test_an_ignored_h2c_upgrade_is_served_not_counted_as_refused(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    """An ``Upgrade: h2c`` is answered in HTTP/1.1 like any request: it was counted among the
    edge's refusals (a warning, then "requests still refused at the edge" summaries) though
    nothing was refused. Now the first is an INFO line, the rest DEBUG with their count."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            host = server.url.removeprefix("http://")
            for _ in range(3):
                answer = await raw_response(server.url, (
                    f"GET /health HTTP/1.1\r\nHost: {host}\r\n"
                    "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n").encode())
                assert answer.startswith(b"HTTP/1.1 200 "), answer[:60]
            assert not server.runtime.edge_refusals.active
    ignored = [r for r in records if r.getMessage() == H2C]
    assert [r.levelno for r in ignored] == [logging.INFO]
    assert vars(ignored[0])["ignored"] == 1
    assert not [r for r in records if "refused at the edge" in r.getMessage()]
