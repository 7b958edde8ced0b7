"""A Bedrock stream that stalls before its first event, or never ends, against the local
event-stream endpoint on trio's virtual clock.

A stall at the start used to cost the caller the whole read timeout (10 s) of silence and
then the apology, with no retry: the retry budget (2.5 s) was spent by then. Now the model
must begin to answer (a content block or the reply's stop: the headers and ``messageStart``
say only that the request arrived) within the first-event timeout (3 s); past it the attempt
is closed and tried once more on a new connection. And nothing bounded a whole stream:
events dripping just under the read timeout apart held a turn for maxTokens x 10 s. Now the
stream must be whole by its first-event timeout plus maxTokens at the pace speech is heard.

The clock jumps once the backend's setup thread is done (``warm_up``); each test names
``mock_clock`` itself, as pytest-trio runs a test on the clock among its own arguments.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from actors.turn import APOLOGY_CUT, APOLOGY_SILENT
from tests.bedrock_clock import llm_on_virtual_clock
from tests.call_harness import open_test_call
from tests.fake_bedrock import (
    FakeBedrock,
    Stall,
    StreamReply,
    event,
    message_end,
    message_start,
    stream_reply,
    text_events,
    text_reply,
    tool_events,
)
from voiceagent.errors import ModelStreamFailed, ModelUnavailable, SettingsError
from voiceagent.llm.base import (
    InferenceConfig,
    LLMEvent,
    LLMRequest,
    StreamEnd,
    TextDelta,
    ToolUseRequest,
)
from voiceagent.llm.bedrock import FIRST_EVENT_TIMEOUT_S, READ_TIMEOUT_S, BedrockLLM
from voiceagent.llm.bedrock_stream import SPOKEN_TOKENS_PER_S
from voiceagent.llm.bedrock_watchdog import WATCHDOG_SLACK_S
from voiceagent.settings import Settings

RETRY_DELAY_S = 0.2         # the backend's first retry waits 0.1-0.2 s (jittered)
DRIP_S = FIRST_EVENT_TIMEOUT_S - 0.1    # words just inside the silence allowed after words


@pytest.fixture
def fake(fake_bedrock: FakeBedrock) -> FakeBedrock:
    return fake_bedrock


@pytest.fixture
async def llm(fake: FakeBedrock, mock_clock: trio.testing.MockClock
              ) -> AsyncIterator[BedrockLLM]:
    async with llm_on_virtual_clock(mock_clock) as backend:    # the production limits
        yield backend


def request(max_tokens: int = 300) -> LLMRequest:
    return LLMRequest(call_sid="CA0123456789abcdef0123456789abcdef", use_case="stalls",
                      model_id="us.amazon.nova-lite-v1:0", system=("You are a host.",),
                      messages=({"role": "user", "content": [{"text": "Open?"}]},),
                      inference=InferenceConfig(max_tokens=max_tokens))


async def collect(llm: BedrockLLM, into: list[LLMEvent], max_tokens: int = 300) -> None:
    async with llm.stream(request(max_tokens)) as stream:
        async for item in stream:
            into.append(item)


def texts(events: list[LLMEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


STALLS = {
    "nothing after the request": Stall(),
    "headers only": Stall(headers_delay_s=1.0),
    "messageStart only": Stall(frames=(message_start(),)),
}


@pytest.mark.parametrize("stall", STALLS.values(), ids=STALLS.keys())
async def test_a_start_that_stalls_is_tried_again_at_the_first_event_timeout(
        fake: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock,
        stall: Stall) -> None:
    """The caller hears the second request's reply ~3 s after the first went out, not an
    apology after 10 s of silence; the stalled request's connection is closed by us."""
    fake.push(stall, text_reply(["We open at nine."]))
    events: list[LLMEvent] = []
    started = trio.current_time()
    with trio.fail_after(60):
        await collect(llm, events)
        await fake.requests[0].done.wait()
    waited = trio.current_time() - started
    assert texts(events) == ["We open at nine."]
    assert isinstance(events[-1], StreamEnd)
    assert FIRST_EVENT_TIMEOUT_S <= waited <= FIRST_EVENT_TIMEOUT_S + RETRY_DELAY_S + 0.1
    assert llm.statistics().errors_by_code == {"FirstEventTimeout": 1}
    assert llm.statistics().retries == 1
    assert fake.requests[0].outcome == "client_closed"
    assert fake.requests[1].connection.id != fake.requests[0].connection.id
    assert fake.violations == []


