"""The ConversationRelay attributes whose values Twilio documents (``interruptible`` and
``welcomeGreetingInterruptible``: none/dtmf/speech/any; ``reportInputDuringAgentSpeech``
likewise; ``interruptSensitivity``: low/medium/high; the text normalizations: auto/on/off;
on/off flags; ``eagerEotThreshold``: 0.3-0.9). Any value loaded and went out in the TwiML of
every call, where Twilio first saw it; a boolean ``reportInputDuringAgentSpeech`` went out as
"true", a value Twilio no longer documents for it. Now a value Twilio does not document is
refused at load, naming the key, and the boolean goes out as "any" or "none"."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fakes import FakeLLM, words
from tests.server_harness import AUTH_TOKEN, make_settings, one_use_case_config, running_server
from tests.test_docs_match_code import ROOT, TICKED, _section, _tables
from tests.twiml_support import relay_element
from voiceagent.app.caller import open_call, post_form
from voiceagent.errors import ConfigError
from voiceagent.relay.outbound import encode
from voiceagent.relay_values import CHOICES, FLAGS, RANGES
from voiceagent.store import config_records
from voiceagent.usecases import UseCase, load_use_case_file

BASE = "name: desk\nprompt: You answer the phone.\n"
UPDATE = "relay_updates:\n  - when: {caller_says: 'card'}\n"

# (YAML after BASE, the key path reported, words the problem must hold)
REFUSED = [
    ("relay:\n  interruptible: speach\n", "relay.interruptible",
     "none, dtmf, speech, any or true/false"),
    ("relay:\n  interruptible: speach\n", "relay.interruptible", "did you mean speech?"),
    ("relay:\n  welcomeGreetingInterruptible: all\n", "relay.welcomeGreetingInterruptible",
     "none, dtmf, speech, any"),
    ("relay:\n  reportInputDuringAgentSpeech: Speech\n", "relay.reportInputDuringAgentSpeech",
     "did you mean speech?"),
    ("relay:\n  interruptSensitivity: mid\n", "relay.interruptSensitivity",
     "low, medium, high"),
    ("relay:\n  interruptSensitivity: yes\n", "relay.interruptSensitivity",
     "low, medium, high"),
    ("relay:\n  dtmfDetection: 'on'\n", "relay.dtmfDetection", "write true or false"),
    ("relay:\n  partialPrompts: 1\n", "relay.partialPrompts", "write true or false"),
    ("relay:\n  eagerEotThreshold: 1.5\n", "relay.eagerEotThreshold", "from 0.3 to 0.9"),
    ("relay:\n  eagerEotThreshold: soon\n", "relay.eagerEotThreshold", "from 0.3 to 0.9"),
    ("languages:\n  - code: en-US\n    ttsTextNormalization: enabled\n",
     "languages[0].ttsTextNormalization", "auto, on, off"),
    (UPDATE + "    config: {interruptible: never}\n", "relay_updates[0].config.interruptible",
     "none, dtmf, speech, any"),
    (UPDATE + "    languages: [{code: en-US, asrSmartFormat: maybe}]\n",
     "relay_updates[0].languages[0].asrSmartFormat", "write true or false"),
]


def _load(tmp_path: Path, text: str) -> UseCase:
    path = tmp_path / "desk.yaml"
    path.write_text(BASE + text, encoding="utf-8")
    return load_use_case_file(path)


@pytest.mark.parametrize(("text", "key_path", "words_"), REFUSED,
                         ids=[f"{key}-{n}" for n, (_, key, _) in enumerate(REFUSED)])
def test_a_value_twilio_does_not_document_is_refused_at_load(
        tmp_path: Path, text: str, key_path: str, words_: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert caught.value.key_path == key_path
    assert words_ in caught.value.problem


def test_documented_values_load_and_go_out_as_written(tmp_path: Path) -> None:
    relay = relay_element(_load(tmp_path, (
        "relay:\n  interruptible: dtmf\n  welcomeGreetingInterruptible: false\n"
        "  reportInputDuringAgentSpeech: speech\n  interruptSensitivity: low\n"
        "  dtmfDetection: 'true'\n  eagerEotThreshold: 0.5\n  speechTimeout: auto\n")))
    assert {name: relay.get(name) for name in (
        "interruptible", "welcomeGreetingInterruptible", "reportInputDuringAgentSpeech",
        "interruptSensitivity", "dtmfDetection", "eagerEotThreshold", "speechTimeout")} == {
        "interruptible": "dtmf", "welcomeGreetingInterruptible": "false",
        "reportInputDuringAgentSpeech": "speech", "interruptSensitivity": "low",
        "dtmfDetection": "true", "eagerEotThreshold": "0.5", "speechTimeout": "auto"}


def test_a_boolean_report_input_goes_out_as_any_or_none(tmp_path: Path) -> None:
    use_case = _load(tmp_path, "relay:\n  reportInputDuringAgentSpeech: on\n"
                     + UPDATE + "    config: {reportInputDuringAgentSpeech: off}\n")
    assert relay_element(use_case).get("reportInputDuringAgentSpeech") == "any"
    (message,) = use_case.relay_updates[0].messages()
    assert json.loads(encode(message)) == {"type": "config",
                                           "reportInputDuringAgentSpeech": "none"}


def test_true_or_false_quoted_is_the_boolean_it_spells(tmp_path: Path) -> None:
    """Twilio documents true/false for ``interruptible`` (and the greeting's), and a quoted
    'true' is the same TwiML as an unquoted one; it was refused at load by a message saying
    the attribute takes "... or true/false". Now it is taken as the boolean everywhere: the
    documented word in the TwiML, a JSON boolean in a ``config`` frame."""
    use_case = _load(tmp_path, (
        "relay:\n  interruptible: 'true'\n  welcomeGreetingInterruptible: 'false'\n"
        "  reportInputDuringAgentSpeech: 'true'\n"
        "languages:\n  - code: en-US\n    ttsTextNormalization: 'false'\n"
        + UPDATE + "    config: {interruptible: 'false', reportInputDuringAgentSpeech: 'false',"
        " dtmfDetection: 'true'}\n"))
    relay = relay_element(use_case)
    assert {name: relay.get(name) for name in (
        "interruptible", "welcomeGreetingInterruptible", "reportInputDuringAgentSpeech")} == {
        "interruptible": "true", "welcomeGreetingInterruptible": "false",
        "reportInputDuringAgentSpeech": "any"}
    language = relay.find("Language")
    assert language is not None
    assert language.get("ttsTextNormalization") == "off"
    (message,) = use_case.relay_updates[0].messages()
    assert json.loads(encode(message)) == {"type": "config", "interruptible": False,
                                           "reportInputDuringAgentSpeech": "none",
                                           "dtmfDetection": True}


def test_a_stored_use_case_with_an_undocumented_value_is_still_served(
        tmp_path: Path) -> None:
    item = config_records.use_case_item(_load(tmp_path, "relay:\n  interruptible: any\n"))
    item["voiceagent"]["relay"]["interruptible"] = "speach"   # as an older release stored it
    stored = config_records.use_case_from_item(item)
    assert relay_element(stored).get("interruptible") == "speach"


USE_CASE: dict[str, Any] = {
    "name": "reportInput",
    "prompt": "You answer the phone.",
    "relay": {"welcomeGreeting": "Hello.", "reportInputDuringAgentSpeech": True},
    "relay_updates": [{"when": {"caller_says": "card"},
                       "config": {"reportInputDuringAgentSpeech": False}}],
}


async def test_the_webhook_and_the_socket_carry_any_and_none(tmp_path: Path) -> None:
    """Through the server: the signed webhook's TwiML, and the ``config`` frame a relay
    update sends to a WebSocket caller."""
    settings = make_settings(tmp_path, CONFIG_DIR=str(one_use_case_config(tmp_path, USE_CASE)),
                             STACK_USE_CASE="reportInput")
    form = {"CallSid": "CA" + "3" * 32, "AccountSid": "AC" + "2" * 32, "From": "+15555550100",
            "To": "+15555550199", "CallStatus": "ringing", "Direction": "inbound"}
    with trio.fail_after(20):
        async with running_server(settings, llm=FakeLLM([words("Sure.")])) as server:
            document = await post_form(server.url + "/twiml", form, AUTH_TOKEN)
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("my card is ready")
                reply = await call.read_reply()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    element = ET.fromstring(document).find("Connect/ConversationRelay")
    assert element is not None
    assert element.attrib["reportInputDuringAgentSpeech"] == "any"
    assert reply.frames[0] == {"type": "config", "reportInputDuringAgentSpeech": "none"}


RELAY_2026 = ROOT / "docs" / "conversation-relay-2026.md"
CHECKS_HEADING = "## Attribute values: what is checked at load, and what is not"


def test_the_doc_says_which_attribute_values_are_checked_as_the_code_checks_them() -> None:
    """docs/conversation-relay-2026.md records, per attribute, whether Twilio documents its
    values and so whether a use case's value is checked at load (``speechTimeout`` and
    ``eotThreshold``: no range found, not checked). A range added to ``relay_values`` without
    the doc, or the doc claiming one the code lacks, sends an operator after the wrong cause
    of a call Twilio ends at setup."""
    checked = set(CHOICES) | set(FLAGS) | set(RANGES)
    rows = [row for _, table in _tables(_section(RELAY_2026, CHECKS_HEADING), "attribute")
            for row in table]
    assert {"speechTimeout", "eotThreshold"} <= {
        name for row in rows for name in TICKED.findall(row[0])}
    for row in rows:
        names = TICKED.findall(row[0])
        claimed = row[-1].split(":")[0].strip()
        assert claimed in ("yes", "no"), row
        assert (claimed == "yes") == any(name in checked for name in names), (
            f"{names}: the doc says {claimed!r}; relay_values checks "
            f"{sorted(set(names) & checked) or 'none of them'}")
