"""Numbers DynamoDB cannot hold (an int of more than 38 digits, such as ``uuid4().int``; a
float of a magnitude below 1e-130 or from 1e126) that SQLite and Bedrock take. A tool's result
or the model's tool input holding one was written to the history, and the DynamoDB store
refused that chat item: the round was lost from the store (a reconnect resumed without it).
They become their decimal text where they come in, and both stores refuse such an item alike,
naming the attribute (the contract's ``check_numbers_dynamodb_cannot_hold_are_refused_alike``).
So with an empty object key, which DynamoDB refuses at any depth of an item ("Empty attribute
name"): a result's gets a name, an input's is the tool's error, and both stores refuse it
(``check_empty_attribute_names_are_refused_alike``).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.dynamodb_support import REGION, aws_env, isolate_env, open_test_table, shared_moto
from tests.dynamodb_support import table_name as new_table_name
from tests.fakes import FakeLLM, tool_use, words
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_jsonlimits import assembled_tool
from tests.test_tool_plugins import unique, write_config, write_module
from voiceagent import jsonlimits
from voiceagent.app.caller import Identity, open_call
from voiceagent.app.open_backends import open_store
from voiceagent.catalog import read_config_dir
from voiceagent.catalog import write_config as load_config
from voiceagent.llm.base import ToolUseRequest
from voiceagent.store import records
from voiceagent.tools.plugins import build_registry

pytestmark = pytest.mark.timeout(90)

TEST_LIMIT_S = 45
LONG_ID = 2**128 - 1                       # 39 digits: the largest uuid4().int can be

TOOLS = f'''
from voiceagent.tools import ToolContext, tool


@tool("LookupOrder")
async def lookup_order(ctx: ToolContext, args):
    return {{"order": {LONG_ID}, "tiny": 1e-200, "huge": [1e200, 1e126], "n": 12, "x": 0.5,
             "lines": [{{"": "one"}}]}}
'''


def test_a_tool_result_s_numbers_the_store_cannot_hold_become_their_text() -> None:
    value, changed = jsonlimits.plain({"id": LONG_ID, "ok": [10**38 - 1, 1e-130, -2.5e125, 0.0],
                                       "tiny": -1e-131, "huge": 1e126})
    assert value == {"id": str(LONG_ID), "ok": [10**38 - 1, 1e-130, -2.5e125, 0.0],
                     "tiny": "-1e-131", "huge": "1e+126"}
    assert sorted(changed) == ["float out of the store's range as text"] * 2 + [
        "int of more than 38 digits as text"]


def test_model_tool_input_with_a_number_the_store_cannot_hold_is_a_call_the_tool_refuses(
        ) -> None:
    """As for ``1e999``: the input as text where the number was, so the history item is
    storable, and the problem, which the tool's error result gives the model."""
    [request] = assembled_tool([f'{{"order": {LONG_ID}, "w": 1e-2', '00, "n": 7}'])
    assert isinstance(request, ToolUseRequest)
    assert request.input == {"order": str(LONG_ID), "w": "1e-200", "n": 7}
    assert request.input_problem is not None
    assert "38 digits" in request.input_problem
    assert "send it as a string" in request.input_problem


def test_an_empty_key_in_a_tool_result_is_renamed() -> None:
    """DynamoDB refuses an empty attribute name at any depth; the key gets a name, one no
    other key of that object has."""
    value, changed = jsonlimits.plain({"": 1, "(empty)": 2, "inner": [{"": {"": 3}}],
                                       "text": '"": a string', "blank": ""})
    assert value == {"(empty)": 2, "(empty)_": 1, "inner": [{"(empty)": {"(empty)": 3}}],
                     "text": '"": a string', "blank": ""}
    assert sorted(changed) == ["empty key as '(empty)'"] * 2 + ["empty key as '(empty)_'"]
    assert jsonlimits.plain({"a": "", "b": ['""', '"":']}) == (
        {"a": "", "b": ['""', '"":']}, [])


def test_model_tool_input_with_an_empty_key_is_a_call_the_tool_refuses() -> None:
    [request] = assembled_tool(['{"items": [{"" : 2}], "note": "\\"\\":"}'])
    assert isinstance(request, ToolUseRequest)
    assert request.input == {"items": [{"(empty)": 2}], "note": '"":'}
    assert request.input_problem is not None
    assert "name every key" in request.input_problem
    [fine] = assembled_tool(['{"note": "\\"\\": is not a key", "x": ""}'])
    assert isinstance(fine, ToolUseRequest)
    assert fine.input == {"note": '"": is not a key', "x": ""}
    assert fine.input_problem is None


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"])
async def test_a_call_whose_tool_returns_such_numbers_is_stored_whole(
        backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real call on each store: the tool's result reaches the model with those numbers as
    text, and every chat item of the call lands (none refused, none dropped)."""
    module = unique("order_tools")
    write_module(tmp_path / "plugins", module, TOOLS)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    config = write_config(tmp_path / "config", "LookupOrder")
    overrides: dict[str, Any] = {"CONFIG_DIR": str(config), "STACK_USE_CASE": "plugUseCase",
                                 "TOOLS": module}
    table = new_table_name()
    if backend == "dynamodb":
        endpoint = shared_moto().endpoint
        isolate_env(monkeypatch, aws_env(endpoint, tmp_path))
        overrides.update(STORE="dynamodb", TABLE_NAME=table, AWS_REGION=REGION)
    settings = make_settings(tmp_path / "data", **overrides)
    llm = FakeLLM([tool_use("tu_1", "LookupOrder", {}),
                   words("Found it.", first_s=0.01, gap_s=0.01)])
    identity = Identity()
    with trio.fail_after(TEST_LIMIT_S):
        async with (open_test_table(shared_moto().endpoint, name=table)
                    if backend == "dynamodb" else nullcontext()) as table_store:
            if table_store is not None:      # SQLite's server loads CONFIG_DIR itself
                await load_config(table_store, read_config_dir(config,
                                                               build_registry(settings)))
            async with running_server(settings, llm=llm) as server:
                async with open_call(server.url, auth_token=AUTH_TOKEN,
                                     identity=identity) as call:
                    await call.say("where is my order?")
                    reply = await call.read_reply()
                    await call.hang_up()
                await server.runtime.calls.wait_idle()
                assert await server.runtime.writer.flush(timeout_s=10)
                statistics = server.runtime.writer.statistics()
                history = server.runtime.calls.reports[-1].history
            async with open_store(settings) as store:
                stored = await store.query(identity.call_sid, records.CHAT_PREFIX)
    assert reply.text == "Found it."
    (block,) = llm.requests[1].messages[-1]["content"]
    assert block["toolResult"]["status"] == "success"
    assert block["toolResult"]["content"] == [{"json": {
        "order": str(LONG_ID), "tiny": "1e-200", "huge": ["1e+200", "1e+126"], "n": 12,
        "x": 0.5, "lines": [{"(empty)": "one"}]}}]
    assert statistics.failed == 0
    assert history is not None
    chat = [records.chat_from_item(item)["chat"] for item in stored]
    assert chat == list(history.messages)
    assert json.dumps(chat).count(str(LONG_ID)) == 1
