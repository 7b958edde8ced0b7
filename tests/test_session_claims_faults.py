"""A session's mint, claim and renewal when DynamoDB's network misbehaves once: a write
throttled (ProvisionedThroughputExceeded, answered at once), or applied with its answer lost
(the connection reset on the way back). Two processes over one moto table, B's store behind
``dynamodb_front``, which passes every request to moto and so lets the table decide every
condition. Each such write had one attempt: a throttled claim of a session minted on A was
refused as "the store unavailable" (Twilio's reconnect the only way on), and a claim that
had landed, its answer lost, was refused too, its token spent in the store for nobody. The
store decides within SESSION_WRITE_S: the write is tried again, and a resent write of an
item already there counts as won only when that item is its own (the claim's nonce). And
``/twiml``'s reads, faulted once: tried a second time, as botocore's client tried them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import voiceagent.app.sessions as sessions_module
import voiceagent.store.config_records as config_records
import voiceagent.store.records as records
from actors.call import CallRejected
from tests.dynamodb_front import Fault, Front, running_front
from tests.dynamodb_support import aws_env, isolate_env, moto_endpoint, open_test_table
from tests.sessions_support import sessions_on, setup_message
from voiceagent.app.session_claims import (
    CLAIM_ELSEWHERE_S,
    CLAIM_NONCE,
    SESSION_WRITE_S,
    SessionClaims,
)
from voiceagent.app.sessions import Sessions
from voiceagent.app.socket_marks import SOCKET_CLOSED_GRACE_S
from voiceagent.errors import StoreError
from voiceagent.relay.protocol import Setup
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.store.dynamodb import open_dynamodb_store
from voiceagent.store.write_behind import WriteBehind
from voiceagent.usecases import Profile, UseCase

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.timeout(60)

CALL_SID = "CA" + "6" * 32
CALLER = "+15555550100"
USE_CASE = UseCase(name="faultsUseCase", prompt="Be brief. <<USER_CONTEXT>>",
                   relay={"welcomeGreeting": "Hello."})
FORM = {"CallSid": CALL_SID, "From": CALLER, "To": "+15555550199"}


class Two:
    def __init__(self, a: Store, b: Store, front: Front) -> None:
        self.a, self.b, self.front = a, b, front
        self.sessions_a, self.writer_a = _process(a)
        self.sessions_b, self.writer_b = _process(b)


FAULTS = [(Fault.THROTTLE, True), (Fault.LOSE_ANSWER, True), (Fault.LOSE_ANSWER, False)]
FAULT_IDS = ["throttled", "answer-lost-resent-by-the-client", "answer-lost-on-a-new-connection"]


@pytest.fixture(params=[True], ids=["kept-alive"])
async def two(request: pytest.FixtureRequest, tmp_path: Path, moto_endpoint: str,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Two]:
    """A straight to moto, B through the front; the use case and the caller in the table.
    Parametrized indirectly with whether the front keeps B's connections alive."""
    monkeypatch.setattr(sessions_module, "MINTED_ELSEWHERE_WAITS_S", ())     # one read
    isolate_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
    async with open_test_table(moto_endpoint) as table, running_front(
            moto_endpoint, keep_alive=request.param) as front:
        settings = Settings.from_env(STORE="dynamodb", TABLE_NAME=table.table_name,
                                     VALIDATE_SIGNATURES=False)
        async with open_dynamodb_store(settings, limiter=trio.CapacityLimiter(4)) as a:
            monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", front.url)
            async with open_dynamodb_store(settings, limiter=trio.CapacityLimiter(4)) as b:
                await a.put(config_records.use_case_item(USE_CASE))
                await a.put(config_records.profile_item(Profile(phone=CALLER, first_name="Ada")))
                yield Two(a, b, front)


def _process(store: Any) -> tuple[Sessions, WriteBehind]:
    return sessions_on(store, USE_CASE.name)


def _setup(token: str) -> Setup:
    return setup_message(CALL_SID, token)


async def _stored(store: Store) -> dict[str, object]:
    item = await store.get(CALL_SID, records.SESSION_SK)
    assert item is not None
    return item


@pytest.mark.parametrize(("fault", "two"), FAULTS, ids=FAULT_IDS, indirect=["two"])
async def test_a_claim_of_a_session_minted_elsewhere_survives_one_fault(
        two: Two, fault: Fault) -> None:
    """Most sockets reach a process that did not mint their session; one throttled or
    answer-lost PutItem no longer refuses the caller's socket: B's claim is decided by the
    table, B's own, and nothing is left undecided."""
    with trio.fail_after(30):
        session = await two.sessions_a.prepare(FORM)
        two.front.faults["PutItem"].append(fault)
        plan = await two.sessions_b.resolve(_setup(session.token))
        stored = await _stored(two.a)
    assert plan.call_sid == CALL_SID
    assert (stored["token"], stored["version"]) == ("", 1)
    assert two.front.seen.count(("PutItem", fault)) == 1
    assert two.writer_b.statistics().undecided == 0


