"""The socket as the actors see it: no quart, no trio-websocket, just frames in and out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable


class RelaySocket(Protocol):
    async def receive(self) -> str | bytes:
        """The next frame. Raises ``RelayBroken`` when the peer closed or the network failed."""
        ...

    async def send(self, text: str) -> None:
        """Send one text frame. Raises ``RelayBroken`` when the peer is gone."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close from our side; never raises."""
        ...


@runtime_checkable
class LooksFirst(Protocol):
    """A socket whose frames can be looked at as they arrive, before ``receive`` returns
    them: the relay reader cuts a barge-in there, a scheduler pass sooner."""

    def look_first(self, look: Callable[[str], None] | None) -> None:
        """``look(text)`` for each text frame that is the next ``receive`` returns, called
        where it arrives; it must not await or block. None stops it."""
        ...
