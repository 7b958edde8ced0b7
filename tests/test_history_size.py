"""The history sent with each request is bounded by its size as well as its message count:
a few large tool results grew every request (later first tokens), and past the model's
context window Bedrock refused each turn after, the caller hearing an apology every time."""

from __future__ import annotations

import json
from typing import Any

import trio

from actors.history import History
from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from voiceagent.llm.base import Message
from voiceagent.llm.converse import converse_problems
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

PAGE = "x" * 3000                   # one large tool result, about 3 KB as JSON


def _chars(messages: tuple[Message, ...] | list[Message]) -> int:
    return sum(len(json.dumps(m["content"], ensure_ascii=False)) for m in messages)


def _exchange(history: History, n: int) -> None:
    history.add_user_text(f"question {n}")
    history.add_assistant("Checking.", [{"toolUseId": f"t{n}", "name": "lookup", "input": {}}])
    history.add_tool_results([{"toolResult": {"toolUseId": f"t{n}",
                                              "content": [{"json": {"page": PAGE}}],
                                              "status": "success"}}])
    history.add_assistant(f"Answer {n}.")


def test_the_oldest_exchanges_go_until_the_history_fits_its_size() -> None:
    history = History()
    history.add_assistant("Welcome.")
    for n in range(6):
        _exchange(history, n)
    history.take_sealed()
    assert len(history) < 200
    assert _chars(history.messages) > 8000
    dropped = history.trim(200, 8000)
    assert dropped > 0
    assert _chars(history.messages) <= 8000
    assert history.messages[0] == {"role": "user", "content": [{"text": "question 4"}]}
    assert converse_problems(history.for_request()) == []
    assert history.trim(200, 8000) == 0                 # it fits: nothing more goes


def test_an_exchange_larger_than_the_budget_is_kept_as_the_newest() -> None:
    """No cut brings it under: the latest valid cut is taken, never an empty history nor a
    cut between a toolUse and its result."""
    history = History()
    for n in range(3):
        _exchange(history, n)
    history.take_sealed()
    history.trim(200, 2000)
    assert history.messages[0] == {"role": "user", "content": [{"text": "question 2"}]}
    assert len(history) == 4
    assert converse_problems(history.for_request()) == []


def test_without_a_size_budget_only_the_count_trims() -> None:
    history = History()
    for n in range(6):
        _exchange(history, n)
    history.take_sealed()
    assert history.trim(200) == 0
    assert len(history) == 24


async def test_a_call_with_large_tool_results_sends_a_bounded_history(
        autojump_clock: Any) -> None:
    async def lookup(ctx: Any, args: Any) -> dict[str, Any]:
        return {"page": PAGE}

    registry = ToolRegistry([ToolDefinition("lookup", lookup)])
    use_case = plain_use_case(tools=[{"name": "lookup", "description": "Look it up."}])
    scripts = []
    for n in range(6):
        scripts += [tool_use(f"tu_{n}", "lookup"), words(f"Answer {n}.")]
    llm = FakeLLM(scripts)
    with trio.fail_after(300):
        async with open_test_call(llm, use_case=use_case, registry=registry,
                                  services_changes={"max_history_chars": 8000}) as call:
            for n in range(6):
                call.say(f"question {n}")
                text, _ = await call.reply()
                assert text == f"Answer {n}."
    first_round = llm.sent_messages[-2]          # the last turn's request before its tool ran
    said = [b["text"] for m in first_round for b in m["content"] if "text" in b]
    assert "question 0" not in said
    assert said[-1] == "question 5"
    assert _chars(first_round) <= 8000 + 100     # the new prompt came after the trim
    assert llm.violations == []
