"""Two orders of one call placed in the same second of the wall clock are both kept. An
order's key (and its number) came from the call and the second alone, so the model's two
PlaceOrderFunction calls in one reply (they run concurrently) or an order placed after the
host's clock stepped back into an earlier order's second wrote over that order: one lost,
and the caller told the same number for both."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio

from voiceagent.settings import SOURCE_CONFIG, Settings
from voiceagent.store.sqlite import SqliteStore, open_sqlite_store
from voiceagent.tools import ToolContext, ToolLog, ToolResult
from voiceagent.tools.restaurant import restaurant_tools
from voiceagent.usecases import load_use_case_file

CALL_SID = "CA" + "5" * 32
CALLER = "+15555550100"
RESTAURANT = "+15555550199"
NOW_S = 1_700_000_000
USE_CASE = load_use_case_file(SOURCE_CONFIG / "usecases" / "restaurantOrderingUseCase.yaml")


def _order(line_item: str, total: float) -> dict[str, Any]:
    return {"current_order": [{"line_item": line_item, "line_amount": total}],
            "order_type": "pickup", "order_total": total}


async def _noop(message: Any) -> None:
    await trio.lowlevel.checkpoint()


async def _place(store: SqliteStore, clock: Any, tool_use_id: str,
                 args: dict[str, Any]) -> ToolResult:
    ctx = ToolContext(
        call_sid=CALL_SID, caller=CALLER, called=RESTAURANT, use_case=USE_CASE,
        tool_name="PlaceOrderFunction", tool_use_id=tool_use_id, store=store,
        settings=Settings.model_validate({}), log=ToolLog(logging.getLogger("test"), {}),
        _sender=_noop)
    (tool,) = [d for d in restaurant_tools(clock=clock) if d.name == "PlaceOrderFunction"]
    return await tool.call(ctx, args, threads=trio.CapacityLimiter(1))


async def test_two_orders_placed_at_once_are_both_kept(tmp_path: Path) -> None:
    results: list[ToolResult] = []

    async def place(tool_use_id: str, args: dict[str, Any]) -> None:
        results.append(await _place(store, lambda: NOW_S + 0.4, tool_use_id, args))

    with trio.fail_after(30):
        async with open_sqlite_store(tmp_path / "voiceagent.db",
                                     limiter=trio.CapacityLimiter(2)) as store:
            async with trio.open_nursery() as nursery:      # as the executor runs them
                nursery.start_soon(place, "tooluse_a", _order("Cheese Calzone", 11.75))
                nursery.start_soon(place, "tooluse_b", _order("Garden Salad", 8.5))
            stored = await store.query(CALLER, "restaurantOrder::")
    assert all(isinstance(r, dict) and r["status"] == "placed" for r in results), results
    assert sorted(item["order"]["order_total"] for item in stored) == [8.5, 11.75]
    numbers = {r["order_number"] for r in results if isinstance(r, dict)}
    assert numbers == {item["orderNumber"] for item in stored}
    assert len(numbers) == 2


async def test_an_order_after_the_clock_stepped_back_keeps_the_earlier_one(
        tmp_path: Path) -> None:
    wall = iter([NOW_S + 0.9, NOW_S + 0.1])       # NTP stepped the clock back 0.8 s
    with trio.fail_after(30):
        async with open_sqlite_store(tmp_path / "voiceagent.db",
                                     limiter=trio.CapacityLimiter(1)) as store:
            first = await _place(store, lambda: next(wall), "tooluse_a",
                                 _order("Cheese Calzone", 11.75))
            second = await _place(store, lambda: next(wall), "tooluse_b",
                                  _order("Garden Salad", 8.5))
            stored = await store.query(CALLER, "restaurantOrder::")
    assert isinstance(first, dict)
    assert isinstance(second, dict)
    assert first["order_number"] != second["order_number"]
    assert [item["orderNumber"] for item in stored] == [first["order_number"],
                                                        second["order_number"]]