@pytest.mark.parametrize(("fault", "two"), FAULTS, ids=FAULT_IDS, indirect=["two"])
async def test_a_mint_and_a_renewal_survive_one_fault(two: Two, fault: Fault) -> None:
    """B's ``/twiml`` and B's renewal, each PutItem faulted once: decided by the table
    (the mint's token, then the renewal's, stored), not left to B's word and its queue."""
    with trio.fail_after(30):
        two.front.faults["PutItem"].append(fault)
        minted = await two.sessions_b.prepare(FORM)
        assert (await _stored(two.a))["token"] == minted.token
        await two.sessions_a.resolve(_setup(minted.token))
        await two.sessions_a.socket_ended(CALL_SID)
        two.sessions_a.release(CALL_SID)
        await two.writer_a.flush(timeout_s=0)                # never drained: nothing waits
        await two.a.put(records.socket_mark_item(records.SOCKET_WRITTEN_PREFIX, CALL_SID, 0,
                                                 1.0, 3600))
        claimed = records.session_from_item(await _stored(two.b))
        two.front.faults["PutItem"].append(fault)
        renewal = await two.sessions_b.renew(claimed)
        stored = await _stored(two.a)
    assert (stored["token"], stored["generation"]) == (renewal.session.token, 1)
    assert two.front.seen.count(("PutItem", fault)) == 2
    assert two.writer_b.statistics().undecided == 0


@pytest.mark.parametrize("two", [True, False], ids=["kept-alive", "new-connections"],
                         indirect=True)
async def test_a_resent_claim_that_lost_to_another_process_stays_lost(two: Two) -> None:
    """B's claim goes out after A's landed, and its answer (refused) is lost: sent again,
    the table's item is A's claim, not B's, so B has lost, and A's claim stands."""
    with trio.fail_after(30):
        session = await two.sessions_a.prepare(FORM)
        await two.sessions_a.resolve(_setup(session.token))
        a_claim = await _stored(two.a)
        two.front.faults["PutItem"].append(Fault.LOSE_ANSWER)
        claims_b = SessionClaims(writer=two.writer_b, ttl_s=3600)
        assert not await claims_b.claim(session, in_memory=False)
        assert await _stored(two.a) == a_claim
    assert isinstance(a_claim[CLAIM_NONCE], str)
    assert two.front.seen.count(("PutItem", Fault.LOSE_ANSWER)) == 1
    with pytest.raises(CallRejected, match="does not match"):
        await two.sessions_b.resolve(_setup(session.token))


READ_FAULTS = [(Fault.THROTTLE, True), (Fault.LOSE_ANSWER, False)]
READ_FAULT_IDS = ["throttled", "answer-lost-on-a-new-connection"]


@pytest.mark.parametrize("operation", ["Query", "GetItem"])
@pytest.mark.parametrize(("fault", "two"), READ_FAULTS, ids=READ_FAULT_IDS, indirect=["two"])
async def test_a_twiml_whose_read_meets_one_fault_prepares_its_session(
        two: Two, fault: Fault, operation: str) -> None:
    """``/twiml`` reads before it answers: whether the CallSid was answered before (a Query)
    and the caller's profile (a GetItem). Each had one attempt from the event loop, and one
    throttled or lost session check refused the call (Twilio plays its error to the caller).
    Tried again, it is decided by the table, the caller known."""
    with trio.fail_after(30):
        two.front.faults[operation].append(fault)
        minted = await two.sessions_b.prepare(FORM)
        stored = await _stored(two.a)
    assert stored["token"] == minted.token
    assert minted.profile is not None
    assert two.front.seen.count((operation, fault)) == 1
    assert two.front.seen.count((operation, None)) >= 1          # the second try, answered


async def test_a_twiml_whose_session_check_fails_twice_refuses_the_call(two: Two) -> None:
    """Two tries, as botocore's client gave it: a store that stays unanswering is an error
    ``/twiml`` answers with, not a call prepared on a guess."""
    with trio.fail_after(30):
        two.front.faults["Query"].extend([Fault.THROTTLE] * 2)
        with pytest.raises(StoreError, match="ProvisionedThroughputExceeded"):
            await two.sessions_b.prepare(FORM)
        assert await two.b.get(CALL_SID, records.SESSION_SK) is None
    assert [seen for seen in two.front.seen if seen[0] == "Query"] == [
        ("Query", Fault.THROTTLE)] * 2


