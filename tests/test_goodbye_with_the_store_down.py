"""The agent's goodbye while the store is down (a DynamoDB incident as the call ends), through
the real server and a real WebSocket caller.

Once the agent's ``end`` closed the session (the caller was silent, the call's time was up,
the model kept failing, ``endCall``), Twilio's ``/action`` first waited for the call's
writes to reach the store (FLUSH_TIMEOUT_S, 5 s) and then read the call's session: with the
store down the caller, who had just heard the agent's goodbye, sat 5 s in silence and then
heard "Sorry, we cannot take your call right now. Please try again later." A goodbye needs
nothing stored: it is answered at once, as it is with the store up.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import open_call, post_form
from voiceagent.app.session_end import GOODBYE
from voiceagent.errors import StoreError

pytestmark = pytest.mark.timeout(60)


async def test_a_goodbye_with_the_store_down_is_answered_at_once_as_a_goodbye(
        tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with running_server(make_settings(tmp_path)) as server:
            store = server.runtime.store

            async def unreachable(*args: Any, **kwargs: Any) -> Any:
                await trio.sleep(0.05)
                raise StoreError("dynamodb: connection refused")

            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what are your hours?")
                await call.read_reply()
                working = {name: getattr(store, name) for name in ("get", "put", "put_many")}
                for name in working:
                    setattr(store, name, unreachable)
                await call.say("thanks, that's all")      # written behind: it cannot be
                await call.read_reply()
                await call.hang_up()
            started = trio.current_time()
            answer = await post_form(server.url + "/action", {
                "CallSid": call.identity.call_sid, "SessionStatus": "ended",
                "CallStatus": "in-progress",
                "HandoffData": json.dumps({"reasonCode": "caller-silent"})}, AUTH_TOKEN)
            waited = trio.current_time() - started
            for name, method in working.items():        # back up: the server stops at once
                setattr(store, name, method)
    root = ET.fromstring(answer)
    assert [(child.tag, child.text) for child in root] == [("Say", GOODBYE), ("Hangup", None)]
    assert waited < 3.0                    # not the flush's 5 s; real time, a loaded machine
