"""A character XML 1.0 cannot carry (a control character such as Word's line break \\x0b, a
lone surrogate, U+FFFE) in a greeting or another text of a use case's TwiML made a document
Twilio refuses: the file loaded, and every call to the use case failed at setup. A file is
refused at load, naming the key and the character; a use case already stored is still served,
its TwiML valid, and the log names the attribute and the code point, never the text."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.twiml_support import relay_document
from voiceagent import twiml
from voiceagent.errors import ConfigError
from voiceagent.store import config_records, records
from voiceagent.usecases import UseCase, load_use_case_file

BASE = "name: desk\nprompt: You answer the phone.\n"
DIAL = 'handoff:\n  mode: dial\n  number: "+15555550123"\n'

# (YAML after BASE, key path reported, code point reported)
REFUSED = [
    ('relay:\n  welcomeGreeting: "Hello.\\x0bHow can I help?"\n',
     "relay.welcomeGreeting", "U+000B"),
    ('relay:\n  welcomeGreeting: "Hi\\x01"\n', "relay.welcomeGreeting", "U+0001"),
    ('relay:\n  hints: "pizza\\x00,pasta"\n', "relay.hints", "U+0000"),
    ('relay_extra:\n  eotThreshold: "0.7\\x1b"\n', "relay_extra.eotThreshold", "U+001B"),
    ('languages:\n  - code: en-US\n    voice: "\\ud800x"\n', "languages[0].voice", "U+D800"),
    ('languages:\n  - code: es-ES\n    failover: {ttsProvider: Google, voice: "a\\uFFFE"}\n',
     "languages[0].failover.voice", "U+FFFE"),
    (DIAL + '  message: "One moment.\\x0c"\n', "handoff.message", "U+000C"),
    ('handoff:\n  mode: enqueue\n  queue: "support\\x7f\\x08"\n', "handoff.queue", "U+0008"),
]


def _load(tmp_path: Path, text: str) -> UseCase:
    path = tmp_path / "desk.yaml"
    path.write_text(BASE + text, encoding="utf-8")
    return load_use_case_file(path)


@pytest.mark.parametrize(("text", "key_path", "code_point"), REFUSED,
                         ids=[code_point for _, _, code_point in REFUSED])
def test_a_file_with_a_character_xml_cannot_carry_is_refused(
        tmp_path: Path, text: str, key_path: str, code_point: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert caught.value.key_path == key_path
    assert code_point in caught.value.problem
    assert "XML" in caught.value.problem
    assert "remove it" in caught.value.problem


def test_tab_newline_and_carriage_return_are_legal_and_kept(tmp_path: Path) -> None:
    use_case = _load(tmp_path, 'relay:\n  welcomeGreeting: "Hi\\tthere.\\r\\nHow can I '
                               'help? \\x85\\u00e9"\n')
    relay = ET.fromstring(relay_document(use_case)).find("Connect/ConversationRelay")
    assert relay is not None
    assert relay.get("welcomeGreeting") == "Hi\tthere.\r\nHow can I help? \x85\u00e9"


def _stored(relay: dict[str, Any], handoff: dict[str, Any] | None = None) -> records.Item:
    """The item an older release wrote for a use case holding these values."""
    item = config_records.use_case_item(UseCase(name="desk", prompt="Answer briefly."))
    full = dict(item["voiceagent"])
    full["relay"] = relay
    if handoff is not None:
        full["handoff"] = handoff
    item["voiceagent"] = full
    item["conversationRelayParams"] = relay
    return item


def test_a_stored_use_case_is_served_with_valid_twiml_and_a_warning(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(twiml, "_WARNED", set())          # what earlier tests warned of
    greeting = "Welcome to the desk.\x0bHow can I help?\x01"
    use_case = config_records.use_case_from_item(_stored({"welcomeGreeting": greeting,
                                                   "voice": "\ud800Joanna-Neural"}))
    assert use_case.relay["welcomeGreeting"] == greeting      # the item is not rewritten
    document = relay_document(use_case)
    relay = ET.fromstring(document).find("Connect/ConversationRelay")
    assert relay is not None
    assert relay.get("welcomeGreeting") == "Welcome to the desk. How can I help?"
    assert relay.get("voice") == "Joanna-Neural"
    assert document.encode()                                  # sendable as UTF-8
    warnings = [r for r in caplog.records if "XML cannot carry" in r.getMessage()]
    assert {r.__dict__["attribute"] for r in warnings} == {"welcomeGreeting", "voice"}
    assert all(r.__dict__["use_case"] == "desk" for r in warnings)
    assert "How can I help" not in caplog.text
    assert relay_document(use_case) == document                # every call: the same document,
    again = [r for r in caplog.records if "XML cannot carry" in r.getMessage()]
    assert len(again) == 2                                # and no new warning


def test_a_stored_table_of_the_sample_is_served_with_valid_twiml() -> None:
    item = _stored({"welcomeGreeting": "Hello\x02"})
    del item["voiceagent"]                                    # as the Node sample wrote it
    relay = ET.fromstring(relay_document(config_records.use_case_from_item(item))).find(
        "Connect/ConversationRelay")
    assert relay is not None
    assert relay.get("welcomeGreeting") == "Hello"


@pytest.mark.parametrize(("handoff", "verb", "target"), [
    ({"mode": "dial", "number": "+15555550123", "message": "One moment\x0b please."},
     "Dial", "+15555550123"),
    ({"mode": "enqueue", "queue": "support\x01", "message": "One moment\x0b please."},
     "Enqueue", "support"),
])
def test_a_stored_handoff_is_answered_with_valid_twiml(handoff: dict[str, Any], verb: str,
                                                       target: str) -> None:
    config = config_records.use_case_from_item(_stored({}, handoff)).handoff
    if config.mode == "dial":
        assert config.number is not None
        document = twiml.dial(config.message, config.number)
    else:
        document = twiml.enqueue(config.message, queue=config.queue)
    response = ET.fromstring(document)
    assert [(child.tag, child.text) for child in response] == [
        ("Say", "One moment  please."), (verb, target)]
