"""A reconnect counted ``resumed`` while the failed socket's last messages were still queued
on the process that served it. That socket claimed the call on A and failed with A's queue a
little behind (too little for A to write its "closed" mark ahead of the queue); Twilio's
``/action`` reached B, which found the token unclaimed and no "closed" mark, renewed at once
(as it must for a socket that never came) and counted the conversation complete. The count
is now decided once the renewal's waits are over, from the marks then in the store."""

from __future__ import annotations

from typing import Any, cast

import pytest
import trio

import voiceagent.app.session_claims as session_claims
import voiceagent.store.records as records
from tests.test_sessions_elsewhere import (
    CALL_SID,
    _a_socket_ends,
    _prepare_on,
    _setup,
    _two_processes,
)
from voiceagent.app.reconnect_outcomes import ReconnectOutcomes
from voiceagent.app.socket_marks import SOCKET_CLOSED_GRACE_S
from voiceagent.store.base import Store


async def _renew_on_b_and_count(a_drains_after_s: float | None,
                                monkeypatch: pytest.MonkeyPatch
                                ) -> tuple[list[str], bool | None]:
    """A's socket claims (the store throttled: its claim left to A's queue) and fails
    with its writes queued; B renews and counts. A's queue
    drains ``a_drains_after_s`` after B answered (None: A died with it). A gives up on
    its claim soon: the 2 s it tries would put its queue QUEUE_BEHIND_S behind, and its
    "closed" mark in the store."""
    monkeypatch.setattr(session_claims, "SESSION_WRITE_S", 0.1)
    store, a, a_writer, b = await _two_processes()
    counted: list[str] = []
    outcomes = ReconnectOutcomes(cast(Store, store))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(outcomes.run)
            session = await _prepare_on(a)
            store.throttled = True              # the store refuses A's claim for now:
            await a.resolve(_setup(session.token))  # served on A's word, the claim queued
            store.throttled = False
            await _a_socket_ends(a, a_writer, ["hello?", "Hi, how can I help?"])
            item = await store.get(CALL_SID, records.SESSION_SK)
            assert item is not None
            assert item["token"] == session.token       # what B reads: unclaimed
            deadline = trio.current_time() + 5
            renewed, complete = await b.renew(records.session_from_item(item),
                                              deadline=deadline)
            outcomes.resumed(renewed, complete, deadline,
                             lambda outcome, call_sid: counted.append(outcome))
            assert counted == []                        # not known yet: nothing counted
            if a_drains_after_s is not None:
                await trio.sleep(a_drains_after_s)
                await nursery.start(a_writer.run)
            await outcomes.settled()
            assert trio.current_time() >= deadline      # not before every wait was over
            nursery.cancel_scope.cancel()
    return counted, complete


async def test_the_socket_that_claimed_elsewhere_makes_it_partial(
        autojump_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    counted, complete = await _renew_on_b_and_count(a_drains_after_s=0.2,
                                                    monkeypatch=monkeypatch)
    assert complete is None             # B could not tell when it answered
    assert counted == ["resumed_partial"]


async def test_a_socket_that_never_claimed_leaves_it_resumed(
        autojump_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A's queue never drains (A died with it): as far as anyone can know, no socket
    claimed the call, as with a socket that never came."""
    counted, _ = await _renew_on_b_and_count(a_drains_after_s=None, monkeypatch=monkeypatch)
    assert counted == ["resumed"]


async def test_a_look_cut_short_by_shutdown_counts_what_was_known(autojump_clock: Any) -> None:
    store, a, _, b = await _two_processes()
    counted: list[str] = []
    outcomes = ReconnectOutcomes(cast(Store, store))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(outcomes.run)
            session = await _prepare_on(a)
            renewed, complete = await b.renew(session)
            outcomes.resumed(renewed, complete, trio.current_time(),
                             lambda outcome, call_sid: counted.append(outcome))
            await trio.sleep(SOCKET_CLOSED_GRACE_S / 2)
            nursery.cancel_scope.cancel()
    assert complete is None
    assert counted == ["resumed"]
