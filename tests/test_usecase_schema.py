"""Issue 17's use-case keys: ConversationRelay attributes checked against the installed twilio
builder, relay_extra, languages with failover, auto_language, relay_updates and reply controls.
Every file goes through the loader the server uses (``read_config_dir``)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from twilio.twiml import lower_camel
from twilio.twiml.voice_response import Connect, ConversationRelay

from tests.twiml_support import relay_element
from voiceagent.app.cli_store import export_files
from voiceagent.catalog import read_config_dir
from voiceagent.errors import ConfigError
from voiceagent.relay.protocol import Config, Hints
from voiceagent.relay_values import CHOICES, FLAGS, NOT_SERVED, RANGES
from voiceagent.store import config_records
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase

BASE: dict[str, Any] = {
    "name": "schemaTest",
    "prompt": "You answer the phone.",
    "tools": [{"name": "PlaceOrderFunction", "description": "Place the order."},
              {"name": "endCall", "description": "Hang up."}],
}


def _named(method: Any, leave_out: str = "") -> list[str]:
    """The TwiML names of a builder method's named parameters, read here independently."""
    return [lower_camel(p.name) for p in inspect.signature(method).parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("self", leave_out)]


def _write(tmp_path: Path, changes: dict[str, Any]) -> Path:
    folder = tmp_path / "config"
    (folder / "usecases").mkdir(parents=True, exist_ok=True)
    path = folder / "usecases" / "schemaTest.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}, allow_unicode=True), encoding="utf-8")
    return path


def _load(tmp_path: Path, **changes: Any) -> UseCase:
    _write(tmp_path, changes)
    (use_case,) = read_config_dir(tmp_path / "config", default_registry()).use_cases
    return use_case


def _error(tmp_path: Path, **changes: Any) -> tuple[Path, ConfigError]:
    path = _write(tmp_path, changes)
    with pytest.raises(ConfigError) as caught:
        read_config_dir(tmp_path / "config", default_registry())
    return path, caught.value


def _value(name: str) -> str:
    """Text for the attribute ``name`` that its documented values (``relay_values``) allow,
    and this release serves (off, for what it does not serve on): free text where Twilio
    documents none."""
    if name in CHOICES:
        return CHOICES[name][-1]
    if name in FLAGS:
        return "false" if name in NOT_SERVED else "true"
    if name in RANGES:
        return str(RANGES[name][0])
    return f"v-{name}"


# ------------------------------------------------------------------ relay and relay_extra


def test_every_builder_named_relay_attribute_is_accepted_and_rendered(tmp_path: Path) -> None:
    names = _named(Connect.conversation_relay, leave_out="url")
    assert {"welcomeGreeting", "speechTimeout", "turnDetection"} <= set(names)
    use_case = _load(tmp_path, relay={name: _value(name) for name in names})
    attributes = relay_element(use_case).attrib
    assert {name: attributes[name] for name in names} == {name: _value(name) for name in names}
    assert attributes["url"] == "wss://a.example/relay"


def test_a_misspelt_relay_attribute_names_file_key_and_suggestion(tmp_path: Path) -> None:
    path, err = _error(tmp_path, relay={"welcomeGreeting": "Hi", "speechTimout": 900})
    assert err.path == str(path)
    assert err.key_path == "relay.speechTimout"
    assert "did you mean speechTimeout?" in err.problem
    assert ("attributes the installed twilio package's ConversationRelay builder names"
            in err.problem)
    assert "relay_extra" in err.problem
    assert str(err).startswith(f"{path}: relay.speechTimout: unknown ConversationRelay")


def test_a_python_spelt_relay_attribute_suggests_the_twiml_name(tmp_path: Path) -> None:
    _, err = _error(tmp_path, relay={"welcome_greeting": "Hi"})
    assert err.key_path == "relay.welcome_greeting"
    assert "did you mean welcomeGreeting?" in err.problem


