"""Two signed ``/action`` requests renewing one generation of a call at once, each on its
own server process (two real servers over one SQLite file, as WORKERS=2 runs them): the
store takes one renewal, so Twilio gets one reconnect TwiML, and the other request a 409
counted ``refused_replay``. The requests carry different SessionIds, so that the relay
session marks (``relay_answers``, which a same-SessionId replay meets first) let both
through to the renewal, the last line of defence; ``test_session_claims_across_processes``
holds the same race at the ``Sessions`` level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import voiceagent.store.records as records
from tests.server_harness import AUTH_TOKEN, make_settings, running_server, until_started
from tests.test_metrics import METRICS_TOKEN, _scrape, _value
from voiceagent.app.caller import CallerError, open_call, open_relay, parse_relay_twiml, post_form
from voiceagent.app.runtime import Runtime
from voiceagent.app.sessions import TOKEN_PARAMETER
from voiceagent.usecases import UseCase

pytestmark = pytest.mark.timeout(60)

FAILED = {"SessionStatus": "failed", "CallStatus": "in-progress", "ErrorCode": "64105"}


def _meet_before_renewing(runtimes: list[Runtime]) -> None:
    """Each ``/action``, the session read, waits for the other one to have read it too:
    both then renew the same generation."""
    arrived, both = 0, trio.Event()
    for runtime in runtimes:
        real = runtime.catalog.use_case

        async def after_both_read(name: str, real: Any = real) -> UseCase:
            nonlocal arrived
            arrived += 1
            if arrived == len(runtimes):
                both.set()
            await both.wait()
            return await real(name)         # type: ignore[no-any-return]

        runtime.catalog.use_case = after_both_read     # type: ignore[method-assign]


async def test_two_renewals_of_one_generation_on_two_servers_answer_one_reconnect(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, METRICS_TOKEN=METRICS_TOKEN, FLUSH_TIMEOUT_S=1)
    answers: dict[str, str] = {}
    with trio.fail_after(45):
        async with running_server(settings) as a, running_server(settings) as b:
            async with open_call(a.url, auth_token=AUTH_TOKEN) as call:
                call_sid = call.identity.call_sid
                await until_started(a.runtime.calls, 1)
                await call.hang_up()
            await a.runtime.calls.wait_idle()
            assert await a.runtime.writer.flush(timeout_s=10)
            _meet_before_renewing([a.runtime, b.runtime])

            async def ask(name: str, url: str, session_id: str) -> None:
                try:
                    answers[name] = await post_form(url + "/action", {
                        **FAILED, "CallSid": call_sid, "SessionId": session_id}, AUTH_TOKEN)
                except CallerError as err:
                    answers[name] = str(err)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, "a", a.url, "VX" + "a" * 32)
                nursery.start_soon(ask, "b", b.url, "VX" + "b" * 32)
            offered = {name: call_sid in server.runtime.sessions._offers
                       for name, server in (("a", a), ("b", b))}
            for server in (a, b):
                await server.runtime.reconnects.settled()
            samples = {name: (await trio.to_thread.run_sync(_scrape, server.url))[1]
                       for name, server in (("a", a), ("b", b))}
            renewed = [name for name, answer in answers.items()
                       if "<ConversationRelay" in answer]
            assert len(renewed) == 1, answers
            winner, loser = renewed[0], "b" if renewed[0] == "a" else "a"
            target = parse_relay_twiml(answers[winner])
            stored = await a.runtime.store.get(call_sid, records.SESSION_SK)
            assert stored is not None
            assert (stored["generation"], stored["token"]) == (
                1, target.parameters[TOKEN_PARAMETER])
            async with open_relay(target, call.identity, auth_token=AUTH_TOKEN) as reconnect:
                await reconnect.say("are you there?")       # served: the agent answers
                reply = await reconnect.read_reply()
                await reconnect.hang_up()
            for server in (a, b):
                await server.runtime.calls.wait_idle()
            claimed = await a.runtime.store.get(call_sid, records.SESSION_SK)
    assert reply.tokens
    assert reply.closed
    assert claimed is not None
    assert (claimed["generation"], claimed["token"]) == (1, "")     # its claim landed
    assert "HTTP 409: this call's session was already renewed" in answers[loser]
    assert offered == {winner: True, loser: False}      # the lost renewal taken back
    assert _value(samples[loser], "voiceagent_reconnects_total", outcome="refused_replay") == 1
    assert _value(samples[winner], "voiceagent_reconnects_total", outcome="refused_replay") == 0
    assert sum(_value(samples[name], "voiceagent_reconnects_total", outcome=outcome)
               for name in ("a", "b") for outcome in ("resumed", "resumed_partial")) == 1
