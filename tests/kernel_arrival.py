"""When bytes reached a socket, by the kernel's receive timestamp (``SO_TIMESTAMPNS``), not
when the process got round to reading them.

The local Bedrock endpoint shares two cores with the server under test, the callers and
moto. Under load it reads a request milliseconds after it arrived, and that lateness is the
stand-in's, not the server's: a benchmark that takes the endpoint's hold of a request off
the server's figure needs the hold from the request's arrival. Loopback stamps a packet as
the sender's ``send`` hands it over, so the stamp is when the server sent the request.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

import trio

# Linux's; Python's socket module does not always name it (35 in asm-generic/socket.h, the
# value on x86 and ARM; the kernel's control message carries the same number)
_TIMESTAMPNS: int | None = getattr(socket, "SO_TIMESTAMPNS",
                                   35 if sys.platform == "linux" else None)
AVAILABLE = _TIMESTAMPNS is not None
_TIMESPEC = struct.Struct("@ll")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size) if _TIMESTAMPNS is not None else 0


def stamp_arrivals(sock: trio.socket.SocketType) -> bool:
    """Turn the kernel's receive stamps on; False where the platform has none. On a
    listening socket, for every connection it accepts (they inherit it from the moment the
    kernel takes them, before ``accept``)."""
    if _TIMESTAMPNS is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


async def receive_stamped(stream: trio.SocketStream, max_bytes: int
                          ) -> tuple[bytes, float | None]:
    """Like ``receive_some`` (b"" at the end, and for a reset), with the moment the bytes
    arrived as a ``time.perf_counter()`` reading (CLOCK_MONOTONIC, shared by the machine's
    processes), or None when the kernel gave no stamp."""
    try:
        data, ancillary, _, _ = await stream.socket.recvmsg(max_bytes, _ANCILLARY)
    except OSError:
        return b"", None
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == _TIMESTAMPNS:
            seconds, nanoseconds = _TIMESPEC.unpack(value[:_TIMESPEC.size])
            # the stamp is wall-clock time: moved onto the monotonic clock by the distance
            # between the two read now (microseconds apart, far under what is measured)
            now_monotonic, now_wall = time.perf_counter(), time.time()
            return data, now_monotonic - (now_wall - (seconds + nanoseconds / 1e9))
    return data, None
