"""Twilio's ``utteranceUntilInterrupt`` is what the voice said, and a voice may say a text in
more or fewer words than we sent ("$5.99" as "five dollars and ninety-nine cents", a time, an
abbreviation, SSML). Across a tool round the heard words are split between the texts before
and after it: counted word for word, a longer rendering spilled its extra words into the
text after the tool round, which the caller never heard, and a shorter one ended it early.
The split now follows the words the rendering shares with what we sent."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.heard_words import split_heard
from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, Step, words
from tests.test_history_property import TOOLS, registry
from voiceagent.llm.base import StreamEnd, TextDelta, ToolUseRequest
from voiceagent.llm.converse import converse_problems

LOOKUP = {"toolUse": {"toolUseId": "tu1", "name": "lookup", "input": {}}}
RESULT = {"role": "user", "content": [{"toolResult": {
    "toolUseId": "tu1", "content": [{"json": {"done": True}}], "status": "success"}}]}


def _tokens(*parts: str) -> list[Step]:
    steps: list[Step] = [0.2]
    for part in parts:
        steps += [TextDelta(part), 0.1]
    return steps


@pytest.mark.parametrize(("heard", "before", "after"), [
    # cut while the price was being said: nothing after the tool round was heard
    ("That is five dollars", "That is five dollars", None),
    # the price said in full, then two words of the reply after the tool round
    ("That is five dollars and ninety-nine cents. Shall I", "That is $5.99.", "Shall I"),
])
async def test_a_rendering_longer_than_the_text_stays_with_its_text(
        heard: str, before: str, after: str | None, autojump_clock: Any) -> None:
    llm = FakeLLM([
        [*_tokens("That is $5.99."), ToolUseRequest("tu1", "lookup", {}),
         StreamEnd("tool_use")],
        [*_tokens("Shall I", " order", " it?"), StreamEnd("end_turn")],
        words("Fine.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=registry()) as call:
        call.say("how much is it?")
        sent = ""
        while not sent.endswith(" it?"):       # the tool ran, and the reply was sent
            sent += (await call.frame()).get("token", "")
        assert sent == "That is $5.99. Shall I order it?"
        call.interrupt(heard)
        await trio.testing.wait_all_tasks_blocked()
        first = {"role": "assistant", "content": [{"text": before}, LOOKUP]}
        last = () if after is None else ({"role": "assistant", "content": [{"text": after}]},)
        assert call.history[-(2 + len(last)):] == (first, RESULT, *last)
        call.say("thanks")
        await trio.sleep(5)
        assert converse_problems(llm.requests[-1].messages) == []
    assert llm.violations == []


PLAIN = ["alpha", "bravo", "charlie", "delta", "echo"]
RENDERED = {"$5.99": "five dollars and ninety-nine cents", "9:30": "nine thirty",
            "Dr.": "doctor", '<break time="1s"/>': "", "USD": "U S D"}


@st.composite
def _texts(draw: st.DrawFn) -> list[list[str]]:
    """Texts of whole words; their inner words may be ones a voice says otherwise (at most
    four together: their rendering fits ``MAX_RENDERING_WORDS``)."""
    word = st.sampled_from(PLAIN)
    return [[draw(word), *draw(st.lists(word | st.sampled_from(sorted(RENDERED)),
                                        max_size=4)), draw(word)]
            for _ in range(draw(st.integers(1, 3)))]


@settings(max_examples=300)
@given(texts=_texts(), share=st.floats(0, 1))
def test_each_text_keeps_the_heard_words_that_render_it(
        texts: list[list[str]], share: float) -> None:
    """Cut anywhere in the voice's words: the texts it passed are whole, the one it was in
    keeps the voice's words of it, the later ones nothing."""
    spoken = [[w for word in text for w in RENDERED.get(word, word).split()]
              for text in texts]
    ends = [sum(len(s) for s in spoken[:n + 1]) for n in range(len(spoken))]
    cut = round(share * ends[-1])
    heard = [w for s in spoken for w in s][:cut]
    said = [" ".join(t) for t in texts]
    kept = split_heard(said, " ".join(heard))
    expected = [t.split() if cut >= end else heard[end - len(s):cut]
                for t, s, end in zip(said, spoken, ends, strict=True)]
    assert [k.split() for k in kept] == expected
