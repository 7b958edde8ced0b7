"""What the fake Bedrock endpoint keeps of each connection and request, and what it checks a
request against: Converse's rules beyond botocore's local checks, so a test asserts the
client sent nothing the service would refuse."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from voiceagent.llm.converse import converse_problems

_METADATA = re.compile(r"^[a-zA-Z0-9 \t\n\r\f\v:_@$#=/+,\-.]{0,256}$")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CREDENTIAL = re.compile(r"Credential=(?P<key>[^/,\s]+)/")


@dataclass(eq=False)
class ConnectionRecord:
    id: int
    opened_at: float                    # time.perf_counter()
    closed_at: float | None = None      # when the client closed (EOF or reset)
    requests: int = 0
    closed: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)   # ends the handler
    hung_up_at: float | None = None     # when this side closed it on purpose (Hangup...)
    server_closed: trio.Event = field(default_factory=trio.Event)   # this side's socket closed
    tls: bool = False                   # the handshake was done (tls=True)


@dataclass(eq=False)
class RecordedRequest:
    index: int
    model_id: str
    body: dict[str, Any]
    headers: dict[str, str]
    connection: ConnectionRecord
    received_at: float
    frames_sent: int = 0
    # complete | client_closed | http_error | hangup | reset | stalled (still held open)
    outcome: str = "pending"
    first_late_s: float | None = None   # the first paced frame went out this late (our lag)
    # perf_counter() as the first paced frame was handed to the socket: with received_at, the
    # whole time this side held the request (its own work and lateness, the reply's delay)
    first_sent_at: float | None = None
    # perf_counter() as the request's first bytes reached this side's socket (the kernel's
    # stamp, plain TCP only): received_at less this is how late this side read it
    arrived_at: float | None = None
    done: trio.Event = field(default_factory=trio.Event)
    path: str = ""                      # as sent, percent-encoding included
    raw_body: bytes = b""               # as sent (kept with keep_bodies)
    access_key: str | None = None       # Credential=AKID/... of the SigV4 Authorization

    @property
    def call_sid(self) -> str:
        return str((self.body.get("requestMetadata") or {}).get("callSid", ""))


def request_problems(body: Mapping[str, Any]) -> list[str]:
    """What ConverseStream would refuse in ``body``, beyond what botocore checks locally."""
    tool_config = body.get("toolConfig")
    tools = tool_config.get("tools", []) if isinstance(tool_config, Mapping) else []
    problems = converse_problems(body.get("messages") or [], tools_configured=bool(tools))
    if tool_config is not None and not tools:
        problems.append("toolConfig.tools: empty")
    for n, tool in enumerate(tools):
        spec = tool.get("toolSpec")
        if spec is not None and not _TOOL_NAME.match(str(spec.get("name", ""))):
            problems.append(f"toolConfig.tools[{n}]: bad name")
        if spec is not None and "json" not in (spec.get("inputSchema") or {}):
            problems.append(f"toolConfig.tools[{n}]: no inputSchema.json")
    for n, block in enumerate(body.get("system") or []):
        if "text" in block and not str(block["text"]).strip():
            problems.append(f"system[{n}]: blank text")
    metadata = body.get("requestMetadata") or {}
    if len(metadata) > 16:
        problems.append("requestMetadata: more than 16 entries")
    for key, value in metadata.items():
        if not key or not _METADATA.match(key) or not _METADATA.match(str(value)):
            problems.append(f"requestMetadata[{key!r}]: outside the allowed pattern")
    if (body.get("inferenceConfig") or {}).get("maxTokens", 1) < 1:
        problems.append("inferenceConfig.maxTokens: below 1")
    return problems


def access_key(headers: Mapping[str, str]) -> str | None:
    match = _CREDENTIAL.search(headers.get("authorization", ""))
    return match["key"] if match else None



def not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")
