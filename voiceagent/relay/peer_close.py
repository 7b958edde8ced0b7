"""The close code the peer sent, in hypercorn's ``websocket.disconnect``.

hypercorn 0.18 reports every close it did not start as 1006, whatever the peer sent
(pgjones/hypercorn#127): Twilio's close after a hang-up (1000, "Closing websocket session")
looked like a dropped connection, so a call could not tell the caller hanging up from its
relay session failing (the failure Twilio then asks ``/action`` about, which may reconnect),
and every failed socket was counted as a hang-up. hypercorn answers the peer's close frame by
echoing it; the stream class below keeps that code and puts it in the disconnect event, so a
connection lost without a close frame is still 1006. hypercorn has no hook for its stream
class, so its protocol modules' attribute is set to the subclass; ``install`` does that
only for a release it was written against (``KNOWN_RELEASES``), and says so otherwise (then
``codes_known`` is False, and the relay socket takes every close for a hang-up, as before).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

import hypercorn.protocol.h2 as h2
import hypercorn.protocol.h11 as h11
from hypercorn.protocol.ws_stream import WSStream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection

log = logging.getLogger(__name__)

Put = Callable[[dict[str, Any]], Awaitable[None]]


# the releases whose WSStream keeps ``app_put`` and ``connection`` as read below: another
# one is left alone (``install``), not guessed at, since a wrong guess fails at every close
KNOWN_RELEASES = ("0.18.",)


class PeerCodeWSStream(WSStream):
    async def _send_wsproto_event(self, event: Any) -> None:
        # hypercorn echoes the peer's close (REMOTE_CLOSING) just before it ends the stream
        # and tells the app, through app_put, with its own code
        # type(), not isinstance(): wsproto's events are ABCs, and this runs for every frame
        if (type(event) is CloseConnection and self.app_put is not None
                and self.connection.state is ConnectionState.REMOTE_CLOSING):
            self.app_put = _with_code(self.app_put, int(event.code))
        await super()._send_wsproto_event(event)


def hypercorn_release() -> str:
    return version("hypercorn")


def release_known() -> bool:
    """Whether the hypercorn installed is a release our changes to its internals were
    written against (``KNOWN_RELEASES``): here, ``first_look`` and ``connection_cycle``."""
    return hypercorn_release().startswith(KNOWN_RELEASES)


def _with_code(put: Put, code: int) -> Put:
    async def put_with_code(message: dict[str, Any]) -> None:
        if message.get("type") == "websocket.disconnect":
            message = {**message, "code": code}
        await put(message)
    return put_with_code


def install() -> bool:
    """Idempotent. False (and a warning) when hypercorn's streams no longer look as
    expected. A subclass of ours in place (``ws_pings`` builds on it) counts as ours."""
    modules = (h11, h2)
    if (any(getattr(m, "WSStream", None) is not WSStream
            and not _ours(getattr(m, "WSStream", None)) for m in modules)
            or not callable(getattr(WSStream, "_send_wsproto_event", None))
            or not release_known()):
        log.warning("hypercorn's WebSocket stream is not the one expected; a socket closed "
                    "by its peer counts as a hang-up, whatever its close code",
                    extra={"hypercorn": hypercorn_release(), "known": KNOWN_RELEASES})
        return False
    for module in modules:
        if getattr(module, "WSStream", None) is WSStream:
            setattr(module, "WSStream", PeerCodeWSStream)   # noqa: B010 (not exported)
    return True


def _ours(found: object) -> bool:
    return isinstance(found, type) and issubclass(found, PeerCodeWSStream)


def codes_known() -> bool:
    """Whether a disconnect's code is the peer's: else a hang-up reads as 1006 too."""
    return _ours(getattr(h11, "WSStream", None))
