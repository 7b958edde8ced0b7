"""A model stuck without failing, through the real server, the real Bedrock backend against
the local endpoint and a real WebSocket caller, on trio's virtual clock (each test names
``mock_clock`` itself: pytest-trio runs a test on the clock among its own arguments).

``model_trouble`` ends the call at the third failed turn in a row, but it counted only model
errors. A model that answers every request and still never answers the caller (it asks for a
tool round after round until ``MAX_TOOL_ROUNDS``, or its reply is filtered to nothing) had the
caller hear "that is taking me longer than it should" or "I lost my train of thought" on
every turn, for as long as they kept trying. Those turns count now, with model errors, in one
streak: the third in a row ends the call the same way. A turn the model answers (words the
caller heard, without an apology) starts the count again.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.model_trouble import CANNOT_GO_ON, FAILED_TURNS_BEFORE_GOODBYE
from actors.turn import APOLOGY_SILENT, NO_WORDS, TOO_MANY_ROUNDS
from tests.bedrock_clock import llm_on_virtual_clock
from tests.fake_bedrock import (
    FakeBedrock,
    HttpError,
    RecordedRequest,
    Reply,
    message_end,
    message_start,
    stream_reply,
    text_reply,
    tool_events,
)
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import open_call
from voiceagent.llm.bedrock import BedrockLLM

pytestmark = pytest.mark.timeout(60)    # virtual time below; this bounds the real waits

FINE = "Fine, anything else?"
ROUNDS = 2                              # MAX_TOOL_ROUNDS: a stuck turn is three requests
TOOL = "CheckRestaurantPickUpTime"      # the fixture use case's
PAUSE_S = 1.0                           # the caller's, before each turn


def asks_the_tool_again(request: RecordedRequest) -> Reply:
    return stream_reply(message_start(), tool_events(0, f"tu_{len(request.body['messages'])}",
                                                     TOOL, ['{}']), message_end("tool_use"))


def filtered(request: RecordedRequest) -> Reply:
    return stream_reply(message_start(), message_end("content_filtered"))


def refused(request: RecordedRequest) -> Reply:
    return HttpError(400, "ValidationException", "scripted refusal")


def answers(request: RecordedRequest) -> Reply:
    return text_reply([FINE])


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock
              ) -> AsyncIterator[BedrockLLM]:
    """The production limits, on a clock moved by the test alone: the server's threads (its
    store) take what real time they need without a timer firing meanwhile."""
    async with llm_on_virtual_clock(mock_clock) as backend:
        mock_clock.autojump_threshold = math.inf
        yield backend


async def conversation(tmp_path: Path, fake: FakeBedrock, llm: BedrockLLM,
                       mock_clock: trio.testing.MockClock,
                       model: list[Callable[[RecordedRequest], Reply]]
                       ) -> tuple[list[str], dict[str, Any] | None]:
    """One call, a turn for each of ``model`` (how the endpoint answers that turn's requests)
    until the call ends: what the caller heard each turn, and the ``end``."""
    settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1",
                             MAX_TOOL_ROUNDS=str(ROUNDS))
    turns: list[str] = []
    end = None
    async with running_server(settings, llm=llm) as server:
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            for n, responder in enumerate(model):
                fake.responder = responder
                mock_clock.jump(PAUSE_S)
                await call.say(f"question {n}")
                reply = await call.read_reply()
                turns.append(reply.text)
                end = reply.ended
                if end is None and reply.text == CANNOT_GO_ON:
                    end = (await call.read_reply()).ended   # right after the last words
                if end is not None:
                    break
            await call.hang_up()
    return turns, end


async def test_a_model_asking_for_tools_every_turn_ends_the_call_at_the_third_turn(
        tmp_path: Path, fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock) -> None:
    turns, end = await conversation(tmp_path, fake_bedrock, llm, mock_clock,
                                    [asks_the_tool_again] * 5)
    assert turns == [TOO_MANY_ROUNDS, TOO_MANY_ROUNDS, CANNOT_GO_ON]
    assert end is not None
    assert json.loads(end["handoffData"]) == {"reasonCode": "model-unavailable"}
    assert len(fake_bedrock.requests) == FAILED_TURNS_BEFORE_GOODBYE * (ROUNDS + 1)
    assert fake_bedrock.violations == []


async def test_a_model_answering_nothing_every_turn_ends_the_call_at_the_third_turn(
        tmp_path: Path, fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock) -> None:
    turns, end = await conversation(tmp_path, fake_bedrock, llm, mock_clock,
                                    [filtered] * 5)
    assert turns == [NO_WORDS, NO_WORDS, CANNOT_GO_ON]
    assert end is not None
    assert json.loads(end["handoffData"]) == {"reasonCode": "model-unavailable"}


async def test_every_kind_of_failed_turn_is_one_streak_and_an_answer_starts_it_again(
        tmp_path: Path, fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock) -> None:
    """A refusal, a stuck tool loop, an answer (the count starts again), then a filtered
    reply, a stuck tool loop and a refusal: the third of those ends the call."""
    model = [refused, asks_the_tool_again, answers, filtered, asks_the_tool_again, refused,
             answers]
    turns, end = await conversation(tmp_path, fake_bedrock, llm, mock_clock,
                                    model)
    assert turns == [APOLOGY_SILENT, TOO_MANY_ROUNDS, FINE, NO_WORDS, TOO_MANY_ROUNDS,
                     CANNOT_GO_ON]
    assert end is not None
