"""``voiceagent check`` asks each model with the use case's tools, as a call offers them: a
tool schema Bedrock refuses (Claude takes no anyOf at the top of an input schema) passed the
check, whose probe offered no tools, and then every turn of every call failed, the model never
asked ("input_schema does not support oneOf, allOf, or anyOf at the top level", trycua/cua#3303).
The local Bedrock endpoint refuses what Bedrock refuses in a toolConfig (``fake_tools``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from tests.check_support import RUN_TIMEOUT_S, base_env, bedrock_env, moto_env, run_check
from tests.dynamodb_support import moto_endpoint
from tests.fake_bedrock import (
    RecordedRequest,
    Reply,
    message_end,
    message_start,
    running_fake_bedrock,
    stream_reply,
    tool_events,
)
from tests.fake_tools import TOP_LEVEL, tool_refusal
from tests.test_check_sends_what_calls_send import one_token
from voiceagent.app.check_refused_tools import refused_tool_outcome
from voiceagent.llm.base import LLMRequest
from voiceagent.llm.bedrock_converse import build_converse_request
from voiceagent.llm.bedrock_errors import without_echoed_values
from voiceagent.usecases import UseCase

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.timeout(90)

CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
OTHER_CLAUDE = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
NOT_CLAUDE = "qwen.qwen3-32b-v1:0"      # takes a top-level anyOf (code-yeongyu/senpi#1947)
STATUS = {"name": "CheckOrderStatus", "description": "The status of an order.",
          "input_schema": {"type": "object", "properties": {"order": {"type": "string"}},
                           "required": ["order"]}}
# an order by its number or by the caller's phone: fine for JSON Schema, not for Claude
EITHER = {"name": "PlaceOrderFunction", "description": "Place the order.",
          "input_schema": {"type": "object",
                           "properties": {"number": {"type": "string"},
                                          "phone": {"type": "string"}},
                           "anyOf": [{"required": ["number"]}, {"required": ["phone"]}]}}
USE_CASES: dict[str, dict[str, Any]] = {
    # on MODEL_IDENTIFIER (a Claude model): nothing at load says which model runs it
    "orders": {"tools": [STATUS, EITHER]},
    "lab": {"model": NOT_CLAUDE, "tools": [STATUS, EITHER]},
    "billing": {"model": OTHER_CLAUDE, "tools": [STATUS],
                "model_options": {"prompt_caching": True}},
    "frontDesk": {"model": OTHER_CLAUDE, "tools": [STATUS],
                  "model_options": {"prompt_caching": True}},
}


def one_token_or_a_cut_tool_call(request: RecordedRequest) -> Reply:
    """One token; from NOT_CLAUDE, the start of a tool call, cut there by maxTokens (the model
    may begin one: the probe leaves toolChoice to it)."""
    if request.model_id != NOT_CLAUDE:
        return one_token(request)
    return stream_reply(message_start(), tool_events(0, "tooluse_probe", "PlaceOrderFunction",
                                                     ['{"num']),
                        message_end("max_tokens", output_tokens=1))


def call_request(use_case: UseCase, model_id: str) -> dict[str, Any]:
    """What a call of ``use_case`` sends, as ``actors.model_round`` builds it."""
    return build_converse_request(LLMRequest(
        call_sid="CA" + "0" * 32, use_case=use_case.name, model_id=model_id,
        system=("You answer.",), messages=({"role": "user", "content": [{"text": "Hi"}]},),
        tools=use_case.tool_specs(), inference=use_case.inference.to_config(),
        options=use_case.model_options.to_options()))


async def test_a_tool_the_model_refuses_fails_the_check_naming_the_tool(
        moto_endpoint: str, tmp_path: Path) -> None:
    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    for name, extra in USE_CASES.items():
        (config / "usecases" / f"{name}.yaml").write_text(yaml.safe_dump(
            {"name": name, "prompt": "You answer in one word.", **extra}))
    with trio.fail_after(RUN_TIMEOUT_S):
        async with running_fake_bedrock(tls=True,
                                        responder=one_token_or_a_cut_tool_call) as bedrock:
            env = base_env(tmp_path, STORE="sqlite", DATA_DIR=str(tmp_path / "data"),
                           CONFIG_DIR=str(config), STACK_USE_CASE="orders",
                           **moto_env(moto_endpoint, tmp_path),
                           **{**bedrock_env(bedrock), "MODEL_IDENTIFIER": CLAUDE})
            run = await run_check(env, tmp_path)
    lines = run.lines
    assert run.code == 1, run.out + run.err
    assert lines["use cases and tools"].status == "pass", run.out

    refused = lines[f"Bedrock model {CLAUDE}"]
    assert (refused.status, refused.detail) == (
        "fail", "refuses tool PlaceOrderFunction of use case orders (ValidationException): "
                "every turn would fail"), run.out
    assert refused.advice[0].startswith(
        "fix tools[1] (PlaceOrderFunction) in use case orders: take oneOf / anyOf / allOf off "
        "the top of its input_schema (Claude takes none there)"), run.out
    assert not any("IAM bedrock:" in a or "enable model access" in a for a in refused.advice)
    assert refused.advice[-1] == ("Bedrock said: ValidationException: "
                                  + TOP_LEVEL.format(index=1))
    # the same tools to a model that takes them, and valid tools to Claude: both pass
    assert lines[f"Bedrock model {NOT_CLAUDE}"].status == "pass", run.out
    assert lines[f"Bedrock model {OTHER_CLAUDE}"].status == "pass", run.out

    # each request offers what the use case's calls offer (the cache point after the tools
    # included); billing and frontDesk send the same request, so it is asked once
    assert sorted(r.model_id for r in bedrock.requests) == sorted(
        [CLAUDE, NOT_CLAUDE, OTHER_CLAUDE])
    for request in bedrock.requests:
        name = {CLAUDE: "orders", NOT_CLAUDE: "lab", OTHER_CLAUDE: "billing"}[request.model_id]
        use_case = UseCase.model_validate({"name": name, "prompt": "You answer.",
                                           **USE_CASES[name]})
        call = call_request(use_case, request.model_id)
        assert request.body["toolConfig"] == call["toolConfig"], name
        assert "toolChoice" not in request.body["toolConfig"]   # the model need not call one
        assert request.body["inferenceConfig"] == {"maxTokens": 1}, name
    cached = next(r for r in bedrock.requests if r.model_id == OTHER_CLAUDE)
    assert [next(iter(entry)) for entry in cached.body["toolConfig"]["tools"]] == [
        "toolSpec", "cachePoint"]


def test_bedrocks_field_checks_count_tools_from_one() -> None:
    """Bedrock's own field checks name a tool as 'toolConfig.tools.K.member', K from 1, and
    quote the value (masked before the check sees it): the tool named is the K-th."""
    tools = ({"name": "CheckOrderStatus", "description": "Status.",
              "inputSchema": {"json": {"type": "object"}}},
             {"name": "place order", "description": "Place it.",
              "inputSchema": {"json": {"type": "object"}}})
    said = tool_refusal("acme.any-v1:0", {"toolConfig": {"tools": [
        {"toolSpec": tool} for tool in tools]}})
    assert said is not None
    assert "'toolConfig.tools.2.member.toolSpec.name'" in said
    message = without_echoed_values(said)
    outcome = refused_tool_outcome("Bedrock model m", message, tools, ("orders",),
                                   f"Bedrock said: ValidationException: {message}")
    assert outcome is not None
    assert outcome.detail == ("refuses tool place order of use case orders "
                              "(ValidationException): every turn would fail")
    assert outcome.advice[0] == ("fix tools[1] (place order) in use case orders: tool names "
                                 "are 1-64 of a-z A-Z 0-9 _ - (the tool's code is registered "
                                 "under the same name)")
    # an object schema is wanted, counted from 0; words about no tool are not a tool's
    said = tool_refusal("acme.any-v1:0", {"toolConfig": {"tools": [
        {"toolSpec": {**tools[0], "inputSchema": {"json": {"type": "string"}}}}]}})
    assert said is not None
    outcome = refused_tool_outcome("Bedrock model m", said, tools[:1], ("orders",), said)
    assert outcome is not None
    assert outcome.detail.startswith("refuses tool CheckOrderStatus ")
    assert refused_tool_outcome("m", "The provided model identifier is invalid.", tools,
                                ("orders",), "") is None