def test_an_attribute_the_builder_does_not_name_is_refused_under_relay(tmp_path: Path) -> None:
    _, err = _error(tmp_path, relay={"eotThreshold": 0.7})
    assert err.key_path == "relay.eotThreshold"
    assert "relay_extra" in err.problem


def test_relay_extra_is_rendered_verbatim(tmp_path: Path) -> None:
    use_case = _load(tmp_path, relay={"welcomeGreeting": "Hi", "turnDetection": True},
                     relay_extra={"eotThreshold": 0.7, "conversationConfiguration": "cfg1"})
    assert use_case.relay_extra == {"eotThreshold": 0.7, "conversationConfiguration": "cfg1"}
    for greeting in (True, False):
        attributes = relay_element(use_case, greeting=greeting).attrib
        assert attributes["eotThreshold"] == "0.7"
        assert attributes["conversationConfiguration"] == "cfg1"
        assert attributes["turnDetection"] == "true"
        assert ("welcomeGreeting" in attributes) is greeting


@pytest.mark.parametrize(("key", "problem"), [
    ("speechTimeout", "put speechTimeout under relay:"),
    ("welcomeGreeting", "put welcomeGreeting under relay:"),
    ("url", "url is the relay socket's address"),
    ("EotThreshold", "lowerCamelCase"),
    ("eot_threshold", "lowerCamelCase"),
    ("eot-threshold", "lowerCamelCase"),
])
def test_relay_extra_rules(tmp_path: Path, key: str, problem: str) -> None:
    _, err = _error(tmp_path, relay_extra={key: "1"})
    assert err.key_path == f"relay_extra.{key}"
    assert problem in err.problem


def test_a_relay_value_must_be_a_scalar(tmp_path: Path) -> None:
    _, err = _error(tmp_path, relay={"voice": ["a", "b"]})    # hints alone takes a list
    assert err.key_path == "relay.voice"
    assert "string, a number or true/false" in err.problem


# ------------------------------------------------------------------ languages and failover


def test_every_builder_named_language_attribute_is_accepted(tmp_path: Path) -> None:
    names = [n for n in _named(ConversationRelay.language) if n != "code"]
    assert {"voice", "ttsProvider", "hints", "asrSmartFormat"} <= set(names)
    entry = {"code": "es-ES"} | {name: _value(name) for name in names}
    use_case = _load(tmp_path, languages=[entry])
    (language,) = use_case.languages
    assert language.code == "es-ES"
    assert language.attributes() == entry
    assert language.failover_attributes() is None
    (element,) = relay_element(use_case).findall("Language")
    assert element.attrib == entry


def test_a_misspelt_language_attribute_names_its_key_path(tmp_path: Path) -> None:
    path, err = _error(tmp_path, languages=[{"code": "en-US"},
                                            {"code": "es-ES", "vioce": "es-ES-Neural2-A"}])
    assert err.path == str(path)
    assert err.key_path == "languages[1].vioce"
    assert "did you mean voice?" in err.problem
    assert "ConversationRelay builder names for <Language>" in err.problem


@pytest.mark.parametrize(("failover", "key_path", "problem"), [
    ({"ttsProvder": "Google"}, "languages[0].failover.ttsProvder", "did you mean ttsProvider?"),
    ({"code": "es-MX"}, "languages[0].failover.code", "unknown <Failover> <Language>"),
    ({}, "languages[0].failover", "at least one attribute"),
    ({"voice": {"name": "x"}}, "languages[0].failover.voice", "string, a number"),
])
def test_failover_errors(tmp_path: Path, failover: dict[str, Any], key_path: str,
                         problem: str) -> None:
    _, err = _error(tmp_path, languages=[{"code": "es-ES", "failover": failover}])
    assert err.key_path == key_path
    assert problem in err.problem


def test_language_code_is_required_and_unique(tmp_path: Path) -> None:
    _, err = _error(tmp_path, languages=[{"voice": "x"}])
    assert err.key_path == "languages[0].code"
    _, err = _error(tmp_path, languages=[{"code": "es-ES"}, {"code": "ES-es"}])
    assert err.key_path == "languages[1].code"
    assert "declared twice" in err.problem


