"""GET /phone: a page that plays Twilio's side of a call in the browser (docs/phone.md).

For development only: served by ``voiceagent demo --web``, and by ``serve`` with PHONE_PAGE
on, which settings refuse on a HOST that is not a loopback address (unless DEMO). Without the
setting there is no route, so /phone is 404.

Authorisation is Twilio's own, through the same session machinery. Each page load is a new
call: the server mints a CallSid and prepares its session with ``Sessions.prepare``, exactly
as the signed ``/twiml`` webhook does for Twilio, and embeds the session token in the page.
The page's ``setup`` carries the token in ``customParameters`` as Twilio's does (from the
``<Parameter>``), and ``Sessions.resolve`` checks it against the CallSid and consumes it.

A browser cannot put ``X-Twilio-Signature`` on its WebSocket upgrade, so the socket URL
carries the same token (``?sessionToken=``) and ``admit`` stands in for the signature check
for that one upgrade: the token must be one this page minted, unused, less than
``TICKET_TTL_S`` old; the upgrade must come from a page on this origin (``Origin``) addressed
to a loopback name with no proxy in between; and the socket may then claim only that
CallSid. Every other upgrade is signature-checked as before; nothing here turns checks off.
"""

from __future__ import annotations

import html
import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio
from quart import Response, request

from voiceagent.app.runtime import Runtime
from voiceagent.app.sessions import TOKEN_PARAMETER
from voiceagent.catalog import UnknownUseCase
from voiceagent.settings import Settings, is_loopback

log = logging.getLogger(__name__)

PATH = "/phone"
TICKET_TTL_S = 300.0       # a page must start its call within this long of loading
MAX_TICKETS = 64           # page loads waiting for their socket; the oldest go first
DEFAULT_FROM = "+15555550100"
DEFAULT_TO = "+15555550199"
ACCOUNT_SID = "AC" + "0" * 32
ASSETS = {"phone.js": "text/javascript; charset=utf-8",
          "phone.css": "text/css; charset=utf-8", "phone.svg": "image/svg+xml"}
# what the page needs of the use case's <ConversationRelay> attributes to behave as Twilio
RELAY_KEYS = ("welcomeGreeting", "welcomeGreetingInterruptible", "interruptible",
              "dtmfDetection", "partialPrompts", "language", "ttsLanguage",
              "transcriptionLanguage", "debug", "events")
_NUMBER = re.compile(r"\+?[0-9]{3,15}")
# a request that passed through a proxy (a tunnel to this loopback port, say) is not local
_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


class PhoneRefused(Exception):
    """A relay upgrade carried a phone page token that opens nothing."""


@dataclass(frozen=True)
class _Ticket:
    call_sid: str
    minted_at: float


def local_host(headers: Mapping[str, str]) -> str | None:
    """The ``Host`` header when the request is addressed to a loopback name and came through
    no proxy, else None. Binding to 127.0.0.1 is not enough on its own: a tunnel on this
    machine, or a DNS name rebound to 127.0.0.1, would reach the page from elsewhere."""
    if any(name in headers for name in _PROXY_HEADERS):
        return None
    host = headers.get("host", "")
    try:
        name = urlsplit("//" + host).hostname
    except ValueError:
        return None
    return host if name and is_loopback(name) else None


def _navigated_to(headers: Mapping[str, str]) -> bool:
    """Loaded as a page by the browser's own user (typed, bookmarked, reloaded), as the
    fetch metadata browsers send say; a client that sends none (curl, an old browser) is
    taken at its word."""
    return (headers.get("sec-fetch-site", "none") in ("none", "same-origin")
            and headers.get("sec-fetch-mode", "navigate") == "navigate")


UNSIGNED_ELSEWHERE = ("signatures are off (VALIDATE_SIGNATURES=false), so only requests "
                      "addressed to this machine (127.0.0.1, localhost, ::1) or to PUBLIC_URL's "
                      "host are served")


def addressed_here(settings: Settings, headers: Mapping[str, str]) -> bool:
    """With signatures off nothing says a request is Twilio's, so take only those addressed
    to this machine by a loopback name (no proxy between), or to PUBLIC_URL's host (a
    tunnel): a DNS name rebound to 127.0.0.1 reaches the port, but not by these names."""
    if local_host(headers) is not None:
        return True
    public = urlsplit(settings.public_url).netloc if settings.public_url else None
    return public is not None and headers.get("host", "").lower() == public.lower()


