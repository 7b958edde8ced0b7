"""History keeps Converse's rules by construction; converse_problems finds every break."""

from __future__ import annotations

from typing import Any

import pytest

from actors.history import CALL_CONNECTED, History, Mark
from actors.unanswered_words import MAX_UNANSWERED_CHARS
from voiceagent.llm.converse import NO_REPLY, converse_problems


def use(tool_id: str) -> dict[str, object]:
    return {"toolUseId": tool_id, "name": "lookup", "input": {}}


def result(tool_id: str) -> dict[str, object]:
    return {"toolResult": {"toolUseId": tool_id, "content": [{"json": {"ok": 1}}],
                           "status": "success"}}


def test_heard_text_spans_a_tool_round() -> None:
    history = History()
    history.add_user_text("what time?")
    start = history.mark()
    history.add_assistant("Let me check.", [use("t1")])
    history.add_tool_results([result("t1")])
    history.add_assistant("It is nine o'clock now.")
    history.apply_heard(start, "Let me check. It is nine")
    assert history.messages[1]["content"] == [{"text": "Let me check."},
                                              {"toolUse": use("t1")}]
    assert history.messages[3] == {"role": "assistant", "content": [{"text": "It is nine"}]}
    assert converse_problems(history.for_request()) == []


def test_a_turn_merged_into_the_reply_before_it_is_cut_alone() -> None:
    """A re-prompt or goodbye follows a reply: its words join the reply's message, and the
    mark taken before it says which blocks are its own."""
    history = History()
    history.add_user_text("hours?")
    history.add_assistant("We open at nine.")
    start = history.mark()
    assert start == Mark(1, 1)
    history.add_assistant("Are you still there?")
    history.apply_heard(start, "Are")
    assert history.messages[1]["content"] == [{"text": "We open at nine."}, {"text": "Are"}]
    history.apply_heard(start, "")
    assert history.messages[1]["content"] == [{"text": "We open at nine."}]
    history.drop_unsent(start, " at nine.")         # before the mark: not this turn's words
    assert history.messages[1]["content"] == [{"text": "We open at nine."}]
    assert converse_problems(history.for_request()) == []


def test_unsent_words_come_off_the_end_only_when_they_are_there() -> None:
    history = History()
    history.add_user_text("hours?")
    start = history.mark()
    history.add_assistant("Sure. We open at nine")
    history.drop_unsent(start, " at ten")
    assert history.messages[-1]["content"] == [{"text": "Sure. We open at nine"}]
    history.drop_unsent(start, " We open at nine")
    assert history.messages[-1]["content"] == [{"text": "Sure."}]
    history.drop_unsent(start, "Sure.")
    assert [m["role"] for m in history.messages] == ["user"]


def test_nothing_heard_drops_text_but_keeps_answered_tool_uses() -> None:
    history = History()
    history.add_user_text("order")
    start = history.mark()
    history.add_assistant("Placing it.", [use("t1")])
    history.add_tool_results([result("t1")])
    history.add_assistant("Done, number 4.")
    history.apply_heard(start, "")
    assert [m["role"] for m in history.messages] == ["user", "assistant", "user"]
    assert history.messages[1]["content"] == [{"toolUse": use("t1")}]
    history.add_user_text("thanks")
    assert history.messages[2]["content"] == [result("t1"), {"text": "thanks"}]
    # some models refuse a tool result and caller words in one turn: the request splits it
    assert converse_problems(history.messages) == [
        "messages[2]: toolResult blocks and other blocks in one user turn (some models "
        "refuse it: put the results in a turn of their own)"]
    request = history.for_request()
    assert request[2:] == (
        {"role": "user", "content": [result("t1")]},
        {"role": "assistant", "content": [{"text": NO_REPLY}]},
        {"role": "user", "content": [{"text": "thanks"}]})
    assert converse_problems(request) == []


def test_blank_and_whitespace_are_never_recorded() -> None:
    history = History()
    history.add_user_text("   ")
    history.add_assistant("  \n")
    assert len(history) == 0
    history.add_user_text("hi")
    history.add_assistant("Hello there!  ")
    assert history.messages[-1]["content"] == [{"text": "Hello there!"}]