def test_failover_is_one_element_with_a_language_per_backup(tmp_path: Path) -> None:
    use_case = _load(tmp_path, relay={"ttsProvider": "ElevenLabs"}, languages=[
        {"code": "en-US", "voice": "v-en",
         "failover": {"ttsProvider": "Amazon", "voice": "Joanna-Neural"}},
        {"code": "fr-FR"},
        {"code": "es-ES", "voice": "v-es", "asrSmartFormat": True,
         "failover": {"ttsProvider": "Google", "voice": "es-ES-Neural2-A",
                      "transcriptionProvider": "Google", "speechModel": "telephony"}}])
    assert use_case.languages[2].failover_attributes() == {
        "code": "es-ES", "ttsProvider": "Google", "voice": "es-ES-Neural2-A",
        "transcriptionProvider": "Google", "speechModel": "telephony"}
    relay = relay_element(use_case)
    assert [child.tag for child in relay] == ["Language"] * 3 + ["Failover", "Parameter"]
    assert [child.attrib for child in relay.findall("Language")] == [
        {"code": "en-US", "voice": "v-en"}, {"code": "fr-FR"},
        {"code": "es-ES", "voice": "v-es", "asrSmartFormat": "true"}]
    (failover,) = relay.findall("Failover")
    assert failover.attrib == {}
    assert [(child.tag, child.attrib) for child in failover] == [
        ("Language", {"code": "en-US", "ttsProvider": "Amazon", "voice": "Joanna-Neural"}),
        ("Language", {"code": "es-ES", "ttsProvider": "Google", "voice": "es-ES-Neural2-A",
                      "transcriptionProvider": "Google", "speechModel": "telephony"})]


def test_no_failover_no_element(tmp_path: Path) -> None:
    use_case = _load(tmp_path, languages=[{"code": "en-US"}, {"code": "es-ES"}])
    assert relay_element(use_case).find("Failover") is None


# ------------------------------------------------------------------ automatic language


@pytest.mark.parametrize(("codes", "auto", "enabled"), [
    ([], None, False),
    (["en-US"], None, False),
    (["en-US", "es-ES"], None, True),
    (["en-US", "es-ES"], False, False),
    (["en-US"], True, True),
])
def test_auto_language_default(tmp_path: Path, codes: list[str], auto: bool | None,
                               enabled: bool) -> None:
    changes: dict[str, Any] = {"languages": [{"code": c} for c in codes]}
    if auto is not None:
        changes["auto_language"] = auto
    use_case = _load(tmp_path, **changes)
    assert use_case.auto_language is auto
    assert use_case.auto_language_enabled is enabled


def test_auto_language_needs_languages(tmp_path: Path) -> None:
    _, err = _error(tmp_path, auto_language=True)
    assert err.key_path == "auto_language"


@pytest.mark.parametrize(("lang", "code"), [
    ("en-US", "en-US"), ("en-us", "en-US"), ("EN-US", "en-US"), ("en", "en-US"),
    ("en-AU", "en-US"), ("en-GB", "en-GB"), ("es", "es-ES"), ("ES", "es-ES"),
    ("es-MX", "es-ES"), ("zh-Hant-TW", "zh-Hant-TW"), ("zh-hant-tw", "zh-Hant-TW"),
    ("zh", "zh-Hant-TW"), ("zh-CN", "zh-Hant-TW"), ("fr", None), ("fr-FR", None), ("", None),
    ("multi", None),
])
def test_language_for(tmp_path: Path, lang: str, code: str | None) -> None:
    use_case = _load(tmp_path, languages=[{"code": c} for c in
                                          ("en-US", "es-ES", "en-GB", "zh-Hant-TW")])
    entry = use_case.language_for(lang)
    assert (entry.code if entry is not None else None) == code


# ------------------------------------------------------------------ relay_updates


