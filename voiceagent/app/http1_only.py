"""HTTP/1.1 only: no HTTP/2 cleartext, by ``Upgrade: h2c`` or by the prior-knowledge preface.

hypercorn honours both on any plain connection, and has no setting to stop it (its
``alpn_protocols`` covers TLS only, which this server does not terminate). Twilio and the ALB
reach the tasks over HTTP/1.1 (the ALB target group in sam/cloud-deploy-infra-template.yml sets
no ProtocolVersion: HTTP1; docker-compose's ngrok tunnel sets no app_protocol), so HTTP/2's
flow-control and stream machinery (zero-window streams, CONTINUATION and rapid-reset floods)
would serve nobody but whoever connects to a task exposed without a proxy. The HTTP/1.1
protocol that hypercorn makes for each connection is swapped for a subclass: an
``Upgrade: h2c`` is ignored (the request is answered in HTTP/1.1, as RFC 9113 lets a server
do), a preface is answered 505 and the connection closed. Only the preface is refused, and
counted in the edge's refusals (``Runtime.edge_refusals``, on hypercorn's ``Config``: the
first logged, then counts); an ignored upgrade is served, so it is no refusal: the first is
logged at INFO (a client trying HTTP/2, curl's ``--http2`` on an http URL), the rest at
DEBUG with their count, on the ``Config`` as well.
``install`` does that only when hypercorn is the version it was written against, and says so
otherwise (the server then speaks h2c as before).
"""

from __future__ import annotations

import logging

import h11
import hypercorn.protocol as protocol
from hypercorn.config import Config
from hypercorn.events import Closed
from hypercorn.protocol.h11 import H11Protocol

log = logging.getLogger(__name__)

PREFACE = "HTTP/2 prior-knowledge preface: answered 505 and closed"
H2C = "Upgrade: h2c ignored: answered in HTTP/1.1"


class Http1OnlyProtocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, without its two ways into HTTP/2."""

    _refused = False

    async def _check_protocol(self, event: h11.Request) -> None:
        if event.method == b"PRI" and event.target == b"*" and event.http_version == b"2.0":
            self._note("http2_preface", PREFACE)
            self._refused = True
            await self._send_error_response(505)
            await self.send(Closed())
        elif any(name.lower() == b"upgrade" and value.strip().lower() == b"h2c"
                 for name, value in event.headers):
            ignored = h2c_ignored(self.config) + 1
            setattr(self.config, "h2c_ignored", ignored)  # noqa: B010 (a plain Config too)
            log.log(logging.INFO if ignored == 1 else logging.DEBUG, H2C,
                    extra={"peer": self._peer(), "ignored": ignored})

    async def _create_stream(self, request: h11.Request) -> None:
        if not self._refused:        # a refused request never reaches the app
            await super()._create_stream(request)

    def _note(self, kind: str, event: str) -> None:
        refusals = getattr(self.config, "edge_refusals", None)
        if refusals is None:
            log.warning(event, extra={"peer": self._peer()})
        else:
            refusals.note(kind, event, peer=self._peer())

    def _peer(self) -> str:
        return str(self.client[0]) if self.client else ""


def h2c_ignored(config: Config) -> int:
    """How many ``Upgrade: h2c`` the server with this ``config`` has ignored."""
    return int(getattr(config, "h2c_ignored", 0))


def install() -> bool:
    """Idempotent. False (and a warning) when hypercorn's protocol choice no longer looks as
    expected."""
    current = getattr(protocol, "H11Protocol", None)
    if current is Http1OnlyProtocol:
        return True
    expected = (current is H11Protocol and hasattr(H11Protocol, "_check_protocol")
                and hasattr(H11Protocol, "_create_stream")
                and hasattr(H11Protocol, "_send_error_response"))
    if not expected:
        log.warning("hypercorn's HTTP/1.1 protocol is not the one expected; HTTP/2 cleartext "
                    "(h2c) stays on", extra={"found": repr(current)})
        return False
    setattr(protocol, "H11Protocol", Http1OnlyProtocol)  # noqa: B010 (not exported)
    return True
