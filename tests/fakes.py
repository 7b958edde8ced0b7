"""Test doubles passed in through constructors: a model with an exact script, a socket made of
memory channels, and a store that only records. Each records what it saw so tests can assert
on it; none of them is used outside tests."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import trio

from voiceagent.errors import ModelRejected, RelayBroken, StoreError
from voiceagent.llm.base import LLMEvent, LLMRequest, StreamEnd, TextDelta, ToolUseRequest
from voiceagent.llm.converse import converse_problems
from voiceagent.store.base import is_newer, is_own_item

Step = LLMEvent | float | BaseException          # a float is a pause in seconds


def words(text: str, gap_s: float = 0.1, first_s: float = 0.2) -> list[Step]:
    """A reply streamed word by word: pause, token, pause, token, ..., end."""
    tokens = text.split(" ")
    steps: list[Step] = [first_s]
    for i, token in enumerate(tokens):
        if i:
            steps.append(gap_s)
        steps.append(TextDelta(token if i == 0 else " " + token))
    steps.append(StreamEnd("end_turn"))
    return steps


def tool_use(tool_use_id: str, name: str, args: dict[str, Any] | None = None,
             before: str = "") -> list[Step]:
    steps: list[Step] = words(before)[:-1] if before else [0.1]
    steps += [ToolUseRequest(tool_use_id, name, args or {}), StreamEnd("tool_use")]
    return steps


@dataclass
class FakeLLM:
    """Plays one script per model call, in order; the last one repeats."""

    scripts: Sequence[Sequence[Step]] | Callable[[LLMRequest], Sequence[Step]]
    name: str = "fake"
    requests: list[LLMRequest] = field(default_factory=list)
    violations: list[list[str]] = field(default_factory=list)
    # each request's messages as the model saw them: the history shares its messages with
    # requests, so a later change made in place would show as a difference from these
    sent_messages: list[list[Any]] = field(default_factory=list)
    opened_at: list[float] = field(default_factory=list)
    closed_at: list[float] = field(default_factory=list)
    open_streams: int = 0

    def _script(self, request: LLMRequest) -> Sequence[Step]:
        if callable(self.scripts):
            return self.scripts(request)
        index = min(len(self.requests) - 1, len(self.scripts) - 1)
        return self.scripts[index]

    def stream(self, request: LLMRequest) -> Any:
        return self._stream(request)

    @trio.as_safe_channel
    async def _stream(self, request: LLMRequest) -> AsyncIterator[LLMEvent]:
        self.requests.append(request)
        self.sent_messages.append(copy.deepcopy(list(request.messages)))
        problems = converse_problems(request.messages, tools_configured=bool(request.tools))
        if problems:
            self.violations.append(problems)
            raise ModelRejected("validationException", "; ".join(problems))
        self.opened_at.append(trio.current_time())
        self.open_streams += 1
        try:
            for step in self._script(request):
                if isinstance(step, float | int):
                    await trio.sleep(step)
                elif isinstance(step, BaseException):
                    raise step
                else:
                    yield step
        finally:
            self.open_streams -= 1
            self.closed_at.append(trio.current_time())

    async def aclose(self) -> None:
        return None


class MemorySocket:
    """The relay socket with Twilio's side in the test's hands."""

    def __init__(self) -> None:
        self._in_send, self._in_recv = trio.open_memory_channel[str | bytes](math.inf)
        self._out_send, self.out = trio.open_memory_channel[dict[str, Any]](math.inf)
        self.raw_sent: list[str] = []
        self.senders: set[str] = set()
        self.closed_with: tuple[int, str] | None = None
        self.hung_up = False
        # in order: ("read", frame) when the call's reader got a frame, ("send", frame) when
        # the writer handed one over (before the send's own checkpoint)
        self.timeline: list[tuple[str, dict[str, Any]]] = []

    # --- Twilio's side
    def push(self, frame: dict[str, Any] | str | bytes) -> None:
        self._in_send.send_nowait(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    def hang_up(self) -> None:
        self.hung_up = True
        self._in_send.close()

    def pending(self) -> list[dict[str, Any]]:
        frames = []
        while True:
            try:
                frames.append(self.out.receive_nowait())
            except trio.WouldBlock:
                return frames

    # --- the RelaySocket the call sees
    async def receive(self) -> str | bytes:
        try:
            frame = await self._in_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise RelayBroken("test hung up") from None
        with suppress(ValueError, TypeError):
            self.timeline.append(("read", json.loads(frame)))
        return frame

    async def send(self, text: str) -> None:
        if self.closed_with is not None or self.hung_up:
            raise RelayBroken("closed")
        self.timeline.append(("send", json.loads(text)))
        await trio.lowlevel.checkpoint()
        self.senders.add(trio.lowlevel.current_task().name)
        self.raw_sent.append(text)
        self._out_send.send_nowait(json.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = (code, reason)
        self._in_send.close()


class SlowAtTheWordSocket(MemorySocket):
    """Twilio slow to take the first frame holding ``word`` (``delay_s``: a congested link):
    what is sent meanwhile waits in the writer's channel."""

    def __init__(self, word: str, delay_s: float = 2.0) -> None:
        super().__init__()
        self.word = word
        self.delay_s = delay_s

    async def send(self, text: str) -> None:
        if self.word and self.word in json.loads(text).get("token", ""):
            self.word = ""
            await trio.sleep(self.delay_s)
        await super().send(text)


