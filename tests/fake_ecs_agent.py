"""A local stand-in for the ECS container agent's task-protection endpoint (what
``$ECS_AGENT_URI/task-protection/v1/state`` answers inside a task), on 127.0.0.1.

It keeps the state the real agent reports (enabled, expiry) and records every request; a test
queues replies to answer the next requests with an error instead, as the agent does when the
ECS API refuses (``failure``) or the task role lacks the permission (``error``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h11
import trio

TASK_ARN = "arn:aws:ecs:us-east-1:123456789012:task/test-cluster/0123456789abcdef"


@dataclass
class Request:
    method: str
    path: str
    body: dict[str, Any]


@dataclass
class FakeAgent:
    uri: str = ""
    path: str = "/api/0123456789abcdef-3814"     # ECS_AGENT_URI ends in a per-task path
    enabled: bool = False
    expires_minutes: int | None = None
    requests: list[Request] = field(default_factory=list)
    replies: list[tuple[int, dict[str, Any]]] = field(default_factory=list)   # next answers
    _arrived: trio.Event = field(default_factory=trio.Event)

    async def wait_requests(self, count: int) -> list[Request]:
        """Until ``count`` requests have arrived in all."""
        while len(self.requests) < count:
            await self._arrived.wait()
        return self.requests[:count]

    def answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.requests.append(Request(method, path, body))
        self._arrived.set()
        self._arrived = trio.Event()
        if path != "/task-protection/v1/state":
            return 404, {"error": {"Code": "NotFound", "Message": path}}
        if self.replies:
            return self.replies.pop(0)
        if method == "PUT":
            if not isinstance(body.get("ProtectionEnabled"), bool):
                return 400, {"error": {"Code": "InvalidParameterException",
                                       "Message": "ProtectionEnabled is required"}}
            self.enabled = body["ProtectionEnabled"]
            self.expires_minutes = body.get("ExpiresInMinutes", 120) if self.enabled else None
        state: dict[str, Any] = {"ProtectionEnabled": self.enabled, "TaskArn": TASK_ARN}
        if self.enabled:
            state["ExpirationDate"] = "2026-12-04T12:00:00Z"
        return 200, {"protection": state}


@asynccontextmanager
async def open_fake_agent() -> AsyncIterator[FakeAgent]:
    agent = FakeAgent()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(_serve, agent), 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        agent.uri = f"http://127.0.0.1:{port}{agent.path}"
        try:
            yield agent
        finally:
            nursery.cancel_scope.cancel(reason="fake agent closing")


async def _serve(agent: FakeAgent, stream: trio.SocketStream) -> None:
    """One connection: h11 for the framing, one request after another."""
    connection = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            request = await _next(connection, stream)
            if not isinstance(request, h11.Request):
                return
            body = b""
            while not isinstance(event := await _next(connection, stream), h11.EndOfMessage):
                if not isinstance(event, h11.Data):
                    return
                body += event.data
            path = request.target.decode().removeprefix(agent.path)
            status, reply = agent.answer(request.method.decode(), path,
                                         json.loads(body) if body else {})
            payload = json.dumps(reply).encode()
            await stream.send_all(connection.send(h11.Response(
                status_code=status, headers=[("Content-Type", "application/json"),
                                             ("Content-Length", str(len(payload)))])))
            await stream.send_all(connection.send(h11.Data(data=payload)))
            await stream.send_all(connection.send(h11.EndOfMessage()))
            if connection.our_state is h11.MUST_CLOSE:
                return
            connection.start_next_cycle()


async def _next(connection: h11.Connection, stream: trio.SocketStream) -> Any:
    while (event := connection.next_event()) is h11.NEED_DATA:
        data = await stream.receive_some(65536)
        connection.receive_data(data)          # b"" marks the peer's end
    return event
