"""Use-case features end to end through the WebSocket: barge-in while an order is being
placed, invalid tool input, multi-digit DTMF ended by silence or the terminator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from tests.fakes import FakeLLM, tool_use, words
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import Identity, open_call, post_form
from voiceagent.settings import SOURCE_CONFIG
from voiceagent.tools.registry import ToolRegistry, default_registry

ORDER = "I'd like to order a large pepperoni pizza for pickup"


async def test_barge_in_while_the_order_is_placed_places_it_once(tmp_path: Path) -> None:
    registry = default_registry()
    real = registry.get("PlaceOrderFunction")
    assert real is not None
    started, release = trio.Event(), trio.Event()
    runs: list[str] = []                         # what the store cannot show: order items are
                                                 # keyed by whole seconds, so two runs in one
                                                 # second would be one item

    async def slow_place(ctx: Any, args: Any) -> dict[str, Any]:
        runs.append(ctx.call_sid)
        started.set()
        await release.wait()                     # the caller barges in meanwhile
        return await real.function(ctx, args)

    registry = ToolRegistry([replace(real, function=slow_place) if name == real.name
                             else registry.get(name) for name in registry.names()])
    settings = make_settings(tmp_path, CONFIG_DIR=str(SOURCE_CONFIG),
                             STACK_USE_CASE="restaurantOrderingUseCase")
    identity = Identity(from_number="+15555550100")
    with trio.fail_after(30):
        async with running_server(settings, registry=registry) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                await call.say(ORDER)
                await started.wait()
                await call.interrupt(heard="")
                await call.say("actually, is it ready soon?")
                release.set()
                reply = await call.read_reply()
                assert reply.closed
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            orders = await server.runtime.store.query_index("restaurantOrder")
            history = server.runtime.calls.reports[-1].history
    assert runs == [identity.call_sid]
    assert len(orders) == 1
    assert history is not None
    order_ids = {b["toolUse"]["toolUseId"] for m in history.messages for b in m["content"]
                 if "toolUse" in b and b["toolUse"]["name"] == "PlaceOrderFunction"}
    results = [b["toolResult"] for m in history.messages for b in m["content"]
               if "toolResult" in b and b["toolResult"]["toolUseId"] in order_ids]
    assert len(order_ids) == len(results) == 1
    assert results[0]["status"] == "success"
    assert results[0]["content"][0]["json"]["status"] == "placed"


async def test_invalid_tool_input_is_an_error_the_model_recovers_from(tmp_path: Path) -> None:
    llm = FakeLLM([tool_use("tu_1", "PlaceOrderFunction", {"order_type": "by pigeon"}),
                   words("Sorry, what would you like?", first_s=0.01, gap_s=0.01)])
    settings = make_settings(tmp_path, CONFIG_DIR=str(SOURCE_CONFIG),
                             STACK_USE_CASE="restaurantOrderingUseCase")
    with trio.fail_after(20):
        async with running_server(settings, llm=llm) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("pickup time?")
                assert (await call.read_reply()).text == "Sorry, what would you like?"
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            orders = await server.runtime.store.query_index("restaurantOrder")
    result = llm.requests[1].messages[-1]["content"][0]["toolResult"]
    assert result["status"] == "error"
    assert result["content"][0]["text"].startswith("invalid input: ")
    assert "order_type" in result["content"][0]["text"]
    assert orders == []                                  # the tool never ran


async def test_multi_digit_entry_ends_by_silence_or_terminator(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                for digit in "427":
                    await call.dtmf(digit)
                await call.read_reply()          # after the 0.3 s idle timeout
                for digit in "55#":
                    await call.dtmf(digit)
                await call.read_reply()          # at once, on the terminator
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            history = server.runtime.calls.reports[-1].history
    assert history is not None
    said = [b["text"] for m in history.messages if m["role"] == "user" for b in m["content"]]
    assert said == ["(The caller pressed 427 on the keypad.)",
                    "(The caller pressed 55 on the keypad.)"]


async def test_a_call_whose_socket_keeps_failing_is_not_reconnected_forever(
        tmp_path: Path) -> None:
    form = {"CallSid": "CA" + "3" * 32, "From": "+15555550100", "To": "+15555550199"}
    failed = {"CallSid": form["CallSid"], "SessionStatus": "failed", "ErrorCode": "64105",
              "CallStatus": "in-progress"}
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            await post_form(server.url + "/twiml", form, AUTH_TOKEN)
            await server.runtime.writer.flush(timeout_s=5)
            answers = [await post_form(server.url + "/action", {**failed, "SessionId": f"VX{n}"},
                                       AUTH_TOKEN)
                       for n in range(4)]
    assert all("<ConversationRelay" in answer for answer in answers[:3])
    assert "welcomeGreeting" not in answers[0]
    assert "<Hangup />" in answers[3]
    assert "<ConversationRelay" not in answers[3]
