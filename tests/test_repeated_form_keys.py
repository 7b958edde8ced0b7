"""A webhook whose form repeats a name is checked as Twilio signs it: every value of the name,
in sorted order (spec §6.1; Twilio: "pass every received parameter"). Only the first value of
each name used to be checked, so such a request from Twilio was refused 403."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import trio
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from tests.server_harness import AUTH_TOKEN, RunningServer, make_settings, running_server

PAIRS = [("CallSid", "CA" + "7" * 32), ("From", "+15555550123"), ("To", "+15555550199"),
         ("StirVerstat", "TN-Validation-Passed-A"), ("StirVerstat", "TN-Validation-Passed-B")]


async def status_of(server: RunningServer, path: str, pairs: list[tuple[str, str]],
                    signature: str) -> int:
    host, port = server.url.removeprefix("http://").split(":")
    body = urllib.parse.urlencode(pairs).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Twilio-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n")
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(head.encode() + body)
        answer = await stream.receive_some(4096)
    return int(answer.split(b" ", 2)[1])


async def test_a_form_repeating_a_name_is_checked_with_all_its_values(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            url = server.url + "/twiml"
            twilios = RequestValidator(AUTH_TOKEN).compute_signature(url, MultiDict(PAIRS))
            first_values_only = RequestValidator(AUTH_TOKEN).compute_signature(
                url, dict(PAIRS[:4]))
            assert await status_of(server, "/twiml", PAIRS, first_values_only) == 403
            assert await status_of(server, "/twiml", PAIRS, twilios) == 200
