"""``voiceagent check``: Twilio's side. The account SID and auth token are accepted by
Twilio's REST API, and, given a number, its voice webhook is ``PUBLIC_URL/twiml`` with POST.

Requests go through the twilio package's HTTP client (blocking ``requests``, in a worker
thread with the check's limiter and a timeout), to TWILIO_API_BASE_URL when it is set (a
local fake in tests), else to https://api.twilio.com. Only the account and the number are
read; nothing is changed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping
from functools import partial
from typing import Any

import trio

from voiceagent.app.check_steps import CheckContext, Outcome, failed, passed, skipped
from voiceagent.threads import run_blocking

TWILIO_API = "https://api.twilio.com"
TWILIO_HTTP_TIMEOUT_S = 10.0
TWILIO_TIMEOUT_S = 15.0
ACCOUNT_INFO = "Twilio console > Account Dashboard > Account Info"
TWILIO_NETWORK_ADVICE = ("check the network path to api.twilio.com (HTTPS_PROXY / NO_PROXY); "
                         "status.twilio.com shows Twilio's incidents")


class TwilioApi:
    """GETs on Twilio's REST API as one account, each in a worker thread."""

    def __init__(self, account_sid: str, auth_token: str, base_url: str | None,
                 limiter: trio.CapacityLimiter) -> None:
        self.account_sid = account_sid
        self._auth_token = auth_token
        self._base_url = (base_url or TWILIO_API).rstrip("/")
        self._limiter = limiter

    async def get(self, path: str, params: Mapping[str, str] | None = None
                  ) -> tuple[int, dict[str, Any]]:
        """Status and JSON body (empty when it is not JSON). Raises ``OSError`` (requests'
        errors are OSErrors) when Twilio cannot be reached, ``trio.TooSlowError`` after
        TWILIO_TIMEOUT_S."""
        with trio.fail_after(TWILIO_TIMEOUT_S):
            return await run_blocking(partial(self._get, self._base_url + path, params),
                                      limiter=self._limiter, abandon_on_cancel=True)

    def _get(self, url: str, params: Mapping[str, str] | None) -> tuple[int, dict[str, Any]]:
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        http = TwilioHttpClient(timeout=TWILIO_HTTP_TIMEOUT_S)
        try:
            client = Client(self.account_sid, self._auth_token, http_client=http)
            response = client.request("GET", url, params=dict(params or {}))
        finally:
            if http.session is not None:
                http.session.close()
        try:
            body = json.loads(response.text)
        except ValueError:
            body = {}
        return int(response.status_code), body if isinstance(body, dict) else {}


async def twilio_checks(ctx: CheckContext) -> list[Outcome]:
    settings, number = ctx.settings, ctx.number
    number_name = f"Twilio number {number}"
    values = {"TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
              "TWILIO_AUTH_TOKEN": settings.twilio_auth_token}
    missing = [name for name, value in values.items() if not value]
    if missing:
        advice = (f"set {' and '.join(missing)} ({ACCOUNT_INFO}) to check the credentials "
                  "and, with --number, the number's voice webhook")
        if number is not None:
            return [failed(number_name, f"cannot look it up: {', '.join(missing)} not set",
                           advice)]
        return [skipped("Twilio", f"{', '.join(missing)} not set", advice)]
    api = TwilioApi(str(settings.twilio_account_sid), str(settings.twilio_auth_token),
                    settings.twilio_api_base_url, ctx.limiter)
    outcomes = [await _reach("Twilio credentials", _account(api))]
    if number is not None:
        if outcomes[0].status != "pass":
            outcomes.append(skipped(number_name, "needs working Twilio credentials, see above"))
        else:
            outcomes.append(await _reach(number_name, _number(api, number,
                                                                settings.public_url)))
    return outcomes


