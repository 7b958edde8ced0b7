"""The handoff tool the end-tool tests share (test_end_tool_edges, test_teardown_tools,
test_goodbye_cut): its use case, its ``end``, and a handoff that sends that ``end`` and then
hangs, as one writing its summary to a store that does not answer."""
from __future__ import annotations

from typing import Any

import trio

from tests.call_harness import plain_use_case
from voiceagent.relay.outbound import End
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

HANDOFF_USE_CASE = plain_use_case(tools=[{"name": "handoff", "description": "To a person"}])
HANDOFF_END = End(handoff_data='{"reasonCode": "live-agent-handoff"}')


def hanging_handoff(timeout_s: float = 60) -> ToolRegistry:
    """``handoff``: ``end`` out, then no result until its limit cuts it."""
    async def handoff(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(HANDOFF_END)
        await trio.sleep_forever()              # the store never answers
        return {"status": "transferring"}
    return ToolRegistry([ToolDefinition("handoff", handoff, timeout_s=timeout_s,
                                        ends_turn=True)])
