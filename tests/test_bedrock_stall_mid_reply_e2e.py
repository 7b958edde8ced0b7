"""A Bedrock stream that goes silent mid-sentence, through the real server, the real Bedrock
backend against the local endpoint and a real WebSocket caller playing Twilio, on trio's
virtual clock (moved by the test alone, so the server's store threads take the real time they
need without a timer firing meanwhile).

Once the model had answered, the longest silence allowed was the read timeout (10 s): the
caller heard "We open", then ten seconds of dead air, then "Sorry, I lost my train of
thought". A healthy model's words come tens of milliseconds apart, so after a text delta the
silence allowed is now the first-event timeout (3 s); the long silences of a healthy stream
(its start, its reasoning, a toolUse's input) keep theirs.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from actors.turn import APOLOGY_CUT
from tests.bedrock_clock import llm_on_virtual_clock
from tests.fake_bedrock import (
    FakeBedrock,
    Stall,
    message_start,
    stream_reply,
    text_events,
    text_reply,
)
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import RelayCall, open_call
from voiceagent.llm.bedrock import FIRST_EVENT_TIMEOUT_S, READ_TIMEOUT_S, BedrockLLM
from voiceagent.llm.bedrock_watchdog import WATCHDOG_SLACK_S

pytestmark = pytest.mark.timeout(60)    # virtual time below; this bounds the real waits

STEP_S = 0.05                           # the test moves the clock this much at a time
FINE = "Fine, anything else?"


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock
              ) -> AsyncIterator[BedrockLLM]:
    async with llm_on_virtual_clock(mock_clock) as backend:    # the production limits
        mock_clock.autojump_threshold = math.inf
        yield backend


async def heard_until(call: RelayCall, mock_clock: trio.testing.MockClock, last: str,
                      limit_s: float) -> list[tuple[float, str]]:
    """Each text the caller receives and when (virtual seconds from now), until ``last`` is
    in it or ``limit_s`` has passed: the clock moves ``STEP_S`` at a time, once everything
    the last step set off has run."""
    started = trio.current_time()
    frames: list[tuple[float, str]] = []

    async def read() -> None:
        while (frame := await call.receive()) is not None:
            if frame.get("type") == "text":
                frames.append((trio.current_time() - started, str(frame.get("token", ""))))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        while trio.current_time() - started < limit_s:
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            if last in "".join(text for _, text in frames):
                break
            mock_clock.jump(STEP_S)
        nursery.cancel_scope.cancel()
    return frames


async def test_a_stream_silent_after_words_is_apologised_for_at_the_first_event_timeout(
        tmp_path: Path, fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock) -> None:
    fake_bedrock.push(Stall(frames=stream_reply(
        message_start(), text_events(["We open"], stop=False)).frames), text_reply([FINE]))
    settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1")
    async with running_server(settings, llm=llm) as server:
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            await call.say("When do you open?")
            frames = await heard_until(call, mock_clock, APOLOGY_CUT.strip(),
                                       READ_TIMEOUT_S + 1.0)
            heard = "".join(text for _, text in frames)
            assert heard == "We open" + APOLOGY_CUT
            said_at = frames[0][0]
            apology_at = next(at for at, text in frames if text and "Sorry" in text)
            silence_s = apology_at - said_at
            assert FIRST_EVENT_TIMEOUT_S <= silence_s <= (FIRST_EVENT_TIMEOUT_S + WATCHDOG_SLACK_S
                                                          + 2 * STEP_S), frames
            await call.say("And on Sundays?")        # the call goes on
            assert (await call.read_reply()).text == FINE
            await call.hang_up()
    assert fake_bedrock.requests[0].outcome == "client_closed"
    assert llm.statistics().errors_by_code == {"ReadTimeout": 1}
