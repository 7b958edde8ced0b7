"""Let hypercorn's per-connection objects go when the connection ends, not at a full collection.

hypercorn 0.18's ``TCPServer`` keeps its protocol, and the protocol keeps the server's bound
``protocol_send``: a reference cycle for every connection it serves. A connection lives long
enough to reach the oldest generation (a relay socket lives for the call; even a ``/twiml``
request outlives a few young collections under load), so when it ends the cycle is freed only
by a full collection, and the server runs those rarely on purpose (``heap.GC_THRESHOLDS``: one
costs 0.2-0.7 s at 2000 calls). Measured with the real server (issue 20,
``benchmarks/bench_old_garbage.py``): each ended call left 5.5-7.5 KiB of heap to the next
full collection (its ``/twiml`` request's connection and its relay socket's, 40-55 objects),
11-15 MB for 2000 calls, and RSS at 2000 calls peaks as calls end.

The server that hypercorn's trio worker makes for each connection drops its protocol when the
connection is done, which breaks the cycle so reference counting frees it at once. hypercorn
has no setting or hook for its connection class, so the worker's module attribute is set to
a subclass; ``install`` does that only when hypercorn is the version it was written against
and says so otherwise (the server still works, and holds the garbage as before).

The same subclass keeps one connection's failure to that connection. An exception out of
hypercorn's own code for a connection (not the app's: hypercorn catches those) went up
through trio's listener, which cancels every other connection and ends the server: one
upgrade with a byte past ASCII in its Sec-WebSocket-Protocol did that (wsproto decodes it as
ASCII), sent by anyone, before any signature check. Such a connection is now dropped and
counted in the edge's refusals (``Runtime.edge_refusals``, handed over on hypercorn's
``Config``: the first in full, then counts), and the server goes on.

It is also where the cap on open connections (``open_connections``) is kept: a connection
is counted in as it starts and out as it ends, and its idle timer (hypercorn's, which runs
exactly while no request is under way) is where one is closed to make room. A connection
refused over the cap was closed without a word: Twilio reported a generic connect failure
(64102), a balancer's health check or a proxy logged a reset, and nothing said why. It now
gets ``BUSY``, a fixed 503, before it is closed: its request is never read (nothing
unauthenticated is parsed), and the one write is small enough for an empty send buffer to
take at once, so a peer that does not read holds nothing (``REFUSAL_SEND_S`` bounds it
anyway; what the kernel has not sent at the close it delivers or drops on its own, with no
descriptor of the process's).
"""

from __future__ import annotations

import logging
import socket

import hypercorn.trio.run as worker
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.utils import parse_socket_addr

from voiceagent.app.open_connections import OpenConnections, Peer
from voiceagent.log_episodes import Episode
from voiceagent.relay.peer_close import release_known

log = logging.getLogger(__name__)

FAILED = "connection failed in the server's HTTP code: dropped"
BUSY_TEXT = b"server busy: too many connections, try again"
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\n"
        b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
        % (len(BUSY_TEXT), BUSY_TEXT))
REFUSAL_SEND_S = 0.5          # never reached in practice: see the module's docstring
# ``protocol_send``'s raw-data path is hypercorn's own, copied: only for releases it was read in
SEND_AS_READ = release_known()


class EdgeConfig(Config):
    """hypercorn's settings, and where a connection that fails in its code is counted."""

    edge_refusals: Episode | None = None
    open_connections: OpenConnections | None = None


class ReleasingTCPServer(TCPServer):
    _peer: Peer | None = None

    async def run(self) -> None:
        connections = getattr(self.config, "open_connections", None)
        self._peer = peer = _peer(self.stream)
        if connections is not None and (peer is None or not connections.admit(peer)):
            if peer is not None:                 # over the cap (else its peer is gone)
                await _answer_busy(self.stream)
            await self.stream.aclose()
            return
        try:
            await super().run()
        except Exception as err:      # its stream is closed already: hypercorn's finally
            refusals = getattr(self.config, "edge_refusals", None)
            cause = _first_leaf(err)
            error = f"{type(cause).__name__}: {cause}"[:300]
            if refusals is None:
                log.warning(FAILED, extra={"error": error})
            else:
                refusals.note("connection_failed", FAILED, error=error)
        finally:
            # nothing reads it after ``run``: hypercorn's own ``_close`` ran in its finally
            self.__dict__.pop("protocol", None)
            if connections is not None and peer is not None:
                connections.closed(peer)

    async def protocol_send(self, event: Event) -> None:
        """hypercorn's, without its trip through the scheduler when the send lock is free:
        trio's ``Lock`` yields even then, so every frame to a relay socket (each turn's first
        word among them) waited for a batch of every call's runnable work before its bytes
        left (``bench_token_calls.py --hops``). Otherwise as hypercorn 0.18 does it; its send
        still yields once, after the bytes are out."""
        if type(event) is not RawData or self.send_lock.locked() or not SEND_AS_READ:
            await super().protocol_send(event)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        self.send_lock.acquire_nowait()
        try:
            with trio.CancelScope(shield=True):
                await self.stream.send_all(event.data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(Closed())
        finally:
            self.send_lock.release()

    async def _read_data(self) -> None:
        """hypercorn's; then its idle timer stops. A peer that closed while no request was
        under way (an idle keep-alive connection, a health check's bare connect) ended the
        reading, but the timer went on to HTTP_IDLE_TIMEOUT_S (310 s), holding the
        connection's task group, the connection, and its place under the cap, for nothing:
        there is nobody left to time out."""
        await super()._read_data()
        await self.idle_task.stop()

    async def _idle_timeout(self) -> None:
        """hypercorn's, with the wait cut short when the connection is closed to make room."""
        connections = getattr(self.config, "open_connections", None)
        peer = getattr(self, "_peer", None)
        if connections is None or peer is None:
            await super()._idle_timeout()
            return
        with connections.idle(peer), trio.move_on_after(self.config.keep_alive_timeout):
            await self.context.terminated.wait()
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()


def _peer(stream: object) -> Peer | None:
    """The peer's address as hypercorn gives it to the app (the ASGI scope's ``client``)."""
    try:
        sock = stream.socket                                  # type: ignore[attr-defined]
        return parse_socket_addr(sock.family, sock.getpeername())
    except (AttributeError, OSError):
        return None


async def _answer_busy(stream: object) -> None:
    """``BUSY``, then no more from us (a FIN after it): see the module's docstring. Only on
    a plain TCP stream (a TLS one would need a handshake first: closed unanswered)."""
    if not isinstance(stream, trio.SocketStream):
        return
    with trio.move_on_after(REFUSAL_SEND_S):
        try:
            await stream.send_all(BUSY)
            stream.socket.shutdown(socket.SHUT_WR)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass                                 # gone already: nothing to tell it


def _first_leaf(err: BaseException) -> BaseException:
    """What went wrong, out of the task groups' nesting."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    return err


def install() -> bool:
    """Idempotent. False (and a warning) when hypercorn's worker no longer looks as expected."""
    current = getattr(worker, "TCPServer", None)
    if current is ReleasingTCPServer:
        return True
    expected = all(callable(getattr(TCPServer, name, None)) for name in
                   ("protocol_send", "_read_data", "_idle_timeout", "_initiate_server_close"))
    if current is not TCPServer or not expected:
        log.warning("hypercorn's connection class is not the one expected; per-connection "
                    "garbage waits for a full collection, a connection failing in "
                    "hypercorn's code ends the server, and open connections are not capped",
                    extra={"found": repr(current)})
        return False
    setattr(worker, "TCPServer", ReleasingTCPServer)   # noqa: B010 (not exported: typed as such)
    return True
