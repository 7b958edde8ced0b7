"""The socket as the actors see it: no quart, no trio-websocket, just frames in and out."""

from __future__ import annotations

from typing import Protocol


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
