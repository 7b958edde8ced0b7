"""The reconnect limit's boundary: a call whose relay session keeps failing is given a fresh
session MAX_RECONNECTS times, and the next ``/action`` is its goodbye (``Say``, ``Hangup``),
not another session: the caller is not kept in a loop, nor cut off one reconnect early."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server, until_started
from voiceagent.app.caller import open_call, parse_relay_twiml, post_form
from voiceagent.app.sessions import MAX_RECONNECTS, TOKEN_PARAMETER


async def test_the_last_allowed_reconnect_is_given_and_the_one_after_it_refused(
        tmp_path: Path) -> None:
    failed = {"SessionStatus": "failed", "CallStatus": "in-progress", "ErrorCode": "64105"}
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                call_sid = call.identity.call_sid
                await until_started(server.runtime.calls, 1)
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            answers = [await post_form(server.url + "/action", {
                **failed, "CallSid": call_sid, "SessionId": f"VX{n}"}, AUTH_TOKEN)
                for n in range(MAX_RECONNECTS + 1)]
    *given, refused = answers
    assert len(given) == MAX_RECONNECTS
    for answer in given:                       # each a session the caller is put back into
        assert set(parse_relay_twiml(answer).parameters) == {TOKEN_PARAMETER}
    assert [child.tag for child in ET.fromstring(refused)] == ["Say", "Hangup"]
