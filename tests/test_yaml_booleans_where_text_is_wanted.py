"""YAML 1.1 reads an unquoted ``no`` (Norwegian), ``yes``, ``on`` or ``off`` as a boolean.
Where a use case wants text, a file with ``language: no`` under ``relay:`` loaded and went
out to Twilio as ``language="false"``, and ``code: no`` said only "Input should be a valid
string". Each now says to quote the value, naming the key; booleans stay where they are meant,
and a use case already stored is served as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.twiml_support import relay_element
from voiceagent.errors import ConfigError
from voiceagent.store import config_records
from voiceagent.usecases import UseCase, load_use_case_file

BASE = "name: desk\nprompt: You answer the phone.\n"
UPDATE = "relay_updates:\n  - when: {caller_says: 'norsk'}\n"

# (YAML after BASE, key path reported, the quoted example the error shows)
UNQUOTED = [
    ("relay:\n  language: no\n", "relay.language", 'language: "no"'),
    ("relay:\n  transcriptionLanguage: no\n", "relay.transcriptionLanguage",
     'transcriptionLanguage: "no"'),
    ("relay:\n  voice: on\n", "relay.voice", 'voice: "yes"'),
    ("relay:\n  hints: [pizza, yes]\n", "relay.hints[1]", '"yes"'),
    ("languages:\n  - code: no\n", "languages[0].code", 'code: "no"'),
    ("languages:\n  - code: nb-NO\n    voice: off\n", "languages[0].voice", 'voice: "no"'),
    ("languages:\n  - code: nb-NO\n    failover: {ttsProvider: Google, voice: on}\n",
     "languages[0].failover.voice", 'voice: "yes"'),
    (UPDATE + "    languages: [{code: no, voice: nb-NO-Wavenet-A}]\n",
     "relay_updates[0].languages[0].code", 'code: "no"'),
    (UPDATE + "    hints: [fjord]\n    hints_language: no\n", "relay_updates[0].hints_language",
     'hints_language: "no"'),
    (UPDATE + "    hints: [fjord, no]\n", "relay_updates[0].hints[1]", '"no"'),
    ("handoff:\n  mode: enqueue\n  queue: no\n", "handoff.queue", 'queue: "no"'),
    ("title: yes\n", "title", 'title: "yes"'),
]


def _load(tmp_path: Path, text: str) -> UseCase:
    path = tmp_path / "desk.yaml"
    path.write_text(BASE + text, encoding="utf-8")
    return load_use_case_file(path)


@pytest.mark.parametrize(("text", "key_path", "example"), UNQUOTED,
                         ids=[key_path for _, key_path, _ in UNQUOTED])
def test_a_boolean_where_text_is_wanted_says_to_quote_it(
        tmp_path: Path, text: str, key_path: str, example: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert caught.value.key_path == key_path
    assert "YAML reads an unquoted" in caught.value.problem
    assert f"quote it as you wrote it, e.g. {example}" in caught.value.problem


def test_quoted_the_language_goes_out_as_written(tmp_path: Path) -> None:
    relay = relay_element(_load(tmp_path, 'relay:\n  language: "no"\nlanguages:\n  - code: "no"\n'))
    assert relay.get("language") == "no"
    language = relay.find("Language")
    assert language is not None
    assert language.get("code") == "no"


def test_booleans_stay_where_they_are_meant(tmp_path: Path) -> None:
    relay = relay_element(_load(tmp_path, "relay:\n  dtmfDetection: on\n  interruptible: no\n"
                                   "  ttsTextNormalization: off\n"))
    assert relay.get("dtmfDetection") == "true"
    assert relay.get("interruptible") == "false"
    assert relay.get("ttsTextNormalization") == "off"


def test_a_stored_use_case_is_served_as_it_was() -> None:
    item = config_records.use_case_item(UseCase(name="desk", prompt="Answer briefly."))
    relay = {"language": False, "voice": True}
    item["voiceagent"] = {**item["voiceagent"], "relay": relay,
                          "languages": [{"code": "nb-NO", "voice": False}]}
    item["conversationRelayParams"] = relay
    use_case = config_records.use_case_from_item(item)
    assert use_case.relay == relay
    assert relay_element(use_case).get("language") == "false"
