"""The WebSocket caller that plays Twilio (``voiceagent call``, the tests, the benchmarks): what
it reports as heard must be what Twilio would, the talk cycle being played now."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import CallerError, open_call


async def test_a_barge_in_after_a_keypress_reports_the_keypad_reply_alone(
        tmp_path: Path) -> None:
    """``heard`` was reset by a prompt only: after a keypress the barge-in sent the reply
    before it and the keypad reply run together, and the transcript marked both as cut
    (helper-33)."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what are your hours?")
                assert (await call.read_reply()).closed
                await call.dtmf("1")
                keypad = await call.read_reply()
                heard = await call.interrupt()
                await call.hang_up()
    assert keypad.text == "We are open from eleven to nine."
    assert heard == keypad.text


async def test_an_unsigned_call_refused_says_the_token_is_missing(tmp_path: Path) -> None:
    """``voiceagent call`` without a token sent an unsigned webhook, and said only "403:
    invalid signature", as if the token were wrong (helper-33). It then said to set the
    token, and nothing of ``.env``: after the README's ``voiceagent serve`` (token in
    ``.env``), ``voiceagent call`` beside it, which reads no ``.env``, was refused with
    advice that seemed already followed (s26 README walk)."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            with pytest.raises(CallerError, match="went unsigned: set TWILIO_AUTH_TOKEN") as err:
                async with open_call(server.url, auth_token=None):
                    pass
    assert "`voiceagent call` does not read .env" in str(err.value)
    assert "`set -a; . ./.env; set +a`" in str(err.value)


async def test_a_call_signed_with_another_token_says_which_token_to_use(tmp_path: Path) -> None:
    """A wrong token got a bare "403: invalid signature", with nothing to do about it
    (s14-tutorial review)."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            with pytest.raises(CallerError, match=r"use the server's TWILIO_AUTH_TOKEN .*\.env"):
                async with open_call(server.url, auth_token=AUTH_TOKEN + "-not"):
                    pass


async def test_a_call_is_dialled_while_trios_default_threads_are_all_taken(
        tmp_path: Path) -> None:
    """The webhook POST ran on trio's default thread limiter, which a process embedding the
    server (voiceagent.app.testing, the demo) shares with blocking work in tools, sent there
    by ``trio.to_thread.run_sync``: with its threads all held, no call could be dialled. The
    caller's POSTs now take threads of their own (``run_blocking``)."""
    default = trio.to_thread.current_default_thread_limiter()
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            holders = [object() for _ in range(int(default.total_tokens))]
            for holder in holders:              # slow blocking tools, say, on every thread
                default.acquire_on_behalf_of_nowait(holder)
            try:
                with trio.fail_after(10):
                    async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                        await call.say("what are your hours?")
                        assert (await call.read_reply()).closed
                        await call.hang_up()
            finally:
                for holder in holders:
                    default.release_on_behalf_of(holder)
