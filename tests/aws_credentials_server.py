"""A local container-credentials endpoint: what an ECS or Fargate task's SDK asks for its role's
temporary credentials.

botocore's ``ContainerProvider`` reads ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (plain http is
allowed to a loopback address, so ``http://127.0.0.1:PORT/...`` works) and, when
``AWS_CONTAINER_AUTHORIZATION_TOKEN`` (or ``..._TOKEN_FILE``) is set, sends it as the
``Authorization`` header. The answer is JSON with ``AccessKeyId``, ``SecretAccessKey``,
``Token`` and an ISO 8601 UTC ``Expiration``. botocore refreshes when fewer than 15 minutes
are left (advisory: a failure keeps the old keys) and must refresh when fewer than 10 are
left (mandatory: every ``get_frozen_credentials()`` fetches again, and a failure raises).
It retries a failed fetch (non-200, timeout) 3 times with ``time.sleep(1)`` between, so one
500 costs its caller a second.

    async with running_credentials_server() as creds:
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", creds.url)
        creds.expires_in_s = 300            # inside the mandatory window: fetched each time
        new_key = creds.rotate()
"""

from __future__ import annotations

import datetime
import http
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from tests.http_requests import receive_request

CREDENTIALS_PATH = "/v2/credentials/fake-task-role"


@dataclass(eq=False)
class CredentialsServer:
    """``GET {path}`` answers the current keys; anything else 404.

    ``fail_next(n)`` answers the next ``n`` requests 500; ``failing = True`` answers 500 until
    set back; ``answers_held`` (an unset ``trio.Event``) keeps every answer until it is set,
    as an endpoint that hangs would. With ``auth_token`` set, a request whose
    ``Authorization`` is not exactly it gets 401 (what the ECS agent does);
    ``authorizations`` records what each request sent."""

    expires_in_s: float = 3600.0
    auth_token: str | None = None
    path: str = CREDENTIALS_PATH
    failing: bool = False
    answers_held: trio.Event | None = None
    port: int = 0
    requests: int = 0               # every request, whatever it was answered
    served: int = 0                 # answered 200 with keys
    authorizations: list[str | None] = field(default_factory=list)
    access_key_id: str = ""         # the keys served now (rotate() changes them)
    secret_access_key: str = ""
    token: str = ""
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _fail_count: int = 0
    _arrived: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)

    def __post_init__(self) -> None:
        if not self.access_key_id:
            self.rotate()

    @property
    def url(self) -> str:
        """For ``AWS_CONTAINER_CREDENTIALS_FULL_URI``."""
        return f"http://127.0.0.1:{self.port}{self.path}"

    def rotate(self) -> str:
        """New keys (access key id ``ASIAFAKE000000000N``, secret, session token), served from
        the next request on; returns the new access key id."""
        n = next(self._serial)
        self.access_key_id = f"ASIAFAKE{n:012d}"
        self.secret_access_key = f"fake-secret-{n}"
        self.token = f"fake-session-token-{n}"
        return self.access_key_id

    def fail_next(self, count: int) -> None:
        """Answer the next ``count`` requests with HTTP 500."""
        self._fail_count = count

    def expiration(self) -> str:
        """``now + expires_in_s`` as ECS writes it, e.g. ``2024-05-01T12:34:56Z``."""
        at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=self.expires_in_s)
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")

    def document(self) -> dict[str, str]:
        return {"RoleArn": "arn:aws:iam::123456789012:role/fake-task-role",
                "AccessKeyId": self.access_key_id, "SecretAccessKey": self.secret_access_key,
                "Token": self.token, "Expiration": self.expiration()}

    async def wait_requests(self, count: int) -> None:
        while self.requests < count:
            await self._arrived.park()

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen on 127.0.0.1, an ephemeral port, until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.url)
        await trio.serve_listeners(self._handle, listeners)

    def _answer(self, method: str, target: str, headers: dict[str, str]
                ) -> tuple[int, dict[str, Any]]:
        self.requests += 1
        self.authorizations.append(headers.get("authorization"))
        self._arrived.unpark_all()
        if method != "GET" or target != self.path:
            return 404, {"message": f"no route {method} {target}"}
        if self.failing or self._fail_count > 0:
            self._fail_count = max(0, self._fail_count - 1)
            return 500, {"message": "fake: failing on purpose"}
        if self.auth_token is not None and headers.get("authorization") != self.auth_token:
            return 401, {"message": "fake: bad authorization token"}
        self.served += 1
        return 200, self.document()

    async def _handle(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        try:
            while (request := await receive_request(stream, buffer)) is not None:
                method, target, headers, _ = request
                status, body = self._answer(method, target, headers)
                if self.answers_held is not None:
                    await self.answers_held.wait()
                keep = headers.get("connection", "").lower() != "close"
                await stream.send_all(_response(status, body, keep_alive=keep))
                if not keep:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()


def _response(status: int, body: dict[str, Any], *, keep_alive: bool) -> bytes:
    data = json.dumps(body).encode()
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode() + data


@asynccontextmanager
async def running_credentials_server(*, expires_in_s: float = 3600.0,
                                     auth_token: str | None = None
                                     ) -> AsyncIterator[CredentialsServer]:
    """The endpoint, served for the duration of the block, then stopped."""
    server = CredentialsServer(expires_in_s=expires_in_s, auth_token=auth_token)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()

