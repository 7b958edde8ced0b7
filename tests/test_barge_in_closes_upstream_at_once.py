"""A barge-in closes the cut turn's Bedrock stream from the relay reader's own step, before any
other task runs: at a thousand busy calls each pass of the scheduler's run queue costs
milliseconds, and the cut turn's task waiting for its pass kept Bedrock generating (and the
limiter token held) meanwhile. What the turn records is unchanged: the cut is a cut, with
what was heard, never a model error. A stream closed so (``close_now``) while the turn's task
is inside a read ends that read with the turn's cancel, also when the task had already been
woken by the model's next bytes; and an attempt a retry opened meanwhile is closed too.

Real parts throughout: the call's actors, ``BedrockLLM``, the local endpoint on 127.0.0.1,
trio's virtual clock (the instants are exact; nothing here is timed).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from actors.turn_slot import TURN_TASK
from tests.bedrock_clock import llm_on_virtual_clock
from tests.call_harness import open_test_call
from tests.fake_bedrock import (
    FakeBedrock,
    HttpError,
    message_end,
    message_start,
    stream_reply,
    text_events,
    text_reply,
)
from tests.fakes import MemorySocket
from voiceagent.errors import LLMError
from voiceagent.llm.base import InferenceConfig, LLMRequest, TextDelta
from voiceagent.llm.bedrock import BedrockLLM

WORDS = [f" w{n}" for n in range(40)]        # no clause end: the first clause is 60 chars


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock
              ) -> AsyncIterator[BedrockLLM]:
    async with llm_on_virtual_clock(mock_clock) as backend:
        yield backend


class FirstStepOfTheCutTurn(trio.abc.Instrument):
    """The model streams open when the cut turn's task first runs after the reader read the
    interrupt: 0 once the reader closed its stream itself."""

    def __init__(self, socket: MemorySocket, llm: BedrockLLM) -> None:
        self.socket = socket
        self.llm = llm
        self.streams_open: int | None = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if (self.streams_open is None and task.name == TURN_TASK
                and any(kind == "read" and frame.get("type") == "interrupt"
                        for kind, frame in self.socket.timeline)):
            self.streams_open = self.llm.statistics().streams_open


@pytest.mark.parametrize("held", [False, True], ids=["first clause", "hold window"])
async def test_the_reader_closes_the_stream_and_the_turn_records_its_cut(
        fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock, records: list[logging.LogRecord],
        held: bool) -> None:
    # the words, then a pause no cut waits out: on the virtual clock a thread's wait (the
    # store's) lets the endpoint's timers run ahead, and a held window leaves its bytes
    # unread; ending with the words, the reply could be all written before the cut came
    fake_bedrock.push(stream_reply(message_start(), text_events(WORDS, gap_s=0.02, stop=False),
                                   text_events([" later"], first_delay_s=30.0),
                                   message_end("end_turn")),
                      text_reply([" Pizza."]))
    socket = MemorySocket()
    watch = FirstStepOfTheCutTurn(socket, llm)
    trio.lowlevel.add_instrument(watch)
    try:
        async with open_test_call(llm, socket=socket,
                                  services_changes={"token_hold_s": 0.1 if held else 0.0}
                                  ) as call:
            call.say("what is on the menu?")
            text = ""
            while len(text) < (70 if held else 9):      # held: the first clause is out
                text += (await call.frame())["token"]
            await trio.sleep(0.05 if held else 0.005)   # in a hold window; between words
            call.interrupt(heard=None)
            _, after = await call.reply()
            assert after == [{"type": "text", "token": "", "last": True}]   # no more words
            call.say("and pizza?")
            assert (await call.reply())[0] == " Pizza."
    finally:
        trio.lowlevel.remove_instrument(watch)
    assert watch.streams_open == 0
    first, second = fake_bedrock.requests
    assert first.outcome == "client_closed"
    assert first.connection.closed_at is not None
    assert first.connection.closed_at <= second.received_at     # before the next turn began
    assert call.history[-3] == {"role": "assistant", "content": [{"text": text.strip()}]}
    done = [r for r in records if r.getMessage() == "turn done"]
    assert [(r.cut_by, r.model_error) for r in done] == [
        ("barge-in", None), (None, None)]
    stats = llm.statistics()
    assert (stats.cancellations, stats.errors_by_code, stats.streams_open) == (1, {}, 0)
    assert stats.attempts_open == 0                 # the limiter token given back


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
        fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock, held: bool) -> None:
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
        fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
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
