"""A Bedrock stream closed from another task of the call (``close_now``: a barge-in's, from
the relay reader) while the turn's task is inside a read: the read ends with the turn's
cancel, never a model error, also when the task had already been woken by the model's next
bytes; and an attempt a retry opened meanwhile is closed too.

Real parts throughout: ``BedrockLLM``, the local endpoint on 127.0.0.1,
trio's virtual clock (the instants are exact; nothing here is timed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from tests.bedrock_clock import llm_on_virtual_clock
from tests.fake_bedrock import FakeBedrock, HttpError, text_reply
from voiceagent.errors import LLMError
from voiceagent.llm.base import InferenceConfig, LLMRequest, TextDelta
from voiceagent.llm.bedrock import BedrockLLM


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock
              ) -> AsyncIterator[BedrockLLM]:
    async with llm_on_virtual_clock(mock_clock) as backend:
        yield backend


def request() -> LLMRequest:
    return LLMRequest(call_sid="CA0123456789abcdef0123456789abcdef", use_case="cut",
                      model_id="us.amazon.nova-lite-v1:0", system=("You are a host.",),
                      messages=({"role": "user", "content": [{"text": "Open?"}]},),
                      inference=InferenceConfig(max_tokens=300))


class CutBeforeItsStep(trio.abc.Instrument):
    """The reader's cut landing after the model's bytes woke the turn's task, before that
    task ran: the scope cancelled and the stream closed between its wake-up and its step."""

    def __init__(self, task: trio.lowlevel.Task, scope: trio.CancelScope,
                 stream: Any) -> None:
        self.task, self.scope, self.stream = task, scope, stream
        self.done = False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task and not self.done:
            self.done = True
            self.scope.cancel(reason="barge-in")
            self.stream.close_now()


@pytest.mark.parametrize("held", [False, True], ids=["receive", "take_ready"])
async def test_a_read_already_woken_when_the_stream_closes_ends_cancelled(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, held: bool) -> None:
    """Its socket closed under it, the read failed; the turn took that for the model
    failing (an apology, a model error counted) instead of the caller's cut."""
    fake_bedrock.push(text_reply([" We", " open", " at", " nine"], gap_s=0.5))
    heard: list[str] = []
    with trio.fail_after(30), trio.CancelScope() as scope:
        async with llm.stream(request()) as events:
            while not heard:
                event = await events.receive()
                if isinstance(event, TextDelta):
                    heard.append(event.text)
            cut = CutBeforeItsStep(trio.lowlevel.current_task(), scope, events)
            trio.lowlevel.add_instrument(cut)
            try:
                if held:
                    # a step that resumes, the cut notwithstanding, where a read comes next
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    await events.take_ready()   # type: ignore[attr-defined]
                else:
                    await events.receive()      # woken by the next word's bytes
            except LLMError as err:
                pytest.fail(f"the cut became a model error: {err!r}")
            finally:
                trio.lowlevel.remove_instrument(cut)
    assert cut.done
    assert scope.cancelled_caught
    assert heard == [" We"]
    stats = llm.statistics()
    assert (stats.cancellations, stats.errors_by_code, stats.streams_open) == (1, {}, 0)
    assert stats.attempts_open == 0
    with trio.fail_after(5):
        await fake_bedrock.requests[0].done.wait()
    assert fake_bedrock.requests[0].outcome == "client_closed"


async def test_a_retry_opened_as_the_stream_closed_is_closed_too(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cut lands while the turn's task is inside a retry's start (throttled before a
    word), which then returns its attempt to a stream already closed: that attempt's
    connection and limiter token would be held for ever."""
    fake_bedrock.push(HttpError(429, "ThrottlingException"), text_reply([" We"], gap_s=5))
    start_attempt = llm._start_attempt
    streams: list[Any] = []

    async def cut_as_it_returns(*args: Any, **kwargs: Any) -> Any:
        attempt = await start_attempt(*args, **kwargs)
        if streams:                                 # the retry's, the stream is being read
            scope.cancel(reason="barge-in")
            streams[0].close_now()
        return attempt

    monkeypatch.setattr(llm, "_start_attempt", cut_as_it_returns)
    with trio.fail_after(30), trio.CancelScope() as scope:
        async with llm.stream(request()) as events:
            streams.append(events)
            await events.receive()
    assert scope.cancelled_caught
    stats = llm.statistics()
    assert (stats.retries, stats.cancellations, stats.streams_open) == (1, 1, 0)
    assert stats.attempts_open == 0                 # the retry's token given back
    with trio.fail_after(5):
        retried = (await fake_bedrock.wait_requests(2))[1]
        await retried.done.wait()
    assert retried.outcome == "client_closed"
