"""A tool the model refuses, seen from a live call. Bedrock refuses every request that offers
a tool spec it or the model does not take (HTTP 400 ValidationException), so every turn of
every call of that use case failed, from the first; each turn logged 'bedrock call failed'
and 'model error, apologising' with the history's shape, as if the call's history were at
fault, and nothing said which tool to fix. Now the backend's episode logs it once (per use
case and model), naming the tool, what to change in it and `voiceagent check`; each turn's
'turn done' names ``ModelToolsRefused``. The local endpoint refuses what Bedrock refuses in a
toolConfig (``fake_tools``). A refusal cannot pass on a retry, and none is made; nor on
the next turn, so the call ends on its first (to the handoff, else with the words of a call
that cannot go on), not after two apologies."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.model_trouble import FAILED_TURNS_BEFORE_GOODBYE
from tests.fake_bedrock import FakeBedrock, HttpError, RecordedRequest, Reply, text_reply
from tests.fake_tools import INT_TOO_BIG, TOP_LEVEL
from tests.server_harness import AUTH_TOKEN, make_settings, one_use_case_config, running_server
from tests.test_bedrock import collect, request, user
from voiceagent.app.caller import open_call
from voiceagent.errors import ModelRejected, ModelToolsRefused
from voiceagent.llm.bedrock import BedrockLLM

pytestmark = pytest.mark.timeout(60)

CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
REFUSED = "bedrock refused the use case's tools"
STATUS = {"name": "CheckOrderStatus", "description": "The status of an order.",
          "input_schema": {"type": "object", "properties": {"order": {"type": "string"}},
                           "required": ["order"]}}
# an order by its number or by the caller's phone: fine for JSON Schema, not for Claude
EITHER = {"name": "PlaceOrderFunction", "description": "Place the order.",
          "input_schema": {"type": "object",
                           "properties": {"number": {"type": "string"},
                                          "phone": {"type": "string"}},
                           "anyOf": [{"required": ["number"]}, {"required": ["phone"]}]}}
# a bound as MCP servers write it (2**53 - 1): past what Claude on Bedrock takes
UNBOUNDED = {**STATUS, "input_schema": {
    "type": "object", "properties": {"order": {"type": "string",
                                               "maxLength": 9007199254740991}}}}


async def _call(url: str, ends: list[dict[str, Any]]) -> None:
    """Up to the turns the three-failures rule allows, until the agent ends the call."""
    async with open_call(url, auth_token=AUTH_TOKEN) as call:
        for _ in range(FAILED_TURNS_BEFORE_GOODBYE):
            await call.say("where is my order?")
            reply = await call.read_reply()
            if reply.ended is not None:
                ends.append(reply.ended)
                break
        await call.hang_up()


async def _calls(tmp_path: Path, tools: list[dict[str, Any]],
                 count: int) -> list[dict[str, Any]]:
    """``count`` calls at once: their ``end`` frames."""
    ends: list[dict[str, Any]] = []
    config = one_use_case_config(tmp_path, {"name": "orders", "model": CLAUDE,
                                            "prompt": "You take orders.", "tools": tools})
    settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1",
                             CONFIG_DIR=str(config), STACK_USE_CASE="orders")
    with trio.fail_after(40):
        async with running_server(settings) as server:
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(_call, server.url, ends)
            await server.runtime.calls.wait_idle()
    return ends


async def test_a_refused_tool_is_named_once_for_every_turn_of_every_call(
        tmp_path: Path, fake_bedrock: FakeBedrock,
        records: list[logging.LogRecord]) -> None:
    fake_bedrock.responder = lambda r: text_reply(["Fine."])    # never reached
    ends = await _calls(tmp_path, [STATUS, EITHER], count=2)
    turns = 2                               # each call's first: it cannot pass on the next
    # one request a turn: a refusal cannot pass on a retry, patient or not
    assert len(fake_bedrock.requests) == turns
    assert [json.loads(e["handoffData"]) for e in ends] == [
        {"reasonCode": "model-unavailable"}] * 2
    events = Counter(r.getMessage() for r in records)
    assert events[REFUSED] == 1
    assert events["bedrock call failed"] == 0
    assert events["model error, apologising"] == 0
    done = [r for r in records if r.getMessage() == "turn done"]
    assert [vars(r)["model_error"] for r in done] == ["ModelToolsRefused"] * turns
    line = vars(next(r for r in records if r.getMessage() == REFUSED))
    assert line["levelname"] == "ERROR"
    assert line["call_sid"].startswith("CA")                # where it was first met
    assert (line["use_case"], line["model_id"], line["tool"]) == (
        "orders", CLAUDE, "PlaceOrderFunction")
    assert line["what_to_do"].startswith(
        "fix tools[1] (PlaceOrderFunction) in use case orders: take oneOf / anyOf / allOf "
        "off the top of its input_schema (Claude takes none there)")
    assert "; run `voiceagent check`: it asks each model" in line["what_to_do"]
    assert line["error"] == TOP_LEVEL.format(index=1)
    ended = [r for r in records if r.getMessage() == "ending the call"]
    assert len(ended) == 2                                  # on each call's first turn
    assert {(vars(r)["failed_turns"], vars(r)["fails_every_turn"]) for r in ended} == {
        (1, True)}
    assert [r for r in records if r.levelno >= logging.WARNING
            and r.getMessage() not in (REFUSED, "bedrock calls still failing")] == []


async def test_a_bound_past_32_bits_is_named_with_what_to_change(
        tmp_path: Path, fake_bedrock: FakeBedrock,
        records: list[logging.LogRecord]) -> None:
    """forgecode#3307: "tools.N.custom.input_schema: int too big to convert" from Claude."""
    fake_bedrock.responder = lambda r: text_reply(["Fine."])
    await _calls(tmp_path, [EITHER | {"input_schema": {"type": "object"}}, UNBOUNDED],
                 count=1)
    assert len(fake_bedrock.requests) == 1
    refused = [vars(r) for r in records if r.getMessage() == REFUSED]
    assert len(refused) == 1
    assert refused[0]["tool"] == "CheckOrderStatus"
    assert refused[0]["what_to_do"].startswith(
        "fix tools[1] (CheckOrderStatus) in use case orders: a number in its input_schema "
        "(maximum, maxLength, maxItems...) is beyond 2147483647: lower it or remove it; "
        "run `voiceagent check`")
    assert refused[0]["error"] == INT_TOO_BIG.format(index=1)