def test_sealed_messages_are_handed_over_once_and_last_waits() -> None:
    history = History()
    history.add_assistant("Welcome.")
    history.add_user_text("hi")
    assert [i for i, _, _ in history.take_sealed()] == [0]
    history.add_assistant("Hello.")
    assert [i for i, _, _ in history.take_sealed()] == [1]
    assert [i for i, _, _ in history.take_sealed(final=True)] == [2]
    assert history.take_sealed(final=True) == []


def test_greeting_first_history_gets_a_neutral_opening_for_requests() -> None:
    history = History()
    history.add_assistant("Hi, this is Pizza.")
    history.add_user_text("hello")
    messages = history.for_request()
    assert messages[0] == {"role": "user", "content": [{"text": CALL_CONNECTED}]}
    assert converse_problems(messages) == []


@pytest.mark.parametrize(("messages", "fragment"), [
    ([], "empty"),
    ([{"role": "assistant", "content": [{"text": "hi"}]}], "start with a user"),
    ([{"role": "user", "content": [{"text": "a"}]}, {"role": "user", "content": [{"text": "b"}]}],
     "alternate"),
    ([{"role": "user", "content": []}], "content is empty"),
    ([{"role": "user", "content": [{"text": " "}]}], "blank"),
    ([{"role": "user", "content": [{"text": "a"}]},
      {"role": "assistant", "content": [{"toolUse": use("t1")}]},
      {"role": "user", "content": [{"text": "b"}]}], "expected toolResult"),
    ([{"role": "user", "content": [result("t9")]}], "without toolUse"),
    ([{"role": "user", "content": [{"text": "a"}]},
      {"role": "assistant", "content": [{"text": "ends with space "}]}], "trailing whitespace"),
    ([{"role": "user", "content": [{"text": "a"}]},
      {"role": "assistant", "content": [{"toolUse": {**use("bad id!"), "input": {}}}]},
      {"role": "user", "content": [result("bad id!")]}], "bad toolUseId"),
    ([{"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": [],
                                                   "status": "error"}}]}], "needs content"),
    ([{"role": "system", "content": [{"text": "x"}]}], "role"),
    ([{"role": "user", "content": [{"text": "a"}]},
      {"role": "assistant", "content": [{"toolUse": use("t1")}]},
      {"role": "user", "content": [result("t1")]},
      {"role": "assistant", "content": [{"toolUse": use("t1")}]},
      {"role": "user", "content": [result("t1")]}], "'t1' used before"),
    ([{"role": "user", "content": [{"text": "a"}]},
      {"role": "assistant", "content": [{"toolUse": use("t1")}]},
      {"role": "user", "content": [result("t1"), {"text": "b"}]}],
     "toolResult blocks and other blocks"),
])
def test_converse_problems_names_each_violation(messages: list[dict[str, object]],
                                                fragment: str) -> None:
    problems = converse_problems(messages)  # type: ignore[arg-type]
    assert any(fragment in p for p in problems), problems


def test_tool_blocks_need_a_tool_config() -> None:
    messages = [{"role": "user", "content": [{"text": "a"}]},
                {"role": "assistant", "content": [{"toolUse": use("t1")}]},
                {"role": "user", "content": [result("t1")]}]
    assert converse_problems(messages) == []
    assert any("toolConfig" in p for p in converse_problems(messages, tools_configured=False))


def _tool_use(tool_id: str) -> dict[str, Any]:
    return {"toolUse": {"toolUseId": tool_id, "name": "placeOrder", "input": {}}}


def test_a_resumed_history_ending_with_the_caller_merges_the_next_prompt() -> None:
    stored = [{"role": "assistant", "content": [{"text": "Hello."}]},
              {"role": "user", "content": [{"text": "I want a pizza"}]}]
    history = History.resumed(stored, [{"at_ms": 1000}, {"at_ms": 2000}])
    history.add_user_text("a large one")
    assert converse_problems(history.for_request()) == []
    assert history.messages[-1] == {"role": "user", "content": [
        {"text": "I want a pizza"}, {"text": "a large one"}]}
    history.add_assistant("Sure.")
    sealed = history.take_sealed()
    assert [(index, meta["at_ms"]) for index, _, meta in sealed] == [(1, 2000)]


