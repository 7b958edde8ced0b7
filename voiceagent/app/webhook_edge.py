"""The webhooks' signatures, checked on ASGI before quart sees the request.

Anyone can POST to /twiml and /action at any rate. A refused request answered by a quart
route cost the event loop a nursery, two tasks and quart's request machinery: ~740 Python
calls from the ASGI app down for a small form with a made-up signature, ~206 here, where it
is answered with two ASGI sends (~0.2 ms less of the server's CPU a request, measured over
a real socket on a shared 2-core machine). A signed request goes on to quart's handlers
with its body already read, and with its form, decoded and checked, in the scope
(``FORM_KEY``): nothing is read or decoded twice.

What quart's request object gave the check (its host, mimetype and content length) is taken
from the same werkzeug functions over the same header values, so the signed URL, the answers
and the refusals' log lines and counts are what they were.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from werkzeug.http import parse_options_header
from werkzeug.sansio.utils import get_content_length, get_host

from voiceagent import signature
from voiceagent.app import webhook_form
from voiceagent.app.phone_page import UNSIGNED_ELSEWHERE, addressed_here
from voiceagent.app.relay_route import signed
from voiceagent.app.runtime import Runtime

PATHS = frozenset({"/twiml", "/action"})
FORM_KEY = "voiceagent.signed_form"     # the scope's key for the handed-over form
# Twilio's webhook bodies are a few KB; HandoffData (ours, written by the use case's tools)
# may add more. Decoding and checking the largest is ~0.5 ms of the event loop for 64 KiB of
# escapes, ~1.2 ms at worst (one escape among 64 KiB of literal '=', each rewritten for the
# decoder: webhook_form), for anyone who can reach the URL.
MAX_WEBHOOK_BYTES = 64 * 1024
# Twilio's webhooks carry a few dozen fields (a SIP call's headers add some). Each field costs
# the decoding and the signature check ~1.5 µs: 64 KB of "k1=&k2=&..." (9,000 fields) was
# ~50 ms when the twilio package's validator checked it.
MAX_FIELDS = 200
FORM = "application/x-www-form-urlencoded"      # what Twilio sends; no other parser is reached
# quart's answers to a refusal, byte for byte (its Response's default content type)
_TEXT = b"text/html; charset=utf-8"

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


class Refused(Exception):
    """The answer to a refused webhook: its status and text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


class _Gone(Exception):
    """The client went away before its body was all there: nothing to answer."""


def is_webhook(scope: dict[str, Any]) -> bool:
    """Whether quart would route this request to one of the two webhooks' handlers."""
    return (scope["type"] == "http" and scope["method"] == "POST"
            and scope["path"] in PATHS)


async def serve(runtime: Runtime, app: App, scope: dict[str, Any], receive: Receive,
                send: Send) -> None:
    """A webhook request: refused here, or handed to ``app`` (quart) with its signed form in
    the scope and its body given again from memory."""
    try:
        form, body = await _signed_form(runtime, scope, receive)
    except Refused as refusal:
        text = refusal.text.encode()
        await send({"type": "http.response.start", "status": refusal.status,
                    "headers": [(b"content-type", _TEXT),
                                (b"content-length", str(len(text)).encode())]})
        await send({"type": "http.response.body", "body": text, "more_body": False})
        return
    except _Gone:
        return
    scope[FORM_KEY] = form
    given = False

    async def replay() -> dict[str, Any]:
        nonlocal given
        if given:                       # then what comes after the body: a disconnect
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    await app(scope, replay, send)


def _headers(scope: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The headers by lower-case name: the last value of each (what the handlers' dict of
    quart's headers held), and the first (what quart's ``headers.get`` reads)."""
    last: dict[str, str] = {}
    first: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin1").lower(), raw_value.decode("latin1")
        last[name] = value
        first.setdefault(name, value)
    if scope["http_version"] < "1.1":           # as quart: SERVER_NAME, which is unset
        last.setdefault("host", "")
        first.setdefault("host", "")
    return last, first


async def _signed_form(runtime: Runtime, scope: dict[str, Any], receive: Receive
                       ) -> tuple[dict[str, str], bytes]:
    """The webhook's form and body if its signature is valid, else ``Refused`` with the
    answer. The signature header must be there before the body is read, the body must fit
    MAX_WEBHOOK_BYTES and MAX_FIELDS before it is decoded, and decoding is bytewise work
    (``webhook_form``): the signature covers the decoded fields, so they are decoded
    unauthenticated. Refusals are logged in proportion (``Runtime.edge_refusals``)."""
    settings, refused = runtime.settings, runtime.edge_refusals.note
    headers, first = _headers(scope)
    path = scope["path"]
    if settings.validate_signatures and "x-twilio-signature" not in headers:
        refused("unsigned", "unsigned webhook", path=path)
        raise Refused(403, "invalid signature")
    if not settings.validate_signatures and not addressed_here(settings, headers):
        refused("unsigned_elsewhere", "unsigned webhook for another host: refused", path=path)
        raise Refused(403, UNSIGNED_ELSEWHERE)
    length = get_content_length(first.get("content-length"), first.get("transfer-encoding"))
    if (length or 0) > MAX_WEBHOOK_BYTES:
        refused("too_large", "webhook body too large", path=path, bytes=length)
        raise Refused(413, "request body too large")
    mimetype = parse_options_header(first.get("content-type", ""))[0].lower()
    if mimetype != FORM:
        refused("not_a_form", "webhook body not a form", path=path,
                content_type=mimetype[:100])
        raise Refused(415, f"Content-Type: expected {FORM}, as Twilio sends")
    body = await _body(receive, refused, path)
    if body.count(b"&") >= MAX_FIELDS:                       # before anything is parsed
        refused("too_many_fields", "webhook body of too many fields", path=path)
        raise Refused(413, f"request body of more than {MAX_FIELDS} fields")
    try:
        received = webhook_form.fields(body)       # every value of a repeated name is signed
    except webhook_form.BadForm as err:
        refused("bad_form", "webhook body not a urlencoded form", path=path, error=str(err))
        raise Refused(400, f"request body: {err}") from None
    form: dict[str, str] = {}
    for name, value in received:
        form.setdefault(name, value)            # the first value of a repeated name, as read
    scheme = scope["scheme"]
    base = signature.public_base(headers, scheme,
                                 get_host(scheme, first.get("host"), scope.get("server")),
                                 settings.public_url,
                                 trust_forwarded=settings.trust_proxy_headers)
    url = base + signature.target_as_sent(scope)           # as signed
    if settings.validate_signatures and not signed(settings, url, received, headers):
        runtime.signature_refused("bad_signature", "bad signature", path=path,
                                  checked_url=url,
                                  claimed_call_sid=form.get("CallSid", "")[:64],
                                  **signature.unknown_algorithm(headers))
        raise Refused(403, "invalid signature")
    runtime.edge_refusals.succeeded()
    return form, body


async def checked(runtime: Runtime, scope: dict[str, Any], body: bytes) -> dict[str, str]:
    """The form of a request whose body is already read (a handler reached without
    ``serve``), checked as ``serve`` checks it; ``Refused`` with the answer."""
    async def given() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}
    return (await _signed_form(runtime, scope, given))[0]


async def _body(receive: Receive, refused: Callable[..., object], path: str) -> bytes:
    """The whole body, refused as soon as it passes MAX_WEBHOOK_BYTES (one sent without a
    length, chunked, is known only as it arrives)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_WEBHOOK_BYTES:
            refused("too_large", "webhook body too large", path=path, bytes=size)
            raise Refused(413, "request body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