@pytest.mark.parametrize("b_drains_after_s", [None, 0.3], ids=["mark-there", "mark-late"])
async def test_a_claim_given_up_that_lands_later_is_told_apart(
        two: Two, b_drains_after_s: float | None) -> None:
    """B's claim of a session minted on A is held on its way past CLAIM_ELSEWHERE_S: B gives
    up and refuses the socket (1011), then DynamoDB applies the claim, spending the token
    for nobody. The ``/action`` (on A, its own queue flushed) found the session claimed
    and no mark of its socket's end, waited SOCKET_CLOSED_GRACE_S for marks no socket
    would write, and called the history incomplete (``resumed_partial``). B marks the
    refused socket under its claim's nonce: A renews as soon as that mark is there (None:
    before the renewal; else B's queue drains that long into it), the history complete."""
    with trio.fail_after(30):
        session = await two.sessions_a.prepare(FORM)
        two.front.faults["PutItem"].append(Fault.LATE)
        two.front.late_s = CLAIM_ELSEWHERE_S + 1.0      # past what B waits for its claim
        with pytest.raises(StoreError, match="did not decide"):
            await two.sessions_b.resolve(_setup(session.token))
        await two.front.landed_late.wait()
        stored = records.session_from_item(await _stored(two.a))
        assert stored.token == ""                # B's claim, landed: spent for nobody
        assert stored.claim
        async with trio.open_nursery() as nursery:
            await nursery.start(two.writer_a.run)       # A's /action flushes its queue
            assert await two.writer_a.flush(timeout_s=5)

            async def b_drains() -> None:
                await trio.sleep(b_drains_after_s or 0)
                await nursery.start(two.writer_b.run)

            if b_drains_after_s is None:
                await nursery.start(two.writer_b.run)
                assert await two.writer_b.flush(timeout_s=5)
            else:
                nursery.start_soon(b_drains)
            started = trio.current_time()
            renewal = await two.sessions_a.renew(stored)
            took = trio.current_time() - started
            nursery.cancel_scope.cancel()
    assert renewal.history_complete is True
    assert renewal.session.claim == ""                  # the renewal is nobody's claim
    assert took < (b_drains_after_s or 0) + SOCKET_CLOSED_GRACE_S / 2
    assert await two.a.get(CALL_SID, records.socket_refused_sk(0, stored.claim)) is not None


async def test_a_refused_mark_of_another_claim_vouches_for_nothing(two: Two) -> None:
    """A's socket claimed the call (its marks still queued on A); B's claim, given up,
    lost, and B marked its refused socket. That mark is not the stored claim's: the
    renewal waits for the served socket's marks as before, and finding none after the
    grace, says the history may miss its last messages."""
    with trio.fail_after(30):
        session = await two.sessions_a.prepare(FORM)
        await two.sessions_a.resolve(_setup(session.token))
        stored = records.session_from_item(await _stored(two.a))
        await two.b.put(records.socket_refused_item(CALL_SID, 0, "not-" + stored.claim,
                                                    1.0, 3600))
        started = trio.current_time()
        renewal = await two.sessions_b.renew(stored)
        took = trio.current_time() - started
    assert renewal.history_complete is False
    assert took >= SOCKET_CLOSED_GRACE_S


async def test_failing_claims_mark_the_store_down_and_an_answered_one_up(two: Two) -> None:
    """B serves only sockets of sessions minted on A: its claims are its only writes, never
    queued when undecided. Their failures counted nowhere, so B's ``store_down`` stayed 0
    through an outage and every claim was tried for SESSION_WRITE_S. Now failing claims
    mark the store down (the next is refused after one try), and an answered one up."""
    claims_b = SessionClaims(writer=two.writer_b, ttl_s=3600)
    with trio.fail_after(30):
        session = await two.sessions_a.prepare(FORM)
        two.front.faults["PutItem"].extend([Fault.THROTTLE] * 1000)
        with pytest.raises(StoreError, match="did not decide"):
            await claims_b.claim(session, in_memory=False)
        assert two.writer_b.statistics().store_down
        tried = two.front.seen.count(("PutItem", Fault.THROTTLE))
        started = trio.current_time()
        with pytest.raises(StoreError, match="did not decide"):
            await claims_b.claim(session, in_memory=False)
        took = trio.current_time() - started
        two.front.faults["PutItem"].clear()
        assert await claims_b.claim(session, in_memory=False)
    assert took < SESSION_WRITE_S / 4            # one try, not 2 s of them
    assert not two.writer_b.statistics().store_down
    assert tried > 1                    # the first claim was tried again, the store not down