def test_a_resumed_history_after_a_tool_result_takes_the_prompt_in_that_message() -> None:
    stored = [{"role": "user", "content": [{"text": "order please"}]},
              {"role": "assistant", "content": [_tool_use("tu_1")]},
              {"role": "user", "content": [{"toolResult": {
                  "toolUseId": "tu_1", "content": [{"json": {"ok": True}}]}}]}]
    history = History.resumed(stored, [{"at_ms": n} for n in range(3)])
    history.add_user_text("is it done?")
    assert converse_problems(history.for_request()) == []
    assert len(history) == 3


def test_a_resumed_history_with_a_dangling_tool_use_gets_an_error_result() -> None:
    stored = [{"role": "user", "content": [{"text": "order please"}]},
              {"role": "assistant", "content": [{"text": "Placing it."}, _tool_use("tu_1"),
                                                _tool_use("tu_2")]}]
    history = History.resumed(stored, [{"at_ms": n} for n in range(2)])
    assert converse_problems(history.for_request()) == []
    results = history.messages[-1]["content"]
    assert [r["toolResult"]["toolUseId"] for r in results] == ["tu_1", "tu_2"]
    assert {r["toolResult"]["status"] for r in results} == {"error"}
    history.add_user_text("hello?")
    assert converse_problems(history.for_request()) == []


def test_requests_share_unchanged_messages_and_never_see_later_changes() -> None:
    """No deep copy of the whole conversation per model round: a message is copied once,
    shared by every request until it changes; a change (a merge, a barge-in cut) makes a new
    copy and leaves the copies already handed out as they were."""
    history = History()
    history.add_user_text("hello")
    history.add_assistant("Hi, what can I get you?")
    history.add_user_text("a pizza")
    first = history.for_request()
    history.add_user_text("a large one")            # merges into the last message
    history.add_assistant("A large pizza coming up, and")
    second = history.for_request()
    assert second[0] is first[0]
    assert second[1] is first[1]
    assert second[2] is not first[2]
    assert first[2] == {"role": "user", "content": [{"text": "a pizza"}]}
    history.apply_heard(Mark(3), "A large pizza")
    third = history.for_request()
    assert third[3] == {"role": "assistant", "content": [{"text": "A large pizza"}]}
    assert second[3] == {"role": "assistant",
                         "content": [{"text": "A large pizza coming up, and"}]}
    assert third[0] is first[0]
    assert converse_problems(third) == []


def test_a_request_body_built_from_shared_messages_leaves_them_as_they_were() -> None:
    import copy
    import json

    from voiceagent.llm.base import LLMRequest
    from voiceagent.llm.bedrock_converse import build_converse_request

    history = History()
    history.add_assistant("Hello.")
    history.add_user_text("order please")
    history.add_assistant("Placing it.", [use("tu_1")])
    history.add_tool_results([result("tu_1")])
    shared = history.for_request()
    before = copy.deepcopy(shared)
    body = build_converse_request(LLMRequest(
        call_sid="CA1", use_case="u", model_id="m", system=("s",), messages=shared,
        tools=({"name": "lookup", "description": "d",
                "inputSchema": {"json": {"type": "object"}}},)))
    json.dumps(body)
    assert shared == before
    assert history.for_request()[0] is shared[0]


def test_heard_words_fit_a_turn_when_one_begins_the_other() -> None:
    history = History()
    history.add_user_text("hours?")
    start = history.mark()
    history.add_assistant("We open at nine.")
    assert history.fits(start, "we  OPEN at")                  # case and spacing aside
    assert history.fits(start, "We open at nine. Anything else")   # more than this turn
    assert history.fits(start, "")
    assert not history.fits(start, "Sure, anything")
    assert not history.fits(history.mark(), "We open")          # nothing said since
    assert Mark(5, 1).after_trim(2) == Mark(3, 1)
    assert Mark(1).after_trim(2) is None


