"""A socket's "written" mark says that everything the socket wrote is in the store: a
reconnect on another process that finds it resumes the call from the store at once. A batch
write is not atomic (DynamoDB's BatchWriteItem may apply any of its items and hand the others
back as UnprocessedItems, which are sent again later), so the mark must never share a batch
with a message of its own call: it landed while the message it vouches for did not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import trio

import voiceagent.store.config_records as config_records
import voiceagent.store.records as records
from tests.fakes import MemoryStore
from tests.test_sessions_elsewhere import (
    CALL_SID,
    USE_CASE,
    _a_socket_ends,
    _process,
    _setup,
)
from voiceagent.errors import StorePartlyWritten


class ThrottledBatches(MemoryStore):
    """Like DynamoDB under throttling: a batch of several items has only its last item
    applied, the others left unprocessed (they land when sent again). Records, each time a
    socket's "written" mark lands, which of its call's messages are in the store then."""

    def __init__(self) -> None:
        super().__init__()
        self.messages_with_mark: list[list[str]] = []

    async def put_many(self, items: Sequence[dict[str, Any]]) -> None:
        if len(items) == 1:
            await self.put(items[0])
            return
        await self.put(items[-1])
        raise StorePartlyWritten("throttled", [(i["pk"], i["sk"]) for i in items[:-1]])

    async def put(self, item: dict[str, Any]) -> None:
        await super().put(item)
        if item["sk"].startswith(records.SOCKET_WRITTEN_PREFIX):
            self.messages_with_mark.append(sorted(
                sk for (pk, sk) in self.items
                if pk == item["pk"] and sk.startswith(records.CHAT_PREFIX)))


async def test_the_written_mark_lands_only_after_the_socket_s_messages(
        autojump_clock: Any) -> None:
    store = ThrottledBatches()
    await store.put(config_records.use_case_item(USE_CASE))
    a, a_writer = _process(cast(Any, store))
    with trio.fail_after(10):
        session = await a.prepare({"CallSid": CALL_SID, "From": "+15555550100",
                                   "To": "+15555550199"})
        await a.resolve(_setup(session.token))
        await _a_socket_ends(a, a_writer, ["what are your hours?", "Eleven to ten."])
        async with trio.open_nursery() as nursery:
            await nursery.start(a_writer.run)
            assert await a_writer.flush(timeout_s=5)
            nursery.cancel_scope.cancel()
    chats = sorted(sk for (pk, sk) in store.items
                   if pk == CALL_SID and sk.startswith(records.CHAT_PREFIX))
    assert len(chats) == 2
    assert store.messages_with_mark == [chats]
