"""A scripted rule's ``then`` chooses its sentence by the tool's result (config/README.md,
"The scripted model"). It could only say one sentence whatever came back: a lookup that found
nothing was said as if it had ("Your order number is."), and a failed order got the generic
"Could we try that again?", an invitation to order twice after a timeout that may have
placed it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from voiceagent.errors import ConfigError
from voiceagent.llm.base import LLMRequest, Message, TextDelta, ToolUseRequest
from voiceagent.llm.scripted import APOLOGY, DONE, ScriptedLLM
from voiceagent.usecase_loading import parse_model
from voiceagent.usecase_relay import STORED
from voiceagent.usecases import ScriptedConfig, UseCase, load_use_case_file

RESTAURANT = Path(__file__).parent.parent / "config" / "usecases" / "restaurantOrderingUseCase.yaml"
SPEC = {"name": "FindOrder", "description": "An order.",
        "inputSchema": {"json": {"type": "object", "properties": {}}}}
USE = ToolUseRequest("tooluse_1", "FindOrder", {})
CASES: list[dict[str, Any]] = [
    {"when": {"found": False}, "say": "No order from this number."},
    {"when": "failed", "say": "I can't look that up now."},
    {"when": {"state": "ready", "paid": True}, "say": "Order {number} is ready and paid."},
    {"when": {"count": 1}, "say": "One order: {number}."},
    {"say": "Order {number} is {state}."},
]


def _llm(cases: Any) -> ScriptedLLM:
    config = ScriptedConfig.model_validate({"rules": [
        {"match": "order", "tool": {"name": "FindOrder"}, "then": cases}]})
    return ScriptedLLM({"demo": config}, first_token_delay_s=0, token_delay_s=0)


def _history(result: dict[str, Any]) -> list[Message]:
    return [{"role": "user", "content": [{"text": "my order?"}]},
            {"role": "assistant", "content": [{"toolUse": {
                "toolUseId": USE.tool_use_id, "name": USE.name, "input": {}}}]},
            {"role": "user", "content": [{"toolResult": {"toolUseId": USE.tool_use_id,
                                                         **result}}]}]


async def _said(llm: ScriptedLLM, result: dict[str, Any], use_case: str = "demo",
                tools: Sequence[Any] = (SPEC,)) -> str:
    request = LLMRequest(call_sid="CA00000000000000000000000000000001", use_case=use_case,
                         model_id="scripted", system=("Be brief.",),
                         messages=tuple(_history(result)), tools=tuple(tools))
    with trio.fail_after(10):
        async with llm.stream(request) as events:
            return "".join([e.text async for e in events if isinstance(e, TextDelta)])


def _ok(data: dict[str, Any]) -> dict[str, Any]:
    return {"content": [{"json": data}], "status": "success"}


@pytest.mark.parametrize(("data", "said"), [
    ({"found": False}, "No order from this number."),
    ({"found": True, "number": "48", "state": "ready", "paid": True},
     "Order 48 is ready and paid."),
    ({"found": True, "number": "48", "state": "ready", "paid": False}, "Order 48 is ready."),
    ({"found": True, "number": "48", "state": "late", "count": 1.0}, "One order: 48."),
    ({"found": True, "number": "48", "state": "late", "count": True}, "Order 48 is late."),
])
async def test_the_first_case_that_fits_the_result_is_said(
        autojump_clock: trio.testing.MockClock, data: dict[str, Any], said: str) -> None:
    assert await _said(_llm(CASES), _ok(data)) == said


async def test_a_failed_tool_says_its_case_or_the_apology(
        autojump_clock: trio.testing.MockClock) -> None:
    failed = {"content": [{"text": "timed out after 5 s"}], "status": "error"}
    assert await _said(_llm(CASES), failed) == "I can't look that up now."
    assert await _said(_llm([c for c in CASES if c.get("when") != "failed"]),
                       failed) == APOLOGY


async def test_a_when_field_the_result_lacks_is_logged_and_null_fits_it(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """Which fields a tool returns is declared nowhere: a misspelt ``when`` field is found
    when the tool runs, named (never a value) in a warning."""
    cases = [{"when": {"fonud": False}, "say": "Nothing."},
             {"when": {"number": None}, "say": "No number."},
             {"say": "Order {number}."}]
    with caplog.at_level("WARNING", logger="voiceagent.llm.scripted"):
        said = await _said(_llm(cases), _ok({"found": False, "secret": "s3cr3t"}))
    assert said == "No number."
    (record,) = [r for r in caplog.records
                 if r.getMessage() == "scripted then-case named fields its tool's result lacks"]
    assert record.__dict__["missing"] == ["fonud"]      # not "number": null asked for absent
    assert record.__dict__["result_fields"] == ["found", "secret"]
    assert "s3cr3t" not in str(record.__dict__)


async def test_no_case_fits_says_the_generic_line_and_warns(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    cases = [{"when": {"found": True}, "say": "Found it."}]
    with caplog.at_level("WARNING", logger="voiceagent.llm.scripted"):
        said = await _said(_llm(cases), _ok({"found": False}))
    assert said == DONE
    assert [r.__dict__["result_fields"] for r in caplog.records
            if r.getMessage() == "no scripted then-case fits its tool's result"] == [["found"]]


def _load(then: Any) -> UseCase:
    return parse_model(UseCase, {
        "name": "demo", "prompt": "You answer the phone.",
        "tools": [{"name": "FindOrder", "description": "An order."}],
        "scripted": {"rules": [{"match": "hours", "reply": "Nine to five."},
                               {"match": "order", "tool": {"name": "FindOrder"},
                                "then": then}]}}, "demo.yaml")


@pytest.mark.parametrize(("then", "at", "words"), [
    ([{"say": "Any."}, {"when": {"found": False}, "say": "None."}], "then[1]",
     "never said: case 0 fits every result"),
    ([{"when": {"a": 1}, "say": "A."}, {"when": {"a": 1.0, "b": 2}, "say": "AB."}], "then[1]",
     "never said: case 0"),
    ([{"when": "failed", "say": "No."}, {"when": "failed", "say": "Nope."}], "then[1]",
     "case 0 is for a failed tool too"),
    ([{"when": "failed", "say": "Order {number} failed."}], "then[0].say",
     "a failed tool has no result to fill {number}"),
    ([{"when": "fail", "say": "No."}], "then[0].when", "or 'failed' for a tool that failed"),
    ([{"when": {"state": ["a", "b"]}, "say": "No."}], "then[0].when.state",
     "one value (text, a number, true/false or null), not a list"),
    ([{"when": {"day": date(2026, 12, 6)}, "say": "No."}], "then[0].when.day",
     "not a date (quote it to compare text)"),                  # YAML's unquoted 2026-12-06
    ([{"when": {}, "say": "No."}], "then[0].when", "when names no field"),
    ([], "then", "then lists no case"),
    ([{"when": {"a": 1}}], "then[0].say", "Field required"),
    ({"say": "One."}, "then", "a list of cases"),
])
def test_a_case_that_cannot_work_is_refused_at_load(then: Any, at: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(then)
    assert caught.value.key_path == f"scripted.rules[1].{at}"
    assert words in caught.value.problem


def test_cases_that_can_each_be_said_load() -> None:
    """Not refused: true and 1 differ, and a case with more fields may follow one with
    fewer that it does not contain."""
    _load([{"when": {"a": True}, "say": "T."}, {"when": {"a": 1}, "say": "One."},
           {"when": {"b": 1}, "say": "B."}, {"when": {"a": 2, "c": None}, "say": "AC."},
           {"say": "Else."}, {"when": "failed", "say": "Failed."}])


def test_one_sentence_is_stored_as_written_and_cases_round_trip() -> None:
    """A release from before cases reads a plain ``then`` back as it always did."""
    plain = _load("Order {number}.")
    rule = plain.model_dump(mode="json")["scripted"]["rules"][1]
    assert rule["then"] == "Order {number}."
    cases = _load(CASES)
    dumped = cases.model_dump(mode="json")
    assert dumped["scripted"]["rules"][1]["then"] == CASES
    assert parse_model(UseCase, dumped, "stored", STORED) == cases


async def test_the_shipped_order_rule_never_invites_a_second_order(
        autojump_clock: trio.testing.MockClock) -> None:
    uc = load_use_case_file(RESTAURANT)
    llm = ScriptedLLM.from_use_cases([uc], first_token_delay_s=0, token_delay_s=0)
    request = LLMRequest(call_sid="CA00000000000000000000000000000001", use_case=uc.name,
                         model_id="scripted", system=("Be brief.",), tools=uc.tool_specs(),
                         messages=({"role": "user", "content": [{"text":
                                    "I'd like to order a large pepperoni pizza"}]},))
    with trio.fail_after(10):
        async with llm.stream(request) as events:
            (use,) = [e async for e in events if isinstance(e, ToolUseRequest)]
    failed = {"content": [{"text": "timed out after 10 s"}], "status": "error"}
    history = [*request.messages,
               {"role": "assistant", "content": [{"toolUse": {
                   "toolUseId": use.tool_use_id, "name": use.name, "input": use.input}}]},
               {"role": "user", "content": [{"toolResult": {"toolUseId": use.tool_use_id,
                                                            **failed}}]}]
    with trio.fail_after(10):
        async with llm.stream(LLMRequest(
                call_sid=request.call_sid, use_case=uc.name, model_id="scripted",
                system=request.system, tools=request.tools,
                messages=tuple(history))) as events:
            said = "".join([e.text async for e in events if isinstance(e, TextDelta)])
    assert said.startswith("Sorry, I couldn't confirm that order just now.")
    assert "order status" in said
