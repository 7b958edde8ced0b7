"""DynamoDB's writes and reads on the event loop, over the connections and the signer the model
uses.

Why not boto3 in a worker thread, as table work still goes: botocore spends ~2.5 ms of CPU on
each request (parameter validation, serialisation, signing, urllib3, parsing), and it spends
it holding the GIL in a thread the event loop then has to win the GIL back from, up to a
switch interval (5 ms) each time the loop wakes. Measured with the gate shape of
``benchmarks/bench_latency.py`` at 500 calls (issue 20, benchmarks/RESULTS.md): writes are most
of a call's store requests (sessions, then every message), and with them in threads the server
used 51 % of its core and added 35 ms at p99; the same load on SQLite 38 % and 11 ms. Here a
write is one ``json.dumps``, one SigV4 signature and one exchange on a kept-alive connection,
done in the loop's own time between other work, with no hand-off.

The protocol: DynamoDB's JSON 1.0, ``POST /`` with ``X-Amz-Target: DynamoDB_20120810.<Op>`` and
the operation's input as botocore sends it (attribute values already typed: ``{"S": ...}``,
``{"N": "12"}``); an error is a 4xx/5xx whose JSON names it in ``__type`` (after the ``#``) and
``message``. A binary attribute value comes as its base64 text (``WireDeserializer`` decodes
it). The body's CRC32 (``x-amz-crc32``) is checked, as botocore does. The parts are the
model's (``voiceagent.aws_http`` and ``voiceagent.net``): h11, the standard library's TLS with
the CA bundle botocore would use, HTTPS_PROXY / NO_PROXY, a LIFO pool of kept-alive
connections; botocore's SigV4 with the credentials of boto3's standard chain, renewed when
DynamoDB calls them expired or unknown.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from typing import Any

import botocore.session
import h11
import trio

from voiceagent.aws_http import (
    USER_AGENT,
    ConnectionPool,
    Endpoint,
    LinkSettingsError,
    Signer,
    link_settings,
    resolve_credentials,
)
from voiceagent.errors import SettingsError

TARGET_PREFIX = "DynamoDB_20120810"
CONTENT_TYPE = "application/x-amz-json-1.0"
SIGNING_NAME = "dynamodb"
# A write's answer is small; a Query's page holds at most 1 MB of items as DynamoDB counts
# them, and up to ~7 times that as JSON (a control character is a 6-character escape; a null
# in a list counts 2 bytes and is sent as 14)
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
TOO_LARGE = "RequestEntityTooLarge"         # HTTP 413, from a proxy on the way: permanent


class DynamoDBHttpError(Exception):
    """DynamoDB answered with an error: ``code`` as botocore names it (``__type`` after '#')."""

    def __init__(self, code: str, message: str, status: int,
                 item: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.item = item        # the item a failed condition found (ALL_OLD), as sent


class DynamoDBHttp:
    """One endpoint's requests, from the event loop. Transport failures (refused, reset,
    timed out, TLS) are raised as they are, for the store to translate."""

    def __init__(self, pool: ConnectionPool, signer: Signer, *, read_timeout_s: float) -> None:
        self._pool = pool
        self._signer = signer
        self.read_timeout_s = read_timeout_s
        self._path = pool.endpoint.base_path or "/"
        self.endpoint_url = pool.endpoint.url(pool.endpoint.base_path)

    async def call(self, operation: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One request; its answer as JSON. A reused connection that turns out dead before
        any answer arrived is replaced once (the request is sent again, as urllib3 does: the
        requests sent this way are idempotent puts and reads)."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = await self._signer.headers(self._path, body, {
            "Content-Type": CONTENT_TYPE, "X-Amz-Target": f"{TARGET_PREFIX}.{operation}"})
        try:
            status, crc, data = await self._exchange(headers, body, fresh=False)
        except _DeadIdle:
            status, crc, data = await self._exchange(headers, body, fresh=True)
        if crc is not None and zlib.crc32(data) != crc:
            raise OSError(f"the answer to {operation} failed its CRC32 check (corrupted in "
                          "transit)")
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            # a proxy's own page; a 413 says the request is too large, which no retry cures
            code = TOO_LARGE if status == 413 else "InvalidResponse"
            raise DynamoDBHttpError(code, f"HTTP {status}, not a JSON object: "
                                    f"{data[:200]!r}", status)
        if status >= 300:
            code = (str(answer.get("__type", "")).rpartition("#")[2]
                    or (TOO_LARGE if status == 413 else f"HTTP{status}"))
            message = str(answer.get("message") or answer.get("Message") or "")
            if code in RENEW_CREDENTIALS:
                await self._signer.renew()          # rotated or expired: the next try signs anew
            found = answer.get("Item")
            raise DynamoDBHttpError(code, message, status,
                                    found if isinstance(found, dict) else None)
        return answer

    async def _exchange(self, headers: list[tuple[str, str]], body: bytes, *,
                        fresh: bool) -> tuple[int, int | None, bytes]:
        connection, reused = await self._pool.acquire(fresh=fresh)
        answered = False
        try:
            with trio.fail_after(self.read_timeout_s):
                state = connection.h11
                data = state.send(h11.Request(method="POST", target=self._path,
                                              headers=headers)) or b""
                data += state.send(h11.Data(data=body)) or b""
                data += state.send(h11.EndOfMessage()) or b""
                await connection.link.send_all(data)
                status, crc, chunks, size = 0, None, [], 0
                while True:
                    event = state.next_event()
                    if event is h11.NEED_DATA:
                        state.receive_data(await connection.link.receive())
                    elif isinstance(event, h11.Response):
                        answered = True
                        status, crc = event.status_code, _crc(event.headers)
                    elif isinstance(event, h11.Data):
                        size += len(event.data)
                        if size > MAX_RESPONSE_BYTES:
                            raise OSError(f"an answer over {MAX_RESPONSE_BYTES} bytes")
                        chunks.append(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:                           # ConnectionClosed before the end
                        raise ConnectionResetError("DynamoDB closed the connection mid-answer")
        except BaseException as err:
            connection.link.close_now()
            if reused and not fresh and not answered and isinstance(
                    err, OSError | h11.ProtocolError | trio.BrokenResourceError):
                raise _DeadIdle() from err
            raise
        self._pool.release(connection)
        return status, crc, b"".join(chunks)

    def close(self) -> None:
        self._pool.close()


RENEW_CREDENTIALS = frozenset({"ExpiredTokenException", "UnrecognizedClientException",
                               "InvalidSignatureException"})


class _DeadIdle(Exception):
    """A kept-alive connection the server had closed: send on a new one."""


def _crc(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"x-amz-crc32":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def make_http(endpoint_url: str, region: str, *, connect_timeout_s: float,
              read_timeout_s: float, max_idle: int,
              session: botocore.session.Session | None = None) -> DynamoDBHttp:
    """Blocking (credentials and the CA bundle are read from disk): call it in a thread.
    ``endpoint_url`` and ``region`` as the boto3 client resolved them, so AWS_ENDPOINT_URL_
    DYNAMODB, FIPS and the rest apply alike to reads and writes."""
    endpoint = Endpoint.from_url(endpoint_url, region)
    try:
        link = link_settings(endpoint, endpoint_url, service="DynamoDB", session=session)
    except LinkSettingsError as err:
        raise SettingsError([str(err)]) from None
    signer = Signer(endpoint, resolve_credentials, None, USER_AGENT,
                    signing_name=SIGNING_NAME)
    pool = ConnectionPool(endpoint, connect_timeout_s=connect_timeout_s, max_idle=max_idle,
                          ssl_context=link.ssl_context, proxy=link.proxy)
    return DynamoDBHttp(pool, signer, read_timeout_s=read_timeout_s)
