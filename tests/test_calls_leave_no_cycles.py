"""Calls leave no garbage in reference cycles: reference counting frees all they make.

The server lets a middle-generation collection wait for 10 000 young ones
(``voiceagent/app/heap.py``), because what survives a young collection here is alive (calls'
await chains and state) and walking it again and again was the p99 tail. That holds only
while calls make no cyclic garbage: anything that dies in a cycle after a young collection
now waits 15-20 minutes under load for the next middle collection, and a per-call cycle
would pile up with the calls. So: whole calls through the real server (a tool round, a
barge-in on a streaming Bedrock reply, Bedrock's connection closed or reset mid-reply or
before its answer, the hang-up and its /action), and a call's actors whose tools fail
(raising, in a worker thread, past their time limit), with the collector off, then everything
a collection would free is looked at.

The one cycle allowed is werkzeug's route matcher: each request's ``match`` makes a recursive
closure and drops it a moment later, still young (a young collection frees it), a few
objects a request.
"""

from __future__ import annotations

import gc
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.call_harness import open_test_call, plain_use_case
from tests.fake_bedrock import (
    Hangup,
    HangupBeforeHeaders,
    Reply,
    running_fake_bedrock,
    text_reply,
)
from tests.fakes import FakeLLM, tool_use, words
from tests.server_harness import FIXTURE_CONFIG
from voiceagent.app.testing import AgentServer, agent_server
from voiceagent.llm.bedrock_errors import Failure, classify
from voiceagent.settings import SOURCE_CONFIG
from voiceagent.threads import run_blocking
from voiceagent.tools import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

pytestmark = pytest.mark.timeout(60)

ROUTE_MATCHER = "StateMachineMatcher.match.<locals>._match"
ROUTE_MATCHER_OBJECTS = 8           # its function, cells, and the tuples and sets they hold


def _kind(obj: Any) -> str:
    kind = type(obj)
    code = getattr(obj, "cr_code", None) or getattr(obj, "f_code", None) or getattr(
        obj, "__code__", None)
    if code is not None:
        return f"{kind.__name__} {code.co_qualname}"
    return f"{kind.__module__}.{kind.__qualname__}"


@contextmanager
def _cyclic_garbage() -> Iterator[list[Any]]:
    """What a collection would free of what the block made, reference counting left aside."""
    gc.collect()
    gc.disable()
    found: list[Any] = []
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _beyond_the_route_matcher(garbage: list[Any], requests: int) -> Counter[str]:
    """The garbage's kinds, once the route matcher's cycles (at most its size a request)
    are set aside; empty when calls made no cycle of their own."""
    kinds = Counter(_kind(obj) for obj in garbage)
    matchers = kinds.pop(f"function {ROUTE_MATCHER}", 0)
    assert matchers <= requests
    allowed = matchers * (ROUTE_MATCHER_OBJECTS - 1)
    for kind in ("builtins.cell", "builtins.tuple", "builtins.set"):
        taken = min(kinds[kind], allowed)
        allowed -= taken
        kinds[kind] -= taken
    return +kinds


async def _hang_up(agent: AgentServer, call_sid: str) -> None:
    await agent.post("/action", {"CallSid": call_sid, "SessionStatus": "ended",
                                 "CallStatus": "completed"})


