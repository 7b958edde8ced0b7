"""A turn cancelled (the caller spoke, or hung up) while its Bedrock stream is silent, against
the local endpoint on trio's virtual clock.

A stall closes the pool's idle connections not heard from since the stalled one was: a path
that died sends no FIN. But a caller in dead air says "hello?", and that barge-in cancelled
the stalled request before its timeout fired, so the quiet kept-alive connections stayed and
the next turn took one and paid the first-event timeout again. An abort into a silence of
``ABORTED_STALL_SHARE`` of the timeout that would have ended it is now taken for the stall;
a barge-in while the model talks (silence of milliseconds) closes nothing.
``test_bedrock_stalls_proxy`` shows the dead path through a real proxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from tests.bedrock_clock import llm_on_virtual_clock
from tests.fake_bedrock import (
    FakeBedrock,
    Reply,
    Stall,
    event,
    message_start,
    text_events,
    text_reply,
)
from voiceagent.llm.base import InferenceConfig, LLMEvent, LLMRequest, TextDelta
from voiceagent.llm.bedrock import FIRST_EVENT_TIMEOUT_S, READ_TIMEOUT_S, BedrockLLM
from voiceagent.llm.bedrock_http import ABORTED_STALL_SHARE


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock
              ) -> AsyncIterator[BedrockLLM]:
    async with llm_on_virtual_clock(mock_clock) as backend:    # the production limits
        yield backend


def request() -> LLMRequest:
    return LLMRequest(call_sid="CA0123456789abcdef0123456789abcdef", use_case="abort",
                      model_id="us.amazon.nova-lite-v1:0", system=("You are a host.",),
                      messages=({"role": "user", "content": [{"text": "Open?"}]},),
                      inference=InferenceConfig(max_tokens=300))


async def collect(llm: BedrockLLM, into: list[LLMEvent]) -> None:
    async with llm.stream(request()) as stream:
        async for item in stream:
            into.append(item)


def pooled(llm: BedrockLLM) -> int:
    assert llm._setup is not None
    return llm._setup.pool.idle


WORDS_THEN_SILENCE = Stall(frames=(message_start(), *text_events([" We"], stop=False)))
# a toolUse block begun, its input not yet sent (Anthropic's models buffer it on Bedrock)
TOOL_THEN_SILENCE = Stall(frames=(message_start(), event("contentBlockStart", {
    "contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tu_1", "name": "pickup"}}})))
BEFORE_ANSWERING = FIRST_EVENT_TIMEOUT_S * ABORTED_STALL_SHARE      # 1.5 s
AFTER_WORDS = FIRST_EVENT_TIMEOUT_S * ABORTED_STALL_SHARE           # 1.5 s: the words gap's
WHILE_ANSWERING = READ_TIMEOUT_S * ABORTED_STALL_SHARE              # 5 s

CASES: dict[str, tuple[Reply, float, int]] = {
    # the reply on a kept connection, the barge-in after, idle connections closed
    "mid-reply, words flowing": (text_reply([f" w{n}" for n in range(50)], gap_s=0.1),
                                 0.55, 0),
    "nothing yet, a short wait": (Stall(frames=(message_start(),)),
                                  BEFORE_ANSWERING - 0.1, 0),
    "nothing yet, dead air": (Stall(frames=(message_start(),)), BEFORE_ANSWERING + 0.1, 1),
    "nothing at all, dead air": (Stall(), FIRST_EVENT_TIMEOUT_S - 0.1, 1),
    "words, then a short pause": (WORDS_THEN_SILENCE, AFTER_WORDS - 0.1, 0),
    "words, then dead air": (WORDS_THEN_SILENCE, AFTER_WORDS + 0.1, 1),
    "a tool's input awaited, a short pause": (TOOL_THEN_SILENCE, WHILE_ANSWERING - 0.1, 0),
    "a tool's input awaited, dead air": (TOOL_THEN_SILENCE, WHILE_ANSWERING + 0.1, 1),
}


@pytest.mark.parametrize(("reply", "abort_after", "dropped"), CASES.values(), ids=CASES.keys())
async def test_an_abort_into_a_long_silence_closes_the_quiet_kept_connections(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock,
        reply: Reply, abort_after: float, dropped: int) -> None:
    """Two connections kept; the turn takes one and is cancelled before any timeout fires.
    Into dead air the other, quiet since, is closed and the next turn opens a new one;
    after a short silence it is kept and the next turn reuses it."""
    fake = fake_bedrock
    fake.push(text_reply(["One."], headers_delay_s=0.05), text_reply(["Two."]))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(collect, llm, [])
        kept = {c.id for c in fake.connections}
        assert (len(kept), pooled(llm)) == (2, 2)
        fake.push(reply, text_reply(["Next."]))
        heard: list[LLMEvent] = []
        with trio.move_on_after(abort_after) as barge_in:
            await collect(llm, heard)
        assert barge_in.cancelled_caught
        assert pooled(llm) == 1 - dropped
        await collect(llm, [])
    stats = llm.statistics()
    assert (stats.connections_dropped, stats.cancellations) == (dropped, 1)
    assert stats.errors_by_code == {}                   # no timeout fired
    assert fake.requests[2].outcome == "client_closed"
    assert (fake.requests[3].connection.id in kept) is not bool(dropped)
    assert stats.connections_opened == 2 + dropped
    if reply is WORDS_THEN_SILENCE:
        assert [e.text for e in heard if isinstance(e, TextDelta)] == [" We"]