async def test_a_first_event_inside_the_deadline_is_waited_for_one_past_it_is_not(
        fake: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock) -> None:
    """A model that takes 2.9 s to begin is slow, not stalled: its reply is spoken, with no
    second request. One that would begin at 4 s is given up on at 3 s for a second request."""
    fake.push(stream_reply(message_start(), text_events(["Slow", " but here."],
                                                        first_delay_s=2.9), message_end()),
              stream_reply(message_start(), text_events(["Too late."], first_delay_s=4.0),
                           message_end()),
              text_reply(["Second try."]))
    slow: list[LLMEvent] = []
    late: list[LLMEvent] = []
    with trio.fail_after(60):
        await collect(llm, slow)
        started = trio.current_time()
        await collect(llm, late)
        await fake.requests[2].done.wait()
    assert texts(slow) == ["Slow", " but here."]
    assert texts(late) == ["Second try."]
    assert trio.current_time() - started < 4.0
    assert llm.statistics().errors_by_code == {"FirstEventTimeout": 1}
    assert [r.outcome for r in fake.requests] == ["complete", "client_closed", "complete"]


async def test_two_stalled_starts_end_in_the_model_error_path_after_the_read_timeout(
        fake: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock) -> None:
    """Tried once more, not twice, and that time given the read timeout to begin: a second
    stall is Bedrock's state, and the apology comes at 3 + 10 s (it was 10 s, with no
    retry; a lost request is answered at ~3 s now, the case the retry is for)."""
    fake.push(Stall(), Stall(), text_reply(["Never asked for."]))
    started = trio.current_time()
    with trio.fail_after(60):
        with pytest.raises(ModelUnavailable) as failed:
            await collect(llm, [])
        await fake.requests[1].done.wait()
    waited = trio.current_time() - started
    limit_s = FIRST_EVENT_TIMEOUT_S + READ_TIMEOUT_S
    assert failed.value.code == "FirstEventTimeout"
    assert "within 10 s of the request (BEDROCK_READ_TIMEOUT_S, the retry's" in str(failed.value)
    assert limit_s <= waited <= limit_s + RETRY_DELAY_S + 0.1
    assert len(fake.requests) == 2
    assert [r.outcome for r in fake.requests] == ["client_closed", "client_closed"]
    assert llm.statistics().errors_by_code == {"FirstEventTimeout": 2}


async def test_a_model_slower_to_begin_than_the_timeout_is_answered_by_its_second_request(
        fake: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock) -> None:
    """A model that takes 5 s to begin every time (a long prompt: a call's history grows
    with each turn) is not stalled. Given only the first-event timeout again, its second
    request would stall too, and every turn past that point would be the apology; given the
    read timeout, it is answered, late (3 s lost, one request's input paid twice), and the
    operator sees FirstEventTimeout counted and can raise the timeout."""
    slow = stream_reply(message_start(), text_events(["Slow", " to start."],
                                                     first_delay_s=5.0), message_end())
    fake.push(slow, slow)
    events: list[LLMEvent] = []
    started = trio.current_time()
    with trio.fail_after(60):
        await collect(llm, events)
    waited = trio.current_time() - started
    assert texts(events) == ["Slow", " to start."]
    assert 8.0 <= waited <= 8.0 + RETRY_DELAY_S + 0.1     # 3 s given up, then 5 s
    assert llm.statistics().errors_by_code == {"FirstEventTimeout": 1}
    assert len(fake.requests) == 2


