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
from dataclasses import replace
from decimal import Decimal
from functools import partial
from typing import Any

from voiceagent.relay.outbound import End
from voiceagent.tools.base import (
    ToolContext,
    ToolDefinition,
    ToolFunction,
    ToolResult,
    tool,
    tools_defined_in,
)

ORDER_TTL_S = 7 * 24 * 3600
ORDER_SECONDS_TRIED = 16           # a reply runs at most 8 tool calls at once
PICKUP_MINUTES = (15, 20, 25)
DELIVERY_MINUTES = (30, 40, 45)
LARGE_ORDER_ITEMS = 5              # this many items or more take a little longer
LARGE_ORDER_EXTRA_MINUTES = 5
CHECK_TIMEOUT_S = 5.0
RECENT_ORDERS = 3

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


@tool("PlaceOrderFunction", side_effect=True)
async def place_order(ctx: ToolContext, args: Mapping[str, Any], *,
                      clock: Clock = time.time) -> ToolResult:
    order_type = str(args.get("order_type", "pickup"))
    address = args.get("delivery_address")
    if order_type == "delivery" and not address:
        raise ValueError("a delivery order needs delivery_address: ask the caller for "
                         "the address, then place the order again")
    items = [dict(line) for line in args.get("current_order", ())]
    order: dict[str, Any] = {"order_items": items, "order_type": order_type,
                             "order_total": args["order_total"]}
    if order_type == "delivery":
        order["delivery_address"] = str(address)
    minutes = _minutes(ctx.call_sid, order_type, len(items))
    first = int(clock())
    # keyed by the call and the second, as the sample did: another order of this call may
    # hold that second already (a reply's calls run at once; a clock stepped back), so take
    # the next free one rather than write over it; the toolUseId tells a retried write apart
    for epoch_s in range(first, first + ORDER_SECONDS_TRIED):
        number = order_number(ctx.call_sid, epoch_s)
        item: dict[str, Any] = {
            "pk": ctx.caller or ctx.call_sid,
            "sk": f"restaurantOrder::{ctx.call_sid[-4:]}::{epoch_s}",
            "order": order, "expireAt": epoch_s + ORDER_TTL_S, "orderNumber": number,
            "placedAt": epoch_s, "readyInMinutes": minutes, "toolUseId": ctx.tool_use_id}
        if ctx.called:             # a GSI key may not be empty: unindexed without a number
            item.update(pk1="restaurantOrder", sk1=ctx.called)
        if await ctx.store.put_new(item):
            break
    else:
        raise RuntimeError(f"this call's orders hold every second tried from {first}: "
                           "try again in a moment")
    return {"status": "placed", "order_number": number,
            "order_type": order_type, "order_total": order["order_total"],
            "ready_in_minutes": minutes}


@tool("CheckOrderStatus", timeout_s=CHECK_TIMEOUT_S)
async def check_order_status(ctx: ToolContext, args: Mapping[str, Any], *,
                             clock: Clock = time.time) -> ToolResult:
    """The caller's recent orders at this restaurant (the number they called), newest
    first, each with whether it should be ready or on its way by now. Read from the
    caller's own partition (orders are keyed by their number), consistently: the index
    holds every order of the restaurant's week, pages of them on every question."""
    if not ctx.caller or not ctx.called:
        return {"orders": [], "note": "the caller's number is unknown, so their orders "
                "cannot be looked up", "summary": "I can't see the number you're calling "
                "from, so I can't look up your orders."}
    items = await ctx.store.query(ctx.caller, "restaurantOrder::")
    mine = [item for item in items if item.get("sk1") == ctx.called]
    mine.sort(key=_placed_at, reverse=True)
    now = int(clock())
    orders = [_order_status(item, now) for item in mine[:RECENT_ORDERS]]
    # ``summary``, one sentence for each of the three cases, is what the sample's scripted
    # rule says; a model may say it as it is too ("Your order number {order_number} is
    # {state}." without an order was "Your order number is.")
    if not orders:
        return {"orders": [], "note": "no recent orders from this caller's number",
                "summary": "I don't see any recent orders from this number. Would you like "
                           "to place one?"}
    latest = orders[0]
    return {"orders": orders, "latest": latest, "order_number": latest["order_number"],
            "state": latest["state"],
            "summary": f"Your order number {latest['order_number']} is {latest['state']}."}


def restaurant_tools(*, clock: Clock = time.time) -> tuple[ToolDefinition, ...]:
    """This module's tools, with ``clock`` (epoch seconds) in place of the time: for tests."""
    timed: dict[Any, ToolFunction] = {place_order: partial(place_order, clock=clock),
                                      check_order_status: partial(check_order_status,
                                                                  clock=clock)}
    return tuple(replace(d, function=timed.get(d.function, d.function))
                 for d in tools_defined_in(__name__))


def _number(value: Any) -> float | None:
    """A stored number (DynamoDB gives Decimal back) as a float; None when not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return float(value)


def _placed_at(item: Mapping[str, Any]) -> int:
    if (placed := _number(item.get("placedAt"))) is not None:
        return int(placed)
    tail = str(item.get("sk", "")).rsplit("::", 1)[-1]     # restaurantOrder::{sid}::{epoch}
    return int(tail) if tail.isdigit() else 0


def _order_status(item: Mapping[str, Any], now: int) -> dict[str, Any]:
    order = item.get("order") if isinstance(item.get("order"), Mapping) else {}
    assert isinstance(order, Mapping)
    order_type = str(order.get("order_type", "pickup"))
    placed = _placed_at(item)
    minutes = _number(item.get("readyInMinutes"))
    left = None
    if minutes is not None and placed:
        left = max(0, int((placed + minutes * 60 - now + 59) // 60))
    if left is None:
        state = "being prepared"
    elif left == 0:
        state = "delivered or out for delivery" if order_type == "delivery" else \
            "ready for pickup"
    else:
        state = "on its way soon" if order_type == "delivery" else "being prepared"
    result: dict[str, Any] = {
        "order_number": str(item.get("orderNumber", "")), "order_type": order_type,
        "order_total": _number(order.get("order_total")), "state": state,
        "items": [str(line.get("line_item", "")) for line in order.get("order_items", ())
                  if isinstance(line, Mapping)],
        "minutes_ago": max(0, (now - placed) // 60) if placed else None}
    if left is not None:
        result["minutes_left"] = left
    return result


@tool("CheckRestaurantPickUpTime", timeout_s=CHECK_TIMEOUT_S)
async def check_pickup_time(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    count = int(args.get("item_count", 0))
    return {"order_type": "pickup", "minutes": _minutes(ctx.call_sid, "pickup", count)}


@tool("CheckRestaurantDeliveryTime", timeout_s=CHECK_TIMEOUT_S)
async def check_delivery_time(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    count = int(args.get("item_count", 0))
    return {"order_type": "delivery", "minutes": _minutes(ctx.call_sid, "delivery", count)}


@tool("liveAgentHandoff", timeout_s=CHECK_TIMEOUT_S, ends_turn=True)
async def live_agent_handoff(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    """Ends the relay session; ``POST /action`` reads the handoff data and connects a person."""
    data = {"handoff": True, "reasonCode": str(args.get("reason_code", "user-requested")),
            "reasonDescription": str(args.get("summary", "")), "useCase": ctx.use_case.name}
    await ctx.send(End(handoff_data=json.dumps(data)))
    return {"status": "transferring"}


@tool("endCall", timeout_s=CHECK_TIMEOUT_S, ends_turn=True)
async def end_call(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    await ctx.send(End(handoff_data=json.dumps({"reasonCode": "end-call"})))
    return {"status": "ended"}
