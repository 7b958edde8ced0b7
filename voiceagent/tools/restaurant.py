"""The restaurant use case's tools, and the two call-control tools any use case may declare.

Times and order numbers are derived from the CallSid, so a given call always hears the same
answers (demos and tests repeat exactly) while different calls vary. The order is written as
the original sample wrote it, so its reports keep working against the same table. Running a
side-effect tool once per toolUseId is the executor's job, not these functions'.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from voiceagent.relay.protocol import End
from voiceagent.tools.base import ToolContext, ToolDefinition, ToolResult

ORDER_TTL_S = 7 * 24 * 3600
PICKUP_MINUTES = (15, 20, 25)
DELIVERY_MINUTES = (30, 40, 45)
LARGE_ORDER_ITEMS = 5              # this many items or more take a little longer
LARGE_ORDER_EXTRA_MINUTES = 5
CHECK_TIMEOUT_S = 5.0

Clock = Callable[[], float]


def _stable(text: str) -> int:
    return zlib.crc32(text.encode())


def _minutes(call_sid: str, order_type: str, item_count: int = 0) -> int:
    choices = DELIVERY_MINUTES if order_type == "delivery" else PICKUP_MINUTES
    extra = LARGE_ORDER_EXTRA_MINUTES if item_count >= LARGE_ORDER_ITEMS else 0
    return choices[_stable(call_sid) % len(choices)] + extra


def order_number(call_sid: str, epoch_s: int) -> str:
    """A short number a caller can repeat back: four digits, stable for a sid and second."""
    return str(_stable(f"{call_sid}:{epoch_s}") % 9000 + 1000)


def restaurant_tools(*, clock: Clock = time.time) -> tuple[ToolDefinition, ...]:
    """The built-in tools; ``clock`` (epoch seconds) is injectable for tests."""

    async def place_order(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
        order_type = str(args.get("order_type", "pickup"))
        address = args.get("delivery_address")
        if order_type == "delivery" and not address:
            raise ValueError("a delivery order needs delivery_address: ask the caller for "
                             "the address, then place the order again")
        epoch_s = int(clock())
        items = [dict(line) for line in args.get("current_order", ())]
        order: dict[str, Any] = {"order_items": items, "order_type": order_type,
                                 "order_total": args["order_total"]}
        if order_type == "delivery":
            order["delivery_address"] = str(address)
        item: dict[str, Any] = {
            "pk": ctx.caller or ctx.call_sid,
            "sk": f"restaurantOrder::{ctx.call_sid[-4:]}::{epoch_s}",
            "order": order, "expireAt": epoch_s + ORDER_TTL_S}
        if ctx.called:             # a GSI key may not be empty: unindexed without a number
            item.update(pk1="restaurantOrder", sk1=ctx.called)
        await ctx.store.put(item)
        return {"status": "placed", "order_number": order_number(ctx.call_sid, epoch_s),
                "order_type": order_type, "order_total": order["order_total"],
                "ready_in_minutes": _minutes(ctx.call_sid, order_type, len(items))}

    return (
        ToolDefinition("PlaceOrderFunction", place_order, side_effect=True),
        ToolDefinition("CheckRestaurantPickUpTime", check_pickup_time,
                       timeout_s=CHECK_TIMEOUT_S),
        ToolDefinition("CheckRestaurantDeliveryTime", check_delivery_time,
                       timeout_s=CHECK_TIMEOUT_S),
        ToolDefinition("liveAgentHandoff", live_agent_handoff, timeout_s=CHECK_TIMEOUT_S,
                       ends_turn=True),
        ToolDefinition("endCall", end_call, timeout_s=CHECK_TIMEOUT_S, ends_turn=True),
    )


async def check_pickup_time(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    count = int(args.get("item_count", 0))
    return {"order_type": "pickup", "minutes": _minutes(ctx.call_sid, "pickup", count)}


async def check_delivery_time(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    count = int(args.get("item_count", 0))
    return {"order_type": "delivery", "minutes": _minutes(ctx.call_sid, "delivery", count)}


async def live_agent_handoff(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    """Ends the relay session; ``POST /action`` reads the handoff data and connects a person."""
    data = {"reasonCode": str(args.get("reason_code", "user-requested")),
            "reasonDescription": str(args.get("summary", "")), "useCase": ctx.use_case}
    await ctx.send(End(handoff_data=json.dumps(data)))
    return {"status": "transferring"}


async def end_call(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    await ctx.send(End(handoff_data=json.dumps({"reasonCode": "end-call"})))
    return {"status": "ended"}
