"""How many lines one socket's flood of frames writes to the log (CloudWatch bills each one),
through the real server and a real WebSocket: a second setup, a blank prompt, an error
report, an interrupt with a field we cannot read, a configuration Twilio says it applied, a
prompt over MAX_PROMPT_CHARS, each sent hundreds of times. Each was a line per frame (~550
lines a second from one socket, measured); now the first few of each kind per call are
logged, and the call's "call ended" line counts the rest."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import trio
import trio.testing

from actors.call import MAX_FRAMES_BEFORE_SETUP
from actors.interrupt_handler import InputPolicy
from tests.call_harness import CALL_SID, open_test_call
from tests.fakes import FakeLLM, words
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_session_binding import closed_with, signed_socket
from voiceagent.app.caller import open_call

ROUNDS = 200
FLOOD = [
    {"type": "setup", "sessionId": "VX1", "callSid": "CA" + "0" * 32},
    {"type": "prompt", "voicePrompt": "   ", "lang": "en-US", "last": True},
    {"type": "error", "description": "Invalid message received (64107)"},
    {"type": "interrupt", "utteranceUntilInterrupt": 7, "durationUntilInterruptMs": "soon"},
    {"type": "info", "name": "configUpdated", "value": "language"},
]
LONG = {"type": "prompt", "voicePrompt": "hours " * 500, "lang": "en-US", "last": True}
PER_KIND = {"second setup ignored": "second_setup", "blank prompt ignored": "blank_prompt",
            "twilio reported an error": "twilio_error",
            "interrupt field unusable, taken as absent": "interrupt_field",
            "relay configuration updated": "config_updated"}


async def test_a_flood_from_one_socket_is_a_few_lines_per_kind_and_a_count(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    with trio.fail_after(60):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                for _ in range(ROUNDS):
                    for frame in FLOOD:
                        await call.send_raw(json.dumps(frame))
                for _ in range(ROUNDS):                    # these start turns: two a 0.3 s
                    await call.send_raw(json.dumps(LONG))
                await call.say("what are your hours?")
                await call.read_reply()                    # every frame before was read
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    mine = [r for r in records if vars(r).get("call_sid") == call.identity.call_sid]
    events = Counter(r.getMessage() for r in mine)
    assert {event: events[event] for event in PER_KIND} == dict.fromkeys(PER_KIND, 5)
    assert events["prompt truncated"] == 5
    per_turn = ("turn done", "turn cancelled", "queued input merged",
                "unanswered caller words dropped")
    assert sum(n for event, n in events.items() if event not in per_turn) < 40, events
    assert {r.name for r in mine if r.getMessage() in PER_KIND} == {
        "actors.relay_reader", "actors.interrupt_handler"}
    (ended,) = [r for r in mine if r.getMessage() == "call ended"]
    not_logged = vars(ended)["lines_not_logged"]
    assert not_logged.pop("prompt_truncated") >= ROUNDS - 5     # its turns' words, again
    assert not_logged == {kind: ROUNDS - 5 for kind in PER_KIND.values()}
    fifth = [r for r in mine if r.getMessage() == "second setup ignored"][-1]
    assert vars(fifth)["more_counted_only"] is True


async def test_frames_before_setup_are_a_few_lines_per_socket(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    """A replayed signed upgrade that sends prompts instead of setup: each socket is closed
    after MAX_FRAMES_BEFORE_SETUP frames; a line for each of them was 20 lines a socket."""
    with trio.fail_after(60):
        async with running_server(make_settings(tmp_path)) as server:
            for _ in range(3):
                async with signed_socket(server) as ws:
                    for _ in range(MAX_FRAMES_BEFORE_SETUP):
                        await ws.send_message(json.dumps(FLOOD[1]))
                    assert await closed_with(ws) == 1008
            await server.runtime.calls.wait_idle()
    events = Counter(r.getMessage() for r in records)
    assert events["message before setup dropped"] == 3 * 5
    assert events["no setup received"] == 3


async def test_a_flood_that_starts_turns_logs_a_few_lines_per_turn_the_gate_lets_through(
        autojump_clock: trio.testing.MockClock, records: list[logging.LogRecord]) -> None:
    """Prompts, interrupts and key entries at wire speed, for a minute. The per-turn lines
    ("turn done", "turn cancelled", "queued input merged", "unanswered caller words
    dropped") are not budgeted: the turn gate (two turns per MIN_TURN_GAP) already bounds
    them, each turn is a model request that costs far more than its lines, and the CallSid
    on each shows an operator which call is hammering. Measured: ~3.5 lines (~250 bytes
    each) per turn, 6.7 turns a second, ~21 MB of log an hour (a normal call: one line a
    turn). A line per frame instead would be ~400 a second: this says so."""
    seconds, gap_s = 60.0, InputPolicy().min_turn_gap_s
    frames = 0
    async with open_test_call(FakeLLM([words("We open at nine.", first_s=0.4)])) as call:
        await trio.sleep(1)
        started = trio.current_time()
        while trio.current_time() - started < seconds:
            call.say(f"now {frames}")
            call.interrupt(heard="We open", duration_ms=100)
            call.socket.push({"type": "dtmf", "digit": "1"})
            call.socket.push({"type": "dtmf", "digit": "#"})
            frames += 4
            await trio.sleep(0.01)
        await call.hang_up()
    events = Counter(r.getMessage() for r in records)
    turns = events["turn done"]
    assert 1.5 * seconds / gap_s < turns <= 2 * seconds / gap_s + 2, events
    assert sum(events.values()) <= 4 * turns + 10, events
    assert sum(events.values()) < frames / 10
    assert {vars(r)["call_sid"] for r in records} == {CALL_SID}