def test_unanswered_caller_words_are_capped_oldest_first() -> None:
    history = History()
    history.add_user_text("order")
    history.add_assistant("", [use("t1")])
    history.add_tool_results([result("t1")])       # the reply after it was cut unheard
    for n in range(30):
        history.add_user_text(f"{n:02d} " + "word " * 200)
    blocks = history.messages[-1]["content"]
    texts = [b["text"] for b in blocks if "text" in b]
    assert sum(map(len, texts)) <= MAX_UNANSWERED_CHARS
    assert texts[-1].startswith("29 ")              # the newest words stay
    assert blocks[0] == result("t1")                # a tool result is never dropped
    history.add_user_text("x" * (MAX_UNANSWERED_CHARS + 10))   # alone over: still kept
    assert history.messages[-1]["content"][-1]["text"].startswith("xxx")
    assert converse_problems(history.for_request()) == []


def test_unsent_words_of_a_tool_round_come_off_before_its_tool_use() -> None:
    """A turn cut in a tool round records the round's text with the side-effect toolUse
    that ran; words of that text the writer withheld come off it, the toolUse stays."""
    history = History()
    history.add_user_text("order")
    start = history.mark()
    history.add_assistant("Placing that now", [use("t1")])
    history.add_tool_results([result("t1")])
    history.drop_unsent(start, " now")
    assert history.messages[1]["content"] == [{"text": "Placing that"}, {"toolUse": use("t1")}]
    history.drop_unsent(start, "Placing that")
    assert history.messages[1]["content"] == [{"toolUse": use("t1")}]
    assert converse_problems(history.for_request()) == []


def test_prompts_merged_by_a_cut_are_capped_too() -> None:
    """A reply cut to nothing between two prompts (a "mhm" started the next turn while it
    played) merges them; the merge grew the message past the cap, which only a new prompt
    checked. Found while reworking the barge-in (twelfth pass)."""
    history = History()
    history.add_user_text("a" * 6000)
    start = history.mark()
    history.add_assistant("We open at nine.")
    history.add_user_text("b" * 6000)
    history.apply_heard(start, "")
    assert [m["role"] for m in history.messages] == ["user"]
    assert sum(len(b["text"]) for b in history.messages[0]["content"]) <= MAX_UNANSWERED_CHARS
    assert history.messages[0]["content"][-1]["text"] == "b" * 6000


def _reply_then_goodbye(goodbye_said: bool) -> tuple[History, Mark, Mark]:
    """A reply with a tool round, cut by the caller; then a goodbye, begun after the cut,
    whose words merge into the reply's last message."""
    history = History()
    history.add_user_text("hours?")
    start = history.mark()
    history.add_assistant("Let me check.", [use("t1")])
    history.add_tool_results([result("t1")])
    history.add_assistant("We open at nine.")
    end = history.mark()
    if goodbye_said:
        history.add_assistant("Goodbye.")
    return history, start, end


@pytest.mark.parametrize("goodbye_said", [True, False])
@pytest.mark.parametrize(("heard", "unsent", "reply"), [
    ("Let me check.", "", ["Let me check."]),
    ("", "", []),
    ("Let me", "", ["Let me"]),
    ("Let me check. We open", "", ["Let me check.", "We open"]),
    ("Let me check. We open at nine. Goodbye.", "", ["Let me check.", "We open at nine."]),
    (None, " at nine.", ["Let me check.", "We open"]),
    (None, "We open at nine.", ["Let me check."]),
    (None, "", ["Let me check.", "We open at nine."]),
])
def test_a_cut_stops_where_a_turn_begun_after_it_starts(
        goodbye_said: bool, heard: str | None, unsent: str, reply: list[str]) -> None:
    """The cut turns lose what was not heard; the goodbye keeps all its words, and its mark
    follows it wherever the cut moved it."""
    history, start, end = _reply_then_goodbye(goodbye_said)
    moved = history.record_cut(start, end, heard=heard, unsent=unsent)
    said = [b["text"] for m in history.messages[1:] if m["role"] == "assistant"
            for b in m["content"] if "text" in b]
    assert said == reply + (["Goodbye."] if goodbye_said else [])
    assert any("toolUse" in b for b in history.messages[1]["content"])   # its result stands
    assert converse_problems(history.for_request()) == []
    at = moved(end)
    if goodbye_said:
        assert history.messages[at.index]["content"][at.blocks:] == [{"text": "Goodbye."}]
    else:
        assert at == history.mark()
        history.add_assistant("Goodbye.")       # the goodbye records after the cut
        assert history.messages[at.index]["content"][at.blocks:] == [{"text": "Goodbye."}]


