"""`voiceagent check` points out the tools that can leave a caller in silence: a tool the
model calls without a word first, that runs long and declares no ``filler``, holds the caller
in silence up to its timeout (a review measured 10 s for a slow tool with no filler), and
the check said nothing about it. It is a note under the passing line, one line each, not a
failure: the tool may well answer fast. Both what the service reads: CONFIG_DIR, and the
table's use cases. A tool that plays audio itself (``plays_audio``: playAudio, sendDigits)
needs no filler and is not listed; on a terminal every line is wrapped to its width."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio
import yaml

from tests.check_support import RUN_TIMEOUT_S, base_env, run_check
from voiceagent.app.check import Checklist
from voiceagent.app.check_config import _stored_outcome
from voiceagent.app.check_steps import CheckContext, Outcome
from voiceagent.settings import Settings
from voiceagent.tools.registry import default_registry
from voiceagent.usecase_loading import load_use_case_file
from voiceagent.usecases import UseCase

pytestmark = pytest.mark.timeout(90)

FILLER = "One moment while I check that."


def _use_case(name: str) -> dict[str, object]:
    """CheckOrderStatus (5 s) and PlaceOrderFunction (10 s) with no filler: noted.
    CheckRestaurantPickUpTime has one, CheckRestaurantDeliveryTime is cut to 3 s by the use
    case, endCall ends the call (no filler allowed), playAudio (5 s) and sendDigits (5 s)
    play audio themselves: not noted."""
    return {"name": name, "prompt": "You take orders.", "tools": [
        {"name": "CheckOrderStatus", "description": "Where an order is."},
        {"name": "CheckRestaurantPickUpTime", "description": "Pick-up time.",
         "filler": FILLER},
        {"name": "CheckRestaurantDeliveryTime", "description": "Delivery time.",
         "timeout_s": 3},
        {"name": "PlaceOrderFunction", "description": "Place the order."},
        {"name": "playAudio", "description": "Play hold music."},
        {"name": "sendDigits", "description": "Press keys."},
        {"name": "endCall", "description": "Hang up."}]}


async def test_config_dir_tools_that_can_run_silent_are_noted_not_failed(
        tmp_path: Path) -> None:
    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    (config / "usecases" / "orders.yaml").write_text(yaml.safe_dump(_use_case("orders")))
    (config / "usecases" / "quiet.yaml").write_text(yaml.safe_dump(
        {"name": "quiet", "prompt": "Hi.", "tools": [
            {"name": "CheckOrderStatus", "description": "Where an order is.",
             "filler": FILLER}]}))
    env = base_env(tmp_path, STORE="sqlite", LLM="scripted", DATA_DIR=str(tmp_path / "data"),
                   CONFIG_DIR=str(config), STACK_USE_CASE="orders")
    with trio.fail_after(RUN_TIMEOUT_S):
        run = await run_check(env, tmp_path)
    line = run.lines["use cases and tools"]
    assert run.code == 0, run.out + run.err
    assert line.status == "pass", run.out
    assert line.detail == (f"2 use case(s) in {config} naming 7 tool(s), all among the 11 "
                           "registered"), line.detail
    assert line.advice == [
        "no filler: a caller hears silence while these run, when the model calls them "
        "without a word first",
        "use case orders: CheckOrderStatus (up to 5 s), PlaceOrderFunction (up to 10 s)",
        f'give each a filler, said once it has run 1 s (`filler: "{FILLER}"` in its '
        "declaration, in its use case's file; docs/tools.md)",
        "a tool that plays audio itself needs none: declare it with "
        "@tool(..., plays_audio=True) and it is not listed"], run.out


def _check_table(*use_cases: UseCase) -> Outcome:
    ctx = CheckContext(settings=Settings.model_validate({}), limiter=trio.CapacityLimiter(1))
    outcome = _stored_outcome(ctx, default_registry(), use_cases)
    assert outcome.status == "pass", outcome
    return outcome


def test_table_use_cases_tools_that_can_run_silent_are_noted_with_config_load() -> None:
    outcome = _check_table(UseCase.model_validate(_use_case("orders")),
                           UseCase.model_validate(_use_case("frontDesk")))
    assert outcome.detail == "2 use case(s) in the table naming 7 tool(s), all among the 11 " \
                             "registered", outcome
    assert outcome.advice[1:3] == (
        "use case orders: CheckOrderStatus (up to 5 s), PlaceOrderFunction (up to 10 s)",
        "use case frontDesk: CheckOrderStatus (up to 5 s), PlaceOrderFunction (up to 10 s)")
    assert "in config/, then run `voiceagent config load`" in outcome.advice[3]
    # every tool with a filler, answering within 3 s, ending the call or playing audio
    # itself: nothing to note
    quiet_use_case = UseCase.model_validate({"name": "quiet", "prompt": "Hi.", "tools": [
        {"name": "CheckOrderStatus", "description": "Where.", "filler": FILLER},
        {"name": "PlaceOrderFunction", "description": "Order.", "timeout_s": 3},
        {"name": "playAudio", "description": "Hold music."},
        {"name": "liveAgentHandoff", "description": "A person."}]})
    assert _check_table(quiet_use_case) == Outcome(
        "use cases and tools", "pass", "1 use case(s) in the table naming 4 tool(s), all "
                                       "among the 11 registered")


@pytest.mark.parametrize("width", [None, 60, 100])
def test_the_note_is_wrapped_to_a_terminal_and_left_whole_for_a_pipe(width: int | None
                                                                       ) -> None:
    outcome = _check_table(UseCase.model_validate(_use_case("orders")))
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")     # a terminal's encoding
    Checklist(stream, as_json=False, width=width).show(outcome)
    lines = stream.buffer.getvalue().decode().splitlines()
    if width is None:           # a pipe: one line each, for what reads them
        assert lines == [f"✓ use cases and tools: {outcome.detail}",
                         *(f"    → {note}" for note in outcome.advice)]
        return
    assert max(len(line) for line in lines) <= width, lines
    # the line's continuation indented under its name, each note on its own arrowed line
    # and its continuation under its text
    first_note = next(i for i, line in enumerate(lines) if line.startswith("    → "))
    header, notes = lines[:first_note], lines[first_note:]
    assert header[0].startswith("✓ use cases and tools: "), lines
    assert all(line.startswith("  ") and line[2] != " " for line in header[1:]), lines
    assert all(line.startswith("    → ") or (line.startswith("      ") and line[6] != " ")
               for line in notes), lines
    assert " ".join(line.strip() for line in header) == f"✓ use cases and tools: " \
                                                        f"{outcome.detail}"
    said = " ".join(line.strip() for line in notes).split("→ ")[1:]
    assert [note.strip() for note in said] == list(outcome.advice)


def test_a_tool_that_answers_at_once_is_not_listed() -> None:
    """switchLanguage and setSpeechHints (5 s limits, no filler) queue a message and return:
    no caller waits on them, yet the check listed them as slow, and the example use case cut
    switchLanguage's limit to 3 s only to quiet the note (a filler there would be said in the
    language being left). They are ``instant``; a slow tool beside them is still noted."""
    use_case = UseCase.model_validate({"name": "bilingual", "prompt": "Hi.", "tools": [
        {"name": "switchLanguage", "description": "Switch language.", "input_schema": {
            "type": "object", "properties": {"language": {"type": "string",
                                                          "enum": ["en-US", "es-US"]}}}},
        {"name": "setSpeechHints", "description": "Hints."},
        {"name": "CheckOrderStatus", "description": "Where an order is."}]})
    switch = default_registry().get("switchLanguage")
    assert switch is not None
    assert switch.timeout_s > 3                 # long enough to be listed
    assert _check_table(use_case).advice[1] == \
        "use case bilingual: CheckOrderStatus (up to 5 s)"


def test_the_examples_give_no_instant_tool_a_limit() -> None:
    """The restaurant example cut switchLanguage's limit to 3 s to quiet the note above,
    which ``instant`` now leaves it out of: copied into a project, the line taught a knob
    that changes nothing a caller hears (an instant tool's limit is a guard, not a wait)."""
    registry = default_registry()
    examples = sorted((Path(__file__).parent.parent / "config" / "usecases").glob("*.yaml"))
    assert examples
    limited = [f"{path.name}: {declaration.name}" for path in examples
               for declaration in load_use_case_file(path).tools
               if (definition := registry.get(declaration.name)) is not None
               and definition.instant and declaration.timeout_s is not None]
    assert not limited, limited