def test_relay_updates_parse_and_build_their_messages(tmp_path: Path) -> None:
    use_case = _load(tmp_path, languages=[{"code": "en-US"}, {"code": "es-ES"}], relay_updates=[
        {"when": {"tool": "PlaceOrderFunction"}, "hints": ["margherita", "pepperoni"],
         "hints_language": "en-US"},
        {"when": {"agent_says": r"\bcard number\b"},
         "config": {"interruptible": "speech", "speechTimeout": 3000},
         "languages": [{"code": "en-US", "speechModel": "nova-2-phonecall"}],
         "hints": ["visa"]},
        {"when": {"caller_says": "slowly"}, "config": {"eotThreshold": 0.8}, "once": False}])
    place, card, slow = use_case.relay_updates
    assert (place.when.tool, place.when.caller_says, place.when.agent_says) == (
        "PlaceOrderFunction", None, None)
    assert card.when.agent_says == r"\bcard number\b"
    assert slow.when.caller_says == "slowly"
    assert (place.once, card.once, slow.once) == (True, True, False)
    assert place.messages() == (Hints(("margherita", "pepperoni"), "en-US"),)
    assert card.messages() == (
        Config.of({"interruptible": "speech", "speechTimeout": 3000},
                  [{"code": "en-US", "speechModel": "nova-2-phonecall"}]),
        Hints(("visa",)))
    assert slow.messages() == (Config.of({"eotThreshold": 0.8}),)


@pytest.mark.parametrize(("rule", "key_path", "problem"), [
    ({"when": {"tool": "CheckOrderStatus"}, "hints": ["x"]},
     "relay_updates[0].when.tool", "not declared in this use case's tools"),
    ({"when": {"caller_says": "(unclosed"}, "hints": ["x"]},
     "relay_updates[0].when.caller_says", "regular expression"),
    ({"when": {"agent_says": "[a-"}, "hints": ["x"]},
     "relay_updates[0].when.agent_says", "regular expression"),
    ({"when": {"tool": "endCall"}, "config": {"welcomeGreeting": "Hi"}},
     "relay_updates[0].config", "cannot change ['welcomeGreeting'] mid-call"),
    ({"when": {"tool": "endCall"}, "config": {}},
     "relay_updates[0].config", "at least one setting"),
    ({"when": {"tool": "endCall"}, "languages": [{"speechModel": "x"}]},
     "relay_updates[0].languages", "needs its code"),
    ({"when": {"tool": "endCall"}, "languages": [{"code": "en-US", "language": "fr"}]},
     "relay_updates[0].languages", "cannot change ['language'] of a language"),
    ({"when": {"tool": "endCall"}},
     "relay_updates[0]", "needs config, languages and/or hints"),
    ({"when": {"tool": "endCall", "caller_says": "bye"}, "hints": ["x"]},
     "relay_updates[0].when", "exactly one of tool, caller_says, agent_says (got 2)"),
    ({"when": {}, "hints": ["x"]},
     "relay_updates[0].when", "exactly one"),
    ({"when": {"tool": "endCall"}, "hints": ["a,b"]},
     "relay_updates[0].hints", "comma"),
    ({"when": {"tool": "endCall"}, "config": {"interruptible": "any"}, "hints_language": "en"},
     "relay_updates[0].hints_language", "set hints too"),
    ({"when": {"tool": "endCall"}, "hints": ["x"], "onse": False},
     "relay_updates[0].onse", "unknown key"),
])
def test_relay_update_errors(tmp_path: Path, rule: dict[str, Any], key_path: str,
                             problem: str) -> None:
    path, err = _error(tmp_path, relay_updates=[rule])
    assert err.path == str(path)
    assert err.key_path == key_path
    assert problem in err.problem


# ------------------------------------------------------------------ reply controls


