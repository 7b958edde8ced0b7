"""Tools that reach the caller another way: a confirmation text message, a language switch.

``sendConfirmationSms`` uses the twilio package's REST client (blocking ``requests``) in a
worker thread. It needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_SMS_FROM; when one is
missing it fails with a reason that says which, and the model apologises to the caller.
TWILIO_API_BASE_URL points the client at a local fake of Twilio's API in tests.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from voiceagent.logs import mask_phone
from voiceagent.relay.outbound import Language
from voiceagent.threads import run_blocking
from voiceagent.tools.base import ToolContext, ToolResult, tool

if TYPE_CHECKING:
    from voiceagent.usecases import ToolDeclaration, UseCase

log = logging.getLogger(__name__)

SMS_HTTP_TIMEOUT_S = 10.0
SMS_TOOL_TIMEOUT_S = 15.0
MAX_SMS_CHARS = 480                 # about three segments; a confirmation needs far fewer
_SMS_LIMITER = trio.CapacityLimiter(16)   # REST calls never take the store's or model's threads


class SmsUnavailable(Exception):
    """Text messages are not configured; the reason names the missing settings."""


def _send_sms(*, account_sid: str, auth_token: str, base_url: str | None, to: str,
              from_: str, body: str) -> str:
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    client = Client(account_sid, auth_token,
                    http_client=TwilioHttpClient(timeout=SMS_HTTP_TIMEOUT_S))
    if base_url:
        client.api.base_url = base_url.rstrip("/")
    message = client.messages.create(to=to, from_=from_, body=body)
    return str(message.sid)


@tool("sendConfirmationSms", side_effect=True, timeout_s=SMS_TOOL_TIMEOUT_S)
async def send_confirmation_sms(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    settings = ctx.settings
    values = {"TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
              "TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
              "TWILIO_SMS_FROM": settings.twilio_sms_from}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise SmsUnavailable(f"text messages are not set up on this line ({', '.join(missing)} "
                             "not set); tell the caller you cannot send a text right now")
    if not ctx.caller.startswith("+"):
        raise ValueError("the caller's phone number is unknown, so no text can be sent")
    body = str(args.get("message", "")).strip()[:MAX_SMS_CHARS]
    if not body:
        raise ValueError("message is empty: write the confirmation text to send")
    sid = await run_blocking(
        lambda: _send_sms(account_sid=str(values["TWILIO_ACCOUNT_SID"]),
                          auth_token=str(values["TWILIO_AUTH_TOKEN"]),
                          base_url=settings.twilio_api_base_url,
                          to=ctx.caller, from_=str(values["TWILIO_SMS_FROM"]), body=body),
        limiter=_SMS_LIMITER)
    log.info("confirmation text sent", extra={"to": mask_phone(ctx.caller), "message_sid": sid})
    return {"status": "sent", "message_sid": sid}


@tool("switchLanguage", timeout_s=5.0, instant=True)
async def switch_language(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    """Switch speech and transcription to one of the use case's ``languages`` (its schema's
    ``enum`` lists them); the voice for the language comes from the TwiML ``<Language>``.
    Under ``multi`` transcription only the speech switches: Deepgram already hears every
    language, and a fixed transcription language would stop it hearing the others (a caller
    switching back would be transcribed as the wrong language)."""
    code = str(args.get("language", "")).strip()
    if not code:
        raise ValueError("language is empty: give one of the language codes offered")
    relay = ctx.use_case.relay
    hearing = str(relay.get("transcriptionLanguage") or relay.get("language") or "")
    if hearing.lower() == "multi":
        await ctx.send(Language(tts_language=code))
    else:
        await ctx.send(Language(tts_language=code, transcription_language=code))
    return {"status": "switched", "language": code,
            "instruction": f"From now on, reply only in the language {code}."}


def switch_language_problem(uc: UseCase, declaration: ToolDeclaration
                            ) -> tuple[str, str] | None:
    """A code in the schema's ``enum`` with no ``languages`` entry of exactly that code: the
    model may switch to it, and the call then speaks it with no declared voice (no
    ``<Language>`` for Twilio to take it from) and its lines in another language. Found as the
    file loads, not by a caller. Returns the key path under ``input_schema`` and the problem."""
    language = (declaration.input_schema.get("properties") or {}).get("language")
    codes = language.get("enum") if isinstance(language, dict) else None
    if not isinstance(codes, list):
        return None
    declared = {entry.code.lower(): entry.code for entry in uc.languages}
    missing = [code for code in codes if str(code).lower() not in declared]
    if not missing:
        return None
    return ("properties.language.enum",
            f"{declaration.name} may switch to {missing}, which have no entry under "
            f"languages (declared: {sorted(declared.values())}); add one for each (its "
            "voice and lines: config/README.md), or drop the code from the enum")
