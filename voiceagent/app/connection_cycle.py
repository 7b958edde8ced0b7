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
"""

from __future__ import annotations

import logging

import hypercorn.trio.run as worker
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer

from voiceagent.log_episodes import Episode

log = logging.getLogger(__name__)

FAILED = "connection failed in the server's HTTP code: dropped"


class EdgeConfig(Config):
    """hypercorn's settings, and where a connection that fails in its code is counted."""

    edge_refusals: Episode | None = None


class ReleasingTCPServer(TCPServer):
    async def run(self) -> None:
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
    if current is not TCPServer or not callable(getattr(TCPServer, "protocol_send", None)):
        log.warning("hypercorn's connection class is not the one expected; per-connection "
                    "garbage waits for a full collection, and a connection failing in "
                    "hypercorn's code ends the server", extra={"found": repr(current)})
        return False
    setattr(worker, "TCPServer", ReleasingTCPServer)   # noqa: B010 (not exported: typed as such)
    return True