def test_reply_controls_parse(tmp_path: Path) -> None:
    use_case = _load(tmp_path, relay={"dtmfDetection": True}, tools=[
        {"name": "PlaceOrderFunction", "description": "Place it.",
         "reply": {"interruptible": False}},
        {"name": "endCall", "description": "Hang up.",
         "reply": {"interruptible": True, "preemptible": True}},
    ], dtmf={"handlers": {"9": {"reply": "This call may be recorded.", "interruptible": False,
                                "preemptible": False},
                          "1": {"reply": "Open at nine."}}})
    order = use_case.tool("PlaceOrderFunction")
    assert order is not None
    assert order.reply is not None
    assert (order.reply.interruptible, order.reply.preemptible) == (False, None)
    end = use_case.tool("endCall")
    assert end is not None
    assert end.reply is not None
    assert (end.reply.interruptible, end.reply.preemptible) == (True, True)
    nine, one = use_case.dtmf.handlers["9"], use_case.dtmf.handlers["1"]
    assert (nine.interruptible, nine.preemptible) == (False, False)
    assert (one.interruptible, one.preemptible) == (None, None)
    assert "reply" not in order.tool_spec()


@pytest.mark.parametrize(("changes", "key_path", "problem"), [
    ({"tools": [{"name": "endCall", "description": "x", "reply": {}}]},
     "tools[0].reply", "interruptible and/or preemptible"),
    ({"tools": [{"name": "endCall", "description": "x", "reply": {"interruptible": "any"}}]},
     "tools[0].reply.interruptible", "boolean"),
    ({"tools": [{"name": "endCall", "description": "x", "reply": {"interuptible": False}}]},
     "tools[0].reply.interuptible", "unknown key"),
    ({"dtmf": {"handlers": {"0": {"tool": "endCall", "interruptible": False}}}},
     "dtmf.handlers.0", "apply to reply"),
])
def test_reply_control_errors(tmp_path: Path, changes: dict[str, Any], key_path: str,
                              problem: str) -> None:
    _, err = _error(tmp_path, **changes)
    assert err.key_path == key_path
    assert problem in err.problem


# ------------------------------------------------------------------ round trips


def test_new_keys_survive_the_store_and_the_export(tmp_path: Path) -> None:
    use_case = _load(tmp_path, relay={"language": "en-US", "dtmfDetection": True},
                     relay_extra={"eotThreshold": 0.7},
                     languages=[{"code": "en-US", "voice": "v", "hints": "a,b"},
                                {"code": "es-ES", "failover": {"ttsProvider": "Google"}}],
                     auto_language=True,
                     relay_updates=[{"when": {"tool": "endCall"}, "hints": ["bye"],
                                     "once": False}],
                     tools=[{"name": "endCall", "description": "x",
                             "reply": {"preemptible": True}}],
                     dtmf={"handlers": {"9": {"reply": "Hi.", "interruptible": False}}})
    assert config_records.use_case_from_item(config_records.use_case_item(use_case)) == use_case
    out = tmp_path / "exported"
    for relative, text in export_files([use_case], []).items():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_text(text, encoding="utf-8")
    (again,) = read_config_dir(out, default_registry()).use_cases
    assert again == use_case
    assert again.languages[0].attributes() == {"code": "en-US", "voice": "v", "hints": "a,b"}


# Twilio, "Provider failover for Conversation Relay"
# (https://www.twilio.com/docs/voice/conversationrelay/provider-failover): "Specify your
# backups: Name the backup provider, voice, and model for each language"; changelog 18 Nov
# 2026: "Specify the backup provider, voice, and model for each language". A <Failover>
# <Language> is a backup provider, voice and model, nothing else: hints, smart formatting or
# text normalization there is an attribute Twilio does not document, and a bad TwiML
# attribute can end the call at setup.
@pytest.mark.parametrize("name", ["hints", "asrSmartFormat", "ttsTextNormalization",
                                  "ttsLanguageTextNormalization"])
def test_failover_takes_only_a_backup_provider_voice_and_model(tmp_path: Path,
                                                               name: str) -> None:
    _, err = _error(tmp_path, languages=[{"code": "es-ES", "failover": {
        "ttsProvider": "Google", name: "x"}}])
    assert err.key_path == f"languages[0].failover.{name}"