async def _reach(name: str, check: Awaitable[Outcome]) -> Outcome:
    """Await ``check``, turning network failures into the Outcome ``name``."""
    try:
        outcome = await check
    except trio.TooSlowError:
        return failed(name, f"Twilio did not answer within {TWILIO_TIMEOUT_S:g} s",
                      TWILIO_NETWORK_ADVICE)
    except OSError as err:
        return failed(name, f"cannot reach Twilio's API: {type(err).__name__}: "
                            f"{str(err)[:200]}",
                      TWILIO_NETWORK_ADVICE)
    return outcome


async def _account(api: TwilioApi) -> Outcome:
    name, sid = "Twilio credentials", api.account_sid
    status, body = await api.get(f"/2010-04-01/Accounts/{sid}.json")
    if status == 200:
        state = body.get("status")
        if state != "active":
            return failed(name, f"account {sid} is {state}",
                          "reactivate it (Twilio console > Admin > Account management), or "
                          "set the SID and auth token of an active account")
        return passed(name, f"account {sid} ({body.get('friendly_name', '')}) is active")
    if status in (401, 403):
        return failed(name, f"Twilio refused TWILIO_ACCOUNT_SID={sid} with this "
                            f"TWILIO_AUTH_TOKEN (HTTP {status}{_code(body)})",
                      f"set TWILIO_AUTH_TOKEN to the account's Auth Token ({ACCOUNT_INFO}); "
                      "after a rotation only the new primary token works",
                      "the same token checks the signature of every webhook: with a wrong "
                      "one every call is refused")
    if status == 404:
        return failed(name, f"no account {sid} for these credentials",
                      f"check TWILIO_ACCOUNT_SID: it starts with AC ({ACCOUNT_INFO})")
    return failed(name, f"Twilio answered HTTP {status}{_code(body)}: "
                        f"{body.get('message', '')}", TWILIO_NETWORK_ADVICE)


async def _number(api: TwilioApi, number: str, public_url: str | None) -> Outcome:
    name = f"Twilio number {number}"
    status, body = await api.get(
        f"/2010-04-01/Accounts/{api.account_sid}/IncomingPhoneNumbers.json",
        {"PhoneNumber": number})
    if status != 200:
        return failed(name, f"Twilio answered HTTP {status}{_code(body)}: "
                            f"{body.get('message', '')}", TWILIO_NETWORK_ADVICE)
    found = [n for n in body.get("incoming_phone_numbers") or []
             if isinstance(n, dict) and n.get("phone_number") == number]
    if not found:
        return failed(name, f"not a number of account {api.account_sid}",
                      "Twilio console > Phone Numbers > Manage > Active numbers lists the "
                      "account's numbers: check --number and TWILIO_ACCOUNT_SID")
    return webhook_outcome(name, number, found[0], public_url)


def webhook_outcome(name: str, number: str, resource: Mapping[str, Any],
                    public_url: str | None) -> Outcome:
    """Whether an IncomingPhoneNumber sends calls to ``PUBLIC_URL/twiml`` with POST."""
    want = f"{public_url}/twiml" if public_url else None
    have_url = str(resource.get("voice_url") or "")
    have_method = str(resource.get("voice_method") or "POST").upper()
    console = (f"Twilio console > Phone Numbers > Manage > Active numbers > {number} > Voice "
               f"configuration: \"A call comes in\" = Webhook, URL "
               f"{want or '<PUBLIC_URL>/twiml'}, HTTP POST; then Save configuration")
    if want is None:
        return failed(name, f"PUBLIC_URL is not set, so the webhook ({have_url or 'none'}) "
                            "cannot be compared",
                      "set PUBLIC_URL to the https:// base URL Twilio reaches this service "
                      "at", console)
    application = resource.get("voice_application_sid")
    if application:
        return failed(name, f"calls go to the TwiML App {application}, not to a webhook",
                      console)
    problems = []
    if have_url != want:
        problems.append(f"URL is {have_url or 'not set'}, expected {want}")
    if have_method != "POST":
        problems.append(f"method is {have_method}, expected POST")
    if problems:
        return failed(name, "voice webhook " + "; ".join(problems), console)
    return passed(name, f"voice webhook is {want} (POST)")


def _code(body: Mapping[str, Any]) -> str:
    code = body.get("code")
    return f", error {code}" if code else ""
