"""The item mapping: the original Node sample's items load as use cases and profiles, and our
own values survive item -> value -> item unchanged."""

from __future__ import annotations

import dataclasses
import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer

from voiceagent.errors import ConfigError
from voiceagent.store import config_records, records
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import (
    DtmfConfig,
    DtmfHandler,
    Profile,
    ToolDeclaration,
    UseCase,
    load_use_case_file,
)

SAMPLE = Path(__file__).parent / "fixtures" / "original-sample"
CONFIG = Path(__file__).parent.parent / "config" / "usecases"


def plain(value: Any) -> Any:
    """DynamoDB's Decimals as the store interface hands numbers back: int or float."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def sample_item(name: str) -> dict[str, Any]:
    raw = json.loads((SAMPLE / f"{name}.ddb.json").read_text(encoding="utf-8"))
    deserializer = TypeDeserializer()
    return {key: plain(deserializer.deserialize(value)) for key, value in raw.items()}


def test_restaurant_sample_loads(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="voiceagent.store.records")
    uc = config_records.use_case_from_item(sample_item("restaurantOrderingUseCase"))

    assert uc.name == "restaurantOrderingUseCase"
    assert uc.title == "Restaurant Ordering"
    assert uc.description.startswith("Demonstrate how a customer can call")
    assert uc.model is None
    # the sample stored JSON.stringify(prompt): quotes and escapes are gone, newlines real
    assert uc.prompt.startswith("Do NOT include <thinking></thinking> tags.")
    assert uc.prompt.endswith("Do not return markdown!")
    assert "\n\n## Objective\n" in uc.prompt
    assert '"Twilio Dough Boy Pizza"' in uc.prompt
    assert "<<USER_CONTEXT>>" in uc.prompt
    assert "<<CURRENT_DATE>>" in uc.prompt

    assert [t.name for t in uc.tools] == ["PlaceOrderFunction", "CheckRestaurantPickUpTime",
                                          "CheckRestaurantDeliveryTime"]
    place = uc.tools[0]
    assert place.input_schema["required"] == ["order_type", "order_total"]
    assert set(place.input_schema["properties"]["current_order"]["items"]["properties"]) == {
        "line_item", "additonal_details", "line_amount"}              # [sic], as the model saw it

    assert uc.relay == {"dtmfDetection": True, "interruptible": True, "ttsProvider": "google",
                        "transcriptionProvider": "deepgram", "voice": "en-US-Journey-O",
                        "welcomeGreeting": "Thanks for calling Twilio Dough Boy Pizza! "
                                           "How can I help you?"}
    assert uc.welcome_greeting is not None

    handlers = uc.dtmf.handlers
    assert sorted(handlers) == [str(d) for d in range(10)]
    assert handlers["0"] == DtmfHandler(reply="You pressed 0.")
    # digits 1 and 2 name tools no use case declares: the reply stays, the tool goes
    assert handlers["1"] == DtmfHandler(reply="Let me get the available apartments.")
    assert handlers["2"] == DtmfHandler(reply="I'll check on your appointments")

    warnings = {r.getMessage(): r for r in caplog.records}
    relay_warning = next(r for m, r in warnings.items() if "relay attributes dropped" in m)
    assert vars(relay_warning)["attributes"] == ["interruptByDtmf"]
    dtmf_warning = next(r for m, r in warnings.items() if "undeclared tools" in m)
    assert vars(dtmf_warning)["digits"] == ["1", "2"]

    default_registry().check_use_case(uc)     # the built-in tools cover it: it can run


def test_persona_sample_loads(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="voiceagent.store.records")
    uc = config_records.use_case_from_item(sample_item("albertEinsteinUseCase"))

    assert uc.name == "albertEinsteinUseCase"
    assert uc.title == "Albert Einstein Guide"
    assert uc.prompt.startswith("Do NOT include <thinking></thinking> tags. You are an AI")
    assert uc.prompt.endswith("thank then and then end the call.")
    assert "\nBe casual" in uc.prompt
    assert not uc.prompt.startswith('"')
    # The persona needs no tools, but the sample's item carries one restaurant tool (copied
    # from the restaurant item). It is loaded as stored, not second-guessed.
    assert [t.name for t in uc.tools] == ["CheckRestaurantDeliveryTime"]
    assert uc.relay["ttsProvider"] == "ElevenLabs"
    assert uc.relay["voice"] == "tnSpp4vdxKPjI9w0GnoV"
    assert "interruptByDtmf" not in uc.relay
    assert uc.dtmf.handlers["9"] == DtmfHandler(reply="You pressed 9.")
    assert uc.dtmf.handlers["1"].tool is None
    dropped = [vars(r)["attributes"] for r in caplog.records
               if r.getMessage().startswith("use case relay attributes dropped")]
    assert dropped == [["interruptByDtmf"]]
    default_registry().check_use_case(uc)


def test_sample_profile_loads() -> None:
    item = json.loads((SAMPLE / "user-profile-example.json").read_text(encoding="utf-8"))
    profile = config_records.profile_from_item(item)
    assert profile == Profile(phone="+15555550100", first_name="Pat", last_name="Example",
                              email="caller@example.com", use_case="restaurantOrderingUseCase")
    assert config_records.profile_item(profile) == item             # same attributes, same values


def test_sample_item_shape_is_what_we_write() -> None:
    """Our items read like the sample's: the same attributes and the same string encodings,
    so the Node app's readers (and people reading the console) see what they expect."""
    sample = sample_item("restaurantOrderingUseCase")
    ours = config_records.use_case_item(config_records.use_case_from_item(sample))
    assert set(sample) - set(ours) == set()
    assert set(ours) - set(sample) == {"voiceagent"}
    assert json.loads(ours["tools"]) == json.loads(sample["tools"])
    assert ours["tools"] == sample["tools"]                   # byte for byte: compact JSON
    digit_0 = json.loads(ours["dtmfHandlers"])["0"]
    assert list(digit_0) == ["replyWithText", "replyText", "replyWithFunction",
                             "replyFunction"]
    assert digit_0 == json.loads(sample["dtmfHandlers"])["0"]
    assert ours["conversationRelayParams"] == {
        k: v for k, v in sample["conversationRelayParams"].items() if k != "interruptByDtmf"}
    assert ours["prompt"] == json.loads(sample["prompt"])     # plain text, not JSON-in-JSON


