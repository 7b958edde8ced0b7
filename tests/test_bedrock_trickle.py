"""The read timeout bounds the time between whole events, not between bytes: an endpoint (or a
middlebox) that trickles a byte every few seconds and never completes an event is given up on
at the read timeout, like one that sends nothing. A byte used to move the deadline, so such a
reply held the turn, and the caller heard silence, for as long as the bytes kept coming.

The clock is virtual (it jumps once the setup's worker thread is done: ``warm_up``), so the
endpoint's seconds between bytes cost nothing. Each test names ``mock_clock`` itself: pytest-trio
runs a test on the clock among its own arguments.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from tests.bedrock_clock import llm_on_virtual_clock
from tests.fake_bedrock import (
    FakeBedrock,
    Trickle,
    message_start,
    stream_reply,
    text_events,
    text_reply,
)
from voiceagent.errors import ModelStreamFailed
from voiceagent.llm.base import LLMEvent, LLMRequest, StreamEnd, TextDelta
from voiceagent.llm.bedrock import FIRST_EVENT_TIMEOUT_S, BedrockLLM

READ_TIMEOUT_S = 10.0


@pytest.fixture
def fake(fake_bedrock: FakeBedrock) -> FakeBedrock:
    return fake_bedrock


@pytest.fixture
async def llm(fake: FakeBedrock, mock_clock: trio.testing.MockClock
              ) -> AsyncIterator[BedrockLLM]:
    async with llm_on_virtual_clock(mock_clock, read_timeout_s=READ_TIMEOUT_S,
                                    retry_base_delay_s=0.01, retry_budget_s=60.0) as backend:
        yield backend


def request() -> LLMRequest:
    return LLMRequest(call_sid="CA0123456789abcdef0123456789abcdef", use_case="trickle",
                      model_id="us.amazon.nova-lite-v1:0", system=("You are a host.",),
                      messages=({"role": "user", "content": [{"text": "Open?"}]},))


async def collect(llm: BedrockLLM, into: list[LLMEvent]) -> None:
    async with llm.stream(request()) as stream:
        async for item in stream:
            into.append(item)


async def test_bytes_that_never_make_an_event_are_retried_at_the_first_event_timeout(
        fake: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock) -> None:
    """Before any content: the trickling attempt ends at the first-event timeout and the
    retry answers, FIRST_EVENT_TIMEOUT_S after the start (a byte every 3 s held it for
    minutes)."""
    fake.push(Trickle(trickled=(message_start(),), gap_s=3.0), text_reply(["We open."]))
    events: list[LLMEvent] = []
    started = trio.current_time()
    with trio.fail_after(60):
        await collect(llm, events)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["We open."]
    assert isinstance(events[-1], StreamEnd)
    assert trio.current_time() - started == pytest.approx(FIRST_EVENT_TIMEOUT_S, abs=0.5)
    assert llm.statistics().errors_by_code == {"FirstEventTimeout": 1}
    assert fake.requests[0].frames_sent == 0        # not one whole frame went out


async def test_a_trickle_after_words_fails_the_stream_at_the_silence_allowed_after_words(
        fake: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock) -> None:
    """After words: the turn gets its failure (and the caller an apology) at the silence
    allowed after a text delta (the first-event timeout) after the last whole event, however
    many bytes come, and the endpoint sees the connection closed."""
    spoken = stream_reply(message_start(), text_events(["We open"], stop=False)).frames
    more = text_events([" at eleven, and we close at ten tonight."], stop=False)
    fake.push(Trickle(trickled=tuple(more), frames=spoken, piece_bytes=2, gap_s=1.0))
    events: list[LLMEvent] = []
    started = trio.current_time()
    with trio.fail_after(60):
        with pytest.raises(ModelStreamFailed) as failed:
            await collect(llm, events)
        await fake.requests[0].done.wait()          # the endpoint saw us close it
    assert failed.value.code == "ReadTimeout"
    assert failed.value.after_tokens
    assert events == [TextDelta("We open")]
    assert trio.current_time() - started == pytest.approx(FIRST_EVENT_TIMEOUT_S, abs=0.5)
    assert fake.requests[0].outcome == "client_closed"
