"""A tool's mistakes that reached past the executor and ended the call (the caller heard
nothing more), where docs/tools.md says 'during a call nothing a tool does can end the call':
each becomes the tool's result, and the model's next reply goes out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.server_harness import make_settings
from tests.test_tool_plugins import TEST_LIMIT_S, call_tool, unique, write_config, write_module

pytestmark = pytest.mark.timeout(60)

MISTAKES = '''
import sys
import types

from voiceagent.tools import ToolContext, tool


class Booking:
    """An ORM row whose str() loads from a session that is already closed."""

    def __str__(self) -> str:
        raise RuntimeError("instance is not bound to a session")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


@tool("ReadOnlyResult")
async def read_only_result(ctx: ToolContext, args):
    return types.MappingProxyType({"free_tables": 3})


@tool("RowInResult", side_effect=True)
async def row_in_result(ctx: ToolContext, args):
    return {"status": "booked", "booking": Booking()}


@tool("UnprintableError")
async def unprintable_error(ctx: ToolContext, args):
    raise Unprintable()


@tool("ExitsInThread", blocking=True)
def exits_in_thread(ctx: ToolContext, args):
    sys.exit("the CRM client gave up")      # a library written for the command line
'''

TOOLS = ("ReadOnlyResult", "RowInResult", "UnprintableError", "ExitsInThread")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    module = unique("mistaken_tools")
    write_module(tmp_path / "plugins", module, MISTAKES)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    config = write_config(tmp_path / "config", *TOOLS)
    return make_settings(tmp_path / "data", CONFIG_DIR=str(config),
                         STACK_USE_CASE="plugUseCase", TOOLS=module)


async def run(settings: Any, name: str) -> tuple[dict[str, Any], str]:
    with trio.fail_after(TEST_LIMIT_S):
        result, reply, _ = await call_tool(settings, name, {})
    return result, reply.text


async def test_a_mapping_that_is_not_a_dict_is_the_tools_json_result(settings: Any) -> None:
    """The executor accepts any Mapping, but turned a MappingProxyType (or ChainMap) into its
    text, then tried dict() of that text: ValueError out of the executor, call over."""
    result, said = await run(settings, "ReadOnlyResult")
    assert result["status"] == "success", result
    assert result["content"] == [{"json": {"free_tables": 3}}]
    assert said == "Done."


async def test_a_value_whose_text_cannot_be_read_fails_the_tool_not_the_call(
        settings: Any) -> None:
    """A value JSON has no type for becomes its text; one whose str() raised (an ORM row
    read after its session closed) raised out of the executor and ended the call."""
    result, said = await run(settings, "RowInResult")
    assert result["status"] == "error", result
    text = result["content"][0]["text"]
    assert "a Booking value cannot be made text" in text, text      # what to fix
    assert "its str() raised RuntimeError" in text, text              # and why
    assert "not bound" not in text, text      # an exception's message may hold caller data
    assert "did run" in text, text            # a side effect: the model must not repeat it
    assert said == "Done."


async def test_an_exception_whose_message_cannot_be_read_is_still_the_tools_error(
        settings: Any) -> None:
    """'failed: <Type>: <message>' read the message with str(), inside the handler that
    turns the tool's exception into its result: a str() that raised went up and ended the
    call."""
    result, said = await run(settings, "UnprintableError")
    assert result["status"] == "error", result
    text = result["content"][0]["text"]
    assert text.startswith("failed: Unprintable"), text
    assert said == "Done."


async def test_a_tool_calling_sys_exit_fails_the_tool_not_the_call(settings: Any) -> None:
    """A library written for the command line calls sys.exit(): SystemExit is no Exception,
    so it went past the executor and ended the call (the server lived on: hypercorn caught
    it for the socket)."""
    result, said = await run(settings, "ExitsInThread")
    assert result["status"] == "error", result
    assert result["content"][0]["text"] == "failed: SystemExit: the CRM client gave up"
    assert said == "Done."
