"""What a tool is: an async callable registered by name, plus how it behaves under barge-in.

The input schema is declared in the use case (a Bedrock ``toolSpec``); the registry only holds
the code. A use case naming a tool the registry does not have fails at load time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from voiceagent.relay.protocol import Outbound
    from voiceagent.settings import Settings
    from voiceagent.store.base import Store

ToolResult = dict[str, Any]           # a JSON object: Bedrock rejects arrays and scalars here


class ToolContext(Protocol):
    """What a running tool may touch. Tools never see the socket: they ask for a message."""

    call_sid: str
    use_case: str
    caller: str                       # E.164 From number ("" when unknown)
    called: str                       # E.164 To number
    tool_use_id: str
    store: Store
    settings: Settings | None         # None only where a test runs tools without settings

    async def send(self, message: Outbound) -> None:
        """Queue a ``Play``, ``SendDigits``, ``Language`` or ``End`` for the relay writer."""
        ...


ToolFunction = Callable[[ToolContext, Mapping[str, Any]], Awaitable[ToolResult]]


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    name: str
    function: ToolFunction
    side_effect: bool = False         # True: shielded from barge-in, runs once per toolUseId
    timeout_s: float = 10.0
    ends_turn: bool = False           # True: the model is not called again after it (endCall)
