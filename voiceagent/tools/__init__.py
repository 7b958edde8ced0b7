"""Tools the model may call. A tool is a function decorated with ``tool``::

    from voiceagent.tools import ToolContext, tool

    @tool("CheckTableAvailability", timeout_s=5.0)
    async def check_table(ctx: ToolContext, args: Mapping[str, Any]) -> dict[str, Any]:
        ...

Modules named in TOOLS, and modules that installed packages name in the ``voiceagent.tools``
entry-point group, are imported at start-up (``plugins.build_registry``); docs/tools.md.
"""

from voiceagent.tools.base import (
    BlockingToolFunction,
    ToolContext,
    ToolDefinition,
    ToolFunction,
    ToolLog,
    ToolMessage,
    ToolResult,
    tool,
)

__all__ = ["BlockingToolFunction", "ToolContext", "ToolDefinition", "ToolFunction", "ToolLog",
           "ToolMessage", "ToolResult", "tool"]
