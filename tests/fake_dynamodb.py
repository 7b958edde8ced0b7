"""A local DynamoDB JSON 1.0 endpoint for the store's own requests (``dynamodb_http``), on
127.0.0.1, that answers PutItem, BatchWriteItem, GetItem and the store's Query as DynamoDB
does, or misbehaves on cue.

HTTP/1.1 with keep-alive, parsed with h11; optionally TLS with a certificate for localhost
and 127.0.0.1 from a private CA (``trustme``). Each request takes the next scripted ``Reply``
(``fake.script.append``), else is written and answered 200 with a correct ``x-amz-crc32``.
Every request is recorded as it arrived (``requests``), every item written as its typed
attributes (``items``). ``signature_ok`` checks a request's SigV4 signature from scratch.

    async with running_fake_dynamodb() as fake:
        fake.script.append(Reply("error", 500, "InternalServerError"))
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import ssl
import struct
import zlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import h11
import trio
import trustme

from tests.dynamodb_support import raw_client
from voiceagent.store.dynamodb import DynamoDBStore
from voiceagent.store.dynamodb_http import make_http

TABLE = "fake-table"
ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"
REQUEST_BYTES_MAX = 16 * 1024 * 1024      # DynamoDB refuses a larger BatchWriteItem
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<scope>(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request), SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})$")


@dataclass(frozen=True)
class Reply:
    """``ok``: write and answer (the default); ``error``: ``status`` with ``code`` in
    ``__type``; ``bad_crc``: 200 whose x-amz-crc32 is wrong; ``unprocessed``: write all but
    the last ``count`` items and answer those as UnprocessedItems; ``reset`` (RST), ``hangup``
    (FIN): close before answering; ``truncated``: headers and part of the body, then FIN;
    ``stall``: answer nothing (until the client closes); ``hold``: answer once ``release``
    is set; ``page``: ``status`` with an HTML page, as a proxy on the way answers."""

    kind: str
    status: int = 200
    code: str = ""
    count: int = 0


@dataclass
class Seen:
    connection: int
    method: str
    target: str
    headers: dict[str, str]         # names in lower case
    body: bytes

    @property
    def operation(self) -> str:
        return self.headers.get("x-amz-target", "").rpartition(".")[2]

    @property
    def payload(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded

    @property
    def access_key(self) -> str | None:
        match = _AUTHORIZATION.match(self.headers.get("authorization", ""))
        return match["key"] if match else None

    def put_items(self) -> list[dict[str, Any]]:
        """The items this request asks to write, typed as sent."""
        if self.operation == "PutItem":
            return [self.payload["Item"]]
        return [request["PutRequest"]["Item"]
                for requests in self.payload["RequestItems"].values() for request in requests]


def signature_ok(seen: Seen, secret_key: str) -> bool:
    """SigV4 (botocore's rules for DynamoDB) recomputed from the request as received."""
    match = _AUTHORIZATION.match(seen.headers.get("authorization", ""))
    if match is None:
        return False
    signed = match["signed"].split(";")
    canonical_headers = "".join(f"{name}:{' '.join(seen.headers[name].split())}\n"
                                for name in signed)
    canonical = "\n".join([seen.method, seen.target, "", canonical_headers, match["signed"],
                           hashlib.sha256(seen.body).hexdigest()])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", seen.headers["x-amz-date"], match["scope"],
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for part in (match["date"], match["region"], match["service"], "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, match["signature"])


class FakeDynamoDB:
    def __init__(self, *, ca: trustme.CA | None = None) -> None:
        self.script: deque[Reply] = deque()
        self.requests: list[Seen] = []
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.connections = 0
        self.client_closed = 0          # connections the client closed (EOF seen here)
        self.tls_failures = 0
        self.port = 0
        self._ssl: ssl.SSLContext | None = None
        if ca is not None:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("localhost", "127.0.0.1").configure_cert(self._ssl)
        self.release = trio.Event()     # lets ``hold`` replies go
        self._idle: dict[int, tuple[trio.CancelScope, trio.Event]] = {}
        self._changed = trio.lowlevel.ParkingLot()

    @property
    def endpoint_url(self) -> str:
        host = "localhost" if self._ssl is not None else "127.0.0.1"
        return f"{'https' if self._ssl is not None else 'http'}://{host}:{self.port}"

    async def wait_requests(self, count: int) -> None:
        while len(self.requests) < count:
            await self._changed.park()

    async def wait_change(self) -> None:
        """Until something changes: a request, or a connection the client closed."""
        await self._changed.park()

    async def wait_client_closed(self, count: int) -> None:
        while self.client_closed < count:
            await self._changed.park()

    async def close_idle(self, count: int) -> None:
        """Once ``count`` connections wait for a next request, close them (a keep-alive
        timeout) without telling the client; returns once they are closed."""
        while len(self._idle) < count:
            await self._changed.park()
        idle = list(self._idle.values())
        for scope, _ in idle:
            scope.cancel()
        for _, closed in idle:
            await closed.wait()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, raw: trio.SocketStream) -> None:
        number, closed = self.connections, trio.Event()
        self.connections += 1
        stream: trio.abc.Stream = raw
        try:
            with trio.CancelScope() as scope:
                if self._ssl is not None:
                    stream = trio.SSLStream(raw, self._ssl, server_side=True)
                    try:
                        await stream.do_handshake()
                    except trio.BrokenResourceError:
                        self.tls_failures += 1
                        return
                await self._serve(number, scope, closed, stream, raw)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                h11.RemoteProtocolError):
            pass
        finally:
            self._idle.pop(number, None)
            with trio.CancelScope(shield=True):
                await raw.aclose()
            closed.set()

    async def _serve(self, number: int, scope: trio.CancelScope, closed: trio.Event,
                     stream: trio.abc.Stream, raw: trio.SocketStream) -> None:
        state = h11.Connection(h11.SERVER)
        while True:
            request, body = None, bytearray()
            while True:
                event = state.next_event()
                if event is h11.NEED_DATA:
                    if state.their_state is h11.IDLE and not state.trailing_data[0]:
                        self._idle[number] = (scope, closed)
                        self._changed.unpark_all()
                    data = await stream.receive_some(65536)
                    self._idle.pop(number, None)
                    if not data:
                        self.client_closed += 1
                        self._changed.unpark_all()
                    state.receive_data(bytes(data))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:                       # ConnectionClosed
                    return
            assert request is not None
            seen = Seen(number, request.method.decode(), request.target.decode(),
                        {k.decode(): v.decode() for k, v in request.headers}, bytes(body))
            self.requests.append(seen)
            self._changed.unpark_all()
            reply = self.script.popleft() if self.script else Reply("ok")
            if reply.kind in ("reset", "hangup"):
                if reply.kind == "reset":
                    raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
                raw.socket.close()
                return
            if reply.kind == "stall":
                while await stream.receive_some(65536):
                    pass
                self.client_closed += 1
                self._changed.unpark_all()
                return
            if reply.kind == "hold":
                await self.release.wait()
            status, answer = self._answer(seen, reply)
            data = (b"<html><body>Request Entity Too Large</body></html>" if reply.kind == "page"
                    else json.dumps(answer).encode())
            crc = zlib.crc32(data) + (1 if reply.kind == "bad_crc" else 0)
            headers = [("Content-Type", "application/x-amz-json-1.0"),
                       ("Content-Length", str(len(data))), ("x-amz-crc32", str(crc)),
                       ("x-amzn-RequestId", f"fake-{len(self.requests)}")]
            out = state.send(h11.Response(status_code=status, headers=headers)) or b""
            if reply.kind == "truncated":
                await stream.send_all(out + data[: len(data) // 2])
                return
            out += state.send(h11.Data(data=data)) or b""
            out += state.send(h11.EndOfMessage()) or b""
            await stream.send_all(out)
            state.start_next_cycle()

    def _answer(self, seen: Seen, reply: Reply) -> tuple[int, dict[str, Any]]:
        if reply.kind == "page":
            return reply.status, {}
        if reply.kind == "error":
            return reply.status, {"__type": ERROR_PREFIX + reply.code,
                                  "message": f"fake: {reply.code}"}
        if seen.operation == "BatchWriteItem" and len(seen.body) > REQUEST_BYTES_MAX:
            return 400, {"__type": ERROR_PREFIX + "ValidationException",
                         "message": "The total request size exceeds 16 MB."}     # as DynamoDB
        if seen.operation == "GetItem":
            key = seen.payload["Key"]
            found = self.items.get((key["pk"]["S"], key["sk"]["S"]))
            return 200, {"Item": found} if found is not None else {}
        if seen.operation == "Query":
            return 200, self._query(seen.payload)
        items = seen.put_items()
        keep = len(items) - reply.count if reply.kind == "unprocessed" else len(items)
        for item in items[:keep]:
            self.items[(item["pk"]["S"], item["sk"]["S"])] = item
        if seen.operation == "PutItem":
            return 200, {}
        left = {name: [{"PutRequest": {"Item": item}} for item in items[keep:]]
                for name in seen.payload["RequestItems"]} if keep < len(items) else {}
        return 200, {"UnprocessedItems": left}


    def _query(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The table's items of one pk, under a sort-key prefix, in order, a page of
        ``Limit``; what the store's ``query`` asks, not DynamoDB's whole Query."""
        values = payload["ExpressionAttributeValues"]
        pk, prefix = values[":key"]["S"], values.get(":prefix", {}).get("S", "")
        found = sorted((item for (p, sk), item in self.items.items()
                        if p == pk and sk.startswith(prefix)),
                       key=lambda item: str(item["sk"]["S"]),
                       reverse=not payload.get("ScanIndexForward", True))
        start = payload.get("ExclusiveStartKey")
        if start is not None:
            keys = [(item["pk"], item["sk"]) for item in found]
            found = found[keys.index((start["pk"], start["sk"])) + 1:]
        limit = payload.get("Limit", len(found))
        page = found[:limit]
        answer: dict[str, Any] = {"Items": page, "Count": len(page)}
        if len(found) > limit:
            answer["LastEvaluatedKey"] = {"pk": page[-1]["pk"], "sk": page[-1]["sk"]}
        return answer


@asynccontextmanager
async def running_fake_dynamodb(*, ca: trustme.CA | None = None,
                                kind: type[FakeDynamoDB] | None = None
                                ) -> AsyncIterator[FakeDynamoDB]:
    """Served for the block, then stopped (every connection closed). ``kind``: a subclass
    that answers some request its own way."""
    fake = (kind or FakeDynamoDB)(ca=ca)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def http_store(endpoint_url: str, *, read_timeout_s: float = 2.0, at_once: int = 4
                     ) -> AsyncIterator[DynamoDBStore]:
    """A store on table ``TABLE`` whose writes go through ``make_http`` to ``endpoint_url``
    (credentials and CA bundle from the environment, as ``open_dynamodb_store`` finds them).
    Its boto3 client (reads only) points there too and is never used by the writes."""
    limiter = trio.CapacityLimiter(at_once)
    http = await trio.to_thread.run_sync(lambda: make_http(
        endpoint_url, "us-east-1", connect_timeout_s=2.0, read_timeout_s=read_timeout_s,
        max_idle=4))
    client = await trio.to_thread.run_sync(lambda: raw_client(endpoint_url))
    store = DynamoDBStore(TABLE, client, limiter=limiter, http=http)
    try:
        yield store
    finally:
        await store.aclose()
