"""The shipped config loads, fits the tool registry, and bad files fail with exact key paths."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from voiceagent import twiml
from voiceagent.errors import ConfigError
from voiceagent.llm.scripted import ScriptedLLM
from voiceagent.relay.protocol import Config, Hints
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import (
    CURRENT_DATE_MARK,
    USER_CONTEXT_MARK,
    ReplyControls,
    UseCase,
    load_profiles_file,
    load_use_case_file,
)

CONFIG = Path(__file__).parent.parent / "config"
SHIPPED = ("restaurantOrderingUseCase", "albertEinsteinUseCase")
MINIMAL = "name: demo\nprompt: Say hello.\n"


def _shipped() -> dict[str, UseCase]:
    return {name: load_use_case_file(CONFIG / "usecases" / f"{name}.yaml") for name in SHIPPED}


def _load_error(tmp_path: Path, text: str) -> tuple[Path, ConfigError]:
    path = tmp_path / "usecase.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_use_case_file(path)
    return path, caught.value


def test_shipped_use_cases_load_and_fit_the_registry() -> None:
    use_cases = _shipped()
    registry = default_registry()
    for name, uc in use_cases.items():
        assert uc.name == name
        assert USER_CONTEXT_MARK in uc.prompt
        assert CURRENT_DATE_MARK in uc.prompt
        assert uc.time_zone == "America/Los_Angeles"
        assert uc.relay["transcriptionProvider"] == "Deepgram"
        assert uc.relay["speechModel"] == "nova-3-general"
        assert 8 <= len(uc.scripted.rules) <= 20
        registry.check_use_case(uc)
    ScriptedLLM.from_use_cases(use_cases.values())   # every rule's regex compiles


def test_restaurant_use_case_declares_its_tools_and_keys() -> None:
    uc = _shipped()["restaurantOrderingUseCase"]
    assert [t.name for t in uc.tools] == [
        "PlaceOrderFunction", "CheckRestaurantPickUpTime", "CheckRestaurantDeliveryTime",
        "sendConfirmationSms", "CheckOrderStatus", "switchLanguage", "liveAgentHandoff",
        "endCall"]
    assert (uc.relay["ttsProvider"], uc.relay["voice"]) == ("Google", "en-US-Journey-O")
    assert uc.relay["dtmfDetection"] is True
    assert uc.relay["interruptible"] == "any"
    assert uc.dtmf.handlers["0"].tool == "liveAgentHandoff"
    assert uc.dtmf.handlers["2"].tool == "CheckRestaurantPickUpTime"
    assert uc.handoff.mode == "enqueue"
    assert uc.handoff.queue
    order = uc.tool("PlaceOrderFunction")
    assert order is not None
    assert order.input_schema["properties"]["order_type"]["enum"] == ["pickup", "delivery"]
    ruled = {r.tool.name for r in uc.scripted.rules if r.tool is not None}
    assert ruled == {t.name for t in uc.tools}


def test_restaurant_use_case_changes_the_session_as_the_call_goes() -> None:
    uc = _shipped()["restaurantOrderingUseCase"]
    order = uc.tool("PlaceOrderFunction")
    assert order is not None
    assert order.reply == ReplyControls(interruptible=False)
    assert uc.relay["debug"] == "speaker-events tokens-played"
    assert uc.relay["events"] == "config-updated"
    ordering, digits = uc.relay_updates
    assert ordering.when.caller_says is not None
    assert re.search(ordering.when.caller_says, "I'd like to order a pizza", re.IGNORECASE)
    (hints,) = ordering.messages()
    assert isinstance(hints, Hints)
    assert {"The Works", "Veggie Stromboli", "Popcorn Shrimp"} <= set(hints.phrases)
    assert digits.when.agent_says is not None
    for asked in ("What's a good phone number for you?", "And the zip code?"):
        assert re.search(digits.when.agent_says, asked, re.IGNORECASE)
    assert not re.search(digits.when.agent_says, "Your order number is 12.", re.IGNORECASE)
    assert digits.messages() == (
        Config.of(languages=[{"code": "en-US", "speechModel": "nova-2-phonecall"}]),)


def test_einstein_use_case_answers_in_the_callers_language() -> None:
    uc = _shipped()["albertEinsteinUseCase"]
    assert uc.relay["transcriptionLanguage"] == "multi"
    assert [e.code for e in uc.languages] == ["en-US", "es-ES"]
    assert uc.auto_language_enabled
    spanish = uc.language_for("es")
    assert spanish is not None
    assert spanish.failover_attributes() == {"code": "es-ES", "ttsProvider": "Google",
                                             "voice": "es-ES-Neural2-A"}
    document = twiml.connect_relay(ws_url="wss://a/relay", action_url="https://a/action",
                                   use_case=uc, parameters={})
    relay = ET.fromstring(document).find("Connect/ConversationRelay")
    assert relay is not None
    assert [(e.tag, e.attrib) for e in relay.iterfind("Failover/Language")] == [
        ("Language", {"code": "es-ES", "ttsProvider": "Google", "voice": "es-ES-Neural2-A"})]


def test_profiles_load_and_name_shipped_use_cases() -> None:
    profiles = load_profiles_file(CONFIG / "profiles.yaml")
    assert 2 <= len(profiles) <= 3
    assert all(p.phone.startswith("+1555") for p in profiles)
    assert {p.use_case for p in profiles} <= set(SHIPPED)


def test_unknown_key_names_file_and_dotted_path(tmp_path: Path) -> None:
    path, err = _load_error(tmp_path, MINIMAL + (
        "tools:\n  - name: endCall\n    description: Hang up.\n    inpt_schema: {}\n"))
    assert err.path == str(path)
    assert err.key_path == "tools[0].inpt_schema"
    assert "unknown key" in err.problem
    assert str(path) in str(err)


def test_unknown_nested_dtmf_key(tmp_path: Path) -> None:
    _, err = _load_error(tmp_path, MINIMAL + 'dtmf:\n  handlers:\n    "1":\n      say: hi\n')
    assert err.key_path == "dtmf.handlers.1.say"


def test_wrong_type(tmp_path: Path) -> None:
    _, err = _load_error(tmp_path, MINIMAL + "inference:\n  max_tokens: lots\n")
    assert err.key_path == "inference.max_tokens"
    assert "integer" in err.problem


def test_bad_regex(tmp_path: Path) -> None:
    _, err = _load_error(tmp_path, MINIMAL + (
        "scripted:\n  rules:\n    - match: hello\n      reply: Hi.\n"
        "    - match: (unclosed\n      reply: Oops.\n"))
    assert err.key_path == "scripted.rules[1].match"
    assert "regular expression" in err.problem


def test_unknown_relay_attribute(tmp_path: Path) -> None:
    _, err = _load_error(tmp_path, MINIMAL + "relay:\n  interruptByDtmf: true\n")
    assert err.key_path == "relay.interruptByDtmf"
    assert "interruptByDtmf" in err.problem


def test_missing_required_key(tmp_path: Path) -> None:
    _, err = _load_error(tmp_path, "name: demo\n")
    assert err.key_path == "prompt"


def test_bad_time_zone(tmp_path: Path) -> None:
    _, err = _load_error(tmp_path, MINIMAL + "time_zone: Mars/Olympus\n")
    assert err.key_path == "time_zone"


def test_bad_e164(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text('profiles:\n  - phone: "+15555550100"\n  - phone: "4155550100"\n',
                    encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_profiles_file(path)
    assert caught.value.path == str(path)
    assert caught.value.key_path == "profiles[1].phone"
    assert "E.164" in caught.value.problem


def test_bad_yaml(tmp_path: Path) -> None:
    path, err = _load_error(tmp_path, "name: demo\nprompt: [unclosed\n")
    assert err.path == str(path)
    assert err.key_path == "line 3"
    assert err.problem.startswith("not valid YAML")


def test_not_a_mapping(tmp_path: Path) -> None:
    _, err = _load_error(tmp_path, "- just\n- a list\n")
    assert err.key_path == ""
    assert "mapping" in err.problem
