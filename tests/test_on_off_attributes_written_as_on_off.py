"""ttsTextNormalization and elevenlabsTextNormalization take auto/on/off. YAML reads an
unquoted ``on``/``off`` as a boolean, which used to go out as "true"/"false": in the TwiML,
in a ``<Language>``, and in a relay update's ``config`` message."""

from __future__ import annotations

import json
from pathlib import Path

from tests.twiml_support import relay_element
from voiceagent.relay.outbound import encode
from voiceagent.store import config_records
from voiceagent.usecases import UseCase, load_use_case_file

USE_CASE = """\
name: normalized
prompt: You answer the phone.
relay:
  ttsTextNormalization: on
  elevenlabsTextNormalization: off
  dtmfDetection: on
languages:
  - code: en-US
    ttsTextNormalization: off
relay_updates:
  - when: {caller_says: 'number'}
    languages:
      - code: en-US
        elevenlabsTextNormalization: on
"""


def _loaded(tmp_path: Path) -> UseCase:
    path = tmp_path / "normalized.yaml"
    path.write_text(USE_CASE, encoding="utf-8")
    return load_use_case_file(path)


def test_unquoted_on_and_off_are_rendered_as_on_and_off(tmp_path: Path) -> None:
    relay = relay_element(_loaded(tmp_path))
    assert relay.get("ttsTextNormalization") == "on"
    assert relay.get("elevenlabsTextNormalization") == "off"
    assert relay.get("dtmfDetection") == "true"          # a real boolean stays one
    language = relay.find("Language")
    assert language is not None
    assert language.get("ttsTextNormalization") == "off"


def test_a_relay_update_sends_on_rather_than_true(tmp_path: Path) -> None:
    (message,) = _loaded(tmp_path).relay_updates[0].messages()
    frame = json.loads(encode(message))
    assert frame == {"type": "config",
                     "languages": [{"code": "en-US", "elevenlabsTextNormalization": "on"}]}


def test_a_stored_use_case_keeps_its_boolean_and_is_rendered_as_on(tmp_path: Path) -> None:
    stored = config_records.use_case_from_item(config_records.use_case_item(_loaded(tmp_path)))
    assert stored.relay["ttsTextNormalization"] is True      # the item is not rewritten
    assert relay_element(stored).get("ttsTextNormalization") == "on"
