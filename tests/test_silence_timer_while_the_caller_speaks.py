"""The silence timer with Twilio's speaker events on the caller's side: a caller who is still
talking (``clientSpeaking`` on, their prompt not yet sent) is not silent. The timer used to
restart at "on" and run, so a caller talking longer than IDLE_REPROMPT_S was asked "are you
still there?" mid-sentence, twice, and then hung up on at the re-prompt limit."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from actors.call_timers import MAX_CALLER_SPEECH_S, REPROMPT
from tests.call_harness import open_test_call
from tests.fakes import FakeLLM, words


def caller(speaking: str) -> dict[str, Any]:
    return {"type": "info", "name": "clientSpeaking", "value": speaking}


async def test_a_caller_talking_longer_than_the_silence_limit_is_not_reprompted(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words("Sure.")])
    async with open_test_call(llm, services_changes={"idle_reprompt_s": 10.0}) as call:
        call.socket.push(caller("on"))
        await trio.sleep(25)                    # a long address, read out slowly
        assert call.socket.pending() == []
        call.socket.push(caller("off"))
        off_at = trio.current_time()
        text, _ = await call.reply()            # no prompt came: silence counts from "off"
        assert text == REPROMPT
        assert trio.current_time() - off_at == pytest.approx(10.0)


async def test_a_lost_client_off_holds_the_silence_timer_back_a_bounded_time(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words("Sure.")])
    async with open_test_call(llm, services_changes={"idle_reprompt_s": 10.0}) as call:
        call.socket.push(caller("on"))
        on_at = trio.current_time()
        text, _ = await call.reply()
        assert text == REPROMPT
        assert trio.current_time() - on_at == pytest.approx(10.0 + MAX_CALLER_SPEECH_S)
