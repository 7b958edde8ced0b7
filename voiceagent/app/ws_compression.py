"""No permessage-deflate on our WebSockets: hypercorn offers no setting, so its handshake's
extension class is swapped for one that declines.

hypercorn accepts permessage-deflate from any client that offers it, and wsproto inflates each
chunk it receives without a bound, before hypercorn's message limit (HARD_FRAME_LIMIT) sees
the result: one 64 KiB read inflates to ~64 MiB on the event loop. Measured through the real
server, 200 KB of deflated zeros on one socket held every call in the process still for
~0.7 s; a signed upgrade is replayable (``sessions``), so anyone holding one could keep doing
it. Twilio's frames are small JSON: declining costs nothing, and a client must accept it.
``install`` swaps the class only when hypercorn is the version it was written against, and
says so otherwise (the server then works as before, compression and all).
"""

from __future__ import annotations

import logging

import hypercorn.protocol.ws_stream as ws_stream
from wsproto.extensions import PerMessageDeflate

log = logging.getLogger(__name__)


class DeclinedDeflate(PerMessageDeflate):
    """Never agreed to, so never enabled: a compressed frame is a protocol error (1002)."""

    def accept(self, offer: str) -> None:
        return None


def install() -> bool:
    """Idempotent. False (and a warning) when hypercorn's handshake no longer looks as
    expected."""
    current = getattr(ws_stream, "PerMessageDeflate", None)
    if current is DeclinedDeflate:
        return True
    if current is not PerMessageDeflate:
        log.warning("hypercorn's WebSocket handshake is not the one expected; permessage-"
                    "deflate stays on", extra={"found": repr(current)})
        return False
    setattr(ws_stream, "PerMessageDeflate", DeclinedDeflate)  # noqa: B010 (not exported)
    return True
