"""``/twiml``'s store reads end in time for Twilio (``Sessions.prepare``), on the virtual clock,
through the webhook itself (signed, as Twilio sends it).

``/twiml`` reads whether the CallSid was answered before (a Query), the caller's profile (a
GetItem) and, once this process's copy is a minute old, the use case, then writes the session
(SESSION_WRITE_S at most). Each DynamoDB read may take two tries of its 4 s read timeout
(``dynamodb_calls.READ_ATTEMPTS``), so with the store stalled the reads alone ran to ~16 s,
past Twilio's 15 s; with every read and write hanging, never answered. They now end by
PREPARE_READS_S, and the call is refused as with the store down (the fallback URL).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from quart import Response
from quart_trio import QuartTrio

from tests.test_action_reads_in_time import STALLED_S, ReadsSlower
from tests.test_reconnect_with_a_slow_store import AUTH_TOKEN, PUBLIC_URL, _runtime
from tests.test_sessions_elsewhere import CALL_SID, USE_CASE
from voiceagent import signature
from voiceagent.app.action_reads import ANSWER_S
from voiceagent.app.runtime import Runtime
from voiceagent.app.sessions import PREPARE_READS_S
from voiceagent.app.web import twiml_webhook
from voiceagent.store import config_records
from voiceagent.store.records import SESSION_SK
from voiceagent.usecases import Profile

pytestmark = pytest.mark.timeout(60)

CALLER = "+15555550100"
FORM = {"CallSid": CALL_SID, "From": CALLER, "To": "+15555550199", "AccountSid": "AC" + "0" * 32}


async def _post_twiml(runtime: Runtime) -> tuple[float, int, str]:
    """Twilio's signed ``/twiml``, through quart-trio's in-memory client (no socket: the
    virtual clock stays exact): how long the answer took, its status and body."""
    app = QuartTrio(__name__)

    async def on_twiml() -> Response:
        return await twiml_webhook(runtime)

    app.add_url_rule("/twiml", "twiml", on_twiml, methods=["POST"])
    started = trio.current_time()
    response = await app.test_client().post("/twiml", form=FORM, headers={
        "X-Twilio-Signature": signature.sign(AUTH_TOKEN, PUBLIC_URL + "/twiml", FORM)})
    return (trio.current_time() - started, response.status_code,
            await response.get_data(as_text=True))


async def _store(reads_s: float) -> ReadsSlower:
    store = ReadsSlower()
    await store.put(config_records.use_case_item(USE_CASE))
    await store.put(config_records.profile_item(Profile(phone=CALLER, first_name="Ada")))
    store.reads_s = reads_s
    return store


async def test_a_twiml_with_the_stores_reads_stalled_is_refused_in_time(
        autojump_clock: Any, records: list[logging.LogRecord]) -> None:
    store = await _store(STALLED_S)
    with trio.fail_after(2 * STALLED_S):
        answered_in, status, answer = await _post_twiml(_runtime(store, OVER_CAPACITY="503"))
    assert answered_in == pytest.approx(PREPARE_READS_S)
    assert status == 503, answer                    # Twilio's fallback URL takes over
    refused = [r for r in records
               if r.getMessage() == "store unavailable while preparing a call: refused"]
    assert len(refused) == 1
    assert f"within {PREPARE_READS_S:g} s" in str(refused[0].__dict__["error"])
    assert await ReadsSlower.get(store, CALL_SID, SESSION_SK) is None   # nothing minted


async def test_a_twiml_with_slow_reads_within_the_bound_prepares_the_call(
        autojump_clock: Any) -> None:
    """Reads of 3.5 s each, as a read that timed out once might take: all three in, the
    session written, the answer before Twilio's time is up."""
    store = await _store(3.5)
    with trio.fail_after(2 * STALLED_S):
        answered_in, status, answer = await _post_twiml(_runtime(store))
    assert status == 200, answer
    assert "<ConversationRelay" in answer
    assert 3 * 3.5 <= answered_in < ANSWER_S
    stored = await ReadsSlower.get(store, CALL_SID, SESSION_SK)
    assert stored is not None
    assert (stored["useCase"], stored["userContext"]["firstName"]) == (USE_CASE.name, "Ada")