async def test_after_words_the_silence_allowed_is_the_first_event_timeout_not_the_read_timeout(
        fake: FakeBedrock, mock_clock: trio.testing.MockClock) -> None:
    """A healthy model's words come milliseconds apart: a stream silent after them is dead,
    and the caller, half a sentence heard, waited the read timeout (10 s) for the apology.
    Now the silence allowed after a text delta is the first-event timeout (here set to
    1.5 s). A toolUse begun after the words keeps the read timeout: Bedrock may hold a
    tool's input for seconds."""
    tool_start = event("contentBlockStart", {"contentBlockIndex": 1, "start": {
        "toolUse": {"toolUseId": "tu_1", "name": "pickup"}}})
    fake.push(Stall(frames=(message_start(), *text_events(["We open"], stop=False))),
              Stall(frames=(message_start(), *text_events(["Let me check."]), tool_start)))
    waited: list[float] = []
    errors: list[ModelStreamFailed] = []
    async with llm_on_virtual_clock(mock_clock, first_event_timeout_s=1.5) as llm:
        for _ in range(2):
            started = trio.current_time()
            with trio.fail_after(60), pytest.raises(ModelStreamFailed) as failed:
                await collect(llm, [])
            waited.append(trio.current_time() - started)
            errors.append(failed.value)
            await fake.requests[-1].done.wait()     # the endpoint saw us close it
    assert 1.5 <= waited[0] <= 1.5 + WATCHDOG_SLACK_S + 0.01
    assert READ_TIMEOUT_S <= waited[1] <= READ_TIMEOUT_S + WATCHDOG_SLACK_S + 0.01
    assert [(e.code, e.after_tokens) for e in errors] == [("ReadTimeout", True)] * 2
    assert "for 1.5 s after its last words (BEDROCK_FIRST_EVENT_TIMEOUT_S" in str(errors[0])
    assert [r.outcome for r in fake.requests] == ["client_closed", "client_closed"]


async def test_a_new_stall_is_caught_at_its_deadline_while_a_slow_stream_is_watched(
        fake: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock) -> None:
    """One watchdog ends every stream's reads. A stream already answering is due only at
    its read timeout (10 s on: a toolUse's input, which Bedrock may hold for seconds); a
    request sent after it stalls and is due 3 s on, earlier:
    the watchdog must wake for it, not sleep until the other's deadline."""
    fake.push(stream_reply(message_start(), tool_events(    # a tool's input, 5 s a fragment
        0, "tu_1", "pickup", ['{"item": ', '"pizza", ', '"size": ', '"large"}'], gap_s=5.0),
        message_end("tool_use")))
    fake.push(Stall(), text_reply(["Second try."]))
    slow: list[LLMEvent] = []
    retried: list[LLMEvent] = []
    answered_after: list[float] = []

    async def stalled_then_retried() -> None:
        # the watchdog sleeps until the slow stream's read deadline (its event at 0 s put
        # it at 10 s; the one at 5 s moves it later, seen when it wakes)
        await trio.sleep(6.0)
        started = trio.current_time()
        await collect(llm, retried)
        answered_after.append(trio.current_time() - started)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, llm, slow)
            nursery.start_soon(stalled_then_retried)
    assert [(e.name, e.input) for e in slow if isinstance(e, ToolUseRequest)] == [
        ("pickup", {"item": "pizza", "size": "large"})]
    assert texts(retried) == ["Second try."]
    assert answered_after[0] <= FIRST_EVENT_TIMEOUT_S + RETRY_DELAY_S + 0.1


