"""The HTTP and WebSocket edges: POST /twiml, POST /action, GET /health, WS relay.

The relay route is served straight on ASGI (see ``relay/asgi_socket.py``); everything else is
a small quart-trio app. Signatures are checked before any work when VALIDATE_SIGNATURES is on.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast
from urllib.parse import urlsplit

from quart import Response, request
from quart_trio import QuartTrio

import voiceagent.store.records as records
from actors.call import CallReport, run_call
from voiceagent import signature, twiml
from voiceagent.catalog import UnknownUseCase
from voiceagent.logs import call_sid_var
from voiceagent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from voiceagent.relay import asgi_socket
from voiceagent.runtime import Runtime
from voiceagent.sessions import TOKEN_PARAMETER

log = logging.getLogger(__name__)

DEFAULT_RELAY_PATH = "/relay"
SORRY = "Sorry, we cannot take your call right now. Please try again later."
XML = "text/xml; charset=utf-8"
GOODBYE = "Thank you for calling. Goodbye."
NO_AGENT = "Sorry, no one is available to take your call right now. Please call back later."
NORMAL_ENDS = frozenset({"end-call", "endCall", "completed"})   # reasonCodes that just hang up
CAPACITY_MARGIN = 10     # sockets for calls /twiml admitted just before the limit was reached


def _handoff_data(text: str) -> dict[str, Any]:
    """``HandoffData`` as sent in our ``end`` frame: a JSON object, else nothing usable."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def relay_path(runtime: Runtime) -> str:
    if runtime.settings.ws_url:
        return urlsplit(runtime.settings.ws_url).path or DEFAULT_RELAY_PATH
    return DEFAULT_RELAY_PATH