def security_headers(host: str) -> dict[str, str]:
    """A strict policy: scripts, styles and sockets from this origin only, nothing inline."""
    policy = "; ".join([
        "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self'",
        f"connect-src 'self' ws://{host} wss://{host}", "base-uri 'none'",
        "form-action 'none'", "frame-ancestors 'none'"])
    return {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
            "Permissions-Policy": "microphone=(self)", "Cache-Control": "no-store"}


class PhoneDesk:
    """Mints one call per page load and admits that page's socket (module docstring)."""

    def __init__(self, runtime: Runtime, relay_path: str) -> None:
        self._runtime = runtime
        self._relay_path = relay_path
        self._tickets: dict[str, _Ticket] = {}
        folder = resources.files("voiceagent.app") / "phone"
        self._template = (folder / "index.html").read_text(encoding="utf-8")
        self._assets = {name: (folder / name).read_bytes() for name in ASSETS}

    async def page(self) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        host = local_host(headers)
        if host is None:
            log.warning("phone page asked for from outside this machine: refused")
            return Response("not found", status=404)
        if not _navigated_to(headers):
            # another site's no-cors fetch or <img> cannot read the page, but each load
            # mints a call and takes a ticket, pushing out the developer's own
            log.warning("phone page asked for by another site: refused")
            return Response("open this page in the address bar", status=403)
        runtime = self._runtime
        if runtime.draining or runtime.at_capacity:
            return Response("the server is not taking calls right now", status=503,
                            headers={"Retry-After": "5"})
        caller = request.args.get("from", DEFAULT_FROM)
        if not _NUMBER.fullmatch(caller):
            return Response("from: a phone number, digits with an optional +", status=400)
        call_sid = "CA" + secrets.token_hex(16)
        try:
            session = await runtime.sessions.prepare(
                {"CallSid": call_sid, "From": caller, "To": DEFAULT_TO})
            use_case = await runtime.catalog.use_case(session.use_case)
        except UnknownUseCase as err:
            log.error("use case missing", extra={"error": str(err)})
            return Response("the use case is missing: see the server's log", status=500)
        self._keep(session.token, call_sid)
        attributes = use_case.relay | use_case.relay_extra
        call: dict[str, Any] = {
            "callSid": call_sid, "accountSid": runtime.settings.twilio_account_sid
            or ACCOUNT_SID, "sessionToken": session.token, "tokenParameter": TOKEN_PARAMETER,
            "relayPath": self._relay_path, "from": caller, "to": DEFAULT_TO,
            "useCase": use_case.name, "title": use_case.title or use_case.name,
            "greeting": session.greeting, "ticketTtlS": TICKET_TTL_S,
            "relay": {key: attributes[key] for key in RELAY_KEYS if key in attributes}}
        log.info("phone page call prepared", extra={"use_case": use_case.name})
        document = self._template.replace("{{CALL}}", html.escape(json.dumps(call)))
        document = document.replace("{{TITLE}}", html.escape(call["title"]))
        return Response(document, mimetype="text/html", headers=security_headers(host))

    async def asset(self, name: str) -> Response:
        host = local_host({k.lower(): v for k, v in request.headers.items()})
        if host is None or name not in self._assets:
            return Response("not found", status=404)
        headers = security_headers(host) | {"Cache-Control": "no-cache"}
        return Response(self._assets[name], content_type=ASSETS[name], headers=headers)

    def admit(self, scope: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
        """The CallSid a page's relay upgrade may claim; None when the upgrade carries no
        token (it is then signature-checked as any other). ``PhoneRefused`` for a token
        that is unknown, used, stale, or sent from elsewhere: a token is taken on its first
        upgrade, good or not, so it never opens a second socket."""
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin1"),
                         keep_blank_values=True)
        if TOKEN_PARAMETER not in query:
            return None
        tokens = query[TOKEN_PARAMETER]
        self._forget_stale()
        ticket = self._tickets.pop(tokens[0], None) if len(tokens) == 1 else None
        if ticket is None:
            raise PhoneRefused("unknown, used or expired phone page token")
        host = local_host(headers)
        if host is None or headers.get("origin") not in (f"http://{host}", f"https://{host}"):
            raise PhoneRefused("phone page socket from another origin or through a proxy")
        return ticket.call_sid

    def _keep(self, token: str, call_sid: str) -> None:
        self._forget_stale()
        while len(self._tickets) >= MAX_TICKETS:
            del self._tickets[next(iter(self._tickets))]
        self._tickets[token] = _Ticket(call_sid, trio.current_time())

    def _forget_stale(self) -> None:
        cutoff = trio.current_time() - TICKET_TTL_S
        for token in [t for t, ticket in self._tickets.items() if ticket.minted_at < cutoff]:
            del self._tickets[token]