async def test_events_dripping_under_the_read_timeout_end_at_the_stream_deadline(
        fake: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock) -> None:
    """Each word 2.9 s after the last (the silence allowed after words is 3 s): the caller
    heard a word every 2.9 s for as long as the reply lasted (maxTokens x 2.9 s). With
    maxTokens 40 the stream ends at 3 + 40 / 4 = 13 s, after what was said, as any model
    error after words does, and the endpoint sees the connection closed. A slow but healthy
    model (300 tokens at 20 a second, 15 s) is far inside its own limit (3 + 300 / 4 = 78 s)
    and is not cut."""
    limit_s = FIRST_EVENT_TIMEOUT_S + 40 / SPOKEN_TOKENS_PER_S
    fake.push(text_reply([f" w{n}" for n in range(300)], gap_s=0.05),
              stream_reply(message_start(), text_events(
                  [f" w{n}" for n in range(30)], gap_s=DRIP_S, first_delay_s=0.5),
                  message_end()))
    healthy: list[LLMEvent] = []
    events: list[LLMEvent] = []
    with trio.fail_after(600):
        await collect(llm, healthy)
        started = trio.current_time()
        with pytest.raises(ModelStreamFailed) as failed:
            await collect(llm, events, max_tokens=40)
        await fake.requests[1].done.wait()
    assert len(texts(healthy)) == 300
    assert failed.value.code == "ReplyTooSlow"
    assert failed.value.after_tokens
    assert texts(events) == [f" w{n}" for n in range(5)]    # at 0.5 s, 3.4 s ... 12.1 s
    assert limit_s <= trio.current_time() - started <= limit_s + 0.1
    assert fake.requests[1].outcome == "client_closed"
    assert llm.statistics().errors_by_code == {"ReplyTooSlow": 1}
    assert llm.statistics().retries == 0


async def behind_a_reply_holding_the_only_slot(
        mock_clock: trio.testing.MockClock, fake: FakeBedrock, reply: StreamReply
        ) -> tuple[list[LLMEvent], ModelStreamFailed | None, float, float]:
    """A stream of maxTokens 40 (3 + 40 / 4 = 13 s) opened while another reply (8 s) holds
    the backend's only limiter slot: its events, its failure, when its request reached the
    endpoint and when it ended, both from when it was opened."""
    fake.push(text_reply([f" a{n}" for n in range(8)], gap_s=1.0), reply)
    events: list[LLMEvent] = []
    failed: list[ModelStreamFailed] = []
    sent: list[float] = []

    async def queued() -> None:
        try:
            await collect(llm, events, max_tokens=40)
        except ModelStreamFailed as err:
            failed.append(err)

    async with llm_on_virtual_clock(mock_clock, max_concurrent_streams=1) as llm:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, llm, [])
                await fake.wait_requests(1)
                opened = trio.current_time()
                nursery.start_soon(queued)
                await fake.wait_requests(2)
                sent.append(trio.current_time() - opened)
        ended = trio.current_time() - opened
        assert llm.statistics().retries == 0
    return events, (failed or [None])[0], sent[0], ended


async def test_a_reply_queued_for_a_limiter_slot_is_timed_from_its_request_sent(
        fake: FakeBedrock, mock_clock: trio.testing.MockClock) -> None:
    """Its 13 s counted from when the stream was opened, the 8 s it waited for the slot
    left 5 s for a reply of 10 s: a healthy reply was cut mid-sentence for time it spent
    queued, not for the model's pace, and under load every reply queued long enough was."""
    healthy = stream_reply(message_start(), text_events(
        [f" w{n}" for n in range(10)], gap_s=1.0, first_delay_s=0.5), message_end())
    events, failed, sent, ended = await behind_a_reply_holding_the_only_slot(
        mock_clock, fake, healthy)
    assert failed is None
    assert texts(events) == [f" w{n}" for n in range(10)]
    assert isinstance(events[-1], StreamEnd)
    assert 8.0 <= sent <= 8.1
    assert sent + 9.5 <= ended <= sent + 9.6


