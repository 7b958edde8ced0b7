"""A socket refused because the store could not decide its claim, and the call it belongs
to: two real servers over one SQLite file, the call minted on A, its socket on B, whose
claim's write stalls. A session read from the store is served only on the store's word
(``session_claims``), so B closes the socket 1011 once CLAIM_ELSEWHERE_S is up; Twilio then
asks ``/action``, and that must renew the call, since the refused claim was never queued
(its token unspent), and the reconnect's socket, on the other server, must be served."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio

import voiceagent.store.records as records
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import Identity, open_relay, parse_relay_twiml, post_form
from voiceagent.app.session_claims import CLAIM_ELSEWHERE_S
from voiceagent.app.sessions import TOKEN_PARAMETER

pytestmark = pytest.mark.timeout(60)


async def test_a_claim_the_store_did_not_decide_is_refused_and_the_call_renewed(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, FLUSH_TIMEOUT_S=1)
    identity = Identity()
    with trio.fail_after(45):
        async with running_server(settings) as a, running_server(settings) as b:
            target = parse_relay_twiml(await post_form(a.url + "/twiml", {
                "CallSid": identity.call_sid, "From": identity.from_number,
                "To": identity.to_number}, AUTH_TOKEN))
            on_b = dataclasses.replace(target, url=target.url.replace(a.url[7:], b.url[7:]))
            store_b = b.runtime.store
            real_put = store_b.put_if_newer

            async def stalled(*args: Any, **kwargs: Any) -> bool:
                await trio.sleep(3600)                  # DynamoDB not answering
                return await real_put(*args, **kwargs)

            store_b.put_if_newer = stalled              # type: ignore[method-assign]
            started = trio.current_time()
            async with open_relay(on_b, identity, auth_token=AUTH_TOKEN) as refused:
                assert await refused.receive() is None
            waited = trio.current_time() - started
            store_b.put_if_newer = real_put             # type: ignore[method-assign]
            assert refused.closed_by_server == 1011
            stored = await a.runtime.store.get(identity.call_sid, records.SESSION_SK)
            assert stored is not None
            assert stored["token"] == target.parameters[TOKEN_PARAMETER]    # unspent
            renewal = parse_relay_twiml(await post_form(b.url + "/action", {
                "SessionStatus": "failed", "CallStatus": "in-progress", "ErrorCode": "64105",
                "CallSid": identity.call_sid, "SessionId": refused.session_id}, AUTH_TOKEN))
            on_a = dataclasses.replace(renewal, url=renewal.url.replace(b.url[7:], a.url[7:]))
            async with open_relay(on_a, identity, auth_token=AUTH_TOKEN) as reconnect:
                await reconnect.say("hello?")           # served on A, minted on B
                reply = await reconnect.read_reply()
                await reconnect.hang_up()
    assert waited >= CLAIM_ELSEWHERE_S                  # the caller's silence before 1011
    assert reply.tokens
    assert b.runtime.writer.statistics().undecided == 1
    assert a.runtime.writer.statistics().undecided == 0
