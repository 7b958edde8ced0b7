"""The nesting bound on JSON from outside, and the places that parse or take such JSON: the
depth scan (strings, escapes), its agreement with ``depth`` on parsed values, numbers JSON has
no value for, the model's tool input as Bedrock streams it, and tool input handed over as a
dict."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voiceagent import jsonlimits
from voiceagent.jsonlimits import MAX_DEPTH, NotFinite, TooDeep, depth, loads
from voiceagent.llm.base import LLMEvent, StreamEnd, ToolUseRequest
from voiceagent.llm.bedrock_reply import CUT_OFF, ReplyAssembler
from voiceagent.llm.eventstream import ReplyError
from voiceagent.tools.registry import ToolRegistry
from voiceagent.usecases import ToolDeclaration


def nested(levels: int, inner: str = "") -> str:
    """``levels`` arrays, the innermost holding ``inner``."""
    return "[" * levels + inner + "]" * levels


def test_the_bound_is_inclusive() -> None:
    assert loads(nested(MAX_DEPTH)) == json.loads(nested(MAX_DEPTH))
    with pytest.raises(TooDeep, match=f"deeper than {MAX_DEPTH} levels"):
        loads(nested(MAX_DEPTH + 1))
    assert loads(nested(3), max_depth=3) == [[[]]]
    with pytest.raises(TooDeep):
        loads('{"a": {"b": [1]}}', max_depth=2)


def test_too_deep_is_a_value_error_like_any_malformed_json() -> None:
    with pytest.raises(ValueError, match="nested deeper"):
        loads(nested(100))
    with pytest.raises(ValueError, match="Expecting"):
        loads("{")


def test_nesting_far_past_the_interpreter_limit_is_too_deep_not_a_recursion_error() -> None:
    with pytest.raises(TooDeep):
        loads(nested(200_000))


def test_bytes_are_decoded_as_utf8() -> None:
    assert loads(b'{"a": "\xc3\xa9"}') == {"a": "\u00e9"}
    with pytest.raises(TooDeep):
        loads(nested(40).encode())


@pytest.mark.parametrize("text", [
    json.dumps(["[" * 100]),                           # brackets inside a string
    json.dumps({"{" * 50: "[" * 50}),                  # in a key too
    json.dumps(['\\"' + "[" * 100]),                   # an escaped quote does not end it
    json.dumps(["\\", "x"]),                           # an escaped backslash then a real quote
    json.dumps(["\\\\\"" + "{" * 60 + '"']),            # backslashes and quotes mixed
])
def test_brackets_inside_strings_do_not_count(text: str) -> None:
    assert loads(text, max_depth=2) == json.loads(text)


def test_a_string_ending_in_an_escaped_backslash_closes_where_it_should() -> None:
    """After ``"\\\\"`` the string is over, so the brackets that follow are nesting."""
    text = '["\\\\", ' + nested(5) + "]"
    assert json.loads(text) == ["\\", [[[[[]]]]]]
    with pytest.raises(TooDeep):
        loads(text, max_depth=5)
    assert loads(text, max_depth=6) == ["\\", [[[[[]]]]]]


def test_depth_of_parsed_values() -> None:
    assert depth("x") == depth(7) == depth(None) == 0
    assert depth({}) == depth([]) == 1
    assert depth({"a": [1, {"b": "[[["}]}) == 3
    assert depth([[], [[[]]], []]) == 4


def test_depth_stops_counting_past_its_limit_without_recursion() -> None:
    value: list[Any] = []
    for _ in range(200_000):
        value = [value]
    assert depth(value, limit=MAX_DEPTH) == MAX_DEPTH + 1
    assert depth(value, limit=5) == 6


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), children, max_size=3),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_the_text_scan_and_the_value_walk_agree(value: Any) -> None:
    """Any value, its text full of brackets, quotes and backslashes in strings: it loads
    exactly at its own depth, and one level less is too deep."""
    text = json.dumps(value)
    levels = depth(value)
    assert loads(text, max_depth=levels) == value
    if levels:
        with pytest.raises(TooDeep):
            loads(text, max_depth=levels - 1)


@pytest.mark.parametrize("text", ['{"n": NaN}', '{"n": Infinity}', "[-Infinity]",
                                  '{"n": 1e999}', "[-2e308]", '{"a": {"b": [1, 1e400]}}'])
def test_numbers_json_has_no_value_for_are_refused(text: str) -> None:
    """``1e999`` is valid JSON text, but Python reads it as infinity, which ``json.dumps``
    writes back as ``Infinity``: not JSON."""
    with pytest.raises(NotFinite, match="not finite"):
        loads(text)
    assert isinstance(NotFinite(), ValueError)          # malformed, for every caller
    assert repr(loads(text, finite=False)) == repr(json.loads(text))    # NaN != NaN


def test_finite_numbers_at_the_edges_load() -> None:
    assert loads('[1.7976931348623157e308, -1e308, 5e-324, 1e-999, 12, -0.0, "NaN"]') == [
        1.7976931348623157e308, -1e308, 5e-324, 0.0, 12, -0.0, "NaN"]


# ---------------------------------------------------------------- the model's tool input


def assembled_tool(fragments: list[str], stop_reason: str = "tool_use") -> list[LLMEvent]:
    """What the Bedrock reply assembler makes of a reply of one toolUse block streamed in
    ``fragments``, without its ``StreamEnd``."""
    assembler = ReplyAssembler(started_at=0.0)
    out: list[LLMEvent] = []
    assembler.feed_event("contentBlockStart", {"contentBlockIndex": 0, "start": {
        "toolUse": {"toolUseId": "tu_1", "name": "lookup"}}}, out)
    for fragment in fragments:
        assembler.feed_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {
            "toolUse": {"input": fragment}}}, out)
    assembler.feed_event("contentBlockStop", {"contentBlockIndex": 0}, out)
    assembler.feed_event("messageStop", {"stopReason": stop_reason}, out)
    assembler.finish(out)
    end = out.pop()
    assert isinstance(end, StreamEnd)
    assert end.stop_reason == stop_reason
    return out


def object_nested(levels: int) -> str:
    """A JSON object ``levels`` deep, itself the first level."""
    return '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)


def test_tool_input_at_the_bound_is_a_tool_call() -> None:
    text = object_nested(MAX_DEPTH)
    cut = len(text) // 2
    [request] = assembled_tool([text[:cut], text[cut:]])
    assert request == ToolUseRequest("tu_1", "lookup", json.loads(text))


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 100_000])
def test_tool_input_past_the_bound_is_a_malformed_reply(levels: int) -> None:
    text = object_nested(levels)
    with pytest.raises(ReplyError, match="deeper than") as raised:
        assembled_tool([text[:7], text[7:]])
    assert raised.value.code == "MalformedToolInput"


def test_tool_input_with_a_number_json_cannot_hold_is_a_call_the_tool_refuses() -> None:
    """Not a retry (the model meant it) and not the value as parsed (``inf`` in the history
    would make every later request body ``Infinity``, not JSON): the call with null in its
    place, and the problem, which becomes the tool's error result."""
    [request] = assembled_tool(['{"quantity": 1e99', '9, "size": "L", "x": [NaN, 2]}'])
    assert request == ToolUseRequest(
        "tu_1", "lookup", {"quantity": None, "size": "L", "x": [None, 2]},
        input_problem="input: a number that is not finite (NaN, Infinity, or too large for "
                      "a 64-bit float); JSON has no such value")
    json.dumps(request.input, allow_nan=False)


