"""A turn's task that reads its stream late (a process behind on its CPU, every call's work
queued before it) is not a silent Bedrock: the answer waits in the socket. The read watchdog
used to take it for a stall at the first-event timeout: the stream was cut, its answer
thrown away and the request sent again, more load on a process already behind. Against the
local endpoint on trio's virtual clock, the reader held off past the timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from tests.bedrock_clock import llm_on_virtual_clock
from tests.fake_bedrock import FakeBedrock, Stall, message_start, text_reply
from voiceagent.errors import ModelUnavailable
from voiceagent.llm.base import InferenceConfig, LLMRequest, StreamEnd, TextDelta
from voiceagent.llm.bedrock import FIRST_EVENT_TIMEOUT_S, BedrockLLM

pytestmark = pytest.mark.timeout(60)    # virtual time below; this bounds the real waits


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock
              ) -> AsyncIterator[BedrockLLM]:
    async with llm_on_virtual_clock(mock_clock) as backend:    # the production limits
        yield backend


def request() -> LLMRequest:
    return LLMRequest(call_sid="CA0123456789abcdef0123456789abcdef", use_case="late",
                      model_id="us.amazon.nova-lite-v1:0", system=("You are a host.",),
                      messages=({"role": "user", "content": [{"text": "Open?"}]},),
                      inference=InferenceConfig(max_tokens=300))


async def drain(llm: BedrockLLM) -> None:
    async with llm.stream(request()) as stream:
        async for _ in stream:
            pass


async def test_an_answer_read_late_is_not_taken_for_a_silent_model(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock
        ) -> None:
    fake_bedrock.push(text_reply(["We open", " at nine."]))
    with trio.fail_after(60):
        async with llm.stream(request()) as stream:
            await fake_bedrock.wait_requests(1)
            await trio.sleep(3 * FIRST_EVENT_TIMEOUT_S)     # this side behind, on purpose
            events = [event async for event in stream]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "We open at nine."
    assert isinstance(events[-1], StreamEnd)
    assert llm.statistics().errors_by_code == {}
    (only,) = fake_bedrock.requests
    assert only.outcome == "complete"


async def test_a_silent_model_still_times_out_while_this_side_waits(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock
        ) -> None:
    """Nothing waiting unread: the silence is Bedrock's, and the first-event timeout ends
    it as before (retried once as a stalled start, then given up)."""
    fake_bedrock.push(Stall(frames=(message_start(),)), Stall(frames=(message_start(),)))
    started = trio.current_time()
    with trio.fail_after(120), pytest.raises(ModelUnavailable):
        await drain(llm)
    assert llm.statistics().errors_by_code == {"FirstEventTimeout": 2}
    assert trio.current_time() - started < 30
