"""moto's DynamoDB kept alive: the WSGI application ``python -m moto.server`` serves, served
instead by hypercorn over HTTP/1.1 with kept-alive connections, as DynamoDB's front ends keep
them. Run as its own process (``MotoServer(kept_alive=True)``)::

    python tests/moto_kept_alive.py -p 5000

Why: moto's own server is werkzeug's development server, which closes the connection after
every answer and starts a thread for each connection. Under the benchmarks' load every store
write then paid a TCP connect in our server and an accept plus a thread start in moto, on the
core the local Bedrock endpoint and the callers share: the benchmark measured its stand-in,
not what production sees (issue 20).

moto's application runs on hypercorn's event loop, one request at a time, not in hypercorn's
WSGI threads: a request is ~2 ms of moto's Python on the CPU (a PutItem, measured), which
threads could not overlap under the GIL, only add hand-offs to (to the thread and back for
each part of the answer); and moto's global state then sees one request at a time. A Query is
not ~2 ms: moto gathers and sorts every item of the table for each one (``Table.all_items``),
~1.5 ms and ~5 ms more for each 1000 items in the table (measured: 19 ms at 3520 items, a
GetItem 1.5 ms), where DynamoDB reads the one partition. So a burst of Queries (a mass
reconnect: each ``/action`` reads the call's relay marks, each new socket its history)
saturated this stand-in as it would not DynamoDB (issue 20: reconnects at 200 calls went from
~0.4 s to 5-6 s when ``/action`` gained its Query; read as GetItems, 0.39 s again). So here a
base-table Query reads its partition alone (``query_one_partition``). Listens
on 127.0.0.1 only. SIGTERM ends it at once, as it does ``moto.server`` (moto keeps its tables
in memory: nothing to save).
"""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import trio
from hypercorn.app_wrappers import WSGIWrapper
from hypercorn.config import Config
from hypercorn.trio import serve
from moto.dynamodb.models.table import Table
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

HOST = "127.0.0.1"
KEEP_ALIVE_S = 60.0                     # AWS front ends drop idle connections after ~60 s
MAX_BODY_BYTES = 16 * 1024 * 1024       # DynamoDB's own cap on a request (BatchWriteItem)


class InlineWSGI:
    """An ASGI application that runs a WSGI one in the event loop's own thread: hypercorn's
    ``WSGIWrapper`` does the environ and the answer, given a "spawn" that calls the
    application here and a "call soon" that queues the answer's parts until it returns."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self._wsgi = WSGIWrapper(app, MAX_BODY_BYTES)

    async def __call__(self, scope: Any, receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        queued: list[Any] = []

        async def run_here(function: Callable[..., None], *args: Any) -> None:
            function(*args)
            for message in queued:
                await send(message)
            queued.clear()

        def queue(_send: Any, message: Any) -> None:
            queued.append(message)

        await self._wsgi(scope, receive, send, run_here, queue)


async def _lifespan(receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def query_one_partition(table_class: Any = Table) -> None:
    """moto answers every Query by sorting the whole table (``Table.all_items``) and then
    keeping one partition: 19 ms at 3,520 items against 1.5 ms for a GetItem, so a
    benchmark's reconnect burst (a Query per ``/action`` and per new socket) measured moto's
    sort, not our path (issue 20). DynamoDB reads the one partition. Here a base-table Query
    of a table with a range key sees only its partition's items: the same results, order
    and pages, since moto filters on the hash key and sorts by the range key after. Index
    queries are left as moto answers them."""
    original = table_class.query

    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(original).bind(self, hash_key, *args, **kwargs)
        if bound.arguments.get("index_name") or hash_key is None or not self.range_key_attr:
            return original(self, hash_key, *args, **kwargs)
        partition = list(self.items.get(hash_key, {}).values())
        self.all_items = lambda: partition      # shadows the method for this call only
        try:
            return original(self, hash_key, *args, **kwargs)
        finally:
            del self.all_items

    table_class.query = query


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))     # as moto.server: moto's own URLs
    query_one_partition()
    moto = DomainDispatcherApplication(create_backend_app)
    config = Config()
    config.bind = [f"{HOST}:{args.port}"]
    config.keep_alive_timeout = KEEP_ALIVE_S
    config.accesslog = None
    trio.run(partial(serve, InlineWSGI(moto), config, mode="asgi"))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
