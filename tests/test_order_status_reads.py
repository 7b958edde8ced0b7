"""CheckOrderStatus reads the caller's own orders, not the restaurant's. Through the index
(``restaurantOrder`` / the number called) it read every order anyone placed with the
restaurant in the last week (the orders' TTL) and kept the caller's: a busy restaurant's
week of orders is megabytes, many 1 MB pages and their read capacity on every status
question, within the tool's 5 s. Orders are keyed by the caller's number, so their own
partition holds exactly theirs, read consistently (an order placed a moment ago included,
which the index, eventually consistent, may not show yet)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, cast

import trio

from voiceagent.settings import SOURCE_CONFIG, Settings
from voiceagent.store.base import Item, Store
from voiceagent.store.sqlite import SqliteStore, open_sqlite_store
from voiceagent.tools import ToolContext, ToolLog, ToolResult
from voiceagent.tools.restaurant import restaurant_tools
from voiceagent.usecases import UseCase, load_use_case_file

CALLER = "+15555550100"
RESTAURANT = "+15555550199"
NOW_S = 1_700_000_000
ORDER = {"current_order": [{"line_item": "Cheese Calzone", "line_amount": 11.75}],
         "order_type": "pickup", "order_total": 11.75}


class CountingReads:
    """The store, counting the items its queries return."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.items_read = 0

    async def put_new(self, item: Item) -> bool:
        return await self._store.put_new(item)

    async def query(self, pk: str, sk_prefix: str = "", **kwargs: Any) -> list[Item]:
        found = await self._store.query(pk, sk_prefix, **kwargs)
        self.items_read += len(found)
        return found

    async def query_index(self, pk1: str, sk1_prefix: str = "", **kwargs: Any) -> list[Item]:
        found = await self._store.query_index(pk1, sk1_prefix, **kwargs)
        self.items_read += len(found)
        return found


async def _noop(message: Any) -> bool:
    await trio.lowlevel.checkpoint()
    return True


@functools.cache
def _use_case() -> UseCase:
    """Read once: parsing the YAML for each of the 203 tool calls was most of the test's time."""
    return load_use_case_file(SOURCE_CONFIG / "usecases" / "restaurantOrderingUseCase.yaml")


async def _run(store: CountingReads, name: str, *, call_sid: str, caller: str, called: str,
               at_s: int, args: dict[str, Any]) -> ToolResult:
    ctx = ToolContext(
        call_sid=call_sid, caller=caller, called=called, use_case=_use_case(),
        tool_name=name, tool_use_id="tooluse_1", store=cast(Store, store),
        settings=Settings.model_validate({}), log=ToolLog(logging.getLogger("test"), {}),
        _sender=_noop)
    (tool,) = [d for d in restaurant_tools(clock=lambda: at_s) if d.name == name]
    return await tool.call(ctx, args, threads=trio.CapacityLimiter(1))


async def test_order_status_reads_only_the_caller_s_orders(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_sqlite_store(tmp_path / "voiceagent.db",
                                     limiter=trio.CapacityLimiter(1)) as sqlite:
            store = CountingReads(sqlite)
            for n in range(200):
                await _run(store, "PlaceOrderFunction", call_sid=f"CA{n:032d}",
                           caller=f"+1555556{n:04d}", called=RESTAURANT, at_s=NOW_S - n,
                           args=ORDER)
            mine = await _run(store, "PlaceOrderFunction", call_sid="CA" + "9" * 32,
                              caller=CALLER, called=RESTAURANT, at_s=NOW_S - 60, args=ORDER)
            await _run(store, "PlaceOrderFunction", call_sid="CA" + "8" * 32, caller=CALLER,
                       called="+15555550111", at_s=NOW_S - 30, args=ORDER)
            status = await _run(store, "CheckOrderStatus", call_sid="CA" + "7" * 32,
                                caller=CALLER, called=RESTAURANT, at_s=NOW_S, args={})
    assert isinstance(status, dict)
    assert isinstance(mine, dict)
    assert [order["order_number"] for order in status["orders"]] == [mine["order_number"]]
    assert store.items_read <= 2            # the caller's two orders, not the restaurant's
