"""The read deadline of a Bedrock stream read a hold window at a time (``take_ready``, once
the reply's first clause is out), against the local endpoint on trio's virtual clock.

The deadline moves once per read, for all the events the read brought (they came at once),
not once per event. These check that it still moves as events come (words a second apart
are a healthy stream, however they are read), and that a read that brought nothing does
not move it (a stream silent after its words is still ended at the words gap).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.bedrock_clock import llm_on_virtual_clock
from tests.fake_bedrock import FakeBedrock, Stall, message_start, text_events, text_reply
from voiceagent.errors import ModelStreamFailed
from voiceagent.llm.base import LLMEvent, LLMRequest, StreamEnd, TextDelta
from voiceagent.llm.bedrock_stream import ModelStream
from voiceagent.llm.bedrock_watchdog import WATCHDOG_SLACK_S

pytestmark = pytest.mark.timeout(60)    # virtual time below; this bounds the real waits

WORDS_GAP_S = 1.5                       # the first-event timeout: the silence after words
WINDOW_S = 0.1                          # the reader's hold window


def request() -> LLMRequest:
    return LLMRequest(call_sid="CA0123456789abcdef0123456789abcdef", use_case="held",
                      model_id="us.amazon.nova-lite-v1:0", system=("You are a host.",),
                      messages=({"role": "user", "content": [{"text": "Open?"}]},))


async def read_held(stream: ModelStream, heard: list[tuple[float, LLMEvent]],
                    window_s: float) -> None:
    """The first event as it comes, then one ``take_ready`` per window, as a turn holding
    text reads, until the reply's end."""
    heard.append((trio.current_time(), await stream.receive()))
    while not isinstance(heard[-1][1], StreamEnd):
        await trio.sleep(window_s)
        heard.extend((trio.current_time(), event) for event in await stream.take_ready())


async def test_words_read_a_window_at_a_time_keep_a_healthy_stream_alive(
        fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock) -> None:
    """Words 1 s apart for 6 s, read every 0.7 s: each read that brings words moves the
    deadline (1.5 s after them), so the stream is whole, never timed out at 1.5 s."""
    words = ["We", " open", " at", " nine", " every", " day."]
    fake_bedrock.push(text_reply(words, gap_s=1.0))
    heard: list[tuple[float, LLMEvent]] = []
    async with llm_on_virtual_clock(mock_clock, first_event_timeout_s=WORDS_GAP_S) as llm:
        async with llm.stream(request()) as stream:
            assert isinstance(stream, ModelStream)
            await read_held(stream, heard, 0.7)
    assert [e.text for _, e in heard if isinstance(e, TextDelta)] == words
    assert isinstance(heard[-1][1], StreamEnd)
    assert llm.statistics().errors_by_code == {}


async def test_empty_reads_do_not_keep_a_stream_silent_after_its_words_alive(
        fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock) -> None:
    """Words, then silence, read every 0.1 s: the reads that bring nothing are no sign of
    life, so the stream ends as a stall at the words gap after the last words read."""
    fake_bedrock.push(Stall(frames=(message_start(),
                                    *text_events(["We open", " at nine"], stop=False))))
    heard: list[tuple[float, LLMEvent]] = []
    async with llm_on_virtual_clock(mock_clock, first_event_timeout_s=WORDS_GAP_S) as llm:
        async with llm.stream(request()) as stream:
            assert isinstance(stream, ModelStream)
            with pytest.raises(ModelStreamFailed) as failed:
                await read_held(stream, heard, WINDOW_S)
            failed_at = trio.current_time()
    assert [e.text for _, e in heard if isinstance(e, TextDelta)] == ["We open", " at nine"]
    assert (failed.value.code, failed.value.after_tokens) == ("ReadTimeout", True)
    last_words_read = max(at for at, e in heard if isinstance(e, TextDelta))
    assert WORDS_GAP_S <= failed_at - last_words_read <= WORDS_GAP_S + WATCHDOG_SLACK_S + WINDOW_S
