"""A tool's ``ctx.log`` puts the call's CallSid on every line, also from a thread the tool (or
a library it calls: a connection pool, an SDK's executor) started itself. Such a thread does
not inherit the call's contextvars, and the handler's filter overwrote the line's own
call_sid with the context's "-": the one line about a failed payment API call could not be
found by the call it belonged to."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import trio

from tests.call_harness import CALL_SID, open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from tests.test_metrics import _Capture, captured  # noqa: F401  (fixture)
from voiceagent.logs import call_sid_var
from voiceagent.tools import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

PAY = [{"name": "takePayment", "description": "Charge the caller's card."}]


async def pay(ctx: Any, args: Any) -> dict[str, Any]:
    # as a library's own worker would: a thread of its own, no contextvars of the call
    worker = threading.Thread(target=ctx.log.warning, args=("payment API slow",))
    worker.start()
    worker.join()                   # a few microseconds: the loop is held, not the test
    return {"status": "paid"}


async def test_a_tool_line_from_a_thread_it_started_carries_the_call_sid(
        autojump_clock: Any, captured: _Capture) -> None:  # noqa: F811
    llm = FakeLLM([tool_use("tu_1", "takePayment", {}), words("Paid.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=PAY),
                              registry=ToolRegistry([ToolDefinition("takePayment", pay)])) as call:
        call.say("charge my card")
        with trio.fail_after(10):
            await call.reply()
    (line,) = [e for e in map(json.loads, captured.lines) if e["event"] == "payment API slow"]
    assert line["call_sid"] == CALL_SID, line
    assert line["tool"] == "takePayment"


def test_a_line_that_names_no_call_still_takes_the_context_s(
        captured: _Capture) -> None:  # noqa: F811
    """The rule for every other line is unchanged: the context's CallSid, "-" outside a call."""
    logger = logging.getLogger("voiceagent.test")
    token = call_sid_var.set("CA" + "7" * 32)
    try:
        logger.warning("inside a call")
    finally:
        call_sid_var.reset(token)
    logger.warning("outside any call")
    lines = {e["event"]: e["call_sid"] for e in map(json.loads, captured.lines)}
    assert lines == {"inside a call": "CA" + "7" * 32, "outside any call": "-"}
