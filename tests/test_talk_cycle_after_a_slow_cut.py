"""A cut turn's talk cycle when Twilio is slow to take a frame. The turn closes its cycle as it
ends (``last: true``, under a one-second bound, so that a stuck writer cannot hold the next
turn); with the writer still sending a word to a congested link, that closer was dropped and
nothing closed the cycle: the next reply's words went out inside the cut one's, so Twilio
spoke them as its continuation, and a ``preemptible`` reply could not be cut by the next.
Found by a review of the barge-in path (s17)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.call_harness import open_test_call
from tests.fakes import FakeLLM, SlowAtTheWordSocket, words


@pytest.mark.parametrize("cut_by", ["interrupt", "prompt"])
async def test_the_next_reply_starts_its_own_talk_cycle(autojump_clock: Any,
                                                        cut_by: str) -> None:
    socket = SlowAtTheWordSocket(" at")
    llm = FakeLLM([words("We open at nine and close at ten tonight."), words("Sure thing.")])
    async with open_test_call(llm, socket=socket) as call:
        call.say("hours?")
        await trio.sleep(0.8)           # " at" is on its way: the writer waits for Twilio
        if cut_by == "interrupt":
            call.interrupt(heard="We open")
            await trio.sleep(0.5)
        call.say("thanks")
        await trio.sleep(5)
        frames = socket.pending()
    spoken = [(f["token"], f["last"]) for f in frames if f["type"] == "text"]
    assert spoken == [("We", False), (" open", False), (" at", False), ("", True),
                      ("Sure", False), (" thing.", False), ("", True)]
    assert call.history[-1] == {"role": "assistant", "content": [{"text": "Sure thing."}]}
