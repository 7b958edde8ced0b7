"""A reply that was whole (its ``messageStop`` arrived) when the connection went: closed or
reset by a load balancer before the ``metadata`` event or the body's last chunk, or stalled
there until the read timeout.

The caller has heard the whole answer; an apology after it ("I lost my train of thought.
Could you say that again?") would ask them to repeat a question that was answered. The reply
ends as any other (its stop reason, no usage when ``metadata`` was lost), and the connection,
whose exchange did not finish, is not kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.fake_bedrock import (
    FakeBedrock,
    Hangup,
    Stall,
    message_end,
    message_start,
    running_fake_bedrock,
    stream_reply,
    text_events,
    text_reply,
    tool_events,
)
from voiceagent.llm.base import LLMEvent, LLMRequest, StreamEnd, TextDelta, ToolUseRequest
from voiceagent.llm.bedrock import BedrockLLM

CALL_SID = "CA0123456789abcdef0123456789abcdef"


@pytest.fixture
async def fake(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeBedrock]:
    async with running_fake_bedrock(tls=True) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", server.endpoint_url)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(server.ca_bundle))
        monkeypatch.setenv("NO_PROXY", "")
        yield server


@pytest.fixture
async def llm(fake: FakeBedrock) -> AsyncIterator[BedrockLLM]:
    backend = BedrockLLM(region="us-east-1", retry_base_delay_s=0.01, read_timeout_s=0.5)
    yield backend
    await backend.aclose()


async def collect(llm: BedrockLLM) -> list[LLMEvent]:
    request = LLMRequest(call_sid=CALL_SID, use_case="testUseCase",
                         model_id="us.amazon.nova-lite-v1:0", system=("You are a host.",),
                         messages=({"role": "user", "content": [{"text": "Open?"}]},))
    async with llm.stream(request) as events:
        return [event async for event in events]


WHOLE = stream_reply(message_start(), text_events(["We open", " at nine."]),
                     message_end()).frames          # ..., messageStop, metadata


@pytest.mark.parametrize(("after", "reset"), [(len(WHOLE) - 1, False), (len(WHOLE) - 1, True),
                                              (len(WHOLE), False)],
                         ids=["fin-before-metadata", "rst-before-metadata", "fin-before-end"])
async def test_a_whole_reply_ends_as_one_when_the_connection_goes(
        fake: FakeBedrock, llm: BedrockLLM, after: int, reset: bool) -> None:
    fake.push(Hangup(after_frames=after, reset=reset, frames=WHOLE), text_reply(["Fine."]))
    with trio.fail_after(10):
        events = await collect(llm)
        after_it = await collect(llm)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["We open", " at nine."]
    assert isinstance(events[-1], StreamEnd)
    assert events[-1].stop_reason == "end_turn"
    assert [type(e) for e in after_it] == [TextDelta, StreamEnd]
    assert fake.requests[0].connection.id != fake.requests[1].connection.id
    assert llm.statistics().retries == 0


async def test_a_tool_call_whole_before_a_stall_is_made(fake: FakeBedrock,
                                                        llm: BedrockLLM) -> None:
    fake.push(Stall(frames=stream_reply(
        message_start(), tool_events(0, "tooluse_1", "lookup", ['{"day":', ' "monday"}']),
        message_end("tool_use")[:1]).frames))
    with trio.fail_after(10):
        events = await collect(llm)
        await fake.requests[0].done.wait()          # the endpoint saw us close it
    assert events == [ToolUseRequest("tooluse_1", "lookup", {"day": "monday"}),
                      StreamEnd("tool_use", usage=None, first_token_s=events[-1].first_token_s)]