async def test_a_reply_queued_for_a_limiter_slot_still_drips_only_to_its_deadline(
        fake: FakeBedrock, mock_clock: trio.testing.MockClock) -> None:
    """The deadline moved with the request, not away: a reply dripping a word every 2.9 s
    ends 13 s after its request reached the endpoint, after what was said."""
    dripping = stream_reply(message_start(), text_events(
        [f" w{n}" for n in range(30)], gap_s=DRIP_S, first_delay_s=0.5), message_end())
    events, failed, sent, ended = await behind_a_reply_holding_the_only_slot(
        mock_clock, fake, dripping)
    limit_s = FIRST_EVENT_TIMEOUT_S + 40 / SPOKEN_TOKENS_PER_S
    assert failed is not None
    assert (failed.code, failed.after_tokens) == ("ReplyTooSlow", True)
    assert texts(events) == [f" w{n}" for n in range(5)]    # 0.5 s ... 12.1 s after it
    assert 8.0 <= sent <= 8.1
    assert sent + limit_s <= ended <= sent + limit_s + 0.1


# ---------------------------------------------------------------- what the caller hears

async def test_the_caller_hears_the_apology_after_two_stalls_and_the_next_turn_works(
        fake: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock) -> None:
    """The turn ends the way a model error does: the apology, counted as a model error, and
    the call goes on."""
    fake.push(Stall(), Stall(), text_reply(["We open at nine."]))
    async with open_test_call(llm) as call:
        call.say("When do you open?")
        started = trio.current_time()
        text, _ = await call.reply()
        waited = trio.current_time() - started
        assert text == APOLOGY_SILENT
        assert waited <= FIRST_EVENT_TIMEOUT_S + READ_TIMEOUT_S + RETRY_DELAY_S + 0.1
        call.say("When do you open?")
        assert (await call.reply())[0] == "We open at nine."
        await call.hang_up()
    assert call.report.turns.model_errors == 1


async def test_the_caller_hears_the_apology_after_the_words_of_a_dripping_reply(
        fake: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock) -> None:
    fake.push(stream_reply(message_start(), text_events(
        [f" w{n}" for n in range(200)], gap_s=DRIP_S, first_delay_s=0.5), message_end()))
    async with open_test_call(llm) as call:
        call.say("Tell me everything.")
        started = trio.current_time()
        text, _ = await call.reply()
        limit_s = FIRST_EVENT_TIMEOUT_S + 300 / SPOKEN_TOKENS_PER_S
        assert trio.current_time() - started <= limit_s + 1.0
        assert text.endswith(APOLOGY_CUT)
        assert text.startswith(" w0 w1")
        await call.hang_up()
    assert call.report.turns.model_errors == 1


# ---------------------------------------------------------------- the setting

def test_the_first_event_timeout_is_read_and_never_outlasts_the_read_timeout() -> None:
    """BEDROCK_FIRST_EVENT_TIMEOUT_S reaches the backend; left at its default under a shorter
    BEDROCK_READ_TIMEOUT_S it is lowered to it (the read timeout would end the wait first,
    with no retry); set above it, start-up stops and says what to change."""
    base = {"VALIDATE_SIGNATURES": "false"}
    chosen = BedrockLLM.from_settings(Settings.from_env(
        {**base, "BEDROCK_FIRST_EVENT_TIMEOUT_S": "1.5"}))
    lowered = BedrockLLM.from_settings(Settings.from_env(
        {**base, "BEDROCK_READ_TIMEOUT_S": "0.5"}))
    assert (chosen.first_event_timeout_s, chosen.read_timeout_s) == (1.5, 10.0)
    assert (lowered.first_event_timeout_s, lowered.read_timeout_s) == (0.5, 0.5)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**base, "BEDROCK_FIRST_EVENT_TIMEOUT_S": "12"})
    [problem] = caught.value.problems
    assert problem.startswith("BEDROCK_FIRST_EVENT_TIMEOUT_S: 12 s is longer than "
                              "BEDROCK_READ_TIMEOUT_S (10 s)")
    assert "make it shorter, or raise BEDROCK_READ_TIMEOUT_S" in problem