@pytest.mark.parametrize("path", sorted(CONFIG.glob("*.yaml")), ids=lambda p: p.stem)
def test_our_use_cases_round_trip(path: Path) -> None:
    uc = load_use_case_file(path)
    item = config_records.use_case_item(uc)
    assert item["pk"] == item["sk1"] == uc.name
    assert (item["sk"], item["pk1"]) == ("configuration", "use-case")
    assert config_records.use_case_from_item(item) == uc
    assert config_records.use_case_from_item(json.loads(json.dumps(item))) == uc


def test_use_case_without_voiceagent_attribute_still_round_trips_sample_fields() -> None:
    uc = UseCase(name="minimal", title="T", prompt="Say hi", model="m-1",
                 relay={"welcomeGreeting": "Hi", "interruptible": True},
                 tools=(ToolDeclaration(name="endCall", description="Hang up"),),
                 dtmf=DtmfConfig(handlers={"0": DtmfHandler(reply="Zero", tool="endCall"),
                                           "#": DtmfHandler(tool="endCall")}))
    item = config_records.use_case_item(uc)
    del item["voiceagent"]
    assert config_records.use_case_from_item(item) == uc


def test_edited_sample_attribute_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    uc = UseCase(name="edited", prompt="Original")
    item = {**config_records.use_case_item(uc), "prompt": "Changed in the console"}
    with caplog.at_level(logging.WARNING, logger="voiceagent.store.records"):
        assert config_records.use_case_from_item(item).prompt == "Original"
    assert [vars(r)["attributes"] for r in caplog.records] == [["prompt"]]


def test_broken_sample_item_names_the_attribute() -> None:
    item = {"pk": "broken", "sk": "configuration", "prompt": "x", "tools": "[{oops"}
    with pytest.raises(ConfigError) as caught:
        config_records.use_case_from_item(item)
    assert caught.value.key_path == "tools"
    assert "broken" in caught.value.path
    with pytest.raises(ValueError, match="not a use case item"):
        config_records.use_case_from_item({"pk": "x", "sk": "profile"})


def test_session_item_shape() -> None:
    profile = Profile(phone="+15555550100", first_name="Pat", use_case="x")
    session = records.CallSession(
        call_sid="CA0123456789abcdef0123456789abcdef", token="t", use_case="x",
        system_prompt="Prompt", model_id="model", caller="+15555550100",
        called="+15555550199", profile=profile, greeting=None, created_at=1_750_000_000.5)
    item = records.session_item(session, ttl_s=86_400)
    assert item["sk1"] == "2025-06-15T15:06:40.500Z#CA0123456789abcdef0123456789abcdef"
    assert item["systemPrompt"] == [{"text": "Prompt"}]
    assert item["userContext"] == config_records.profile_item(profile)
    assert (item["From"], item["To"], item["expireAt"]) == ("+15555550100", "+15555550199",
                                                            1_750_086_400)
    assert records.session_from_item(item) == session
    assert records.CLAIM_ATTRIBUTE not in item          # unclaimed: as before claims had one
    claimed = records.session_item(dataclasses.replace(session, token="", claim="n1"), 60)
    assert (claimed[records.CLAIM_ATTRIBUTE], claimed["version"]) == ("n1", 1)
    assert records.session_from_item(claimed).claim == "n1"
    anonymous = records.session_item(dataclasses.replace(session, profile=None), ttl_s=1)
    assert anonymous["userContext"] == {}
    assert records.session_from_item(anonymous).profile is None


