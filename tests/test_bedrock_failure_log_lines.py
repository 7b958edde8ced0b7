"""How many lines Bedrock failing on every turn writes to the log (CloudWatch bills each one).
Throttling fails every call's turns with one fact; each failed turn wrote 'bedrock call
failed', 'model error, apologising' and, once the retry quota was spent, 'bedrock retry quota
spent' beside its 'turn done': ~4 lines a turn, ~330 lines a second measured at 300 calls.
Now the backend logs an episode (its first failure of each kind in full, a summary a minute,
its end) and each turn its one 'turn done' line, which names the error under its CallSid."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from actors.model_trouble import FAILED_TURNS_BEFORE_GOODBYE
from tests.fake_bedrock import FakeBedrock, HttpError, RecordedRequest, Reply, text_reply
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_bedrock import collect, request
from voiceagent.app.caller import open_call
from voiceagent.errors import ModelThrottled
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.log_episodes import QUIET_S
from voiceagent.logs import for_call

THROTTLED = HttpError(429, "ThrottlingException", "Too many requests, please wait.")
EPISODE = ("bedrock call retried", "bedrock call failed", "bedrock retry quota spent: not "
           "retried", "bedrock calls still failing", "bedrock calls recovered")


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock) -> AsyncIterator[BedrockLLM]:
    backend = BedrockLLM(region="us-east-1", retry_base_delay_s=0.0)   # no retry waits
    yield backend
    await backend.aclose()


async def turns(llm: BedrockLLM, mock_clock: trio.testing.MockClock, *, calls: int,
                seconds: int) -> int:
    """Each of ``calls`` calls asks for a reply every 5 s of virtual time; the failures."""
    failed = 0
    for _ in range(0, seconds, 5):
        for call in range(calls):
            with for_call(f"CA{call:032d}"):
                try:
                    await collect(llm, request())
                except ModelThrottled:
                    failed += 1
        mock_clock.jump(5.0)
    return failed


@pytest.mark.timeout(60)              # virtual time below; this bounds the real requests
async def test_two_and_a_half_minutes_of_throttling_is_one_episode(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock,
        records: list[logging.LogRecord]) -> None:
    fake_bedrock.responder = lambda request: THROTTLED
    with trio.fail_after(600):
        failed = await turns(llm, mock_clock, calls=5, seconds=150)
        fake_bedrock.responder = lambda request: text_reply(["Hello."])
        mock_clock.jump(QUIET_S)
        await collect(llm, request())
    assert failed == 150
    assert llm.statistics().retries == 100                  # the quota: 500, 5 a retry
    logged = [r for r in records if r.getMessage() in EPISODE]
    assert [r.getMessage() for r in logged] == [
        "bedrock call retried", "bedrock call failed", "bedrock retry quota spent: not retried",
        "bedrock calls still failing", "bedrock calls still failing", "bedrock calls recovered"]
    retried, first_failure, _, summary, _, end = logged
    assert vars(retried)["call_sid"] == "CA" + "0" * 32        # where it happened
    assert vars(first_failure)["code"] == "ThrottlingException"
    assert vars(first_failure)["error"] == "Too many requests, please wait."
    assert vars(summary)["call_sid"] == "-"                    # the process's, not a call's
    assert vars(summary)["counts"]["ThrottlingException"] >= 55
    assert vars(summary)["retry_quota"] == 0
    assert vars(end)["counts"] == {"ThrottlingException retried": 100,
                                   "ThrottlingException": 150, "retry quota spent": 100}
    assert vars(end)["lasted_s"] == 145.0
    assert [r for r in records if r.levelno >= logging.WARNING and r not in logged] == []


def _throttled(request: RecordedRequest) -> Reply:
    return THROTTLED


async def test_a_throttled_turn_is_one_line_beside_the_episode(
        tmp_path: Path, fake_bedrock: FakeBedrock, records: list[logging.LogRecord]) -> None:
    """Through the real server and real sockets: three calls, three turns each (the third
    failed turn in a row ends the call), every one throttled. Each turn's apology is its
    'turn done' line, naming the error, under its CallSid; the fact that Bedrock throttles
    is said once."""
    fake_bedrock.responder = _throttled
    settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1")
    with trio.fail_after(60):
        async with running_server(settings) as server:
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(_call, server.url)
            await server.runtime.calls.wait_idle()
    events = Counter(r.getMessage() for r in records)
    assert events["turn done"] == 3 * FAILED_TURNS_BEFORE_GOODBYE
    done = [r for r in records if r.getMessage() == "turn done"]
    assert {vars(r)["model_error"] for r in done} == {"ModelThrottled"}
    assert len({vars(r)["call_sid"] for r in done}) == 3
    assert events["bedrock call failed"] == 1
    assert events["model error, apologising"] == 0
    assert events["bedrock retry quota spent: not retried"] <= 1
    assert events["bedrock call retried"] == 1


async def _call(url: str) -> None:
    async with open_call(url, auth_token=AUTH_TOKEN) as call:
        for _ in range(FAILED_TURNS_BEFORE_GOODBYE):
            await call.say("what are your hours?")
            await call.read_reply()
        await call.hang_up()


@pytest.mark.timeout(60)
async def test_a_backend_closed_mid_episode_logs_what_it_counted(
        fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock,
        records: list[logging.LogRecord]) -> None:
    fake_bedrock.responder = lambda request: THROTTLED
    llm = BedrockLLM(region="us-east-1", retry_base_delay_s=0.0, max_retries=0)
    with trio.fail_after(600):
        assert await turns(llm, mock_clock, calls=2, seconds=20) == 8
        await llm.aclose()
    logged = [r for r in records if r.getMessage() in EPISODE]
    assert [r.getMessage() for r in logged] == ["bedrock call failed",
                                                "bedrock calls still failing"]
    assert vars(logged[-1])["counts"] == {"ThrottlingException": 8}
    assert vars(logged[-1])["stopping"] is True
