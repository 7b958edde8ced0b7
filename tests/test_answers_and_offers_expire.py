"""What a process keeps for PENDING_TTL_S, and what keeping it costs each request.

``RelayAnswers`` remembers each failed relay session ``/action`` answered (a replay racing
the store's mark is refused in memory), and every ``/action`` once scanned all of them twice,
to prune and to count the call's earlier answers: ~100 us each after a mass reconnect of
1000 calls. ``SessionOffers`` holds each session ``/twiml`` (or a renewal) minted until
its socket comes, and was pruned only by the next one: on a quiet process it stayed, with
the caller's profile in its prompt, until the next call. On the virtual clock.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any, cast

import pytest
import trio

import voiceagent.app.relay_answers as relay_answers_module
import voiceagent.store.records as records
from tests.fakes import MemoryStore
from tests.test_reconnect_limit_while_renewals_queued import _held_store
from tests.test_sessions_elsewhere import (
    CALL_SID,
    _prepare_on,
    _process,
    _store_with_use_case,
)
from voiceagent.app.relay_answers import ActionReplayed, RelayAnswers
from voiceagent.app.session_offers import PENDING_TTL_S
from voiceagent.settings import Settings
from voiceagent.store.base import Store


async def test_an_answer_is_remembered_119_s_and_forgotten_by_121_s(
        autojump_clock: Any) -> None:
    """The store takes no mark (its claims hang, so each is queued, and the queue is never
    drained): what refuses a replay, and counts the call's earlier answers, is this
    process's memory alone."""
    store = await _held_store()
    store.claims_held = True
    _, writer = _process(store)
    answers = RelayAnswers(settings=Settings(), store=cast(Store, store), writer=writer)
    start = trio.current_time()
    with trio.fail_after(PENDING_TTL_S * 3):
        assert await answers.answer_failure(CALL_SID, "VX1", 0) == 0
        await trio.sleep_until(start + PENDING_TTL_S - 1)
        with pytest.raises(ActionReplayed):
            await answers.answer_failure(CALL_SID, "VX1", 0)
        await trio.sleep_until(start + PENDING_TTL_S + 1)
        assert await answers.answer_failure(CALL_SID, "VX2", 0) == 0   # VX1 not counted
        assert await answers.answer_failure(CALL_SID, "VX1", 0) == 1   # nor refused
    assert await store.query(CALL_SID, records.RELAY_PREFIX) == []    # as intended


def _lines_run_in(module_file: str) -> tuple[list[int], Any]:
    """A trace function counting the lines run in ``module_file`` (a loop's every turn is
    one): the work a request does there, whatever structure it keeps."""
    count = [0]

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != module_file:
            return None
        if event == "line":
            count[0] += 1
        return trace

    return count, trace


async def _lines_of_one_answer(kept: int) -> int:
    """Lines ``answer_failure`` runs for a new call's failed session with ``kept`` answers
    of other calls remembered (none expired yet)."""
    answers = RelayAnswers(settings=Settings(), store=cast(Store, MemoryStore()),
                           writer=_process(MemoryStore())[1])
    for n in range(kept):
        await answers.answer_failure(f"CA{n:032x}", f"VX{n}", 0)
    count, trace = _lines_run_in(relay_answers_module.__file__)
    before = sys.gettrace()
    sys.settrace(trace)
    try:
        assert await answers.answer_failure("CA" + "f" * 32, "VX" + "f" * 32, 0) == 0
    finally:
        sys.settrace(before)
    return count[0]


async def test_an_action_s_work_does_not_grow_with_the_answers_kept(
        autojump_clock: Any) -> None:
    """Answers are dropped from the front as they expire and looked up by CallSid: the
    1001st ``/action`` runs what the 11th does (each kept answer cost it two loop turns)."""
    with trio.fail_after(60):
        few = await _lines_of_one_answer(10)
        many = await _lines_of_one_answer(1000)
    assert few > 0
    assert many == few


async def test_a_minted_session_whose_socket_never_came_is_forgotten_with_no_later_call(
        autojump_clock: Any) -> None:
    """No ``/twiml`` or ``/action`` comes after it: ``Sessions.run`` forgets each offer at
    PENDING_TTL_S, one after the other."""
    store = await _store_with_use_case()
    sessions, _ = _process(store)
    other = "CA" + "e" * 32
    with trio.fail_after(PENDING_TTL_S * 3):
        async with trio.open_nursery() as nursery:
            await nursery.start(sessions.run)
            start = trio.current_time()
            await _prepare_on(sessions)
            await trio.sleep_until(start + 60)
            await sessions.prepare({"CallSid": other, "From": "+15555550101",
                                    "To": "+15555550199"})
            await trio.sleep_until(start + PENDING_TTL_S - 1)
            assert list(sessions._offers) == [CALL_SID, other]
            await trio.sleep_until(start + PENDING_TTL_S + 1)
            assert list(sessions._offers) == [other]
            await trio.sleep_until(start + 60 + PENDING_TTL_S + 1)
            assert not sessions._offers
            nursery.cancel_scope.cancel()
