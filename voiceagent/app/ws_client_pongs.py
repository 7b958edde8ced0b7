"""The caller's WebSocket does not answer a ping that arrives after its own Close.

trio-websocket 0.12 answers every Ping from its reader task. A caller that hangs up sends
its Close (wsproto: LOCAL_CLOSING) and waits for the server's; a ping the server sent just
before (hypercorn pings every relay socket, the first as the socket opens) arrives in that
gap, wsproto refuses to send the pong, and the ``LocalProtocolError`` ended the reader task,
the call and ``voiceagent call`` (and the demo, the load generator) with a traceback
(python-trio/trio-websocket#184, still open). RFC 6455 5.5.1: after sending a Close frame an
endpoint sends no more frames, so the pong is dropped instead. ``install`` swaps the handler
only when trio-websocket's connection looks as this was written against, and says so
otherwise (everything works as before, with the rare traceback).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from trio_websocket import WebSocketConnection
from wsproto.connection import ConnectionState
from wsproto.events import Ping

log = logging.getLogger(__name__)

PingHandler = Callable[[WebSocketConnection, Ping], Coroutine[Any, Any, None]]

_MARK = "_voiceagent_pong_only_while_open"


def _pong_only_while_open(answer: PingHandler) -> PingHandler:
    async def handle_ping(self: WebSocketConnection, event: Ping) -> None:
        wsproto: Any = getattr(self, "_wsproto", None)
        if wsproto is not None and wsproto.state is not ConnectionState.OPEN:
            return
        await answer(self, event)

    setattr(handle_ping, _MARK, True)
    return handle_ping


def install() -> bool:
    """Idempotent. False (and a warning) when trio-websocket's connection no longer has the
    ping handler and wsproto connection this patches."""
    current = getattr(WebSocketConnection, "_handle_ping_event", None)
    if getattr(current, _MARK, False):
        return True
    if current is None or not inspect.iscoroutinefunction(current):
        log.warning("trio-websocket's ping handler is not the one expected; a ping that "
                    "crosses the caller's hang-up may still end the call with an error",
                    extra={"found": repr(current)})
        return False
    patched = _pong_only_while_open(current)
    WebSocketConnection._handle_ping_event = patched  # type: ignore[method-assign, assignment]
    return True
