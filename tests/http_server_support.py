"""A plain HTTP server on 127.0.0.1 in a thread, for tests that fake a peer reached with
blocking clients (urllib, http.client): a Twilio REST API, a server's /metrics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], *, backlog: int = 5) -> Iterator[str]:
    """Its base URL while the block runs; stopped, its socket closed, when the block ends.
    ``backlog``: connections the kernel holds before the server accepts them (the standard
    library's 5 resets a burst of clients connecting at once on a busy machine)."""

    class Server(ThreadingHTTPServer):
        request_queue_size = backlog

    server = Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
