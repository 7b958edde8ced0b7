"""A tool that raises: the server log's warning says where, so the developer can find the
bug without the message (which may hold what the caller said, and is never logged)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from voiceagent.tools import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

BOOK = [{"name": "bookTable", "description": "Book a table."}]


def _lookup(args: Any) -> int:
    return int(args["party_size"])            # the developer's bug: the field is "party"


async def book(ctx: Any, args: Any) -> dict[str, Any]:
    return {"party": _lookup(args)}


async def test_a_failed_tools_warning_names_the_file_and_line_that_raised(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    """'tool failed' carried the exception's type alone (KeyError): no message, no
    traceback, no place, so a tool with several lookups could not be debugged from the log."""
    caplog.set_level(logging.WARNING, logger="actors.tool_executor")
    llm = FakeLLM([tool_use("tu_1", "bookTable", {"party": 4}), words("Sorry.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=BOOK),
                              registry=ToolRegistry([ToolDefinition("bookTable", book)])) as call:
        call.say("a table for four")
        with trio.fail_after(10):
            await call.reply()
    (record,) = [r for r in caplog.records if r.getMessage() == "tool failed"]
    assert getattr(record, "error", None) == "KeyError"
    line = _lookup.__code__.co_firstlineno + 1
    assert getattr(record, "at", None) == f"{__file__}:{line} in _lookup", record.__dict__
    assert "party_size" not in str(record.__dict__.get("at"))      # no message, no values
