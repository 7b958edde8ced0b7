"""What Twilio's ``utteranceUntilInterrupt`` covers, and what the history keeps of a cut reply.

Observed on a live call (the spec's source [S18], ivy/thicket
tests/fixtures/conversationrelay/interrupt.jsonl): a reply of twelve sentences in one talk
cycle, cut as the second sentence began, gave ``"Sentence 2 of"`` and 684 ms, though the whole
first sentence had played (tokensPlayed said so): Twilio reports the words of the chunk it was
speaking, not of the whole talk cycle. Twilio's words may so begin anywhere in what we sent,
and everything before them was heard. Before, they were matched from the reply's start (and
put back in step only within 32 words): the history kept "Sentence 2 of" alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.heard_words import split_heard
from tests.call_harness import open_test_call
from tests.fakes import FakeLLM, words
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import open_call
from voiceagent.llm.converse import converse_problems

FIRST = "Sentence 1 of twelve: the quick brown fox jumps over the lazy dog."
SECOND = "Sentence 2 of twelve: the quick brown fox jumps over the lazy dog."


def _texts(messages: Any) -> list[tuple[str, list[str]]]:
    return [(m["role"], [b["text"] for b in m["content"] if "text" in b]) for m in messages]


async def test_twilio_words_of_a_later_sentence_keep_the_sentences_before(
        tmp_path: Path) -> None:
    llm = FakeLLM([words(f"{FIRST} {SECOND}", first_s=0.01, gap_s=0.01), words("Sure.")])
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path), llm=llm) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("talk to me")
                assert (await call.read_reply()).text == f"{FIRST} {SECOND}"
                await call.interrupt(heard="Sentence 2 of", duration_ms=684)
                await call.say("stop")
                assert (await call.read_reply()).text == "Sure."
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    assert _texts(llm.requests[-1].messages[-3:]) == [
        ("user", ["talk to me"]), ("assistant", [f"{FIRST} Sentence 2 of"]), ("user", ["stop"])]
    assert converse_problems(llm.requests[-1].messages) == []


async def test_cut_as_a_sentence_began_keeps_what_tokens_played_said_was_heard(
        tmp_path: Path) -> None:
    """Cut as the second sentence began, before its first word: Twilio says nothing was
    heard of it, but tokensPlayed said the first had played. Before, tokensPlayed stood in
    only for an interrupt that left the words out, and the empty report dropped the reply."""
    llm = FakeLLM([words(f"{FIRST} {SECOND}", first_s=0.01, gap_s=0.01), words("Sure.")])
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path), llm=llm) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("talk to me")
                assert (await call.read_reply()).text == f"{FIRST} {SECOND}"
                for played in ("Sentence 1 of twelve:", FIRST.split(":")[1]):
                    await call.send_json({"type": "info", "name": "tokensPlayed",
                                          "value": played})
                await call.interrupt(heard="", duration_ms=0)
                await call.say("stop")
                assert (await call.read_reply()).text == "Sure."
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    assert _texts(llm.requests[-1].messages[-3:]) == [
        ("user", ["talk to me"]), ("assistant", [FIRST]), ("user", ["stop"])]


async def test_a_later_chunk_of_a_reply_still_playing_cuts_that_reply(
        autojump_clock: Any) -> None:
    """A "mhm" started a turn while the first reply played; its reply queued behind. The
    caller cut the first reply in its second clause: that reply keeps what was said up to
    there, and the queued one, thrown away unheard, goes. Before, Twilio's words fitted
    neither reply from its start, and replaced the queued reply."""
    llm = FakeLLM([words("Sure. We open at nine and close at ten."), words("Anything else?")])
    async with open_test_call(llm) as call:
        call.say("hours?")
        await call.reply()
        call.say("mhm")
        await call.reply()
        call.interrupt(heard="We open at")
        await trio.testing.wait_all_tasks_blocked()
        assert _texts(call.history[-3:]) == [
            ("user", ["hours?"]), ("assistant", ["Sure. We open at"]), ("user", ["mhm"])]
    assert not llm.violations


RENDERED = {"$5.99": "five dollars and ninety-nine cents", "9:30": "nine thirty",
            "USD": "U S D", '<break time="1s"/>': ""}


@st.composite
def _chunked_texts(draw: st.DrawFn) -> list[list[str]]:
    """Texts of words each said once (so where Twilio's words fit is plain), some inner ones
    a voice says otherwise (one at a time: their rendering fits ``MAX_RENDERING_WORDS``),
    and clause ends where Twilio's chunks begin after."""
    plain = iter(range(1000))

    def word() -> str:
        return f"w{next(plain)}" + draw(st.sampled_from(["", "", "", ",", "."]))

    texts = []
    for _ in range(draw(st.integers(1, 3))):
        text = [word()]
        for _ in range(draw(st.integers(0, 40))):
            rendered = text[-1] not in RENDERED and draw(st.integers(0, 4)) == 0
            text.append(draw(st.sampled_from(sorted(RENDERED))) if rendered else word())
        texts.append([*text, word()])
    return texts


@settings(max_examples=400)
@given(texts=_chunked_texts(), share=st.floats(0, 1))
def test_twilio_words_of_any_chunk_keep_what_was_said_before_them(
        texts: list[list[str]], share: float) -> None:
    """Cut anywhere, with Twilio's words those of the chunk it was saying (since the last
    clause end): the texts before are whole, the one cut keeps our words before the chunk
    and Twilio's after, the later ones nothing."""
    said = [w for text in texts for w in text]
    spoken = [RENDERED.get(w, w).split() for w in said]
    voice = [w for words_of in spoken for w in words_of]
    at = [sum(len(s) for s in spoken[:n]) for n in range(len(said) + 1)]
    cut = round(share * len(voice))
    chunk = max(n for n in [0, *(n + 1 for n, w in enumerate(said[:-1]) if w[-1] in ",.")]
                if at[n] <= cut)
    while not spoken[chunk] and chunk < len(said) - 1:
        chunk += 1                          # markup before its first word, left unsaid
    heard = voice[at[chunk]:cut]
    if not set(heard) & set(said):
        return          # nothing of the chunk as sent (cut as it began, or a price said in
                        # words): nothing to place it by
    kept = split_heard([" ".join(t) for t in texts], " ".join(heard))
    expected = []
    for n, text in enumerate(texts):
        first = sum(len(t) for t in texts[:n])
        if cut >= at[first + len(text)]:
            expected.append(" ".join(text))
        elif cut <= at[first]:
            expected.append("")
        else:
            ours = text[:max(0, chunk - first)]
            expected.append(" ".join([*ours, *voice[max(at[chunk], at[first]):cut]]))
    assert kept == expected