@pytest.mark.parametrize("fragments", [["[1, 2]"], ['{"item": "pizza", "qty'], ["1e999"]])
def test_tool_input_that_is_not_an_object_is_still_malformed(fragments: list[str]) -> None:
    with pytest.raises(ReplyError, match="not a JSON object") as raised:
        assembled_tool(fragments)
    assert raised.value.code == "MalformedToolInput"


@pytest.mark.parametrize("fragments", [['{"items": ["pepperoni", "sa'],
                                       ['{"note": "pepperoni", "n": 1e999, "m": [']])
def test_tool_input_cut_off_by_max_tokens_is_a_call_the_tool_refuses(
        fragments: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """Cut off by the reply's token limit, the input would be cut off again on every try:
    the call comes with an empty input (the history needs one) and the reason, which the
    tool's error result gives the model; the log names the tool and the stop reason."""
    with caplog.at_level(logging.WARNING):
        assert assembled_tool(fragments, stop_reason="max_tokens") == [
            ToolUseRequest("tu_1", "lookup", {}, input_problem=CUT_OFF)]
    [record] = caplog.records
    assert record.__dict__["tool"] == "lookup"
    assert record.__dict__["stop_reason"] == "max_tokens"
    assert "pepperoni" not in str(record.__dict__)              # sizes, never the input


def test_tool_input_handed_over_as_a_dict_is_bounded_before_the_schema_is() -> None:
    declaration = ToolDeclaration(name="lookup", description="x", input_schema={
        "type": "object", "properties": {"a": {"type": "object"}}})
    registry = ToolRegistry()
    deep: dict[str, Any] = {}
    for _ in range(MAX_DEPTH - 1):
        deep = {"a": deep}
    assert registry.validate_input(declaration, deep) == []
    for levels in (MAX_DEPTH, 50_000):                  # one level more, and far more
        deeper = deep
        for _ in range(levels - MAX_DEPTH + 1):
            deeper = {"a": deeper}
        assert registry.validate_input(declaration, deeper) == [
            f"input: nested deeper than {jsonlimits.MAX_DEPTH} levels"]


def test_plain_says_what_changed_and_refuses_what_cannot_be_json() -> None:
    value, changed = jsonlimits.plain({"n": 1, "x": [float("inf")], "s": "ok"})
    assert value == {"n": 1, "x": [None], "s": "ok"}
    assert changed == ["Infinity as null"]
    assert jsonlimits.plain({"a": [1, {"b": "c"}]}) == ({"a": [1, {"b": "c"}]}, [])
    circular: dict[str, object] = {}
    circular["self"] = circular
    for bad, why in ((circular, "nested deeper"), ({("a", "b"): 1}, "keys must be"),
                     ({"deep": _nested(40)}, f"nested deeper than {MAX_DEPTH}")):
        with pytest.raises(ValueError, match=why):
            jsonlimits.plain(bad)


def _nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def test_a_tool_input_and_result_as_deep_as_allowed_fit_a_stored_chat_item() -> None:
    """Both are stored inside a chat item; DynamoDB refuses items nested past 32 levels, and
    a refused message left the history a reconnect resumes broken: what the limit lets
    through, the store must take."""
    from actors.history import History
    from voiceagent.store import records
    from voiceagent.store.base import check_item_nesting

    deepest = _object_nested(MAX_DEPTH)
    assert depth(deepest) == MAX_DEPTH
    history = History()
    history.add_user_text("order")
    history.add_assistant("", [{"toolUseId": "t1", "name": "placeOrder", "input": deepest}])
    history.add_tool_results([{"toolResult": {"toolUseId": "t1", "status": "success",
                                              "content": [{"json": deepest}]}}])
    for index, message, meta in history.take_sealed(final=True):
        check_item_nesting(records.chat_item("CA1", 1_000, index, message, meta, 3600))


def _object_nested(levels: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"n": value}
    return value