QUOTED = ("1 validation error detected: Value 'my card is 4111 1111 1111 1111' at "
          "'toolConfig.tools.2.member.toolSpec.name' failed to satisfy constraint: Member "
          "must satisfy regular expression pattern: [a-zA-Z0-9_-]+. " + "x" * 200)
HISTORY = ("The toolConfig field must be defined when using toolUse and toolResult content "
           "blocks.")


@pytest.mark.parametrize("log_content", [False, True])
async def test_the_refusal_is_bounded_and_masked_and_a_history_refusal_stays_the_histories(
        fake_bedrock: FakeBedrock, records: list[logging.LogRecord],
        log_content: bool) -> None:
    """Bedrock's field checks quote the value they refuse; the line keeps the path and the
    constraint, masks the rest and is cut, as every refusal's is, unless LOG_CONTENT. Words
    about toolConfig alone, in a request with a conversation, are about its tool blocks:
    that refusal is the call's history's, logged each time with its shape."""
    said = iter([HISTORY, QUOTED])

    def refuse(r: RecordedRequest) -> Reply:
        return HttpError(400, "ValidationException", next(said))

    fake_bedrock.responder = refuse         # the words as Bedrock's, the tools it takes
    llm = BedrockLLM(region="us-east-1", retry_base_delay_s=0.0, log_content=log_content)
    tools = [{"name": "CheckOrderStatus", "description": "Status.",
              "inputSchema": {"json": {"type": "object"}}},
             {"name": "PlaceOrder", "description": "Place it.",
              "inputSchema": {"json": {"type": "object"}}}]
    asked = request((user("Hi"),), use_case="orders", tools=tuple(tools))
    try:
        with trio.fail_after(20):
            with pytest.raises(ModelRejected) as history:
                await collect(llm, asked)
            with pytest.raises(ModelToolsRefused):
                await collect(llm, asked)
    finally:
        await llm.aclose()
    assert not isinstance(history.value, ModelToolsRefused)
    events = Counter(r.getMessage() for r in records)
    assert (events["bedrock call failed"], events[REFUSED]) == (1, 1)
    line = vars(next(r for r in records if r.getMessage() == REFUSED))
    assert line["tool"] == "PlaceOrder"
    assert line["what_to_do"].startswith(
        "fix tools[1] (PlaceOrder) in use case orders: tool names are 1-64 of a-z A-Z 0-9 _ -")
    assert "4111" not in line["error"]
    assert "'toolConfig.tools.2.member.toolSpec.name'" in line["error"]
    if log_content:
        assert line["error"].endswith("x" * 200)
    else:
        assert len(line["error"]) < 300
        assert line["error"].endswith(" characters; LOG_CONTENT=true shows it)")
