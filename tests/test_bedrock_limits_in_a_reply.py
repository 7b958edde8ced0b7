"""The Bedrock stream's limits (``FirstEventTimeout``, ``ReplyTooSlow``) falling at every
position of a reply, through a real call, the real backend and the local endpoint on trio's
virtual clock.

A reply is a list of steps (event frames, each noting what the caller hears of it); the
endpoint sends the first ``cut`` of them and then holds the connection open, silent. For
every cut, of every kind of reply: the text frames the caller gets, the history the turn
leaves (what was heard, the apology as said, never a toolUse without its toolResult), the
next turn's request (the endpoint checks every request against Converse's rules), and the
counts. Where a cut lands decides the ending:

- before the model's own output (nothing, or ``messageStart`` only): ``FirstEventTimeout``
  at 3 s, tried once more; a second start that says nothing is the silent apology;
- after output began and before ``messageStop``: ``ReplyTooSlow`` at the attempt's deadline
  (3 s + maxTokens 20 at 4 a second = 8 s after its request), what was said and then the
  apology; a toolUse the reply finished is not run, nor recorded. After a stalled start the
  retry is given the read timeout to begin (10 + 5 s) and the read timeout (10 s after the
  last event) comes first: ``ReadTimeout``, the same ending;
- after ``messageStop``: the reply is whole and ends as one, 1 s after it
  (``WHOLE_GRACE_S``: only its usage is missing), or at the limit if that comes first.

Reasoning (a ``reasoningContent`` block, or ``<thinking>`` in the text) is the model's output
though never heard: a stall in it is not a stalled start. Each case runs with and without
TOKEN_HOLD_MS, whose held words reach the caller before the apology.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

from actors.turn import APOLOGY_CUT, APOLOGY_SILENT
from tests.bedrock_clock import llm_on_virtual_clock
from tests.call_harness import GREETING, open_test_call, plain_use_case
from tests.fake_bedrock import (
    FakeBedrock,
    Frame,
    RecordedRequest,
    Reply,
    Stall,
    StreamReply,
    message_end,
    message_start,
    reasoning_events,
    text_events,
    tool_events,
)
from tests.fake_reasoning import reasoning_blocks
from voiceagent.llm.bedrock import FIRST_EVENT_TIMEOUT_S, READ_TIMEOUT_S, BedrockLLM
from voiceagent.llm.bedrock_http import WHOLE_GRACE_S
from voiceagent.llm.bedrock_stream import SPOKEN_TOKENS_PER_S
from voiceagent.llm.converse import converse_problems
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

MAX_TOKENS = 20
PACE_S = MAX_TOKENS / SPOKEN_TOKENS_PER_S     # 5 s: an attempt's deadline is 3 + 5 s
LATE_S = 0.3            # the watchdog's slack, a retry's jittered wait, the frames' own pace
EPSILON = 1e-6         # float sums of virtual times
GAP_S = 0.1             # between deltas: a whole reply streams in about a second
QUESTION = "When can I pick up my pizza?"
THANKS = "Thanks."
BYE = "Bye now."


@dataclass(frozen=True, slots=True)
class Step:
    frame: Frame
    heard: str = ""             # what the caller hears of it
    answers: bool = True        # the model's own output (messageStart is not)
    stops: bool = False         # messageStop: the reply is whole
    yields: bool = False        # a whole toolUse: the turn has it, the caller hears nothing
    words: bool = False         # a text delta: the next event is due within the words gap


def start() -> list[Step]:
    return [Step(message_start(), answers=False)]


def said(deltas: Sequence[str], *, index: int = 0, heard: Sequence[str] | None = None
         ) -> list[Step]:
    frames = text_events(deltas, index=index, gap_s=GAP_S)
    return [Step(f, h, words=n < len(deltas))
            for n, (f, h) in enumerate(zip(frames, [*(heard or deltas), ""], strict=True))]


def tool(index: int, tool_use_id: str, name: str, fragments: Sequence[str]) -> list[Step]:
    *start_and_input, stop = tool_events(index, tool_use_id, name, fragments, gap_s=GAP_S)
    return [*(Step(f) for f in start_and_input), Step(stop, yields=True)]


def end(stop_reason: str = "end_turn") -> list[Step]:
    stop, metadata = message_end(stop_reason)
    return [Step(stop, stops=True), Step(metadata)]


def frames(steps: Sequence[Step]) -> tuple[Frame, ...]:
    return tuple(s.frame for s in steps)


def heard(steps: Sequence[Step]) -> str:
    return "".join(s.heard for s in steps)


ORDER = {"toolUseId": "tu_order", "name": "placeOrder", "input": {"item": "pizza"}}
PICKUP = {"toolUseId": "tu_pickup", "name": "pickupTime", "input": {}}
ANSWER = [*start(), *said(["Ready in", " twenty minutes."]), *end()]

# (d) inside a toolUse's input, (e) between two toolUse blocks, (f) after the last block
TEXT_AND_TOOLS = [*start(), *said(["Let me check", " that for you."]),
                  *tool(1, "tu_order", "placeOrder", ['{"item": ', '"pizza"}']),
                  *tool(2, "tu_pickup", "pickupTime", ["{}"]), *end("tool_use")]
# (g) reasoning: dropped, never heard, but it is the model's output
REASONING = [*start(), *[Step(f) for f in reasoning_events(0, ["The caller", " asks."])],
             *said(["Ready in", " twenty minutes."], index=1), *end()]
# thinking spans in the text: not heard either, and the space after a leading one goes
THINKING = [*start(), *said(["<thinking>pickup", "?</thinking> Ready in", " twenty minutes."],
                            heard=["", "Ready in", " twenty minutes."]), *end()]
# a toolUse first, no words: cut in it or after it, nothing is heard before the apology
TOOL_FIRST = [*start(), *tool(0, "tu_pickup", "pickupTime", ["{", "}"]), *end("tool_use")]
# (h) the round after a tool result
FIRST_ROUND = [*start(), *said(["Let me check."]), *tool(1, "tu_pickup", "pickupTime", ["{}"]),
               *end("tool_use")]
# reasoning with a tool use: kept, first in the round's message, when the round is whole (the
# endpoint refuses the round after it otherwise, as Bedrock does for Claude thinking with tools)
THOUGHT_TOOL = [*start(), *[Step(f) for f in reasoning_events(0, ["Pickup", " time?"])],
                *tool(1, "tu_pickup", "pickupTime", ["{}"]), *end("tool_use")]


@dataclass(frozen=True, slots=True)
class Rounds:
    """The rounds of the turn as a whole reply would go, and which round is cut."""

    rounds: tuple[list[Step], ...]
    cut_round: int
    uses: tuple[tuple[dict[str, Any], ...], ...]     # each round's toolUse blocks


SHAPES = {
    "text and two tools": Rounds((TEXT_AND_TOOLS, ANSWER), 0, ((ORDER, PICKUP), ())),
    "reasoning then text": Rounds((REASONING,), 0, ((),)),
    "thinking tags in the text": Rounds((THINKING,), 0, ((),)),
    "a tool and no words": Rounds((TOOL_FIRST, ANSWER), 0, ((PICKUP,), ())),
    "second round": Rounds((FIRST_ROUND, ANSWER), 1, ((PICKUP,), ())),
    "reasoning and a tool": Rounds((THOUGHT_TOOL, ANSWER), 0, ((PICKUP,), ())),
    "the round after reasoning and a tool": Rounds((THOUGHT_TOOL, ANSWER), 1, ((PICKUP,), ())),
}
HOLD_S = 0.2             # TOKEN_HOLD_MS: later words held and sent together
CASES = [pytest.param(shape, stalled_first, cut, hold_s,
                      id=f"{name}-{'after a stalled start-' if stalled_first else ''}cut{cut}"
                         f"{'-held' if hold_s else ''}")
         for name, shape in SHAPES.items()
         for stalled_first in (False, True)
         for cut in range(len(shape.rounds[shape.cut_round]) + 1)
         for hold_s in (0.0, HOLD_S)]


@dataclass
class Expected:
    ending: str                 # whole | failed | unavailable (nothing said)
    heard: str                  # the cut round's words
    content: bool               # words or a whole toolUse reached the turn
    errors: list[str]           # the backend's, in order
    given_up_at: float | None   # when the last attempt is closed (None: it completed)


def expected(steps: Sequence[Step], cuts: Sequence[int], opened: Sequence[float]) -> Expected:
    """What the stream's limits make of attempts cut at ``cuts`` (a whole one follows),
    opened at ``opened``: each is given up at whichever comes first of its first-event
    timeout (the read timeout after a stalled start), the read timeout after its last event
    once the model answers (the first-event timeout after a text delta: the words gap), and
    its deadline: its first-event timeout and the pace of its maxTokens after its own
    request."""
    errors: list[str] = []
    for attempt, cut in enumerate(cuts):
        sent = steps[:cut]
        first_s = FIRST_EVENT_TIMEOUT_S if attempt == 0 else READ_TIMEOUT_S
        deadline = opened[attempt] + first_s + PACE_S
        if not any(s.answers for s in sent):
            errors.append("FirstEventTimeout")
            if attempt == 0:
                continue
            return Expected("unavailable", "", False, errors,
                            min(opened[attempt] + first_s, deadline))
        last_event = opened[attempt] + sum(s.frame.delay_s for s in sent)
        if any(s.stops for s in sent):
            return Expected("whole", heard(steps), True, errors,
                            min(last_event + WHOLE_GRACE_S, deadline))
        silence_s = FIRST_EVENT_TIMEOUT_S if sent[-1].words else READ_TIMEOUT_S
        given_up_at = min(last_event + silence_s, deadline)
        errors.append("ReplyTooSlow" if given_up_at == deadline else "ReadTimeout")
        content = any(s.heard or s.yields for s in sent)
        return Expected("failed", heard(sent), content, errors, given_up_at)
    return Expected("whole", heard(steps), True, errors, None)


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock
              ) -> AsyncIterator[BedrockLLM]:
    async with llm_on_virtual_clock(mock_clock) as backend:    # the production limits
        yield backend


def tools(runs: list[str]) -> ToolRegistry:
    registry = ToolRegistry()

    async def place(ctx: Any, args: Any) -> dict[str, Any]:
        runs.append("placeOrder")
        return {"order_number": 42}

    async def pickup(ctx: Any, args: Any) -> dict[str, Any]:
        runs.append("pickupTime")
        return {"minutes": 20}

    registry.register(ToolDefinition("placeOrder", place, side_effect=True))
    registry.register(ToolDefinition("pickupTime", pickup))
    return registry


TOOL_SPECS = [{"name": "placeOrder", "description": "Place the order",
               "input_schema": {"type": "object",
                                "properties": {"item": {"type": "string"}}}},
              {"name": "pickupTime", "description": "Minutes to pickup"}]
RESULTS = {"tu_order": {"order_number": 42}, "tu_pickup": {"minutes": 20}}


def last_words(request: RecordedRequest) -> str:
    block = request.body["messages"][-1]["content"][-1]
    return "results" if "toolResult" in block else str(block.get("text"))


@pytest.mark.parametrize(("shape", "stalled_first", "cut", "hold_s"), CASES)
async def test_a_limit_at_every_position_leaves_what_was_heard_and_a_valid_history(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock,
        shape: Rounds, stalled_first: bool, cut: int, hold_s: float) -> None:
    fake = fake_bedrock
    cut_steps = shape.rounds[shape.cut_round]
    cuts = [0, cut] if stalled_first else [cut]
    # each round's requests, in order: the cut attempts, then the whole reply
    queues: dict[int, list[Reply]] = {
        n: [*(Stall(frames(steps[:c])) for c in cuts)] if n == shape.cut_round else []
        for n, steps in enumerate(shape.rounds)}
    opened: dict[int, list[float]] = {n: [] for n in range(len(shape.rounds))}

    def respond(request: RecordedRequest) -> Reply:
        words = last_words(request)
        if words == THANKS:
            return StreamReply(frames([*start(), *said([BYE]), *end()]))
        n = 0 if words == QUESTION else 1
        opened[n].append(trio.current_time())
        return queues[n].pop(0) if queues[n] else StreamReply(frames(shape.rounds[n]))

    fake.responder = respond
    runs: list[str] = []
    use_case = plain_use_case(tools=TOOL_SPECS, inference={"max_tokens": MAX_TOKENS})
    summaries: list[dict[str, Any]] = []
    async with open_test_call(llm, use_case=use_case, registry=tools(runs), services_changes={
            "token_hold_s": hold_s, "on_turn": summaries.append}) as call:
        call.say(QUESTION)
        text, _ = await call.reply()
        ended_at = trio.current_time()
        call.say(THANKS)
        assert (await call.reply())[0] == BYE
        await call.hang_up()

    outcome = expected(cut_steps, cuts, opened[shape.cut_round])

    # what the caller heard
    rounds_heard = [heard(steps) for steps in shape.rounds[:shape.cut_round]]
    whole = outcome.ending == "whole"
    apology = "" if whole else APOLOGY_CUT if outcome.heard else APOLOGY_SILENT
    cut_words = outcome.heard + apology
    spoken = [*rounds_heard, cut_words] if cut_words else rounds_heard
    if whole:
        spoken += [heard(steps) for steps in shape.rounds[shape.cut_round + 1:]]
    assert text == " ".join(w.strip() for w in spoken if w.strip())

    # what the history holds: the rounds the reply finished, then what was said of the cut
    history: list[dict[str, Any]] = [
        {"role": "user", "content": [{"text": "(The call has connected.)"}]},
        {"role": "assistant", "content": [{"text": GREETING}]},
        {"role": "user", "content": [{"text": QUESTION}]}]
    done_rounds = len(shape.rounds) if whole else shape.cut_round
    for n in range(done_rounds):
        words = heard(shape.rounds[n]).strip()
        uses = shape.uses[n]
        content = [{"text": words}] if words else []
        if uses:
            content[:0] = reasoning_blocks(frames(shape.rounds[n]))
        history.append({"role": "assistant",
                        "content": content + [{"toolUse": use} for use in uses]})
        if uses:
            history.append({"role": "user", "content": [{"toolResult": {
                "toolUseId": use["toolUseId"], "content": [{"json": RESULTS[use["toolUseId"]]}],
                "status": "success"}} for use in uses]})
    if not whole:
        history.append({"role": "assistant", "content": [{"text": cut_words.strip()}]})
    history.append({"role": "user", "content": [{"text": THANKS}]})
    thanks = [r for r in fake.requests if last_words(r) == THANKS]
    assert len(thanks) == 1
    assert thanks[0].body["messages"] == history
    history.append({"role": "assistant", "content": [{"text": BYE}]})
    # the call keeps the greeting first; its requests put the connection before it
    assert [dict(m) for m in call.history] == history[1:]
    assert [entry["chat"] for entry in call.writer.stored()] == history[1:]   # a reconnect's
    assert converse_problems(history) == []
    assert fake.violations == []

    # tools run only from a whole reply
    ran = [use["name"] for n in range(done_rounds) for use in shape.uses[n]]
    assert sorted(runs) == sorted(ran)

    # when: each attempt given up at its limit, no later
    times = opened[shape.cut_round]
    retried = outcome.errors.count("FirstEventTimeout") - (outcome.ending == "unavailable")
    assert len(times) == 1 + retried
    if outcome.errors[:1] == ["FirstEventTimeout"]:
        assert FIRST_EVENT_TIMEOUT_S <= times[1] - times[0] <= FIRST_EVENT_TIMEOUT_S + LATE_S
    if outcome.given_up_at is not None:
        later = opened.get(shape.cut_round + 1) if whole else None
        given_up_at = later[0] if later else ended_at
        assert outcome.given_up_at - EPSILON <= given_up_at <= outcome.given_up_at + LATE_S

    # the counts
    statistics = llm.statistics()
    assert statistics.errors_by_code == dict(Counter(outcome.errors))
    assert statistics.retries == retried
    assert statistics.streams_open == statistics.attempts_open == 0
    assert statistics.cancellations == 0
    assert call.report.turns.turns == 2
    assert call.report.turns.model_errors == (0 if whole else 1)
    assert call.report.turns.tool_calls == len(ran)
    summary = summaries[0]
    # a read timeout before anything reached the turn is Bedrock's state; past the stream's
    # deadline, or after content, the stream failed
    unavailable = outcome.ending == "unavailable" or (
        outcome.errors[-1:] == ["ReadTimeout"] and not outcome.content)
    assert summary["model_error"] == (None if whole else "ModelUnavailable" if unavailable
                                      else "ModelStreamFailed")
    assert summary["rounds"] == done_rounds + (not whole)
    assert [t["tool"] for t in summary["tools"]] == ran
    assert summary["cut_by"] is None
    assert summaries[1]["model_error"] is None
    stalled = [r for r in fake.requests if r.outcome != "complete"]
    assert len(stalled) == min(len(cuts), len(times))   # every cut attempt, closed by us
    assert all(r.outcome == "client_closed" for r in stalled)
