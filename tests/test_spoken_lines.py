"""A use case's ``lines``: checked as a filler is, stored only when set, kept out of the
TwiML, and looked up for the language Twilio speaks when a line is said."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors.session_language import SessionLanguage
from actors.spoken_lines import SpokenLines
from voiceagent import twiml
from voiceagent.errors import ConfigError
from voiceagent.relay.outbound import Language
from voiceagent.store import config_records
from voiceagent.tools.registry import default_registry
from voiceagent.usecase_lines import DEFAULT_LINES, LINES, MAX_LINE_CHARS
from voiceagent.usecase_lines import SpokenLines as LinesKey
from voiceagent.usecases import UseCase, parse_model

SPANISH = {"reprompt": "¿Sigue ahí?", "trouble": "Perdone, ¿me lo puede repetir?"}


def _use_case(**changes: Any) -> UseCase:
    return parse_model(UseCase, {"name": "test", "prompt": "p", **changes}, "config/test.yaml")


def test_every_line_name_is_a_key_of_the_mapping() -> None:
    assert set(LinesKey.model_fields) == set(LINES) == set(DEFAULT_LINES)


@pytest.mark.parametrize(("lines", "path", "wanted"), [
    ({"reprompts": "¿Sigue ahí?"}, "lines.reprompts",
     "no line is called 'reprompts'; the lines are " + ", ".join(LINES)),
    ({}, "lines", "leave lines out for the defaults"),
    ({"reprompt": "  "}, "lines.reprompt", "leave reprompt out for the default"),
    ({"idle_goodbye": "x" * (MAX_LINE_CHARS + 1)}, "lines.idle_goodbye",
     f"at most {MAX_LINE_CHARS}"),
    ({"trouble": "Perdone.\nOtra vez."}, "lines.trouble", "U+000A"),
])
def test_a_line_that_is_not_one_short_line_or_not_a_line_is_refused_at_load(
        lines: dict[str, str], path: str, wanted: str) -> None:
    for changes, where in (({"lines": lines}, path),
                           ({"languages": [{"code": "es-US", "lines": lines}]},
                            "languages[0]." + path)):
        with pytest.raises(ConfigError) as caught:
            _use_case(**changes)
        assert caught.value.key_path == where
        assert wanted in caught.value.problem, caught.value.problem


def test_lines_are_stored_only_when_set_and_are_no_twiml_attribute() -> None:
    """``lines: null`` would make a release from before them refuse the stored use case."""
    with_lines = _use_case(lines={"reprompt": "Hello?"},
                           languages=[{"code": "en-US"}, {"code": "es-US", "lines": SPANISH}])
    item = config_records.use_case_item(with_lines)
    assert item["voiceagent"]["lines"] == {"reprompt": "Hello?"}
    assert [e.get("lines") for e in item["voiceagent"]["languages"]] == [None, SPANISH]
    assert "lines" not in item["voiceagent"]["languages"][0]
    assert config_records.use_case_from_item(item) == with_lines
    older = config_records.use_case_item(_use_case(languages=[{"code": "es-US"}]))
    assert "lines" not in older["voiceagent"]
    assert "lines" not in older["voiceagent"]["languages"][0]
    document = twiml.connect_relay(ws_url="wss://x/relay", action_url="https://x/action",
                                   use_case=with_lines, parameters={})
    assert "lines" not in document
    assert "Sigue" not in document


def test_the_line_follows_the_language_spoken_then() -> None:
    use_case = _use_case(relay={"language": "en-US"}, lines={"reprompt": "Hello?"},
                         languages=[{"code": "en-US"}, {"code": "en-GB"},
                                    {"code": "es-US", "lines": SPANISH}])
    language = SessionLanguage.for_use_case(use_case)
    lines = SpokenLines(use_case, language)
    # en-US's entry has no lines: the top-level ones, then the defaults (not en-GB's kin)
    assert lines("reprompt") == "Hello?"
    assert lines("trouble") == DEFAULT_LINES["trouble"]
    language.note(Language(tts_language="es-US"))
    assert (lines("reprompt"), lines("trouble")) == (SPANISH["reprompt"], SPANISH["trouble"])
    assert lines("idle_goodbye") == DEFAULT_LINES["idle_goodbye"]
    language.note(Language(tts_language="es-MX"))       # not declared: es-US's, as a switch
    assert lines("reprompt") == SPANISH["reprompt"]
    language.note(Language(tts_language="fr-FR"))       # no entry at all: the top level
    assert lines("reprompt") == "Hello?"
    assert SpokenLines()("reprompt") == DEFAULT_LINES["reprompt"]


def test_config_readme_lists_every_line_with_its_default() -> None:
    text = (Path(__file__).resolve().parent.parent / "config" / "README.md").read_text(
        encoding="utf-8")
    section = text[text.index("## Spoken lines"):text.index("## Relay updates")]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| `")]
    assert {row[0].strip("`"): row[1] for row in rows} == DEFAULT_LINES


LOOK_UP = {"name": "lookUp", "description": "Look it up."}


@pytest.mark.parametrize(("entry", "path", "wanted"), [
    ({"hold_line": " "}, "languages[0].hold_line", "leave hold_line out for silence"),
    ({"hold_line": "x" * 101}, "languages[0].hold_line", "at most 100"),
    ({"fillers": {}}, "languages[0].fillers", "at least one tool"),
    ({"fillers": {"lookUp": "Un momento.\nYa casi."}}, "languages[0].fillers.lookUp",
     "U+000A"),
    ({"fillers": {"lookup": "Un momento."}}, "languages[0].fillers.lookup",
     "tool 'lookup' is not declared in this use case's tools; declared: ['lookUp']"),
])
def test_an_entry_s_hold_line_or_filler_is_checked_as_the_use_case_s_are(
        entry: dict[str, Any], path: str, wanted: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _use_case(tools=[LOOK_UP], languages=[{"code": "es-US", **entry}])
    assert caught.value.key_path == path
    assert wanted in caught.value.problem, caught.value.problem


def test_no_filler_in_any_language_for_a_tool_that_ends_the_call() -> None:
    use_case = _use_case(tools=[{"name": "endCall", "description": "Hang up."}],
                         languages=[{"code": "es-US", "fillers": {"endCall": "Adiós."}}])
    with pytest.raises(ConfigError) as caught:
        default_registry().check_use_case(use_case)
    assert caught.value.key_path == "languages[0].fillers.endCall"
    assert "ends the call" in caught.value.problem
    default_registry().check_use_case(use_case, keywords=False)     # stored: served


def test_an_entry_s_hold_line_and_fillers_are_stored_only_when_set() -> None:
    use_case = _use_case(tools=[LOOK_UP], languages=[
        {"code": "en-US"}, {"code": "es-US", "hold_line": "Un momento.",
                            "fillers": {"lookUp": "Lo compruebo."}}])
    item = config_records.use_case_item(use_case)
    first, second = item["voiceagent"]["languages"]
    assert not {"hold_line", "fillers"} & set(first)
    assert (second["hold_line"], second["fillers"]) == ("Un momento.", {"lookUp": "Lo compruebo."})
    assert config_records.use_case_from_item(item) == use_case
    language = SessionLanguage.for_use_case(use_case)
    lines = SpokenLines(use_case, language)
    assert (lines.hold_line(), lines.filler("lookUp")) == (None, None)
    language.note(Language(tts_language="es-US"))
    assert (lines.hold_line(), lines.filler("lookUp")) == ("Un momento.", "Lo compruebo.")
