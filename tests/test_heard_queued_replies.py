"""Which reply Twilio's heard words belong to, when a reply still played as the next turn
started (reportInputDuringAgentSpeech: a "mhm" starts a turn, its reply queues behind), is
judged word by word, as the words are then split: Twilio may leave out or change the
punctuation of what it played. Judged character by character, "Sure We open" fitted neither
"Sure. We open at nine." nor the queued reply, and so replaced the queued reply, which the
caller never heard, while the reply they cut stayed whole."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from actors.heard_words import begins_alike
from tests.call_harness import open_test_call
from tests.fakes import FakeLLM, words
from tests.test_heard_property import RENDERINGS
from voiceagent.llm.converse import converse_problems


async def test_heard_words_punctuated_otherwise_cut_the_reply_still_playing(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words("Sure. We open at nine."), words("Anything else?"), words("Fine.")])
    async with open_test_call(llm) as call:
        call.say("hours?")
        await call.reply()
        call.say("mhm")
        text, _ = await call.reply()
        assert text == "Anything else?"
        call.interrupt(heard="Sure We open")
        await trio.testing.wait_all_tasks_blocked()
        assert call.history[-3:] == (
            {"role": "user", "content": [{"text": "hours?"}]},
            {"role": "assistant", "content": [{"text": "Sure We open"}]},
            {"role": "user", "content": [{"text": "mhm"}]})
        call.say("what about Sunday?")
        await call.reply()
        assert converse_problems(llm.requests[-1].messages) == []
    assert not llm.violations


SAID = ["Sure. We open at nine.", "Caf\u00e9 na\u00efve \U0001f600 ok, d\u00e9j\u00e0 vu.",
        "Sure \u2014 we open\n\nat nine, and close at ten."]


@given(said=st.sampled_from(SAID), rendering=st.sampled_from(sorted(RENDERINGS)),
       share=st.floats(0, 1))
def test_any_rendering_of_a_cut_reply_fits_it_and_no_other(
        said: str, rendering: str, share: float) -> None:
    """What Twilio may report of a reply, cut anywhere, is taken for that reply; words of
    it are not taken for another."""
    heard = RENDERINGS[rendering](said[:int(len(said) * share)])
    assert begins_alike(said, heard)
    assert begins_alike("Anything else?", heard) == (not any(c.isalnum() for c in heard))
