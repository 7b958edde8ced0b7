"""The relay socket's route: its upgrade admitted (Twilio's signature, or a phone-page
token), then one call served on it; and the path it is served at.

Apart from ``web``, whose routes are HTTP requests answered at once: this one is a WebSocket
held for a whole call, served straight on ASGI. Its log lines are ``voiceagent.app.web``'s,
as the other edges' are.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import trio

from actors.call import run_call
from voiceagent import signature
from voiceagent.app.phone_page import PhoneDesk, PhoneRefused, addressed_here
from voiceagent.app.runtime import Runtime
from voiceagent.app.socket_standing import SocketStanding
from voiceagent.relay import asgi_socket
from voiceagent.settings import Settings

log = logging.getLogger("voiceagent.app.web")

DEFAULT_RELAY_PATH = "/relay"


def relay_path(runtime: Runtime) -> str:
    if runtime.settings.ws_url:
        return urlsplit(runtime.settings.ws_url).path    # never empty: settings.WS_URL_SHAPE
    return DEFAULT_RELAY_PATH


def signed(settings: Settings, url: str, params: signature.Form,
           given: dict[str, str]) -> bool:
    """Whether the request's headers (``given``) sign ``url`` and ``params`` as this
    server's settings say: the webhooks' check and the upgrade's."""
    return signature.is_valid(settings.twilio_auth_token or "", url, params, given,
                              shared_key_secret=settings.twilio_shared_key_secret)


class _Refused(Exception):
    """The upgrade is refused (403); the message says why, to the peer."""


def _admit(runtime: Runtime, scope: dict[str, Any], phone: PhoneDesk | None) -> str | None:
    """The CallSid a phone-page socket is bound to, or None for Twilio's (signed) socket.
    Apart from ``relay`` so that the upgrade's headers die here and are not held by the
    call's frame for the call's life (~1 KiB a call, issue 20)."""
    settings = runtime.settings
    headers = {k.decode("latin1").lower(): v.decode("latin1")
               for k, v in scope.get("headers", [])}
    bound = None
    if phone is not None:
        try:
            bound = phone.admit(scope, headers)
        except PhoneRefused as err:
            log.warning("phone page socket refused", extra={"reason": str(err)})
            raise _Refused("invalid session token") from None
    if bound is None and not settings.validate_signatures:
        # nothing proves who sent it: only this machine's (or PUBLIC_URL's) own clients, and
        # never a web page of another origin (a site the developer visits, its DNS name
        # rebound to 127.0.0.1, would otherwise hold calls with the agent)
        host = headers.get("host", "")
        origin = headers.get("origin")
        if not addressed_here(settings, headers) or origin not in (
                None, f"http://{host}", f"https://{host}"):
            runtime.edge_refusals.note("upgrade_unsigned_elsewhere", "unsigned relay upgrade "
                                       "from another host or origin: refused")
            raise _Refused("unsigned sockets are taken from this host's own clients only")
    if bound is None and settings.validate_signatures:
        base = signature.public_base(headers, "https" if scope["scheme"] == "wss" else "http",
                                     headers.get("host", ""), settings.public_url,
                                     trust_forwarded=settings.trust_proxy_headers)
        url = settings.ws_url or signature.to_ws(base) + relay_path(runtime)
        if not signed(settings, url, {}, headers):
            runtime.signature_refused("upgrade_bad_signature", "bad signature on relay upgrade",
                                      checked_url=url, **signature.unknown_algorithm(headers))
            raise _Refused("invalid signature")
        runtime.edge_refusals.succeeded()
    return bound


async def relay(runtime: Runtime, scope: dict[str, Any], receive: Any, send: Any,
                phone: PhoneDesk | None = None) -> None:
    """The relay socket: signature on the upgrade (or, with the phone page on, the token of
    one page load: ``PhoneDesk.admit``), then one call (see ``SocketStanding``)."""
    try:
        bound = _admit(runtime, scope, phone)
    except _Refused as err:
        await asgi_socket.reject(receive, send, 403, str(err))
        return
    if not await asgi_socket.accept(receive, send):
        return
    standing = SocketStanding(runtime, call_sid=bound)
    socket = asgi_socket.AsgiRelaySocket(receive, send, on_closed=standing.socket_closed,
                                         scope=scope)
    try:
        with standing.scope:
            await run_call(socket, resolve=standing.claim,
                           services=runtime.call_services(), report=standing.report)
        if standing.scope.cancelled_caught:
            log.warning("relay socket closed: no setup, or its call not found yet, while "
                        "newer sockets waited")
            with trio.move_on_after(1.0, shield=True):
                await socket.close(1008, "setup expected")
    finally:
        standing.end()
