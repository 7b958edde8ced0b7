"""The HTTP and WebSocket edges: POST /twiml, POST /action, GET /health, WS relay.

The relay route is served straight on ASGI (``relay_route``, see ``relay/asgi_socket.py``);
everything else is a small quart-trio app. Signatures are checked before any work when
VALIDATE_SIGNATURES is on: the webhooks' on ASGI too, before quart (``webhook_edge``).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Awaitable
from functools import partial
from typing import Any, cast

from quart import Response, request
from quart_trio import QuartTrio

import voiceagent.store.records as records
from actors.model_trouble import CANNOT_GO_ON
from voiceagent import signature, twiml
from voiceagent.app import webhook_edge
from voiceagent.app.action_reads import ReconnectTimes, read_by, reconnect_use_case
from voiceagent.app.action_words import ActionWords
from voiceagent.app.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from voiceagent.app.phone_page import PATH as PHONE_PATH
from voiceagent.app.phone_page import PhoneDesk
from voiceagent.app.relay_answers import ActionReplayed
from voiceagent.app.relay_route import relay, relay_path
from voiceagent.app.runtime import Runtime
from voiceagent.app.session_end import handoff_use_case
from voiceagent.app.session_end import session_over as _session_over
from voiceagent.app.sessions import (
    MAX_RECONNECTS,
    TOKEN_PARAMETER,
    SessionBusy,
    SessionExists,
    SessionRenewed,
)
from voiceagent.app.socket_marks import AgentEnded
from voiceagent.app.spent_tokens import newest_session
from voiceagent.app.webhook_edge import MAX_FIELDS as MAX_FIELDS  # where it was
from voiceagent.app.webhook_edge import MAX_WEBHOOK_BYTES
from voiceagent.catalog import UnknownUseCase
from voiceagent.errors import StoreError
from voiceagent.handoff_data import hands_off
from voiceagent.logs import call_sid_var
from voiceagent.settings import Settings
from voiceagent.usecases import UseCase

log = logging.getLogger(__name__)

SORRY = CANNOT_GO_ON        # also what a call hears when the model keeps failing
XML = twiml.CONTENT_TYPE
# Twilio's CallSids. A signature covers the URL then each name and value, sorted, with nothing
# between them: a captured /twiml sent again with a boundary moved ("CallSid=CA…" absorbing
# "CallStatusringing") keeps its signature, and a CallSid nobody has seen would mint a new
# session for whoever sent it. Its length fixed, a CallSid cannot absorb or lose a character.
TWILIO_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
# A reconnect's first flush of the call's writes gets this much of its deadline: after it
# come a session read, the answer's read, and two writes given up on at SESSION_WRITE_S
# (2 s) each (the answer's mark, the renewal). The reads end by ``action_reads.READS_S``
# (10 s): with a store slow but answering (3.5 s a read) they end at 9.5 s, and the answer
# goes out at 13.5 s. A flush of FLUSH_TIMEOUT_S (5 s) first sent it at 16 s, reads uncut.
# What the flush has not waited for, ``Sessions.renew`` waits for, to the deadline.
RECONNECT_FLUSH_S = 2.5
# The reconnect's whole deadline, whatever FLUSH_TIMEOUT_S says: that setting is also the
# stop's wait for the store (up to 120 s), and the arithmetic above rests on its default.
RECONNECT_DEADLINE_S = 5.0


def _headers() -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def _base_url(settings: Settings) -> str:
    return signature.public_base(_headers(), request.scheme, request.host, settings.public_url,
                                 trust_forwarded=settings.trust_proxy_headers)


async def _signed_form(runtime: Runtime) -> dict[str, str] | Response:
    """The webhook's form, its signature checked before quart (``webhook_edge``) and handed
    over in the scope. A handler mounted on another app (tests' own) checks it here, as the
    edge would, from the body quart has read; else the refusal to send."""
    scope = cast(dict[str, Any], request.scope)
    if webhook_edge.FORM_KEY in scope:
        return cast(dict[str, str], scope[webhook_edge.FORM_KEY])
    body = await request.get_data(cache=True, as_text=False, parse_form_data=False)
    try:
        return await webhook_edge.checked(runtime, scope, body)
    except webhook_edge.Refused as refusal:
        return Response(refusal.text, status=refusal.status)


def _refuse_call(runtime: Runtime, reason: str) -> Response:
    if runtime.refuse_call(reason, call_sid_var.get()):      # Twilio's fallback URL takes over
        return Response("over capacity", status=503, headers={"Retry-After": "5"})
    return Response(twiml.say_and_hang_up(SORRY), mimetype=XML)


async def twiml_webhook(runtime: Runtime) -> Response:
    """Twilio's call webhook, while the phone rings: the session, then the relay's TwiML."""
    settings, path = runtime.settings, relay_path(runtime)
    form = await _signed_form(runtime)
    if isinstance(form, Response):
        return form
    if "CallSid" not in form:
        return Response("CallSid missing: this endpoint is Twilio's voice webhook",
                        status=400)
    if settings.validate_signatures and not TWILIO_CALL_SID.fullmatch(form["CallSid"]):
        # signed, so rare and not the edge's flood: a replay re-cut, or not Twilio's request
        log.warning("call webhook with a CallSid unlike Twilio's: refused",
                    extra={"claimed_call_sid": form["CallSid"][:64]})
        return Response("CallSid: expected CA and 32 hex digits, as Twilio sends; this "
                        "endpoint is Twilio's voice webhook", status=400)
    call_sid_var.set(form["CallSid"])
    refused = runtime.call_refusals.note        # the first of each reason, then counts
    if runtime.draining or runtime.at_capacity:
        reason = "draining" if runtime.draining else "capacity"
        refused(reason, "call refused", draining=runtime.draining,
                active_calls=runtime.calls.active, write_backlog=runtime.writer.pending,
                write_backlog_mb=round(runtime.writer.pending_bytes / 1e6, 1))
        return _refuse_call(runtime, reason)
    try:
        session = await runtime.sessions.prepare(form)
        use_case = await runtime.catalog.use_case(session.use_case)
    except SessionExists:
        # a replayed (or retried) webhook: minting again would hand the call to whoever
        # sent it, so the first answer stands
        log.warning("call webhook for a call already prepared: refused")
        return Response("this call was already answered", status=409)
    except UnknownUseCase as err:           # missing, or not servable by this process
        refused("use_case", "use case missing or unusable", level=logging.ERROR,
                error=str(err)[:500])
        return _refuse_call(runtime, "use_case")
    except StoreError as err:
        # throttled or unreachable: a 500 would have Twilio play its "application error";
        # refused as over capacity instead (the fallback URL with OVER_CAPACITY=503)
        refused("store", "store unavailable while preparing a call: refused",
                level=logging.ERROR, error=str(err)[:300])
        return _refuse_call(runtime, "store")
    runtime.call_refusals.succeeded()
    ws_url = settings.ws_url or signature.to_ws(_base_url(settings)) + path
    document = twiml.connect_relay(
        ws_url=ws_url, action_url=_base_url(settings) + "/action", use_case=use_case,
        parameters={TOKEN_PARAMETER: session.token})
    return Response(document, mimetype=XML)


async def action_webhook(runtime: Runtime) -> Response:
    """Twilio's session-end callback: hand over to a person, say goodbye, or reconnect."""
    settings, path = runtime.settings, relay_path(runtime)
    form = await _signed_form(runtime)
    if isinstance(form, Response):
        return form
    status, call_sid = form.get("SessionStatus", ""), form.get("CallSid", "")
    if call_sid:
        call_sid_var.set(call_sid)
    log.info("relay session ended", extra={"status": status,
                                           "error_code": form.get("ErrorCode", "")})

    use_case: UseCase | None = None

    def last_words(outcome: str = "refused_unavailable") -> Response:
        """Any answer but a reconnect ends the call's relay for good: say so in the store,
        so that this signed request, replayed later to any process, renews nothing; for a
        failed session of a call in progress, count the refused reconnect (alarms). The
        apology is the use case's, when it was read, in its first language: a failed
        session's end carries no word of the one the call last spoke."""
        if call_sid:
            runtime.relay_answers.relay_ended(call_sid)
        if status == "failed" and form.get("CallStatus", "").lower() == "in-progress":
            _count_reconnect(runtime, outcome, call_sid)
        said = ActionWords(use_case).line("cannot_go_on")
        return Response(twiml.say_and_hang_up(said.text, said.language), mimetype=XML)

    if status == "completed":                # the caller hung up: Twilio ignores the TwiML
        if call_sid:
            runtime.relay_answers.relay_ended(call_sid)
        return Response(twiml.empty(), mimetype=XML)
    handoff_data = form.get("HandoffData", "")
    if status != "failed":
        if not hands_off(handoff_data):
            # a goodbye: nothing stored changes it, and a store that is down held it for
            # the flush's timeout in silence, then turned it into the apology
            return _session_over(runtime, call_sid, handoff_data, None)
        try:        # a handoff: the session's use case alone, read without the flush
            use_case = await handoff_use_case(runtime, call_sid, handoff_data)
        except StoreError:
            return last_words()
        return _session_over(runtime, call_sid, handoff_data, use_case)
    session = None
    # everything a reconnect waits for ends by then, its reads and the answer before Twilio
    # gives up on the webhook at 15 s (``action_reads``)
    times = ReconnectTimes.from_now(min(settings.flush_timeout_s, RECONNECT_DEADLINE_S))
    if call_sid:
        # the socket's write-behind may still hold this call's last messages (its session
        # item too, when the store was slow as the call began): a share of the deadline, the
        # rest waited for in renew, after the reads (see RECONNECT_FLUSH_S)
        await runtime.writer.flush(call_sid, timeout_s=RECONNECT_FLUSH_S, until=times.waits)
        try:
            item = await read_by(times.reads, "call session",
                                 partial(runtime.store.get, call_sid, records.SESSION_SK))
        except StoreError as err:
            # without the session nothing can be resumed: an apology, not a 500 (Twilio
            # would play its own application error)
            log.error("call session unreadable", extra={"error": str(err)})
            return last_words()
        # a write of it still queued here is newer than the store's (a slow store)
        session = newest_session(item, runtime.writer.queued_item(call_sid,
                                                                   records.SESSION_SK))
        if session is None:
            # said here: the apology below cannot tell why
            log.warning("call session not found: it expired (SESSION_TTL_S after the call "
                        "started) or this service did not prepare the call; nothing to "
                        "resume")
    if session is not None:
        try:
            use_case = await reconnect_use_case(runtime, session.use_case, times.reads)
        except StoreError:
            return last_words()
    if (form.get("CallStatus", "").lower() != "in-progress" or session is None
            or use_case is None):
        return last_words()
    try:
        reconnects = await runtime.relay_answers.answer_failure(   # by any process
            call_sid, form.get("SessionId", ""), session.generation, read_by=times.reads)
        if reconnects >= MAX_RECONNECTS:
            log.warning("reconnect refused: the call's relay session keeps failing",
                        extra={"reconnects": reconnects})
            return last_words("refused_limit")
        renewed, complete = await runtime.sessions.renew(session, deadline=times.waits,
                                                         marks_by=times.marks)
    except AgentEnded as err:
        log.warning("reconnect refused: the agent had ended the call; answering its end",
                    extra={"handoff": hands_off(err.handoff_data)})
        _count_reconnect(runtime, "ended_by_agent", call_sid)
        return _session_over(runtime, call_sid, err.handoff_data, use_case)
    except ValueError as err:
        log.warning("reconnect refused: bad SessionId", extra={"error": str(err)})
        return Response(f"{err}: this endpoint is ConversationRelay's action callback",
                        status=400)
    except ActionReplayed as err:
        # the first answer stands: another token would open the call to whoever sent this
        log.warning("reconnect refused: a replayed action callback",
                    extra={"error": str(err)})
        _count_reconnect(runtime, "refused_replay", call_sid)
        return Response("this relay session's end was already answered", status=409)
    except SessionRenewed:
        # another renewal of this generation is in the store: its token stands, alone
        log.warning("reconnect refused: the call's session was renewed by another "
                    "request first")
        _count_reconnect(runtime, "refused_replay", call_sid)
        return Response("this call's session was already renewed", status=409)
    except StoreError as err:
        log.error("relay session marks unreadable", extra={"error": str(err)})
        return last_words()
    except SessionBusy:
        log.warning("reconnect refused: the call's socket is still connected")
        return last_words("refused_busy")
    runtime.reconnects.resumed(renewed, complete, times.waits, partial(_count_reconnect, runtime))
    ws_url = settings.ws_url or signature.to_ws(_base_url(settings)) + path
    document = twiml.connect_relay(
        ws_url=ws_url, action_url=_base_url(settings) + "/action", use_case=use_case,
        parameters={TOKEN_PARAMETER: renewed.token}, greeting=False)
    return Response(document, mimetype=XML)


def _count_reconnect(runtime: Runtime, outcome: str, call_sid: str) -> None:
    """One log line per reconnect with its outcome (as in ``voiceagent_reconnects_total``),
    and the metrics."""
    log.info("reconnect answered", extra={"outcome": outcome})
    if runtime.metrics is not None:
        runtime.metrics.on_reconnect(outcome, call_sid)


async def health(runtime: Runtime) -> Response:
    """For the ALB's check and ECS's (they read the status code alone) on the public port:
    no call count, which told anyone how busy the service is; the operator has it from
    /metrics (with its token) and the ActiveCalls metric."""
    body = {"status": "draining" if runtime.draining else "ok"}
    return Response(json.dumps(body), status=503 if runtime.draining else 200,
                    mimetype="application/json")


async def metrics(runtime: Runtime) -> Response:
    """Only with METRICS_TOKEN set, and only for a request that carries it: call counts,
    error codes and latencies are for the operator, not for anyone on the public port."""
    token = runtime.settings.metrics_token
    if runtime.metrics is None or not token:
        return Response("not found", status=404)
    given = request.headers.get("Authorization", "")
    if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return Response("unauthorized", status=401,
                        headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    return Response(runtime.metrics.exposition(), content_type=METRICS_CONTENT_TYPE)


def create_app(runtime: Runtime) -> Any:
    """The ASGI application for one runtime: the routes below, bound to it, and the relay
    socket served straight on ASGI."""
    app = QuartTrio("voiceagent")
    app.config["MAX_CONTENT_LENGTH"] = MAX_WEBHOOK_BYTES    # bodies sent without a length too
    path = relay_path(runtime)

    async def on_twiml() -> Response:
        return await twiml_webhook(runtime)

    async def on_action() -> Response:
        return await action_webhook(runtime)

    async def on_health() -> Response:
        return await health(runtime)

    async def on_metrics() -> Response:
        return await metrics(runtime)

    app.add_url_rule("/twiml", "twiml", on_twiml, methods=["POST"])
    app.add_url_rule("/action", "action", on_action, methods=["POST"])
    app.add_url_rule("/health", "health", on_health, methods=["GET"])
    app.add_url_rule("/metrics", "metrics", on_metrics, methods=["GET"])
    phone = PhoneDesk(runtime, path) if runtime.settings.phone_page else None
    if phone is not None:                 # development only: no route at all otherwise
        app.add_url_rule(PHONE_PATH, "phone", phone.page, methods=["GET"])
        app.add_url_rule(PHONE_PATH + "/<name>", "phone_asset", phone.asset, methods=["GET"])

    def asgi(scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        # the route's coroutine, not awaited here: a relay socket lasts its whole call, and a
        # frame awaiting it (~300 B) would last as long, in every call
        if scope["type"] == "websocket" and scope["path"] == path:
            return relay(runtime, scope, receive, send, phone)
        if webhook_edge.is_webhook(scope):      # a refusal never enters quart
            return webhook_edge.serve(runtime, cast(Any, app), scope, receive, send)
        return cast(Awaitable[None], app(cast(Any, scope), receive, send))

    return asgi
