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
PROBES = 20_000         # round trips of a byte, ~20 us each: 0.4 s at most here


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


async def stamping_on() -> bool:
    """Whether the kernel now stamps what arrives on a TCP socket that asked for stamps:
    True once it does.

    Linux turns its receive stamps on for the whole machine only while some socket wants
    them, and when the first one asks (none did before, or all that did are closed) it does
    so later, from a work queue: a segment that arrives meanwhile carries no stamp, and a
    socket that sends right after asking reads its bytes unstamped (7-12 % of tries here).
    So after ``stamp_arrivals``, while that socket is open, a probe connection of its own
    sends a byte at a time until one comes stamped: each try is a round trip through the
    kernel, not a sleep (a deadline would fire at once on a test's virtual clock). False
    after PROBES tries: a kernel that takes the option and never stamps (the benchmark's
    figures then fall back to when the endpoint read the request). Loopback only."""
    if not AVAILABLE:
        return False
    listener = trio.socket.socket()
    client = trio.socket.socket()
    with listener, client:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        if not stamp_arrivals(listener):
            return False
        await client.connect(listener.getsockname())
        accepted, _ = await listener.accept()
        with accepted:
            for _ in range(PROBES):
                await client.send(b".")
                _, ancillary, _, _ = await accepted.recvmsg(1, _ANCILLARY)
                if any(level == socket.SOL_SOCKET and kind == _TIMESTAMPNS
                       for level, kind, _ in ancillary):
                    return True
    return False


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
