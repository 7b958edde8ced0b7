"""hypercorn's HTTP/1.1 WebSocket stream class, swapped for one with our behaviour on top.

hypercorn has no hook for its stream class, so each change of ours (``ws_pings``,
``first_look``) is a mixin set in its protocol module, built on the class in place (which
``peer_close`` may have swapped already), so that they stack in any order.
"""

from __future__ import annotations

import hypercorn.protocol.h11 as h11_protocol
from hypercorn.protocol.ws_stream import WSStream


def in_place() -> object:
    return getattr(h11_protocol, "WSStream", None)


def swap_in(mixin: type[WSStream]) -> bool:
    """Idempotent. False, and nothing changed, when the class in place is not hypercorn's
    stream or a subclass of it (another library swapped it, or hypercorn renamed it)."""
    current = in_place()
    if isinstance(current, type) and issubclass(current, mixin):
        return True
    if not isinstance(current, type) or not issubclass(current, WSStream):
        return False
    swapped = mixin if current is WSStream else type(
        f"{mixin.__name__}{current.__name__}", (mixin, current), {})
    setattr(h11_protocol, "WSStream", swapped)   # noqa: B010 (not exported)
    return True
