"""Whether a reconnect ``/action`` gave counts as ``resumed`` or ``resumed_partial``.

A renewal does not wait for the old socket's end marks when the session item still has its
token and no "closed" mark is there (``socket_marks``): as far as the store knows no socket
claimed it (refused, or never came), so no mark will ever come, and every reconnect would
otherwise wait SOCKET_CLOSED_GRACE_S for nothing. But a socket may have claimed it on
another process and failed with its claim and its marks still queued there (a queue less
than QUEUE_BEHIND_S behind writes no "closed" mark ahead of it): then the resumed
conversation may miss the socket's last messages, and counting it ``resumed`` hid exactly
the conversations the metric is for. Waiting for the marks would put store reads and seconds
on the reconnect's path for every call whose socket never came, so the answer goes out at
once and the count is decided later, off it: a mark of that socket in the store once the
renewal's deadline has passed (when every wait of a reconnect ends) says it did claim.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

import voiceagent.store.records as records
from voiceagent.app.socket_marks import MARK_READ_S, SOCKET_CLOSED_GRACE_S
from voiceagent.errors import StoreError
from voiceagent.logs import call_sid_var
from voiceagent.store.base import Store

log = logging.getLogger(__name__)

Count = Callable[[str, str], None]      # (outcome, CallSid): the log line and the metrics


class ReconnectOutcomes:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._nursery: trio.Nursery | None = None
        self._pending = 0
        self._settled = trio.Event()
        self._settled.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The later looks run here (in the runtime's nursery) until it closes; a look
        cancelled then counts what was known, ``resumed``."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def resumed(self, renewed: records.CallSession, complete: bool | None, deadline: float,
                count: Count) -> None:
        """Count the reconnect to ``renewed``: ``complete`` as ``Sessions.renew`` found it,
        None when it did not wait because no claim of the old socket was in the store."""
        if complete is not None or self._nursery is None:
            count("resumed" if complete is not False else "resumed_partial", renewed.call_sid)
            return
        if not self._pending:
            self._settled = trio.Event()
        self._pending += 1
        at = max(deadline, trio.current_time() + SOCKET_CLOSED_GRACE_S)
        self._nursery.start_soon(self._look_again, renewed.call_sid, renewed.generation - 1,
                                 at, count)

    async def settled(self) -> None:
        """Until every reconnect answered so far is counted (a report that must include
        them, a test)."""
        await self._settled.wait()

    async def _look_again(self, call_sid: str, generation: int, at: float,
                          count: Count) -> None:
        call_sid_var.set(call_sid)
        outcome = "resumed"
        try:
            await trio.sleep_until(at)
            with trio.fail_after(MARK_READ_S):
                for prefix in (records.SOCKET_CLOSED_PREFIX, records.SOCKET_WRITTEN_PREFIX):
                    sk = records.socket_mark_sk(prefix, generation)
                    if await self._store.get(call_sid, sk) is not None:
                        log.warning("the reconnect's old socket had claimed the call after "
                                    "all: the resumed conversation may miss its last messages")
                        outcome = "resumed_partial"
                        break
        except (StoreError, trio.TooSlowError) as err:
            log.warning("the reconnect's old socket's end marks unreadable: counted as resumed",
                        extra={"error": str(err)[:300]})
        finally:
            count(outcome, call_sid)
            self._pending -= 1
            if not self._pending:
                self._settled.set()
