"""Twilio's reconnect (``/action``, SessionStatus=failed) while the store is slow but answering
(every read and write ~3.5 s, under DynamoDB's 4 s read timeout), its write-behind queue
seconds behind, on the virtual clock, through the webhook itself.

``/action`` used to flush the call's queued writes for the whole FLUSH_TIMEOUT_S (5 s) and
only then read the session and renew it: a read, the answer's read and its mark (2 s at
most), the renewal (2 s at most) came after, and the answer went out 16 s after Twilio's
request: Twilio gives up on a webhook at 15 s and the call ends. The flush now has a share of
the deadline (``web.RECONNECT_FLUSH_S``), and renew waits for the call's writes with the rest.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any, cast

import pytest
import trio
from quart import Response
from quart_trio import QuartTrio

import voiceagent.store.records as store_records
from tests.fakes import FakeLLM
from tests.test_sessions_elsewhere import CALL_SID, USE_CASE, CountingStore, _setup
from voiceagent import signature
from voiceagent.app.reconnect_outcomes import ReconnectOutcomes
from voiceagent.app.relay_answers import RelayAnswers
from voiceagent.app.runtime import Runtime
from voiceagent.app.sessions import TOKEN_PARAMETER, Sessions
from voiceagent.app.web import action_webhook
from voiceagent.catalog import Catalog
from voiceagent.settings import Settings
from voiceagent.store import config_records
from voiceagent.store.base import Store
from voiceagent.store.write_behind import WriteBehind
from voiceagent.tools.registry import ToolRegistry

AUTH_TOKEN = "slow-store-auth-token"
PUBLIC_URL = "https://voice.example.invalid"
STORE_S = 3.5                    # each read and write, once the store turns slow
TWILIO_GIVES_UP_S = 15.0
OTHER_CALL = "CA" + "1" * 32


class SlowStore(CountingStore):
    """Every call takes ``delay_s`` (0 until the test turns the store slow), then answers."""

    def __init__(self) -> None:
        super().__init__()
        self.delay_s = 0.0

    async def get(self, pk: str, sk: str) -> dict[str, Any] | None:
        await trio.sleep(self.delay_s)
        return await super().get(pk, sk)

    async def query(self, pk: str, sk_prefix: str = "", **kw: Any) -> list[dict[str, Any]]:
        await trio.sleep(self.delay_s)
        return await super().query(pk, sk_prefix, **kw)

    async def put(self, item: dict[str, Any]) -> None:
        await trio.sleep(self.delay_s)
        await super().put(item)

    async def put_many(self, items: Sequence[dict[str, Any]]) -> None:
        await trio.sleep(self.delay_s)                  # one request for the batch
        for item in items:
            await super().put(item)

    async def put_unless_newer(self, item: dict[str, Any], version: str, *,
                               legacy: str | None = None) -> bool:
        await trio.sleep(self.delay_s)
        return await super().put_unless_newer(item, version, legacy=legacy)

    async def put_new(self, item: dict[str, Any]) -> bool:
        await trio.sleep(self.delay_s)
        return await super().put_new(item)

    async def put_if_newer(self, item: dict[str, Any], version: str, *,
                           legacy: str | None = None) -> bool:
        await trio.sleep(self.delay_s)
        return await super().put_if_newer(item, version, legacy=legacy)


def _runtime(store: SlowStore, **more: str) -> Runtime:
    """One process: its sessions, write-behind queue and ``/action``'s parts over ``store``,
    sharing one catalog (warm, as after the call's ``/twiml``)."""
    settings = Settings.model_validate({
        "STACK_USE_CASE": USE_CASE.name, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PUBLIC_URL": PUBLIC_URL, **more})
    writer = WriteBehind(cast(Store, store), jitter=lambda: 1.0)
    catalog = Catalog(cast(Store, store), ToolRegistry())
    sessions = Sessions(settings=settings, store=cast(Store, store), catalog=catalog,
                        writer=writer)
    return Runtime(settings=settings, store=cast(Store, store), llm=FakeLLM([]),
                   registry=ToolRegistry(), writer=writer, catalog=catalog, sessions=sessions,
                   relay_answers=RelayAnswers(settings=settings, store=cast(Store, store),
                                              writer=writer),
                   reconnects=ReconnectOutcomes(cast(Store, store)))


async def _post_action(runtime: Runtime, form: dict[str, str]) -> tuple[int, str]:
    """Twilio's signed ``/action``, through quart-trio's in-memory client (no socket: the
    virtual clock stays exact)."""
    app = QuartTrio(__name__)

    async def on_action() -> Response:
        return await action_webhook(runtime)

    app.add_url_rule("/action", "action", on_action, methods=["POST"])
    url = PUBLIC_URL + "/action"
    response = await app.test_client().post(
        "/action", form=form, headers={"X-Twilio-Signature": signature.sign(
            AUTH_TOKEN, url, form)})
    return response.status_code, await response.get_data(as_text=True)


FAILED = {"CallSid": CALL_SID, "SessionStatus": "failed", "CallStatus": "in-progress",
          "SessionId": "VX" + "a" * 32, "ErrorCode": "64105"}


def _behind(writer: WriteBehind, batches: int) -> None:
    """The queue is behind: another call's writes of one key, each a batch of its own."""
    for n in range(batches):
        writer.submit(store_records.chat_item(OTHER_CALL, 1_000, 0, {
            "role": "user", "content": [{"text": f"another call {n}"}]}, {}, 3600),
            call_sid=OTHER_CALL)


async def _socket_fails(sessions: Sessions, writer: WriteBehind) -> None:
    """The call's socket here hands its last message to the queue and ends, as ``run_call``
    does: its relay session failed, and Twilio asks ``/action`` at once."""
    writer.submit(store_records.chat_item(CALL_SID, 1_001, 1, {
        "role": "assistant", "content": [{"text": "Your table is booked."}]}, {}, 3600),
        call_sid=CALL_SID)
    await sessions.socket_ended(CALL_SID)
    sessions.release(CALL_SID)


def _reconnect_token(status: int, answer: str) -> str:
    """The fresh token of a reconnect's TwiML; fails on the apology or an error."""
    assert status == 200, answer
    relay = ET.fromstring(answer).find("Connect/ConversationRelay")
    assert relay is not None, answer
    (token,) = [p.attrib["value"] for p in relay.findall("Parameter")
                if p.attrib["name"] == TOKEN_PARAMETER]
    return token


async def _slow_store() -> SlowStore:
    store = SlowStore()
    await store.put(config_records.use_case_item(USE_CASE))
    return store


def _outcomes(logged: list[logging.LogRecord]) -> list[str]:
    return [vars(r)["outcome"] for r in logged if r.getMessage() == "reconnect answered"]


async def _reconnected(runtime: Runtime) -> tuple[float, str]:
    """Twilio's ``/action`` for the failed socket: how long the answer took, and its fresh
    token, whose socket is then served here."""
    started = trio.current_time()
    answer = await _post_action(runtime, FAILED)
    answered_in = trio.current_time() - started
    token = _reconnect_token(*answer)
    await runtime.sessions.resolve(_setup(token))
    return answered_in, token


async def claimed_here(runtime: Runtime, nursery: trio.Nursery) -> store_records.CallSession:
    """The write-behind and the sessions running in ``nursery``, and a call whose socket set
    up and claimed it on this task, its claim in the store: its session."""
    sessions, writer = runtime.sessions, runtime.writer
    await nursery.start(writer.run)
    await nursery.start(sessions.run)
    session = await sessions.prepare({"CallSid": CALL_SID, "From": "+15555550100",
                                      "To": "+15555550199"})
    await sessions.resolve(_setup(session.token))
    assert await writer.flush(timeout_s=1)             # the claim landed
    return session


async def _reconnect_after_a_claim(store_s: float, batches_behind: int,
                                   **settings: str) -> tuple[float, str, str]:
    """A call's socket claims here, the store turns slow (``store_s`` a call) with the queue
    ``batches_behind`` other writes behind, the socket fails and Twilio asks ``/action``:
    how long the answer took, the first token and the reconnect's."""
    store = await _slow_store()
    runtime = _runtime(store, **settings)
    sessions, writer = runtime.sessions, runtime.writer
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            session = await claimed_here(runtime, nursery)
            store.delay_s = store_s
            _behind(writer, batches_behind)
            await _socket_fails(sessions, writer)
            answered_in, token = await _reconnected(runtime)
            nursery.cancel_scope.cancel()
    return answered_in, session.token, token


async def test_a_reconnect_with_the_store_slow_is_answered_before_twilio_gives_up(
        autojump_clock: Any, records: list[logging.LogRecord]) -> None:
    """The flush of FLUSH_TIMEOUT_S first: answered at 16 s, after Twilio gave up."""
    answered_in, first, token = await _reconnect_after_a_claim(STORE_S, 2)  # 7 s behind
    assert token != first
    assert answered_in < TWILIO_GIVES_UP_S
    assert answered_in == pytest.approx(13.5)     # 2.5 + 3.5 + 3.5 + 2 + 2
    assert _outcomes(records) == ["resumed_partial"]   # its last message still queued


async def test_the_call_s_writes_landing_after_the_flush_s_share_still_make_it_complete(
        autojump_clock: Any, records: list[logging.LogRecord]) -> None:
    """A store less slow (0.4 s a call): the call's last message and its socket's "written"
    mark land at 4 s and 4.4 s, after the first flush's share (2.5 s) and the reads (3.7 s),
    before the deadline (5 s). The renewal waits for them: the reconnect resumes with
    everything, as when the flush had the whole deadline, not ``resumed_partial``."""
    answered_in, _, _ = await _reconnect_after_a_claim(0.4, 10)   # 4 s of writes ahead
    assert answered_in < TWILIO_GIVES_UP_S
    assert _outcomes(records) == ["resumed"]


async def test_a_long_flush_timeout_does_not_stretch_a_reconnect_past_twilio(
        autojump_clock: Any, records: list[logging.LogRecord]) -> None:
    """FLUSH_TIMEOUT_S is also the stop's wait for the store (up to 120 s): a reconnect's
    waits took all of it, and with the store slow the answer came after Twilio gave up."""
    answered_in, _, _ = await _reconnect_after_a_claim(STORE_S, 6, FLUSH_TIMEOUT_S="60")
    assert answered_in < TWILIO_GIVES_UP_S
    assert _outcomes(records) == ["resumed_partial"]


async def test_a_session_still_queued_here_is_reconnected_not_apologised_for(
        autojump_clock: Any, records: list[logging.LogRecord]) -> None:
    """The store was slow as the call began: ``/twiml`` gave up on its session write after
    2 s and queued it, the socket's claim too, behind 21 s of other writes. ``/action``
    found no session in the store after its flush and answered the apology: the caller was
    hung up on while this process held the call's session. It reads the queued one now."""
    store = await _slow_store()
    runtime = _runtime(store)
    sessions, writer = runtime.sessions, runtime.writer
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(sessions.run)
            await runtime.catalog.use_case(USE_CASE.name)      # warm, as on a busy server
            store.delay_s = STORE_S
            _behind(writer, 10)                                # 35 s of writes ahead
            session = await sessions.prepare({"CallSid": CALL_SID, "From": "+15555550100",
                                              "To": "+15555550199"})
            await sessions.resolve(_setup(session.token))
            await _socket_fails(sessions, writer)
            assert await store.get(CALL_SID, store_records.SESSION_SK) is None
            answered_in, _ = await _reconnected(runtime)
            nursery.cancel_scope.cancel()
    assert answered_in < TWILIO_GIVES_UP_S
    assert _outcomes(records) == ["resumed_partial"]

