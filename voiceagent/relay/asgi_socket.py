"""The relay WebSocket as a ``RelaySocket``, straight on ASGI (hypercorn).

We take the relay route before Quart sees it: Quart's websocket wrapper cancels the handler
when the peer disconnects, which would turn every hang-up into a cancellation. Here a
disconnect is just ``RelayBroken`` from ``receive``, and the call winds down in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from voiceagent.errors import RelayBroken
from voiceagent.relay import first_look, peer_close

log = logging.getLogger(__name__)

NORMAL_CLOSE = 1000     # Twilio's close after a hang-up, or after our `end`

Scope = dict[str, Any]
Receive = Any      # hypercorn's ASGIReceiveCallable
Send = Any         # hypercorn's ASGISendCallable


class AsgiRelaySocket:
    def __init__(self, receive: Receive, send: Send,
                 on_closed: Callable[[], None] | None = None,
                 scope: Scope | None = None) -> None:
        self._receive = receive
        self._send = send
        self._on_closed = on_closed     # once, when the socket is known closed, either side
        self._closed = False
        self._scope = scope             # the connection's, shared with hypercorn's stream

    def look_first(self, look: first_look.Look | None) -> None:
        """``look`` sees each text frame in hypercorn's read task, when it is the next one
        the caller of ``receive`` gets (``first_look``); None stops it."""
        if self._scope is None:
            return
        if look is None:
            self._scope.pop(first_look.SCOPE_KEY, None)
        else:
            self._scope[first_look.SCOPE_KEY] = look

    def _mark_closed(self) -> None:
        if not self._closed:
            self._closed = True
            if self._on_closed is not None:
                self._on_closed()

    async def receive(self) -> str | bytes:
        while True:
            event = await self._receive()
            kind = event.get("type")
            if kind == "websocket.receive":
                text = event.get("text")
                if text is not None:
                    return str(text)
                return bytes(event.get("bytes") or b"")
            if kind == "websocket.disconnect":
                self._mark_closed()
                code = event.get("code")
                raise RelayBroken(f"peer closed the socket (code {code})",
                                  dropped=code != NORMAL_CLOSE and peer_close.codes_known(),
                                  code=code if isinstance(code, int) and peer_close.codes_known()
                                  else None)

    async def send(self, text: str) -> None:
        if self._closed:
            raise RelayBroken("socket already closed")
        try:
            await self._send({"type": "websocket.send", "text": text})
        except Exception as err:          # hypercorn raises its own types on a dead transport
            self._mark_closed()
            raise RelayBroken(f"send failed: {type(err).__name__}", dropped=True) from err

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        self._mark_closed()
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception as err:
            log.debug("close after the peer left", extra={"error": type(err).__name__})


async def accept(receive: Receive, send: Send) -> bool:
    """Complete the handshake; False when the peer left before it."""
    event = await receive()
    if event.get("type") != "websocket.connect":
        return False
    await send({"type": "websocket.accept"})
    return True


async def reject(receive: Receive, send: Send, status: int, body: str) -> None:
    """Answer the upgrade with a plain HTTP response instead of accepting it."""
    event = await receive()
    if event.get("type") != "websocket.connect":
        return
    await send({"type": "websocket.http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "websocket.http.response.body", "body": body.encode()})