async def test_calls_with_tool_rounds_leave_no_cycles(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with agent_server(SOURCE_CONFIG, use_case="restaurantOrderingUseCase",
                                data_dir=tmp_path) as agent:
            async with agent.call() as warm:    # first-call work (caches, pools) aside
                await warm.say("When are you open?")
            await _hang_up(agent, warm.call_sid)
            await trio.testing.wait_all_tasks_blocked(0.05)
            with _cyclic_garbage() as garbage:
                for _ in range(3):
                    async with agent.call() as call:
                        order = await call.say("I'd like a large pepperoni pizza please")
                        assert order.tool("PlaceOrderFunction").result is not None
                        assert (await call.say("When are you open?")).text
                    await _hang_up(agent, call.call_sid)
                await trio.testing.wait_all_tasks_blocked(0.05)
    assert garbage, "the route matcher's cycles were not seen: is the collector looking?"
    assert _beyond_the_route_matcher(garbage, requests=3 * 2) == Counter()


LONG = [f"word{n} " for n in range(40)]


async def _cut_reply_closed(relay: Any) -> None:
    """Frames of the cut reply until the one that closes it (``last``)."""
    while (frame := await relay.receive()) is not None and not frame.get("last"):
        pass


async def calls_garbage(agent: AgentServer, body: Callable[[Any], Awaitable[None]]
                        ) -> list[Any]:
    """What a collection would free of what three calls through ``agent`` made, each doing
    ``body`` with its ``Conversation`` and hung up, after a first call whose one-off work
    (caches, pools) is set aside."""
    async with agent.call() as warm:
        assert (await warm.say("Hello there")).text
    await _hang_up(agent, warm.call_sid)
    await trio.testing.wait_all_tasks_blocked(0.05)
    with _cyclic_garbage() as garbage:
        for _ in range(3):
            async with agent.call() as call:
                await body(call)
            await _hang_up(agent, call.call_sid)
        await agent.runtime.calls.wait_idle()
        await trio.testing.wait_all_tasks_blocked(0.05)
    return garbage


async def barge_in_on_a_stream(call: Any) -> None:
    await call.relay.say("Tell me everything")
    assert await call.relay.receive() is not None      # streaming
    await call.relay.interrupt("word0")
    await _cut_reply_closed(call.relay)
    assert (await call.say("And then?")).text


async def test_barge_ins_on_bedrock_streams_leave_no_cycles(
        tmp_path: Path, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_fake_bedrock(responder=lambda _: text_reply(LONG, gap_s=0.02)) as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.endpoint_url)
        with trio.fail_after(40):
            async with agent_server(FIXTURE_CONFIG, use_case="testUseCase",
                                    data_dir=tmp_path, LLM="bedrock",
                                    AWS_REGION="us-east-1") as agent:
                garbage = await calls_garbage(agent, barge_in_on_a_stream)
    assert _beyond_the_route_matcher(garbage, requests=3 * 2) == Counter()


# Faults a network makes mid-exchange. Each failed attempt's exception outlives its handler
# (a ``Failure``'s cause, a local of the frame that caught it); its traceback's frames held the
# attempt, its connection and socket, and h11 re-raises its own error from a frame that holds
# it: a cycle a connection, freed only by a middle collection, minutes away under load.
CONNECTION_FAULTS = {
    "closed mid-reply (FIN)": lambda: Hangup(after_frames=2, frames=text_reply(LONG).frames),
    "reset mid-reply (RST)": lambda: Hangup(after_frames=2, reset=True,
                                            frames=text_reply(LONG).frames),
    "closed before its headers": lambda: HangupBeforeHeaders(),
}


@pytest.mark.parametrize("fault", CONNECTION_FAULTS.values(), ids=list(CONNECTION_FAULTS))
async def test_connection_faults_on_bedrock_streams_leave_no_cycles(
        fault: Callable[[], Reply], tmp_path: Path, aws_env: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_fake_bedrock(responder=lambda _: text_reply(["We", " open"])) as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.endpoint_url)
        with trio.fail_after(40):
            async with agent_server(FIXTURE_CONFIG, use_case="testUseCase",
                                    data_dir=tmp_path, LLM="bedrock",
                                    AWS_REGION="us-east-1") as agent:
                async def faulted(call: Any) -> None:
                    fake.push(fault())      # the turn's exchange meets it; the apology follows
                    assert (await call.say("When are you open?")).text

                garbage = await calls_garbage(agent, faulted)
    assert len(fake.requests) >= 1 + 3
    assert _beyond_the_route_matcher(garbage, requests=3 * 2) == Counter()


def _classified_where_caught(fault: Exception) -> Failure:
    try:
        raise fault
    except Exception as err:
        failure = classify(err)     # a local of the frame its cause's traceback holds
    return failure


def test_a_fault_classified_where_it_was_caught_leaves_no_cycle() -> None:
    with _cyclic_garbage() as garbage:
        failure = _classified_where_caught(ConnectionResetError("reset by peer"))
        assert (failure.code, failure.kind) == ("ConnectionClosed", "unavailable")
        del failure
    assert garbage == []


def test_a_bug_keeps_its_traceback_for_the_log() -> None:
    failure = _classified_where_caught(KeyError("ours"))
    assert failure.kind == "bug"
    assert failure.cause.__traceback__ is not None


# Tools that fail. The tool's error holds the frames it passed through; a frame that kept the
# error (or trio's outcome of it) in a local, or a worker thread's frames linked to it, was a
# cycle holding the call's tool environment (its use case, channels, settings).
BOOK = [{"name": "bookTable", "description": "Book a table."}]


async def _raises(ctx: Any, args: Any) -> dict[str, Any]:
    return {"party": int(args["party_size"])}       # the developer's bug: it is "party"


def _raises_in_a_thread(ctx: Any, args: Any) -> dict[str, Any]:
    return {"party": int(args["party_size"])}


async def _never_answers(ctx: Any, args: Any) -> dict[str, Any]:
    await trio.sleep(3600)
    return {}


FAILING_TOOLS = {
    "raises": ToolDefinition("bookTable", _raises),
    "raises in its worker thread": ToolDefinition("bookTable", _raises_in_a_thread,
                                                  blocking=True),
    "cut by its time limit": ToolDefinition("bookTable", _never_answers, timeout_s=2.0),
}


@pytest.mark.parametrize("tool", FAILING_TOOLS.values(), ids=list(FAILING_TOOLS))
async def test_a_failed_tool_leaves_no_cycle(tool: ToolDefinition) -> None:
    llm = FakeLLM([tool_use("tu_1", "bookTable", {"party": 4}), words("Sorry, no table.")])
    with trio.fail_after(10), _cyclic_garbage() as garbage:
        async with open_test_call(llm, use_case=plain_use_case(tools=BOOK),
                                  registry=ToolRegistry([tool])) as call:
            call.say("a table for four")
            with trio.fail_after(5):
                assert (await call.reply())[0] == "Sorry, no table."
        await trio.testing.wait_all_tasks_blocked(0.05)
    (result,) = [block["toolResult"] for message in call.history if message["role"] == "user"
                 for block in message["content"] if "toolResult" in block]
    assert result["status"] == "error"
    assert Counter(_kind(obj) for obj in garbage) == Counter()


async def test_a_failure_in_a_worker_thread_leaves_no_cycle() -> None:
    """A store call or a blocking tool failing in ``run_blocking``'s thread."""
    def fails() -> None:
        raise ConnectionResetError("reset by peer")

    limiter = trio.CapacityLimiter(1)
    with trio.fail_after(10), _cyclic_garbage() as garbage:
        for abandon_on_cancel in (False, True, False):
            with pytest.raises(ConnectionResetError, match="reset by peer") as raised:
                await run_blocking(fails, limiter=limiter, abandon_on_cancel=abandon_on_cancel)
            assert raised.traceback[-1].name == "fails"     # where it was raised, still shown
            del raised
    assert garbage == []


async def test_a_worker_thread_abandoned_that_fails_later_leaves_no_cycle() -> None:
    """A blocking tool cut by a barge-in or its time limit runs on in its thread; when it
    then failed, its outcome went into the hand-over nobody took it from, which the thread's
    frames held, linked to the error's traceback."""
    go = threading.Event()

    def fails_later() -> None:
        go.wait(10)
        raise ConnectionResetError("reset by peer")

    limiter = trio.CapacityLimiter(1)
    with trio.fail_after(10), _cyclic_garbage() as garbage:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(run_blocking, fails_later, limiter=limiter,
                                       abandon_on_cancel=True))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        go.set()
        async with limiter:             # the thread's token: given back once it has ended
            pass
    assert garbage == []
