"""The minimal ConversationRelay server: the floor that ``voiceagent serve`` is measured against
(issue 20: latency tail and CPU under load).

Why it exists. To say how much the framework costs, a benchmark needs the same calls served by
the least code that still does the job correctly: the same HTTP/WebSocket server (hypercorn's
trio worker), the same model transport (``voiceagent.llm.bedrock.BedrockLLM``, so the HTTP
client, signing and event-stream parsing are identical and not part of the difference), and
nothing else. So this server keeps each call's history in memory, checks no signature, stores
nothing, logs nothing per turn, offers no tools, and runs a raw ASGI app (no Quart).

What it does, per ConversationRelay (/work/shared/spec/conversation-relay.md):

* ``POST …/twiml``: the body is read (hypercorn wants it consumed) and ignored; the answer is
  ``<Connect><ConversationRelay url="ws://HOST/relay"/>``, HOST from the request's Host header;
* ``/relay`` WebSocket: ``setup`` gives the callSid; a final ``prompt`` (``last: true``) or a
  ``dtmf`` key starts a turn: the model's text deltas go out as ``text`` frames as they arrive,
  then ``{"token": "", "last": true}``; ``interrupt`` cancels the turn in flight (the Bedrock
  connection is closed at once by leaving the stream), closes the cut reply with ``last: true``
  as ours does, and trims the assistant's last message to what the caller heard. Anything else
  is ignored.

One turn at a time per call, in its own task under a ``CancelScope``: a new prompt or an
interrupt cancels it and waits for it to finish, so the history is only ever changed by one
task at a time. The history stays valid for Converse by construction: it starts with the user,
roles alternate (a user message after a user message is merged into it), no blank text.

Run (the env is what ``benchmarks/local_stack.py`` gives the real server)::

    AWS_ENDPOINT_URL_BEDROCK_RUNTIME=http://127.0.0.1:PORT AWS_REGION=us-east-1 \\
    AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x python benchmarks/minimal_server.py --port 0
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast
from xml.sax.saxutils import quoteattr

import hypercorn.trio
import trio
from hypercorn.config import Config
from hypercorn.typing import ASGIFramework

from voiceagent.errors import LLMError
from voiceagent.llm.base import LLMRequest, Message, StreamEnd, TextDelta
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.settings import DEFAULT_MODEL

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

HOST = "127.0.0.1"
RELAY_PATH = "/relay"
SYSTEM_PROMPT = ("You answer the phone for Bench Pizza. Your words are spoken aloud, so keep "
                 "replies short and plain.")
CLOSER = {"type": "websocket.send", "text": json.dumps({"type": "text", "token": "",
                                                         "last": True})}


@dataclass(frozen=True, slots=True)
class Model:
    """What every turn's request shares: the process's one Bedrock client and its settings."""

    llm: BedrockLLM
    model_id: str
    use_case: str           # requestMetadata.useCase: the local endpoint scripts replies by it


# ---------------------------------------------------------------- one call

class Relay:
    """One relay session: its history, and the turn in flight (at most one)."""

    __slots__ = ("_closed", "_done", "_model", "_nursery", "_scope", "_send", "call_sid",
                 "history")

    def __init__(self, model: Model, send: Send, nursery: trio.Nursery) -> None:
        self._model = model
        self._send = send
        self._nursery = nursery
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None
        self._closed = False        # the turn in flight sent its closer itself
        self.call_sid = ""
        self.history: list[Message] = []

    async def handle(self, frame: dict[str, Any]) -> None:
        """One frame from Twilio. Unknown types and malformed fields are ignored, as the
        protocol asks (Twilio adds message types and fields over time)."""
        kind = frame.get("type")
        if kind == "prompt":
            text = frame.get("voicePrompt")
            if frame.get("last", True) and isinstance(text, str) and text.strip():
                await self._start_turn(text.strip())
        elif kind == "interrupt":
            heard = frame.get("utteranceUntilInterrupt")
            await self._interrupted(heard.strip() if isinstance(heard, str) else "")
        elif kind == "dtmf":
            digit = frame.get("digit")
            if isinstance(digit, str) and digit:
                await self._start_turn(f"(The caller pressed {digit} on the keypad.)")
        elif kind == "setup":
            self.call_sid = str(frame.get("callSid") or "")

    async def stop_turn(self) -> None:
        """Cancel the turn in flight, if any, and wait until it has left (its model stream
        closed, its text in the history)."""
        if self._scope is not None and self._done is not None:
            self._scope.cancel()
            await self._done.wait()
            self._scope = self._done = None

    async def _start_turn(self, text: str) -> None:
        await self.stop_turn()
        history = self.history
        if history and history[-1]["role"] == "user":   # the last turn got no reply
            history[-1]["content"].append({"text": text})
        else:
            history.append({"role": "user", "content": [{"text": text}]})
        self._scope, self._done, self._closed = trio.CancelScope(), trio.Event(), False
        self._nursery.start_soon(self._turn, self._scope, self._done)

    async def _interrupted(self, heard: str) -> None:
        """The caller cut in: the reply stops, and the history keeps only what was heard
        (nothing heard: the assistant's message goes, the next prompt joins the user's). A
        reply cut off is closed (``last: true``), as ours is, so callers waiting for a turn's
        end get it."""
        speaking = self._done is not None and not self._done.is_set()
        await self.stop_turn()
        if speaking and not self._closed:   # cancelled before (or while) sending its own
            await self._send(CLOSER)
        history = self.history
        if history and history[-1]["role"] == "assistant":
            if heard:
                history[-1] = {"role": "assistant", "content": [{"text": heard}]}
            else:
                history.pop()

    async def _turn(self, scope: trio.CancelScope, done: trio.Event) -> None:
        """Stream one reply. Leaving the model stream early (cancelled) closes its Bedrock
        connection at once; whatever was sent is in the history either way."""
        model, send = self._model, self._send
        parts: list[str] = []
        try:
            with scope:
                request = LLMRequest(call_sid=self.call_sid, use_case=model.use_case,
                                     model_id=model.model_id, system=(SYSTEM_PROMPT,),
                                     messages=tuple(self.history))
                try:
                    async with model.llm.stream(request) as events:
                        async for event in events:
                            if isinstance(event, TextDelta):
                                parts.append(event.text)
                                await send({"type": "websocket.send", "text": json.dumps(
                                    {"type": "text", "token": event.text, "last": False})})
                            elif isinstance(event, StreamEnd):
                                break
                except LLMError:
                    pass            # the backend has logged it; the caller hears the turn end
                await send(CLOSER)
                self._closed = True             # no checkpoint between: an interrupt now
                                                # finds it set and sends no second closer
        finally:
            reply = "".join(parts).strip()
            if reply:
                self.history.append({"role": "assistant", "content": [{"text": reply}]})
            done.set()


# ---------------------------------------------------------------- the ASGI app

def make_app(model: Model) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The raw ASGI app: lifespan, ``POST …/twiml`` and the ``/relay`` WebSocket."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await _relay(model, scope, receive, send)
        elif kind == "http":
            await _http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    return app


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    more = True
    while more:                                 # the whole body, read and dropped
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    if scope["method"] == "POST" and scope["path"].endswith("/twiml"):
        status, body = 200, twiml(scope).encode()
        content_type = b"text/xml"
    else:
        status, body, content_type = 404, b"not found", b"text/plain"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def twiml(scope: Scope) -> str:
    """``<Connect><ConversationRelay url=…>`` pointing at this server as the client reached
    it (the Host header), ``wss`` when it came over TLS."""
    host = next((value.decode("latin-1") for name, value in scope["headers"]
                 if name == b"host"), None)
    if not host:
        server_host, server_port = scope.get("server") or (HOST, 80)
        host = f"{server_host}:{server_port}"
    scheme = "wss" if scope.get("scheme") == "https" else "ws"
    url = quoteattr(f"{scheme}://{host}{RELAY_PATH}")
    return ('<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<ConversationRelay url={url} dtmfDetection="true"/></Connect></Response>')


async def _relay(model: Model, scope: Scope, receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    if scope["path"] != RELAY_PATH:
        await send({"type": "websocket.close", "code": 1008})     # before accept: HTTP 403
        return
    await send({"type": "websocket.accept"})
    async with trio.open_nursery() as nursery:
        relay = Relay(model, send, nursery)
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":         # websocket.disconnect
                break
            text = message.get("text")
            if text is None:
                continue                        # binary frames are not ConversationRelay
            try:
                frame = json.loads(text)
            except ValueError:
                continue
            if isinstance(frame, dict):
                await relay.handle(frame)
        nursery.cancel_scope.cancel()           # the caller is gone: so is the turn


# ---------------------------------------------------------------- the process

async def serve(port: int, model: Model) -> None:
    """Serve on 127.0.0.1 until SIGINT or SIGTERM, then stop at once: live calls and model
    streams are cancelled, not drained (a baseline has nothing to flush)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        await model.llm.warm_up()       # endpoint and credentials resolved before any call
        config = Config()
        config.bind = [f"{HOST}:{port}"]
        async with trio.open_nursery() as nursery:
            app = cast(ASGIFramework, make_app(model))     # plain dicts, not its TypedDicts
            binds = await nursery.start(partial(hypercorn.trio.serve, app, config))
            print(f"listening on {binds[0]}", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    await model.llm.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--model-id", default=os.environ.get("MODEL_IDENTIFIER")
                        or DEFAULT_MODEL, help="Bedrock model id (default: MODEL_IDENTIFIER, "
                        f"else {DEFAULT_MODEL}, what the benchmark use case runs on)")
    parser.add_argument("--use-case", default=os.environ.get("STACK_USE_CASE")
                        or "benchUseCase", help="sent as requestMetadata.useCase (the local "
                        "endpoint picks its scripted replies by it)")
    args = parser.parse_args(argv)
    # Sized as the real server sizes it (MAX_CONCURRENT_TURNS), so both queue alike.
    llm = BedrockLLM(region=os.environ.get("AWS_REGION") or None,
                     max_concurrent_streams=int(os.environ.get("MAX_CONCURRENT_TURNS", "400")),
                     check_history=False)       # valid by construction (see Relay)
    trio.run(serve, args.port, Model(llm, args.model_id, args.use_case))
    return 0


if __name__ == "__main__":
    sys.exit(main())
