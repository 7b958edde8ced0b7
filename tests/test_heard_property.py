"""Twilio's ``utteranceUntilInterrupt``, cut anywhere in what we sent (inside a word, inside a
multibyte word, across a tool round, after the reply ended) and spaced, cased or punctuated
as Twilio may render it, is what the history keeps of the reply; and the next request is
valid. The other property tests check the history's shape; this one checks its words."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, Step, words
from tests.test_history_property import TOOLS, registry
from voiceagent.llm.base import StreamEnd, TextDelta, ToolUseRequest
from voiceagent.llm.converse import converse_problems


def _tokens(*parts: str) -> list[Step]:
    steps: list[Step] = [0.2]
    for part in parts:
        steps += [TextDelta(part), 0.1]
    return [*steps, StreamEnd("end_turn")]


def _round(tool: str, *parts: str) -> list[Step]:
    return [*_tokens(*parts)[:-1], ToolUseRequest("tu1", tool, {}), StreamEnd("tool_use")]


AFTER = _tokens("It is", " ready", " now.")
REPLIES: dict[str, list[list[Step]]] = {
    "split words": [_tokens("We op", "en at ni", "ne, and cl", "ose at ten.")],
    "multibyte": [_tokens("Caf", "é naï", "ve 😀", " ok", " déjà vu.")],
    "paragraphs": [_tokens("Sure.", "\n\nWe open", " at nine.")],
    "tool": [_round("lookup", "Let me", " check.", "\n\nOne moment."), AFTER],
    "side effect": [_round("placeOrder", "Placing", " it."), AFTER],
    "quiet tool": [[0.1, ToolUseRequest("tu1", "lookup", {}), StreamEnd("tool_use")], AFTER],
}
RENDERINGS: dict[str, Callable[[str], str]] = {
    "as sent": lambda text: text,
    "spaced": lambda text: " ".join(text.split()),
    "unpunctuated": lambda text: re.sub(r"[.,!?]", "", text),
    "lower case": str.lower,
}


def _words(text: str) -> list[str]:
    return re.sub(r"[.,!?]", "", text).casefold().split()


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reply=st.sampled_from(sorted(REPLIES)), rendering=st.sampled_from(sorted(RENDERINGS)),
       wait=st.sampled_from([0.25, 0.35, 0.6, 1.2, 1.5, 4.0]), share=st.floats(0, 1),
       hold=st.sampled_from([0.0, 0.2]))
async def test_the_history_keeps_the_words_twilio_says_were_heard(
        reply: str, rendering: str, wait: float, share: float, hold: float,
        autojump_clock: Any) -> None:
    llm = FakeLLM([*REPLIES[reply], words("Fine.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS), registry=registry(),
                              services_changes={"token_hold_s": hold}) as call:
        call.say("question")
        await trio.sleep(wait)
        await trio.testing.wait_all_tasks_blocked()
        sent = "".join(f.get("token", "") for f in call.socket.pending() if f["type"] == "text")
        heard = RENDERINGS[rendering](sent[:int(len(sent) * share)])
        call.interrupt(heard)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(3)                     # a side-effect tool runs on
        history = list(call.history)
        asked = next(n for n, m in enumerate(history)
                     if {"text": "question"} in m["content"])
        kept = " ".join(b["text"] for m in history[asked + 1:] if m["role"] == "assistant"
                        for b in m["content"] if "text" in b)
        assert _words(kept) == _words(heard)
        call.say("thanks")
        await trio.sleep(5)
        assert converse_problems(llm.requests[-1].messages) == []
    assert llm.violations == []
