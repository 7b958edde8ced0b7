"""A session's mint, claim and renewal while DynamoDB refuses every connection (a port on
127.0.0.1 bound, never listening), on trio's virtual clock.

Each of these writes is tried again until SESSION_WRITE_S: a throttle or a reset is most
often gone at the next try. A store that refuses connections was tried again too, for the
whole 2 s of each write, while the write-behind queue had been failing against it for
longer; the store's own answer to that (its queue's retries) tells when it is back. Now a
write whose queue has failed for SESSION_WRITE_S already is tried once and left undecided at
once (as the store being down: served on this process's word and queued, or refused when
only the store can vouch); a queue whose failing is younger (a throttle, a blip) does not
cut the write's retries short.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing

import voiceagent.store.records as records
from tests.dynamodb_support import aws_env, isolate_env
from voiceagent.app.session_claims import SESSION_WRITE_S, SessionClaims
from voiceagent.errors import StoreError
from voiceagent.settings import Settings
from voiceagent.store.dynamodb import open_dynamodb_store
from voiceagent.store.write_behind import WriteBehind

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
CALL_SID = "CA" + "7" * 32
SESSION = records.CallSession(
    call_sid=CALL_SID, token="minted-token", use_case="downUseCase", system_prompt="Be brief.",
    model_id="model", caller="+15555550100", called="+15555550199", profile=None,
    greeting="Hello.", created_at=time.time())


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """Bound for the test (no other test can take it) and never listening: every connection
    to it is refused at once, as a store that is down refuses them."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def _timed(write: Awaitable[T]) -> tuple[T | str, float]:
    """What ``write`` gave (or the name of what it raised) and the virtual time it took."""
    started = trio.current_time()
    try:
        answer: T | str = await write
    except StoreError as err:
        answer = type(err).__name__
    return answer, trio.current_time() - started


async def test_a_store_the_queue_has_seen_refusing_for_session_write_s_gets_one_try(
        autojump_clock: trio.testing.MockClock, refusing_port: int, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue's first write is refused at 0.0: a mint at once is still tried for the
    whole SESSION_WRITE_S (the store may be throttling, or one connection was reset). From
    then on, the queue having failed that long, a claim of a session minted here is served
    on this process's word at once, a claim of one read from the store is refused at once,
    and a renewal is queued at once, each after one refused try; all undecided, and queued
    but for the refused claim (its socket's "refused" mark queued instead)."""
    isolate_env(monkeypatch, aws_env(f"http://127.0.0.1:{refusing_port}", tmp_path))
    settings = Settings.from_env(STORE="dynamodb", TABLE_NAME="storeDown",
                                 VALIDATE_SIGNATURES=False)
    async with open_dynamodb_store(settings, limiter=trio.CapacityLimiter(4),
                                   check_table=False) as store, trio.open_nursery() as nursery:
        writer = WriteBehind(store, jitter=lambda: 1.0)
        claims = SessionClaims(writer=writer, ttl_s=3600)
        with trio.fail_after(30):
            await nursery.start(writer.run)
            other = "CA" + "8" * 32            # another call's write: the queue's first
            writer.submit(records.socket_mark_item(records.SOCKET_WRITTEN_PREFIX, other, 0,
                                                   time.time(), 3600), call_sid=other)
            await trio.testing.wait_all_tasks_blocked()
            down = writer.statistics()
            mint = await _timed(claims.offer(SESSION))
            claimed_here = await _timed(claims.claim(SESSION, in_memory=True))
            claimed_elsewhere = await _timed(claims.claim(SESSION, in_memory=False))
            renewal = await _timed(claims.offer(replace(SESSION, generation=1,
                                                        token="renewed")))
            after = writer.statistics()
        nursery.cancel_scope.cancel()
    assert (down.store_down, down.written, down.pending) == (True, 0, 1)
    assert mint == (None, SESSION_WRITE_S)
    assert claimed_here == (True, 0.0)
    assert claimed_elsewhere == ("StoreError", 0.0)
    assert renewal == (None, 0.0)
    assert (after.undecided, after.written, after.pending) == (4, 0, 5)
