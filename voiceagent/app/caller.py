"""Twilio's side of a call, played against any ConversationRelay server.

Used by ``voiceagent call`` (a person types what the caller says), ``voiceagent demo``, the
end-to-end tests and the load generator: POST the voice webhook as Twilio would (signed when
an auth token is given), follow the TwiML to the WebSocket (signed handshake), send ``setup``,
then speak, barge in, press keys and hang up.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from voiceagent import signature
from voiceagent.app import ws_client_pongs
from voiceagent.settings import is_loopback
from voiceagent.threads import run_blocking

ws_client_pongs.install()       # hanging up as a ping arrives is not an error

HTTP_TIMEOUT_S = 10.0           # the relay socket's handshake
# a webhook's answer: Twilio waits 15 s for one (the server's reconnect deadlines are cut to
# it, ``web.RECONNECT_DEADLINE_S``); 10 s here counted as failed a slow /action that Twilio
# would have taken, under the load generator's reconnect bursts
WEBHOOK_TIMEOUT_S = 15.0
# The webhook POSTs' worker threads, apart from trio's default limiter: in one process with
# the server (voiceagent.app.testing, the demo) that one is shared with blocking work in
# tools (the advice to a tool that held the event loop sends it there), and no call could
# be dialled while such work held it. As many as the default gave before. The load
# generator brings its own, one thread per call (``webhook_limiter``): Twilio sends each
# call's webhook when it is due, and a limit here queued them (a burst of failed sessions at
# 500 calls waited seconds for a thread, timed as the server's reconnect).
HTTP_THREADS = 40
_HTTP_LIMITER = trio.CapacityLimiter(HTTP_THREADS)


def webhook_limiter(calls: int) -> trio.CapacityLimiter:
    """Threads for the webhooks of ``calls`` calls at once: a call has at most one in
    flight, so none waits for another's, as none does at Twilio."""
    return trio.CapacityLimiter(max(1, calls))


class CallerError(Exception):
    """Something an ordinary user can fix: server down, bad URL, not a relay TwiML."""


@dataclass(frozen=True)
class Identity:
    from_number: str = "+15555550100"
    to_number: str = "+15555550199"
    call_sid: str = field(default_factory=lambda: "CA" + secrets.token_hex(16))
    account_sid: str = "AC" + "0" * 32


@dataclass(frozen=True)
class RelayTarget:
    """What the TwiML told Twilio to do."""

    url: str
    action: str
    greeting: str | None
    attributes: dict[str, str]
    parameters: dict[str, str]


