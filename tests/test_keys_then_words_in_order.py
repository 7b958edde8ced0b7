"""Keys typed without the terminator, then words within the entry's timeout: the entry goes
with the words, keys first. Before, the words started a turn at once and the entry, ending
on its timeout two seconds later, started another that cut the first reply: the caller
heard half an answer, and the history had the keys after the words they came before."""

from __future__ import annotations

from typing import Any

import trio

from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, words


async def test_an_unfinished_entry_goes_with_the_words_that_follow_it(
        autojump_clock: Any) -> None:
    use_case = plain_use_case(dtmf={"idle_timeout_s": 2.0, "default_to_model": True})
    llm = FakeLLM([words("Thanks, account 4 2 7 is found.")])
    async with open_test_call(llm, use_case=use_case) as call:
        for digit in "427":
            call.dtmf(digit)
        call.say("that is my account number")
        text, _ = await call.reply()
        with trio.move_on_after(5):              # well past the entry's timeout
            extra = await call.frame()
            raise AssertionError(f"a second turn started: {extra}")
    assert text == "Thanks, account 4 2 7 is found."
    assert len(llm.requests) == 1
    users = [m for m in call.history if m["role"] == "user"]
    assert users[-1] == {"role": "user", "content": [{
        "text": "(The caller pressed 427 on the keypad.) that is my account number"}]}


async def test_a_blank_prompt_leaves_the_entry_being_typed_alone(autojump_clock: Any) -> None:
    """Only words take the entry along: a blank final prompt (noise Twilio heard as nothing)
    must not split the digits being typed into two entries."""
    use_case = plain_use_case(dtmf={"idle_timeout_s": 2.0, "default_to_model": True})
    llm = FakeLLM([words("Order 4 2 7 is on its way.")])
    async with open_test_call(llm, use_case=use_case) as call:
        for digit in "42":
            call.dtmf(digit)
        call.say("   ")
        for digit in "7#":
            call.dtmf(digit)
        text, _ = await call.reply()
    assert text == "Order 4 2 7 is on its way."
    assert len(llm.requests) == 1
    assert [m for m in call.history if m["role"] == "user"][-1] == {"role": "user", "content": [
        {"text": "(The caller pressed 427 on the keypad.)"}]}