def test_sample_session_item_reads() -> None:
    """A session the Node app wrote: no token, no createdAt, the profile as userContext."""
    item = {"pk": "CAabc", "sk": "connection", "llmModel": "us.amazon.nova-lite-v1:0",
            "useCase": "restaurantOrderingUseCase",
            "userContext": json.loads((SAMPLE / "user-profile-example.json").read_text()),
            "systemPrompt": [{"text": "You are"}], "tools": "[]", "dtmfHandlers": "{}",
            "expireAt": 1_750_086_400, "From": "+15555550100", "To": "+15555550199"}
    session = records.session_from_item(item)
    assert (session.token, session.created_at, session.greeting, session.claim) == (
        "", 0.0, None, "")
    assert session.profile is not None
    assert session.profile.first_name == "Pat"
    assert session.system_prompt == "You are"


def test_chat_keys_sort_by_time_then_seq() -> None:
    keys = [records.chat_key(at, seq) for at, seq in
            [(999, 7), (1_000, 0), (1_000, 1), (1_000, 10), (1_750_000_000_000, 2)]]
    assert keys == sorted(keys)
    assert keys[0] == "chat::0000000000999::000007"


def test_chat_item_meta_and_reserved_names() -> None:
    message = {"role": "assistant", "content": [{"text": "We open"}]}
    item = records.chat_item("CAx", 1_750_000_000_123, 4, message,
                             {"generated": "We open at nine", "heard": "We open",
                              "turn": 2, "kind": "barge-in", "empty": None}, ttl_s=60)
    assert item == {"pk": "CAx", "sk": "chat::1750000000123::000004", "chat": message,
                    "generated": "We open at nine", "heard": "We open", "turn": 2,
                    "kind": "barge-in", "expireAt": 1_750_000_060}
    entry = records.chat_from_item(item)
    assert (entry["at_ms"], entry["seq"], entry["chat"]) == (1_750_000_000_123, 4, message)
    assert entry["meta"]["heard"] == "We open"
    with pytest.raises(ValueError, match="expireAt"):
        records.chat_item("CAx", 1, 1, message, {"expireAt": 5}, ttl_s=60)
    sample_style = records.chat_from_item({"pk": "CAx", "sk": "chat::1712345678901",
                                           "chat": message})
    assert (sample_style["at_ms"], sample_style["seq"]) == (1_712_345_678_901, 0)


def test_chat_entries_leave_out_tombstones() -> None:
    """A message a barge-in cut away after it was stored is written over with a tombstone
    (``History.take_sealed``): the conversation read back leaves it out."""
    said = {"role": "user", "content": [{"text": "hours?"}]}
    items = [records.chat_item("CAx", 1_000, 0, said, {"at_ms": 1_000}, ttl_s=60),
             records.chat_item("CAx", 1_001, 1, {}, {"at_ms": 1_001, "dropped": True},
                               ttl_s=60)]
    assert [entry["chat"] for entry in records.chat_entries(items)] == [said]


def test_order_item_keys() -> None:
    order = {"order_items": [], "order_type": "pickup", "order_total": 0}
    item = records.order_item("+15555550100", "CAabcdef9876", "+15555550199", order,
                              at_s=1_750_000_000, ttl_s=604_800)
    assert item == {"pk": "+15555550100", "sk": "restaurantOrder::9876::1750000000",
                    "pk1": "restaurantOrder", "sk1": "+15555550199", "order": order,
                    "expireAt": 1_750_604_800}
    assert "pk1" not in records.order_item("CAx", "CAx", "", order, at_s=1, ttl_s=1)


def test_unreadable_voiceagent_attribute_falls_back_to_sample_attributes(
        caplog: pytest.LogCaptureFixture) -> None:
    uc = UseCase(name="newer", prompt="Hi", relay={"welcomeGreeting": "Hello"})
    item = config_records.use_case_item(uc)
    item["voiceagent"] = {**item["voiceagent"], "field_from_a_newer_version": 1}
    with caplog.at_level(logging.WARNING, logger="voiceagent.store.records"):
        assert config_records.use_case_from_item(item) == uc
    [record] = caplog.records
    assert vars(record)["key_path"] == "field_from_a_newer_version"