@dataclass
class Reply:
    tokens: list[str] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)   # every frame of the reply
    closed: bool = False           # a text frame with last: true arrived
    ended: dict[str, Any] | None = None                          # an `end` frame

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def _post_form(url: str, form: dict[str, str], auth_token: str | None) -> str:
    data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    if auth_token:
        request.add_header("X-Twilio-Signature", signature.sign(auth_token, url, form))
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as err:
        body = err.read()[:200].decode(errors="replace")
        raise CallerError(f"{url} answered HTTP {err.code}: {body}"
                          f"{_refusal_hint(err.code, body, auth_token)}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise CallerError(f"cannot reach {url}: {reason}. Is the server running?") from None


def _refusal_hint(code: int, body: str, auth_token: str | None) -> str:
    """What to do about a webhook the server refused for its signature."""
    if code != 403 or body != "invalid signature":
        return ""
    if not auth_token:
        # `voiceagent serve` read the token from .env; `call` reads no .env (it may call any
        # server), which is not what someone who just started `serve` beside it expects
        return ("; the request went unsigned: set TWILIO_AUTH_TOKEN (or --auth-token) to the "
                "server's token; `voiceagent call` does not read .env, so where the server "
                "reads it from .env, `set -a; . ./.env; set +a` first")
    return ("; it was signed with --auth-token or $TWILIO_AUTH_TOKEN: use the server's "
            "TWILIO_AUTH_TOKEN (in a project's folder, `set -a; . ./.env; set +a` reads it), "
            "and call the URL the server checks signatures against (PUBLIC_URL when it is set)")


async def post_form(url: str, form: dict[str, str], auth_token: str | None = None, *,
                    limiter: trio.CapacityLimiter | None = None) -> str:
    """POST a Twilio-style form webhook; returns the body (TwiML). ``limiter``: the
    threads it may wait for (default: ``HTTP_THREADS``, shared by the process)."""
    return await run_blocking(partial(_post_form, url, form, auth_token),
                              limiter=limiter or _HTTP_LIMITER)


def parse_relay_twiml(document: str) -> RelayTarget:
    try:
        root = ET.fromstring(document)
    except ET.ParseError as err:
        raise CallerError(f"the webhook did not answer TwiML: {err}") from None
    connect = root.find("Connect")
    relay = connect.find("ConversationRelay") if connect is not None else None
    if connect is None or relay is None or "url" not in relay.attrib:
        raise CallerError("the TwiML has no <Connect><ConversationRelay url=...>: "
                          + document[:200])
    parameters = {p.attrib["name"]: p.attrib.get("value", "")
                  for p in relay.findall("Parameter")}
    return RelayTarget(url=relay.attrib["url"], action=connect.attrib.get("action", ""),
                       greeting=relay.attrib.get("welcomeGreeting"),
                       attributes=dict(relay.attrib), parameters=parameters)


async def release_transport(ws: WebSocketConnection) -> None:
    """trio-websocket 0.12 leaves the TCP stream open when the server closes first (its
    reader stops without closing it, and aclose() then returns early); close it ourselves."""
    await ws._close_stream()    # no public way to do this in 0.12


class RelayCall:
    """One connected relay session, seen from Twilio's side."""

    def __init__(self, ws: WebSocketConnection, target: RelayTarget, identity: Identity):
        self.ws = ws
        self.target = target
        self.identity = identity
        self.heard = ""                 # tokens of the talk cycle now "playing"
        self._cycle_closed = False      # its ``last`` came: the next text starts another
        self.session_id = "VX" + secrets.token_hex(16)   # this relay session's, as Twilio's
        self.closed_by_server: int | None = None
        attributes = target.attributes
        # What Twilio speaks and hears now: the TwiML's, then each `language` frame's, so a
        # prompt after a switch reports the language Twilio was told to hear, as Twilio's
        # does (a fixed en-US would switch an auto_language use case straight back).
        self.tts_language = attributes.get("ttsLanguage") or attributes.get("language") or "en-US"
        self.transcription_language = (attributes.get("transcriptionLanguage")
                                       or attributes.get("language") or "en-US")
        # what a person at a terminal says they now speak (``/lang es``): the ``lang`` every
        # prompt reports until they say otherwise; None: the language Twilio hears, above
        self.speaking: str | None = None

    async def send_json(self, frame: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(frame))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send_message(data)

    async def setup(self) -> None:
        await self.send_json({
            "type": "setup", "sessionId": self.session_id,
            "accountSid": self.identity.account_sid, "parentCallSid": "",
            "callSid": self.identity.call_sid, "from": self.identity.from_number,
            "to": self.identity.to_number, "forwardedFrom": "", "callType": "PSTN",
            "callerName": "", "direction": "inbound", "callStatus": "RINGING",
            "customParameters": self.target.parameters})

    def prompt_language(self) -> str:
        """The ``lang`` Twilio would report now: the language the caller said they speak
        (``speaking``), else the language it hears, or, under ``multi`` (which reports the
        primary subtag it detects), that of the language it speaks, on the view that a
        caller answers in the language they are spoken to."""
        if self.speaking:
            return self.speaking
        if self.transcription_language.lower() == "multi":
            return self.tts_language.split("-")[0].lower()
        return self.transcription_language

    async def say(self, text: str, *, last: bool = True, lang: str | None = None) -> None:
        """Say ``text``; ``lang`` is the prompt's language (default: ``prompt_language()``)."""
        self.heard = ""
        lang = lang or self.prompt_language()
        await self.send_json({"type": "prompt", "voicePrompt": text, "lang": lang,
                              "last": last})

    async def interrupt(self, heard: str | None = None, duration_ms: int = 500) -> str:
        """Barge in; by default the caller heard every token received so far."""
        spoken = self.heard if heard is None else heard
        await self.send_json({"type": "interrupt", "utteranceUntilInterrupt": spoken,
                              "durationUntilInterruptMs": duration_ms})
        self.heard = ""
        return spoken

    async def dtmf(self, digit: str) -> None:
        self.heard = ""
        await self.send_json({"type": "dtmf", "digit": digit})

    async def receive(self) -> dict[str, Any] | None:
        """The next frame from the server, or None when it closed the socket."""
        try:
            message = await self.ws.get_message()
        except ConnectionClosed as closed:
            self.closed_by_server = closed.reason.code if closed.reason else None
            await release_transport(self.ws)
            return None
        if isinstance(message, bytes):
            raise CallerError("the server sent a binary frame; ConversationRelay is JSON text")
        frame: dict[str, Any] = json.loads(message)
        if frame.get("type") == "text":
            if self._cycle_closed:          # a new talk cycle: Twilio's heard text starts anew
                self.heard, self._cycle_closed = "", False
            self.heard += str(frame.get("token", ""))
            self._cycle_closed = bool(frame.get("last"))
        elif frame.get("type") == "language":
            self.tts_language = str(frame.get("ttsLanguage") or self.tts_language)
            self.transcription_language = str(frame.get("transcriptionLanguage")
                                              or self.transcription_language)
        return frame

    async def read_reply(self) -> Reply:
        """Frames until the talk cycle closes (``last: true``), ``end``, or the socket does."""
        reply = Reply()
        while (frame := await self.receive()) is not None:
            reply.frames.append(frame)
            if frame.get("type") == "text":
                if frame.get("token"):
                    reply.tokens.append(str(frame["token"]))
                if frame.get("last"):
                    reply.closed = True
                    return reply
            elif frame.get("type") == "end":
                reply.ended = frame
                return reply
        return reply

    async def hang_up(self) -> None:
        await self.ws.aclose(code=1000, reason="Closing websocket session")

    async def fail(self) -> None:
        """The relay session fails: the socket closes with an error, as Twilio's side of a
        broken session does; Twilio then asks ``/action`` what to do."""
        await self.ws.aclose(code=1011, reason="relay session failed")


def http_url_for(given: str) -> str:
    """The http(s) URL meant by one without a scheme (``127.0.0.1:4000``, a tunnel's host) or
    with a socket's (``wss://``): the server's own address, not a default port it may not
    be on."""
    scheme, sep, rest = given.partition("://")
    if sep:
        secure = scheme.lower() in ("https", "wss")
    else:
        rest = given
        host = rest.split("/")[0].rsplit(":", 1)[0].strip("[]")
        secure = not is_loopback(host)
    if not rest:
        return "http://127.0.0.1:3000"
    return ("https://" if secure else "http://") + rest


@asynccontextmanager
async def open_call(base_url: str, *, auth_token: str | None = None,
                    identity: Identity | None = None,
                    limiter: trio.CapacityLimiter | None = None) -> AsyncIterator[RelayCall]:
    """Dial ``base_url`` as Twilio would and yield the connected session (setup sent);
    ``limiter``: the webhook's threads, as ``post_form``'s."""
    identity = identity or Identity()
    base = base_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise CallerError(f"{base_url!r} is not an http(s) URL; try {http_url_for(base)}")
    form = {"CallSid": identity.call_sid, "AccountSid": identity.account_sid,
            "From": identity.from_number, "To": identity.to_number,
            "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}
    target = parse_relay_twiml(await post_form(base + "/twiml", form, auth_token,
                                               limiter=limiter))
    async with open_relay(target, identity, auth_token=auth_token) as call:
        yield call


@asynccontextmanager
async def open_relay(target: RelayTarget, identity: Identity, *,
                     auth_token: str | None = None) -> AsyncIterator[RelayCall]:
    """The relay socket for ``target`` (from ``/twiml``, or ``/action`` for a reconnect),
    signed as Twilio signs it, with setup sent."""
    headers: list[tuple[bytes, bytes]] = []
    if auth_token:
        headers.append((b"X-Twilio-Signature", signature.sign(auth_token, target.url).encode()))
    async with AsyncExitStack() as stack:
        try:
            ws = await stack.enter_async_context(open_websocket_url(
                target.url, extra_headers=headers, connect_timeout=HTTP_TIMEOUT_S))
        except HandshakeError as err:
            raise CallerError(f"the relay socket at {target.url} refused us: {err}") from None
        except OSError as err:
            raise CallerError(f"cannot open the relay socket at {target.url}: {err}") from None
        call = RelayCall(ws, target, identity)
        await call.setup()
        yield call


async def reconnect_target(base_url: str, call_sid: str, session_id: str, *,
                           auth_token: str | None = None,
                           limiter: trio.CapacityLimiter | None = None) -> RelayTarget:
    """What Twilio does after a relay session failed with the call still up: ask ``/action``
    (SessionStatus=failed) for the next TwiML, which must connect a new relay session
    (``parse_relay_twiml`` refuses anything else, an apology and hang-up included).
    ``session_id``: the failed relay session's, as its ``setup`` gave it; ``limiter``: the
    webhook's threads, as ``post_form``'s."""
    form = {"CallSid": call_sid, "SessionId": session_id, "SessionStatus": "failed",
            "CallStatus": "in-progress",
            "ErrorCode": "64105", "ErrorMessage": "Websocket ended"}
    return parse_relay_twiml(await post_form(base_url.rstrip("/") + "/action", form,
                                             auth_token, limiter=limiter))
