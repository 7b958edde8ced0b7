"""``relay_updates[].hints`` takes a list of phrases, while ``relay.hints`` (and a
``<Language>``'s) took only TwiML's comma-separated string: a list there was refused with
"must be a string, a number or true/false", and a comma-separated string in a relay update
with "Input should be a valid tuple". Both forms are taken in both places; TwiML gets the
phrases joined with commas, as Twilio documents the attribute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.twiml_support import relay_element
from voiceagent.errors import ConfigError
from voiceagent.relay.outbound import encode
from voiceagent.store import config_records
from voiceagent.usecases import UseCase, load_use_case_file

USE_CASE = """\
name: pizzeria
prompt: You take orders on the phone.
relay:
  hints: [margherita, quattro formaggi, calzone]
languages:
  - code: it-IT
    hints:
      - margherita
      - diavola
relay_updates:
  - when: {caller_says: 'order'}
    hints: margherita, pepperoni
  - when: {caller_says: 'italiano'}
    languages:
      - code: it-IT
        hints: [diavola, capricciosa]
"""


def _load(tmp_path: Path, text: str) -> UseCase:
    path = tmp_path / "pizzeria.yaml"
    path.write_text(text, encoding="utf-8")
    return load_use_case_file(path)


def test_a_list_of_hints_goes_into_twiml_comma_separated(tmp_path: Path) -> None:
    relay = relay_element(_load(tmp_path, USE_CASE))
    assert relay.get("hints") == "margherita,quattro formaggi,calzone"
    language = relay.find("Language")
    assert language is not None
    assert language.get("hints") == "margherita,diavola"


def test_relay_updates_take_either_form(tmp_path: Path) -> None:
    first, second = _load(tmp_path, USE_CASE).relay_updates
    frames = [json.loads(encode(m)) for m in (*first.messages(), *second.messages())]
    assert frames == [
        {"type": "hints", "hints": "margherita,pepperoni"},
        {"type": "config", "languages": [{"code": "it-IT", "hints": "diavola,capricciosa"}]}]


def test_the_store_keeps_the_twiml_string(tmp_path: Path) -> None:
    item = config_records.use_case_item(_load(tmp_path, USE_CASE))
    assert item["conversationRelayParams"]["hints"] == "margherita,quattro formaggi,calzone"
    assert relay_element(config_records.use_case_from_item(item)).get("hints") == (
        "margherita,quattro formaggi,calzone")


@pytest.mark.parametrize(("hints", "key_path", "words"), [
    ("[]", "relay.hints", "no hints listed"),
    ("[margherita, '  ']", "relay.hints[1]", "blank hint"),
    ("['margherita, diavola']", "relay.hints[0]", "make 'margherita, diavola' two hints"),
    ("[margherita, 4]", "relay.hints[1]", 'quote it as you wrote it ("4")'),
])
def test_a_wrong_list_says_which_hint_and_why(tmp_path: Path, hints: str, key_path: str,
                                              words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"name: pizzeria\nprompt: You take orders.\nrelay:\n  hints: {hints}\n")
    assert caught.value.key_path == key_path
    assert words in caught.value.problem