@dataclass
class RecordingWriter:
    """Stands for the write-behind queue: records what the call persisted, flushes at once."""

    persisted: list[tuple[str, int, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    flushed: list[str] = field(default_factory=list)

    def persist(self, call_sid: str, index: int, message: dict[str, Any],
                meta: dict[str, Any]) -> None:
        self.persisted.append((call_sid, index, message, meta))

    def stored(self) -> list[dict[str, Any]]:
        """What a store would hold after these writes, read back as a reconnect reads it:
        each write is the real item (``records.chat_item``, keyed by at_ms and position),
        the last write of a key wins, and ``records.chat_entries`` reads them in key order,
        tombstones left out. Each entry's ``chat`` is a message, its ``meta`` the facts."""
        from voiceagent.store import records

        items: dict[tuple[str, str], dict[str, Any]] = {}
        for call_sid, index, message, meta in self.persisted:
            item = records.chat_item(call_sid, int(meta.get("at_ms", 0)), index, message,
                                     meta, ttl_s=3600)
            items[(item["pk"], item["sk"])] = item
        return [dict(entry) for entry in records.chat_entries(
            items[key] for key in sorted(items))]

    async def flush(self, call_sid: str, timeout_s: float) -> bool:
        self.flushed.append(call_sid)
        return True


class MemoryStore:
    """A ``Store`` in a dict, for actor tests that run tools (contract-tested stores are
    covered by test_store_contract)."""

    name = "memory"

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.puts = 0

    async def get(self, pk: str, sk: str) -> dict[str, Any] | None:
        item = self.items.get((pk, sk))
        return json.loads(json.dumps(item)) if item is not None else None

    async def put(self, item: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        self.puts += 1
        self.items[(item["pk"], item["sk"])] = json.loads(json.dumps(item))

    async def put_many(self, items: Sequence[dict[str, Any]]) -> None:
        for item in items:
            await self.put(item)

    async def put_new(self, item: dict[str, Any]) -> bool:
        await trio.lowlevel.checkpoint()
        if (item["pk"], item["sk"]) in self.items:
            return is_own_item(self.items[(item["pk"], item["sk"])], item)
        self.puts += 1                          # no checkpoint since the look: atomic
        self.items[(item["pk"], item["sk"])] = json.loads(json.dumps(item))
        return True

    async def put_unless_newer(self, item: dict[str, Any], version: str, *,
                               legacy: str | None = None) -> bool:
        await trio.lowlevel.checkpoint()
        if is_newer(self.items.get((item["pk"], item["sk"]), {}), item, version, legacy):
            return False
        self.puts += 1                          # no checkpoint since the look: atomic
        self.items[(item["pk"], item["sk"])] = json.loads(json.dumps(item))
        return True

    async def put_if_newer(self, item: dict[str, Any], version: str, *,
                           legacy: str | None = None) -> bool:
        await trio.lowlevel.checkpoint()
        stored = self.items.get((item["pk"], item["sk"]))
        if stored is not None and is_newer(stored, item, version, legacy, strict=True):
            return is_own_item(stored, item)
        self.puts += 1                          # no checkpoint since the look: atomic
        self.items[(item["pk"], item["sk"])] = json.loads(json.dumps(item))
        return True

    async def query(self, pk: str, sk_prefix: str = "", *, descending: bool = False,
                    limit: int | None = None) -> list[dict[str, Any]]:
        found = sorted((v for (p, s), v in self.items.items()
                        if p == pk and s.startswith(sk_prefix)), key=lambda i: i["sk"],
                       reverse=descending)
        return found[:limit] if limit else found

    async def query_index(self, pk1: str, sk1_prefix: str = "", *, descending: bool = False,
                          limit: int | None = None) -> list[dict[str, Any]]:
        found = sorted((v for v in self.items.values() if v.get("pk1") == pk1
                        and str(v.get("sk1", "")).startswith(sk1_prefix)),
                       key=lambda i: i["sk1"], reverse=descending)
        return found[:limit] if limit else found

    async def delete(self, pk: str, sk: str) -> None:
        self.items.pop((pk, sk), None)

    async def aclose(self) -> None:
        return None


def setup_frame(call_sid: str = "CA" + "1" * 32, token: str = "tok") -> dict[str, Any]:
    return {"type": "setup", "sessionId": "VX1", "callSid": call_sid, "accountSid": "AC1",
            "from": "+15555550100", "to": "+15555550199", "callStatus": "RINGING",
            "customParameters": {"sessionToken": token}}


class WallClock:
    """Wall time that follows trio's clock, for ``actors.history.time``: each message's
    at_ms (part of its store key) is then apart, as in a call, instead of the same
    millisecond for a whole test on the virtual clock."""

    @staticmethod
    def time() -> float:
        return 1_700_000_000.0 + trio.current_time()


@contextmanager
def throttled_queries(store: Any, sk_prefix: str) -> Iterator[None]:
    """Until exit, ``store``'s queries for ``sk_prefix`` fail as a throttled DynamoDB's do
    (a real store's, patched: the server under test keeps every other read)."""
    real_query = store.query

    async def throttled(pk: str, prefix: str = "", **kw: Any) -> Any:
        if prefix == sk_prefix:
            raise StoreError("dynamodb query: ProvisionedThroughputExceededException")
        return await real_query(pk, prefix, **kw)

    store.query = throttled
    try:
        yield
    finally:
        store.query = real_query
