"""The tool registry (schema checks, load-time checks) and the built-in restaurant tools."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from voiceagent.errors import ConfigError, ToolMessageRefused
from voiceagent.relay.protocol import End, Text
from voiceagent.settings import Settings
from voiceagent.store.base import Item, Store
from voiceagent.tools import ToolContext, ToolDefinition, ToolLog, ToolMessage, ToolResult, tool
from voiceagent.tools.base import tools_defined_in
from voiceagent.tools.registry import ToolRegistry, default_registry
from voiceagent.tools.restaurant import order_number, restaurant_tools
from voiceagent.usecases import ToolDeclaration, UseCase, load_use_case_file

RESTAURANT = Path(__file__).parent.parent / "config" / "usecases" / "restaurantOrderingUseCase.yaml"
SID = "CA0123456789abcdef0123456789ab4f2c"
NOW_S = 1_700_000_000


class FakeStore:
    """Just enough of the Store interface for tools: items in a dict."""

    name = "fake"

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], Item] = {}

    async def put(self, item: Item) -> None:
        self.items[item["pk"], item["sk"]] = json.loads(json.dumps(item))

    async def put_new(self, item: Item) -> bool:
        if (item["pk"], item["sk"]) not in self.items:
            await self.put(item)
        return self.items[item["pk"], item["sk"]] == json.loads(json.dumps(item))

    async def get(self, pk: str, sk: str) -> Item | None:
        return self.items.get((pk, sk))

    async def query_index(self, pk1: str, sk1_prefix: str = "", *, descending: bool = False,
                          limit: int | None = None) -> list[Item]:
        found = sorted((i for i in self.items.values()
                        if i.get("pk1") == pk1 and str(i.get("sk1", "")).startswith(sk1_prefix)),
                       key=lambda i: str(i["sk1"]), reverse=descending)
        return found[:limit]


class FakeContext:
    """The real ``ToolContext`` with a fake store, recording what the tool sends."""

    def __init__(self, store: FakeStore, *, call_sid: str = SID, caller: str = "+15555550100",
                 called: str = "+15555550199") -> None:
        self.store = store
        self.sent: list[ToolMessage] = []
        self.context = ToolContext(
            call_sid=call_sid, caller=caller, called=called,
            use_case=load_use_case_file(RESTAURANT), tool_name="test", tool_use_id="tooluse_1",
            store=cast(Store, store), settings=Settings.model_validate({}),
            log=ToolLog(logging.getLogger("test"), {}), _sender=self._record)

    async def _record(self, message: ToolMessage) -> bool:
        self.sent.append(message)
        return True


def _tools() -> dict[str, ToolDefinition]:
    return {d.name: d for d in restaurant_tools(clock=lambda: NOW_S + 0.75)}


async def _run(name: str, ctx: FakeContext, args: Mapping[str, Any]) -> ToolResult:
    with trio.fail_after(10):
        result = await _tools()[name].call(ctx.context, args, threads=trio.CapacityLimiter(1))
    assert isinstance(result, dict)
    return result


def _use_case(**changes: Any) -> UseCase:
    data: dict[str, Any] = {"name": "demo", "prompt": "Hi.", "tools": [
        {"name": "endCall", "description": "Hang up."}]}
    data.update(changes)
    return UseCase.model_validate(data)


# ------------------------------------------------------------------ registry


def test_validate_input_problems_are_readable_and_echo_no_values() -> None:
    registry = default_registry()
    declaration = load_use_case_file(RESTAURANT).tool("PlaceOrderFunction")
    assert declaration is not None
    args = {"current_order": [{"line_amount": "cheap"}], "order_type": "carryout",
            "order_total": -3}
    problems = registry.validate_input(declaration, args)
    assert problems == [
        "current_order[0]: missing required field(s) ['line_item']",
        "current_order[0].line_amount: must be of type number",
        "order_total: must be at least 0",
        "order_type: must be one of ['pickup', 'delivery']",
    ]
    assert "cheap" not in str(problems)
    assert "carryout" not in str(problems)
    assert registry.validate_input(declaration, {}) == [
        "input: missing required field(s) ['current_order', 'order_type', 'order_total']"]
    valid = {"current_order": [{"line_item": "Cobb Salad", "line_amount": 12.95}],
             "order_type": "pickup", "order_total": 12.95}
    assert registry.validate_input(declaration, valid) == []


def test_unexpected_fields_are_named_not_their_values() -> None:
    declaration = ToolDeclaration(name="Lookup", description="Look up.", input_schema={
        "type": "object", "properties": {"a": {"type": "string"}},
        "additionalProperties": False})
    problems = ToolRegistry().validate_input(declaration, {"a": 1, "secret": "hunter2"})
    assert problems == ["a: must be of type string", "input: unexpected field(s) ['secret']"]


def test_validator_is_compiled_once() -> None:
    registry = ToolRegistry()
    declaration = ToolDeclaration(name="Lookup", description="Look up.")
    assert registry.validator_for(declaration) is registry.validator_for(declaration)


def test_bad_schema_is_a_config_error_at_load_time() -> None:
    uc = _use_case(tools=[{"name": "endCall", "description": "Hang up.", "input_schema": {
        "type": "object", "properties": {"why": {"type": "strin"}}}}])
    with pytest.raises(ConfigError) as caught:
        default_registry().check_use_case(uc)
    assert caught.value.path == "use case demo"
    assert caught.value.key_path == "tools[0].input_schema.properties.why.type"
    assert caught.value.problem.startswith("'strin' is not a JSON Schema type (did you mean "
                                           "string?)")
    uc = _use_case(tools=[{"name": "endCall", "description": "Hang up.",
                           "input_schema": {"type": "array"}}])
    with pytest.raises(ConfigError) as caught:
        default_registry().check_use_case(uc)
    assert caught.value.key_path == "tools[0].input_schema.type"


def test_unknown_tool_in_a_use_case_names_the_key_path() -> None:
    uc = _use_case(tools=[{"name": "endCall", "description": "Hang up."},
                          {"name": "BookTable", "description": "Book."}])
    with pytest.raises(ConfigError) as caught:
        default_registry().check_use_case(uc)
    assert caught.value.path == "use case demo"
    assert caught.value.key_path == "tools[1].name"
    assert caught.value.problem.startswith("no tool 'BookTable' is registered; registered: [")
    assert "'PlaceOrderFunction'" in caught.value.problem


def test_dtmf_and_scripted_tools_must_be_registered_and_declared() -> None:
    registry = default_registry()
    cases: dict[str, dict[str, Any]] = {
        "dtmf.handlers.2.tool": {"dtmf": {"handlers": {"2": {"tool": "BookTable"}}}},
        "dtmf.handlers.3.tool": {"dtmf": {"handlers": {"3": {"tool": "PlaceOrderFunction"}}}},
        "scripted.rules[0].tool.name": {"scripted": {"rules": [
            {"match": "book", "tool": {"name": "BookTable"}}]}},
    }
    for key_path, changes in cases.items():
        with pytest.raises(ConfigError) as caught:
            registry.check_use_case(_use_case(**changes))
        assert caught.value.key_path == key_path
    registry.check_use_case(_use_case(dtmf={"handlers": {"0": {"tool": "endCall"}}}))


@tool("Echo", side_effect=True, timeout_s=2.0)
async def echo(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    return dict(args)


def test_register_and_decorator() -> None:
    (definition,) = tools_defined_in(__name__)
    assert definition == ToolDefinition("Echo", echo, side_effect=True, timeout_s=2.0)
    registry = ToolRegistry([definition])
    assert registry.get("Echo") is definition
    assert registry.get("Nope") is None
    with pytest.raises(ValueError, match="already registered"):
        registry.register(ToolDefinition("Echo", echo))
    assert registry.names() == ("Echo",)
    assert default_registry().names() == (
        "CheckOrderStatus", "CheckRestaurantDeliveryTime", "CheckRestaurantPickUpTime",
        "PlaceOrderFunction", "endCall", "liveAgentHandoff", "playAudio",
        "sendConfirmationSms", "sendDigits", "setSpeechHints", "switchLanguage")


# ------------------------------------------------------------------ restaurant tools


async def test_place_order_writes_the_order_item() -> None:
    store = FakeStore()
    ctx = FakeContext(store)
    args = {"current_order": [{"line_item": "Large Classic Pepperoni", "line_amount": 19.95},
                              {"line_item": "Caesar Salad", "line_amount": 9.95,
                               "additional_details": "dressing on the side"}],
            "order_type": "pickup", "order_total": 29.90}
    result = await _run("PlaceOrderFunction", ctx, args)
    sk = f"restaurantOrder::4f2c::{NOW_S}"
    assert await store.get("+15555550100", sk) == {
        "pk": "+15555550100", "sk": sk, "pk1": "restaurantOrder", "sk1": "+15555550199",
        "order": {"order_items": args["current_order"], "order_type": "pickup",
                  "order_total": 29.90},
        "expireAt": NOW_S + 7 * 24 * 3600,      # the sample's item, and for CheckOrderStatus:
        "orderNumber": result["order_number"], "placedAt": NOW_S,
        "readyInMinutes": result["ready_in_minutes"], "toolUseId": "tooluse_1"}
    assert [i["sk"] for i in await store.query_index("restaurantOrder", "+1555555019")] == [sk]
    number = order_number(SID, NOW_S)
    assert len(number) == 4
    assert number.isdigit()
    pickup = await _run("CheckRestaurantPickUpTime", ctx, {})
    assert result == {"status": "placed", "order_number": number, "order_type": "pickup",
                      "order_total": 29.90, "ready_in_minutes": pickup["minutes"]}
    assert _tools()["PlaceOrderFunction"].side_effect is True


async def test_delivery_order_keeps_the_address_and_falls_back_to_the_sid() -> None:
    store = FakeStore()
    ctx = FakeContext(store, caller="", called="")
    args = {"current_order": [{"line_item": "Cobb Salad", "line_amount": 12.95}],
            "order_type": "delivery", "order_total": 12.95,
            "delivery_address": "500 Howard Street, San Francisco"}
    result = await _run("PlaceOrderFunction", ctx, args)
    (item,) = store.items.values()
    assert item["pk"] == SID
    assert "pk1" not in item
    assert "sk1" not in item
    assert item["order"]["delivery_address"] == "500 Howard Street, San Francisco"
    assert result["ready_in_minutes"] in (30, 40, 45)


async def test_delivery_without_an_address_is_refused_before_writing() -> None:
    store = FakeStore()
    args = {"current_order": [{"line_item": "Cobb Salad", "line_amount": 12.95}],
            "order_type": "delivery", "order_total": 12.95}
    with pytest.raises(ValueError, match="delivery_address"):
        await _run("PlaceOrderFunction", FakeContext(store), args)
    assert store.items == {}


async def test_pickup_and_delivery_times_are_deterministic() -> None:
    store = FakeStore()
    first = await _run("CheckRestaurantPickUpTime", FakeContext(store), {})
    again = await _run("CheckRestaurantPickUpTime", FakeContext(store), {})
    assert first == again
    assert first["order_type"] == "pickup"
    pickups, deliveries = set(), set()
    for n in range(30):
        ctx = FakeContext(store, call_sid=f"CA{n:032d}")
        pickups.add((await _run("CheckRestaurantPickUpTime", ctx, {}))["minutes"])
        deliveries.add((await _run("CheckRestaurantDeliveryTime", ctx, {}))["minutes"])
    assert pickups == {15, 20, 25}
    assert deliveries == {30, 40, 45}
    big = await _run("CheckRestaurantPickUpTime", FakeContext(store), {"item_count": 6})
    assert big["minutes"] == first["minutes"] + 5


async def test_handoff_and_end_call_send_end_with_json() -> None:
    ctx = FakeContext(FakeStore())
    result = await _run("liveAgentHandoff", ctx, {"reason_code": "financial",
                                                  "summary": "Refund for a late order."})
    assert result == {"status": "transferring"}
    assert await _run("endCall", ctx, {}) == {"status": "ended"}
    handoff, end = ctx.sent
    assert isinstance(handoff, End)
    assert isinstance(end, End)
    assert handoff.handoff_data is not None
    assert end.handoff_data is not None
    assert json.loads(handoff.handoff_data) == {
        "handoff": True, "reasonCode": "financial",
        "reasonDescription": "Refund for a late order.", "useCase": "restaurantOrderingUseCase"}
    assert json.loads(end.handoff_data) == {"reasonCode": "end-call"}
    tools = _tools()
    assert tools["liveAgentHandoff"].ends_turn
    assert tools["endCall"].ends_turn


def test_the_decorator_refuses_mistakes_at_import() -> None:
    async def speak(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
        return {}

    def lookup(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
        return {}

    with pytest.raises(ValueError, match="Bedrock's rule"):
        tool("no spaces")
    with pytest.raises(TypeError, match="plain def: make it an async def, or pass blocking"):
        tool("Lookup")(lookup)
    with pytest.raises(TypeError, match="async def with blocking=True"):
        tool("Speak", blocking=True)(speak)
    with pytest.raises(ValueError, match=r"'Echo' is registered twice in tests\.test_tools: "
                                         r"by echo and by .*speak"):
        tool("Echo")(speak)


async def test_a_tool_cannot_send_text() -> None:
    ctx = FakeContext(FakeStore())
    with pytest.raises(ToolMessageRefused, match="cannot send Text: only the model speaks"):
        await ctx.context.send(cast(ToolMessage, Text("Hello", last=True)))
    await ctx.context.send(End())
    assert ctx.sent == [End()]