def test_heard_words_fit_only_the_turns_before_the_end() -> None:
    history, start, end = _reply_then_goodbye(goodbye_said=True)
    """Twilio's heard words may run on past the turn (one begins the other); the goodbye's
    words are not the cut turn's, so they do not count against it."""
    assert not history.fits(start, "Let me check. We open at nine. Bye now")
    assert history.fits(start, "Let me check. We open at nine. Bye now", end)
    assert not history.fits(start, "Let me check. We close", end)
    assert history.fits(end, "Good")


def test_a_stored_message_a_cut_drops_or_moves_is_written_over() -> None:
    """Items are keyed by at_ms and position: a stored reply that a cut drops, and a stored
    message that a merge takes out of its position, leave their items behind unless a
    tombstone writes over them."""
    history = History()
    history.add_user_text("order pizza")
    start = history.mark()
    history.add_assistant("Placing that.", [use("t1")])
    history.add_tool_results([result("t1")])
    history.add_assistant("All done.")
    history.add_user_text("mhm")
    keys = [(meta["at_ms"], index) for index, _, meta in history.take_sealed(final=True)]
    assert len(keys) == 5
    history.apply_heard(start, "Placing")           # "All done." goes; "mhm" merges up
    written = history.take_sealed(final=True)
    assert [(meta["at_ms"], index) for index, message, meta in written if not message] \
        == keys[3:]                                 # "All done." and "mhm" as they were
    assert all(meta["dropped"] is True for _, message, meta in written if not message)
    assert [index for index, message, _ in written if message] == [1, 2]
    assert history.take_sealed(final=True) == []    # each once


def test_messages_trimmed_from_memory_are_not_tombstoned() -> None:
    history = History()
    for n in range(6):
        history.add_user_text(f"question {n}")
        history.add_assistant(f"answer {n}")
    history.take_sealed(final=True)
    assert history.trim(4) == 8
    history.add_user_text("one more")
    assert [index for index, _, _ in history.take_sealed(final=True)] == [12]


def test_prompts_a_cut_puts_back_together_are_capped_too() -> None:
    """The reader cut turn 1; a re-prompt started and was superseded before it said a word;
    a prompt started turn 3; then turn 1's barge-in, nothing heard: its reply goes, and the
    prompt set aside after the re-prompt's empty place merged into turn 1's prompt without
    the cap (12,000 characters). Found by a review helper (helper-20)."""
    from actors.llm_streamer import _Playing

    history = History()
    playing = _Playing(history.session_start)
    history.add_user_text("a" * 6000)
    playing.started(1, history.mark())
    history.add_assistant("We open at nine.")
    playing.started(2, history.mark())              # the re-prompt: says nothing
    history.add_user_text("b" * 6000)
    playing.started(3, history.mark())
    playing.cut(history, 1, "", "")
    assert [m["role"] for m in history.messages] == ["user"]
    assert sum(len(b["text"]) for b in history.messages[0]["content"]) <= MAX_UNANSWERED_CHARS
    assert history.messages[0]["content"][-1]["text"] == "b" * 6000


def test_store_times_only_go_forward_and_start_after_a_set_aside(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A message's at_ms is its store key, and a reconnect reads messages in key order: a
    wall clock stepped back (or a process a little behind the one before it) must not put a
    later message before an earlier one, nor a fresh conversation before the one it set
    aside."""
    import actors.history as history_module

    now = iter([5.000, 4.000, 4.000, 9.000])

    class SteppedBack:
        @staticmethod
        def time() -> float:
            return next(now)

    monkeypatch.setattr(history_module, "time", SteppedBack)
    history = History()
    history.keep_after(6_000)
    history.add_assistant("Hello again.")
    history.add_user_text("where were we?")
    history.add_assistant("Let's start over.")
    history.add_user_text("ok")
    assert [meta["at_ms"] for _, _, meta in history.take_sealed(final=True)] == [
        6_001, 6_002, 6_003, 9_000]
