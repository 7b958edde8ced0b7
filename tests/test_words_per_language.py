"""A ``languages`` entry's ``handoff_message``, ``scripted_fallback`` and ``dtmf_replies``:
checked as a spoken line is, stored only when set, kept out of the TwiML."""

from __future__ import annotations

from typing import Any

import pytest

from voiceagent import twiml
from voiceagent.errors import ConfigError
from voiceagent.store import config_records
from voiceagent.usecase_lines import MAX_SAID_INSTEAD_CHARS
from voiceagent.usecases import UseCase, parse_model

KEYS = {"handlers": {"1": {"reply": "We open at eleven."}, "0": {"to_model": True}}}


def _use_case(**changes: Any) -> UseCase:
    return parse_model(UseCase, {"name": "test", "prompt": "p", "dtmf": KEYS, **changes},
                       "config/test.yaml")


@pytest.mark.parametrize(("entry", "path", "wanted"), [
    ({"handoff_message": " "}, "languages[0].handoff_message",
     "leave handoff_message out for the use case's own"),
    ({"scripted_fallback": "x" * (MAX_SAID_INSTEAD_CHARS + 1)},
     "languages[0].scripted_fallback", f"at most {MAX_SAID_INSTEAD_CHARS}"),
    ({"handoff_message": "Un momento.\nYa."}, "languages[0].handoff_message", "U+000A"),
    ({"dtmf_replies": {}}, "languages[0].dtmf_replies", "at least one key"),
    ({"dtmf_replies": {"1": "Abrimos\ta las once."}}, "languages[0].dtmf_replies.1",
     "U+0009"),
    ({"dtmf_replies": {"0": "Le paso."}}, "languages[0].dtmf_replies.0",
     "keys '0' have no handler with a reply in this use case's dtmf.handlers; "
     "with a reply: ['1']"),
    ({"dtmf_replies": {"2": "Le paso."}}, "languages[0].dtmf_replies.2", "with a reply: ['1']"),
])
def test_an_entry_s_words_are_checked_as_a_line_is(entry: dict[str, Any], path: str,
                                                    wanted: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _use_case(relay={"dtmfDetection": True}, languages=[{"code": "es-US", **entry}])
    assert caught.value.key_path == path
    assert wanted in caught.value.problem, caught.value.problem


def test_an_entry_s_words_are_stored_only_when_set_and_are_no_twiml_attribute() -> None:
    """A release from before them refuses an entry with a key it does not know."""
    words = {"handoff_message": "Le paso.", "scripted_fallback": "Perdone.",
             "dtmf_replies": {"1": "Abrimos a las once."}}
    use_case = _use_case(relay={"dtmfDetection": True},
                         languages=[{"code": "en-US"}, {"code": "es-US", **words}])
    item = config_records.use_case_item(use_case)
    first, second = item["voiceagent"]["languages"]
    assert not set(words) & set(first)
    assert {key: second[key] for key in words} == words
    assert config_records.use_case_from_item(item) == use_case
    document = twiml.connect_relay(ws_url="wss://x/relay", action_url="https://x/action",
                                   use_case=use_case, parameters={})
    assert "Abrimos" not in document
    assert "Perdone" not in document


@pytest.mark.parametrize(("key", "meant"), [
    ("handoff_mesage", "handoff_message"), ("scriptedFallback", "scripted_fallback"),
    ("dtmf_reply", "dtmf_replies"), ("filler", "fillers"), ("hold-line", "hold_line")])
def test_an_entry_s_own_key_misspelt_is_told_its_name(key: str, meant: str) -> None:
    """Found by review (s22): ``handoff_mesage`` was told only of the <Language> attributes
    the twilio builder names, none of them alike, so the entry's own keys went unsuggested."""
    with pytest.raises(ConfigError) as caught:
        _use_case(languages=[{"code": "es-US", key: "Le paso."}])
    assert caught.value.key_path == f"languages[0].{key}"
    assert f"did you mean {meant}?" in caught.value.problem
    assert "scripted_fallback, dtmf_replies" in caught.value.problem