def create_app(runtime: Runtime) -> Any:
    """The ASGI application for one runtime."""
    app = QuartTrio("voiceagent")
    settings = runtime.settings
    path = relay_path(runtime)

    def headers() -> dict[str, str]:
        return {k.lower(): v for k, v in request.headers.items()}

    def base_url() -> str:
        return signature.public_base(headers(), request.scheme, request.host,
                                     settings.public_url,
                                     trust_forwarded=settings.trust_proxy_headers)

    def check(url: str, params: dict[str, str], given: dict[str, str]) -> bool:
        return signature.is_valid(settings.twilio_auth_token or "", url, params, given,
                                  shared_key_secret=settings.twilio_shared_key_secret)

    async def signed(form: dict[str, str]) -> bool:
        if not settings.validate_signatures:
            return True
        ok = check(base_url() + request.full_path.rstrip("?"), form, headers())
        if not ok:
            log.warning("bad signature", extra={"path": request.path})
        return ok

    def refuse_call() -> Response:
        if settings.over_capacity == "503":           # Twilio's fallback URL takes over
            return Response("over capacity", status=503, headers={"Retry-After": "5"})
        return Response(twiml.say_and_hang_up(SORRY), mimetype=XML)

    @app.post("/twiml")
    async def twiml_webhook() -> Response:
        form = dict((await request.form).items())
        if not await signed(form):
            return Response("invalid signature", status=403)
        if "CallSid" not in form:
            return Response("CallSid missing: this endpoint is Twilio's voice webhook",
                            status=400)
        call_sid_var.set(form["CallSid"])
        if runtime.draining or runtime.at_capacity:
            log.warning("call refused", extra={"draining": runtime.draining,
                                               "active_calls": runtime.calls.active})
            return refuse_call()
        try:
            session = await runtime.sessions.prepare(form)
            use_case = await runtime.catalog.use_case(session.use_case)
        except UnknownUseCase as err:
            log.error("use case missing", extra={"error": str(err)})
            return Response(twiml.say_and_hang_up(SORRY), mimetype=XML)
        ws_url = settings.ws_url or signature.to_ws(base_url()) + path
        document = twiml.connect_relay(
            ws_url=ws_url, action_url=base_url() + "/action", use_case=use_case,
            parameters={TOKEN_PARAMETER: session.token})
        return Response(document, mimetype=XML)

    @app.post("/action")
    async def action_webhook() -> Response:
        """Twilio's session-end callback: hand over to a person, say goodbye, or reconnect."""
        form = dict((await request.form).items())
        if not await signed(form):
            return Response("invalid signature", status=403)
        status, call_sid = form.get("SessionStatus", ""), form.get("CallSid", "")
        if call_sid:
            call_sid_var.set(call_sid)
        log.info("relay session ended", extra={"status": status,
                                               "error_code": form.get("ErrorCode", "")})
        if status == "completed":                # the caller hung up: Twilio ignores the TwiML
            return Response(twiml.empty(), mimetype=XML)
        session = None
        if call_sid:
            # the socket's write-behind may still hold this call's last messages
            await runtime.writer.flush(call_sid, timeout_s=settings.flush_timeout_s)
            item = await runtime.store.get(call_sid, "connection")
            session = records.session_from_item(item) if item is not None else None
        use_case = None
        if session is not None:
            try:
                use_case = await runtime.catalog.use_case(session.use_case)
            except UnknownUseCase as err:
                log.error("use case missing", extra={"error": str(err)})
        if status == "failed":
            if (form.get("CallStatus", "").lower() != "in-progress" or session is None
                    or use_case is None or not runtime.may_reconnect(call_sid)):
                return Response(twiml.say_and_hang_up(SORRY), mimetype=XML)
            log.info("reconnecting the relay session")   # the new socket resumes the history
            ws_url = settings.ws_url or signature.to_ws(base_url()) + path
            document = twiml.connect_relay(
                ws_url=ws_url, action_url=base_url() + "/action", use_case=use_case,
                parameters={TOKEN_PARAMETER: session.token}, greeting=False)
            return Response(document, mimetype=XML)
        handoff = _handoff_data(form.get("HandoffData", ""))
        reason = str(handoff.get("reasonCode", ""))
        if reason and reason not in NORMAL_ENDS and use_case is not None:
            config = use_case.handoff
            log.info("live-agent handoff", extra={"reason": reason, "mode": config.mode})
            if config.mode == "enqueue" and (config.queue or config.workflow_sid):
                return Response(twiml.enqueue(config.message, queue=config.queue,
                                              workflow_sid=config.workflow_sid,
                                              task=json.dumps(handoff)), mimetype=XML)
            if config.mode == "dial" and config.number:
                return Response(twiml.dial(config.message, config.number), mimetype=XML)
            log.warning("handoff asked for, but the use case has no handoff target")
            return Response(twiml.say_and_hang_up(NO_AGENT), mimetype=XML)
        return Response(twiml.say_and_hang_up(GOODBYE), mimetype=XML)

    @app.get("/health")
    async def health() -> Response:
        body = {"status": "draining" if runtime.draining else "ok",
                "active_calls": runtime.calls.active}
        return Response(json.dumps(body), status=503 if runtime.draining else 200,
                        mimetype="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        if runtime.metrics is None:
            return Response("metrics off", status=404)
        return Response(runtime.metrics.exposition(), content_type=METRICS_CONTENT_TYPE)

    async def relay(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode("latin1").lower(): v.decode("latin1")
                   for k, v in scope.get("headers", [])}
        if settings.validate_signatures:
            base = signature.public_base(headers, "https" if scope["scheme"] == "wss" else "http",
                                         headers.get("host", ""), settings.public_url,
                                         trust_forwarded=settings.trust_proxy_headers)
            if not check(settings.ws_url or signature.to_ws(base) + path, {}, headers):
                log.warning("bad signature on relay upgrade")
                await asgi_socket.reject(receive, send, 403, "invalid signature")
                return
        if runtime.calls.active >= settings.max_calls + CAPACITY_MARGIN:
            log.warning("relay refused: over capacity")
            await asgi_socket.reject(receive, send, 503, "over capacity")
            return
        if not await asgi_socket.accept(receive, send):
            return
        socket = asgi_socket.AsgiRelaySocket(receive, send)
        report = CallReport()
        runtime.calls.started(report)
        try:
            await run_call(socket, resolve=runtime.sessions.resolve,
                           services=runtime.call_services(), report=report)
        finally:
            runtime.calls.finished(report)

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and scope["path"] == path:
            await relay(scope, receive, send)
        else:
            await app(cast(Any, scope), receive, send)

    return asgi
