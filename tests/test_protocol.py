"""ConversationRelay frames both ways, including the quirks in the spec (sections 2, 3, 8, 9)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voiceagent.relay.protocol import (
    MAX_FRAME_DEPTH,
    Config,
    ConfigUpdated,
    Dtmf,
    End,
    Hints,
    Inbound,
    Info,
    Interrupt,
    Language,
    Outbound,
    Play,
    Prompt,
    Rejected,
    RelayErrorReport,
    SendDigits,
    Setup,
    SpeakerEvent,
    Text,
    TokensPlayed,
    describe,
    encode,
    parse_frame,
)

FAST = settings(max_examples=150, deadline=None)

TWILIO_SETUP = {
    "type": "setup",
    "sessionId": "VX00000000000000000000000000000000",
    "accountSid": "AC00000000000000000000000000000000",
    "parentCallSid": "",
    "callSid": "CA00000000000000000000000000000000",
    "from": "+12025550100",
    "to": "+12025550199",
    "forwardedFrom": "",
    "callType": "PSTN",
    "callerName": "",
    "direction": "inbound",
    "callStatus": "RINGING",
    "customParameters": {"useCase": "restaurant"},
}


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def parse(**fields: Any) -> Inbound | Rejected:
    return parse_frame(frame(**fields))


def rejected(**fields: Any) -> Rejected:
    result = parse(**fields)
    assert isinstance(result, Rejected), result
    return result


# ---------------------------------------------------------------- setup


def test_setup_twilio_example() -> None:
    assert parse_frame(json.dumps(TWILIO_SETUP)) == Setup(
        session_id="VX00000000000000000000000000000000",
        call_sid="CA00000000000000000000000000000000",
        account_sid="AC00000000000000000000000000000000",
        from_number="+12025550100",
        to_number="+12025550199",
        call_status="ringing",
        direction="inbound",
        caller_name="",
        parent_call_sid="",
        forwarded_from="",
        call_type="PSTN",
        custom_parameters={"useCase": "restaurant"},
    )


@pytest.mark.parametrize(("sent", "kept"), [("RINGING", "ringing"), ("IN_PROGRESS", "in_progress"),
                                            ("active", "active"), ("In_Progress", "in_progress")])
def test_setup_call_status_is_lower_cased(sent: str, kept: str) -> None:
    result = parse(**(TWILIO_SETUP | {"callStatus": sent}))
    assert isinstance(result, Setup)
    assert result.call_status == kept


def test_setup_minimal_defaults_every_other_field() -> None:
    assert parse(type="setup", sessionId="VX1", callSid="CA1") == Setup(
        session_id="VX1", call_sid="CA1")


def test_setup_telnyx_shape() -> None:
    """Telnyx: UUID ids, v2: callSid, extra ids (ignored), non-string custom parameters."""
    result = parse(type="setup", sessionId="5f0b6c1e-0000-4000-8000-000000000000",
                   accountSid="a1b2c3d4-0000-4000-8000-000000000000", callSid="v2:abc",
                   callControlId="v2:abc", callSessionId="x", callLegId="y", callStatus="active",
                   customParameters={"n": 3, "f": 1.5, "yes": True, "none": None, "s": "x",
                                     "obj": {"a": [1, "b"]}})
    assert isinstance(result, Setup)
    assert result.call_sid == "v2:abc"
    assert result.call_status == "active"
    assert result.custom_parameters == {"n": "3", "f": "1.5", "yes": "true", "none": "",
                                        "s": "x", "obj": '{"a":[1,"b"]}'}


def test_setup_null_optional_fields_count_as_absent() -> None:
    result = parse(type="setup", sessionId="VX1", callSid="CA1", parentCallSid=None,
                   customParameters=None)
    assert result == Setup(session_id="VX1", call_sid="CA1")


CALL_SID_PROBLEM = "expected 1-128 letters, digits or _ . : -"


@pytest.mark.parametrize(("fields", "problem"), [
    ({"sessionId": "VX1"}, "callSid: missing"),
    ({"sessionId": "VX1", "callSid": ""}, "callSid: " + CALL_SID_PROBLEM),
    # unauthenticated until its token is checked, then a store key and each log line's
    # CallSid: 60 KB of it, or a line break, must get no further (helper-23)
    ({"sessionId": "VX1", "callSid": "CA" + "x" * 127}, "callSid: " + CALL_SID_PROBLEM),
    ({"sessionId": "VX1", "callSid": "CA1\nlevel=ERROR"}, "callSid: " + CALL_SID_PROBLEM),
    ({"sessionId": "VX1", "callSid": 7}, "callSid: expected string, got number"),
    ({"callSid": "CA1"}, "sessionId: missing"),
    ({"sessionId": ["VX1"], "callSid": "CA1"}, "sessionId: expected string, got array"),
    ({"callSid": "CA1", "sessionId": 7, "callerName": 7},
     "sessionId: expected string, got number"),
    ({"sessionId": "VX1", "callSid": "CA1", "customParameters": ["a"]},
     "customParameters: expected object, got array"),
    ({"sessionId": "VX1", "callSid": "CA1", "customParameters": "a=b"},
     "customParameters: expected object, got string"),
])
def test_setup_bad_fields(fields: dict[str, Any], problem: str) -> None:
    text = frame(type="setup", **fields)
    assert parse_frame(text) == Rejected("bad_field", "setup", len(text), problem)


DESCRIPTIVE = {"accountSid": "account_sid", "from": "from_number", "to": "to_number",
               "callStatus": "call_status", "direction": "direction",
               "callerName": "caller_name", "parentCallSid": "parent_call_sid",
               "forwardedFrom": "forwarded_from", "callType": "call_type"}


@pytest.mark.parametrize("key", sorted(DESCRIPTIVE))
@pytest.mark.parametrize(("value", "json_type"), [
    (12025550100, "number"), (True, "boolean"), (["+1202"], "array"),
    ({"number": "+1202"}, "object")])
def test_setup_descriptive_field_unusable_is_taken_as_absent(key: str, value: object,
                                                             json_type: str) -> None:
    """Only logged, never used to find or authenticate the call: a caller was lost (the
    socket closed, "setup expected") for a number in ``callerName``. The problem names the
    field and its type, never its value (it may be a phone number)."""
    result = parse(type="setup", sessionId="VX1", callSid="CA1",
                   customParameters={"sessionToken": "t"}, **{key: value})
    assert isinstance(result, Setup), result
    assert getattr(result, DESCRIPTIVE[key]) == ""
    assert result.custom_parameters == {"sessionToken": "t"}
    assert result.problem == f"{key}: expected string, got {json_type}"
    assert "1202" not in result.problem


def test_setup_every_unusable_descriptive_field_is_named() -> None:
    result = parse(type="setup", sessionId="VX1", callSid="CA1", callerName=7,
                   direction="inbound", callStatus=False)
    assert result == Setup(session_id="VX1", call_sid="CA1", direction="inbound")
    assert isinstance(result, Setup)
    assert result.problem == ("callStatus: expected string, got boolean; "
                              "callerName: expected string, got number")


# ---------------------------------------------------------------- prompt


def test_prompt_final() -> None:
    assert parse(type="prompt", voicePrompt="When do you open?", lang="en-US", last=True) == \
        Prompt("When do you open?", last=True, lang="en-US")


def test_prompt_partial() -> None:
    assert parse(type="prompt", voicePrompt="When do", last=False) == Prompt("When do", last=False)


def test_prompt_without_last_is_final() -> None:
    assert parse(type="prompt", voicePrompt="Hi") == Prompt("Hi", last=True, lang="")


def test_prompt_text_is_kept_exactly() -> None:
    text = "  Hé,\tja\n<b>ok</b>\x07 "
    assert parse(type="prompt", voicePrompt=text) == Prompt(text)


def test_prompt_unknown_fields_are_ignored() -> None:
    assert parse(type="prompt", voicePrompt="Hi", last=True, confidence=0.9,
                 agentSpeaking="off", turnState={"x": 1}) == Prompt("Hi")


@pytest.mark.parametrize(("fields", "problem"), [
    ({}, "voicePrompt: missing"),
    ({"voicePrompt": None}, "voicePrompt: missing"),
    ({"voicePrompt": 3}, "voicePrompt: expected string, got number"),
    ({"voicePrompt": "Hi", "last": "true"}, "last: expected boolean, got string"),
    ({"voicePrompt": "Hi", "last": 1}, "last: expected boolean, got number"),
    ({"voicePrompt": "Hi", "lang": {"code": "en"}}, "lang: expected string, got object"),
])
def test_prompt_bad_fields(fields: dict[str, Any], problem: str) -> None:
    assert rejected(type="prompt", **fields).problem == problem


# ---------------------------------------------------------------- dtmf, interrupt, info, error


@pytest.mark.parametrize("digit", [*"0123456789", "*", "#", "A", "D"])
def test_dtmf(digit: str) -> None:
    assert parse(type="dtmf", digit=digit) == Dtmf(digit)


@pytest.mark.parametrize("digit", ["", "12", "a", "E", "w", " 1"])
def test_dtmf_bad_digit(digit: str) -> None:
    assert rejected(type="dtmf", digit=digit).problem == "digit: expected one of 0-9 * # A-D"


def test_dtmf_digit_must_be_a_string() -> None:
    assert rejected(type="dtmf", digit=5).problem == "digit: expected string, got number"


@pytest.mark.parametrize(("duration", "expected"), [
    (460, 460), ("460", 460), (460.7, 460), ("460.7", 460), (0, 0), (None, None)])
def test_interrupt_duration_is_coerced(duration: object, expected: int | None) -> None:
    assert parse(type="interrupt", utteranceUntilInterrupt="We open at",
                 durationUntilInterruptMs=duration) == Interrupt("We open at", expected)


def test_interrupt_fields_absent() -> None:
    assert parse(type="interrupt") == Interrupt(heard=None, duration_ms=None)


def test_interrupt_empty_utterance_is_not_none() -> None:
    assert parse(type="interrupt", utteranceUntilInterrupt="") == Interrupt("", None)


@pytest.mark.parametrize(("duration", "problem"), [
    (True, "durationUntilInterruptMs: expected number, got boolean"),
    ("soon", "durationUntilInterruptMs: expected number, got non-numeric string"),
    ("", "durationUntilInterruptMs: expected number, got non-numeric string"),
    ("nan", "durationUntilInterruptMs: expected a finite number"),
    ("Infinity", "durationUntilInterruptMs: expected a finite number"),
    ([460], "durationUntilInterruptMs: expected number, got array"),
])
def test_interrupt_bad_duration_is_taken_as_absent(duration: object, problem: str) -> None:
    """A barge-in is never dropped for a detail of it (helper-23): rejected, the reply went
    on as if the caller had heard it all."""
    result = parse(type="interrupt", utteranceUntilInterrupt="We open",
                   durationUntilInterruptMs=duration)
    assert result == Interrupt("We open", None)
    assert isinstance(result, Interrupt)
    assert result.problem == problem


def test_interrupt_non_finite_json_number_is_taken_as_absent() -> None:
    result = parse_frame('{"type":"interrupt","durationUntilInterruptMs":NaN}')
    assert isinstance(result, Interrupt)
    assert (result.duration_ms, result.problem) == (
        None, "durationUntilInterruptMs: expected a finite number")


def test_interrupt_utterance_that_is_not_a_string_is_taken_as_absent() -> None:
    result = parse(type="interrupt", utteranceUntilInterrupt=["x"], durationUntilInterruptMs=9)
    assert result == Interrupt(None, 9)
    assert isinstance(result, Interrupt)
    assert result.problem == "utteranceUntilInterrupt: expected string, got array"


def test_info_speaker_event() -> None:
    assert parse(type="info", name="agentSpeaking", value="on", ts=1763000000000) == \
        SpeakerEvent("agent", True, 1763000000000)
    assert parse(type="info", name="clientSpeaking", value="off") == \
        SpeakerEvent("caller", False, None)
    assert rejected(type="info", name="clientSpeaking", value="maybe").problem == \
        "value: clientSpeaking expects on or off"


def test_info_tokens_played_and_config_updated_are_typed() -> None:
    assert parse(type="info", name="tokensPlayed", value="Hello there.", ts=5) == \
        TokensPlayed("Hello there.", 5)
    assert parse(type="info", name="configUpdated",
                 value={"ttsProvider": "Amazon", "reason": "failover"}) == \
        ConfigUpdated('{"ttsProvider":"Amazon","reason":"failover"}')


@pytest.mark.parametrize(("value", "kept"), [
    ("148", "148"), (148, "148"), (None, ""), (True, "true"),
    ({"provider": "x"}, '{"provider":"x"}')])
def test_info_value_is_coerced_to_text(value: object, kept: str) -> None:
    assert parse(type="info", name="roundTripDelayMs", value=value) == \
        Info("roundTripDelayMs", kept)


def test_config_updated_on_its_own_is_read_as_the_info_event() -> None:
    """Twilio's changelog names "a new configUpdated outbound event" without its envelope:
    on its own it was an unknown type, a warning for each of our config frames and each
    provider failover, and the change unlogged."""
    assert parse(type="configUpdated", ttsProvider="Amazon", reason="failover", ts=9) == \
        ConfigUpdated('{"ttsProvider":"Amazon","reason":"failover"}', 9)
    assert parse(type="configUpdated") == ConfigUpdated("{}", None)
    late = parse(type="configUpdated", ttsProvider="Amazon", ts="later")
    assert late == ConfigUpdated('{"ttsProvider":"Amazon"}', None)
    assert isinstance(late, ConfigUpdated)
    assert late.problem == "ts: expected number, got non-numeric string"


def test_info_without_value_or_ts() -> None:
    assert parse(type="info", name="configUpdated") == ConfigUpdated("", None)
    assert parse(type="info", name="somethingNew") == Info("somethingNew", "", None)


def test_info_ts_as_string_or_float() -> None:
    assert parse(type="info", name="clientSpeaking", value="off", ts="17") == \
        SpeakerEvent("caller", False, 17)
    assert parse(type="info", name="roundTripDelayMs", value="1", ts=17.9) == \
        Info("roundTripDelayMs", "1", 17)


@pytest.mark.parametrize(("fields", "problem"), [
    ({"value": "on"}, "name: missing"),
    ({"name": 1}, "name: expected string, got number"),
    ({"name": "agentSpeaking", "value": "maybe", "ts": 1},
     "value: agentSpeaking expects on or off"),
])
def test_info_bad_fields(fields: dict[str, Any], problem: str) -> None:
    assert rejected(type="info", **fields).problem == problem


@pytest.mark.parametrize(("ts", "problem"), [
    ("later", "ts: expected number, got non-numeric string"),
    (False, "ts: expected number, got boolean"),
    ({"ms": 1}, "ts: expected number, got object"),
    ("Infinity", "ts: expected a finite number"),
])
@pytest.mark.parametrize(("name", "value", "event"), [
    ("clientSpeaking", "on", SpeakerEvent("caller", True)),
    ("tokensPlayed", "We open at", TokensPlayed("We open at")),
    ("configUpdated", "language", ConfigUpdated("language")),
    ("roundTripDelayMs", "80", Info("roundTripDelayMs", "80")),
])
def test_info_unusable_ts_is_taken_as_absent(ts: object, problem: str, name: str, value: str,
                                             event: Any) -> None:
    """``ts`` is read nowhere, and a ``tokensPlayed`` lost for it was the record of what
    the caller heard lost; a ``clientSpeaking`` lost, the caller's speech unseen."""
    result = parse(type="info", name=name, value=value, ts=ts)
    assert result == event
    assert getattr(result, "problem", None) == problem


def test_error_report() -> None:
    description = 'Invalid message received: { "foo" : "bar" }'
    assert parse(type="error", description=description) == RelayErrorReport(description)


def test_error_report_needs_description() -> None:
    assert rejected(type="error").problem == "description: missing"
    assert rejected(type="error", description={"code": 64107}).problem == \
        "description: expected string, got object"


# ---------------------------------------------------------------- frames we cannot use


def test_binary_frame() -> None:
    data = b'{"type":"prompt","voicePrompt":"hi"}'
    assert parse_frame(data) == Rejected("binary", None, len(data))


def test_too_large_is_not_decoded() -> None:
    text = '{"type":"prompt","voicePrompt":"' + "a" * 100 + '"}'
    assert parse_frame(text, max_bytes=100) == Rejected("too_large", None, len(text))
    assert parse_frame("{" * 101, max_bytes=100) == Rejected("too_large", None, 101)


def test_size_is_measured_in_utf8_bytes() -> None:
    raw = '{"type":"prompt","voicePrompt":"' + "é" * 40 + '"}'  # 74 characters, 114 bytes
    assert parse_frame(raw, max_bytes=113) == Rejected("too_large", None, 114)
    assert parse_frame(raw, max_bytes=114) == Prompt("é" * 40)
    assert parse_frame(raw + " x") == Rejected("bad_json", None, 116)


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    text = frame(type="dtmf", digit="1")
    assert parse_frame(text, max_bytes=len(text)) == Dtmf("1")
    assert parse_frame(text, max_bytes=len(text) - 1) == Rejected("too_large", None, len(text))


@pytest.mark.parametrize("text", ["", "{", "not json", '{"type":"dtmf",}', "{'type':'dtmf'}",
                                  '{"type":"dtmf"} {}', "\ud800"])
def test_bad_json(text: str) -> None:
    result = parse_frame(text)
    assert isinstance(result, Rejected)
    assert (result.reason, result.frame_type) == ("bad_json", None)


def test_deeply_nested_json_is_rejected_before_it_is_decoded() -> None:
    text = "[" * 60000 + "]" * 60000
    assert parse_frame(text, max_bytes=200000) == Rejected(
        "too_deep", None, 120000, f"nested deeper than {MAX_FRAME_DEPTH} levels")


def test_nesting_is_bounded_at_the_frame_depth() -> None:
    def nested(levels: int) -> str:              # the frame's own object is the first level
        inner = levels - 1
        return '{"type":"info","name":"n","value":' + "[" * inner + "]" * inner + "}"

    inner = MAX_FRAME_DEPTH - 1
    assert parse_frame(nested(MAX_FRAME_DEPTH)) == Info("n", "[" * inner + "]" * inner)
    deep = nested(MAX_FRAME_DEPTH + 1)
    assert parse_frame(deep) == Rejected("too_deep", None, len(deep),
                                         f"nested deeper than {MAX_FRAME_DEPTH} levels")
    assert describe(Rejected("too_deep", None, 9, "nested deeper than 32 levels")) == (
        "reason=too_deep type=- size=9 problem=nested deeper than 32 levels")


def test_brackets_inside_strings_are_not_nesting() -> None:
    said = '[{"\\"' * 100                  # brackets, escaped quotes and backslashes
    assert parse(type="prompt", voicePrompt=said) == Prompt(said)


@pytest.mark.parametrize("text", [
    '{"type":"prompt","voicePrompt":"a\ud800b"}',          # a real lone surrogate
    '{"type":"prompt","voicePrompt":"a\\ud800b"}',        # one escaped in the JSON
    '{"type":"prompt","voicePrompt":"a\\udfffb"}',        # a low half alone
])
def test_lone_surrogates_become_replacement_characters(text: str) -> None:
    result = parse_frame(text)
    assert result == Prompt("a\ufffdb")
    assert isinstance(result, Prompt)
    result.text.encode("utf-8")                             # valid Unicode: encodes


def test_surrogate_pairs_are_one_character_and_kept() -> None:
    assert parse_frame('{"type":"prompt","voicePrompt":"\\ud83d\\ude00 \\ud83d"}') == (
        Prompt("\U0001f600 \ufffd"))


def test_lone_surrogates_are_replaced_in_every_field() -> None:
    bad = "\\ud800"
    setup = parse_frame(
        f'{{"type":"setup","sessionId":"VX{bad}","callSid":"CA1","from":"+1{bad}",'
        f'"to":"{bad}","callerName":"{bad}","customParameters":{{"k{bad}":"v{bad}",'
        f'"n":["{bad}"]}}}}')
    assert setup == Setup(session_id="VX\ufffd", call_sid="CA1", from_number="+1\ufffd",
                          to_number="\ufffd", caller_name="\ufffd",
                          custom_parameters={"k\ufffd": "v\ufffd", "n": '["\ufffd"]'})
    assert parse_frame(f'{{"type":"interrupt","utteranceUntilInterrupt":"{bad}"}}') == (
        Interrupt("\ufffd"))
    assert parse_frame(f'{{"type":"info","name":"{bad}","value":{{"x":"{bad}"}}}}') == (
        Info("\ufffd", '{"x":"\ufffd"}'))
    assert parse_frame(f'{{"type":"error","description":"{bad}"}}') == (
        RelayErrorReport("\ufffd"))
    unknown = f'{{"type":"{bad}"}}'
    assert parse_frame(unknown) == Rejected("unknown_type", "<unprintable>", len(unknown))


@pytest.mark.parametrize("text", ["[]", '["setup"]', '"setup"', "42", "null", "true"])
def test_not_object(text: str) -> None:
    assert parse_frame(text) == Rejected("not_object", None, len(text))


@pytest.mark.parametrize("text", ["{}", '{"type":null}', '{"type":7}', '{"Type":"setup"}',
                                  '{"type":["setup"]}'])
def test_missing_type(text: str) -> None:
    assert parse_frame(text) == Rejected("missing_type", None, len(text))


@pytest.mark.parametrize("frame_type", ["media", "config", "Setup", "PROMPT", ""])
def test_unknown_type(frame_type: str) -> None:
    text = frame(type=frame_type, anything=1)
    logged = frame_type or "<unprintable>"
    assert parse_frame(text) == Rejected("unknown_type", logged, len(text))


def test_unknown_type_with_odd_characters_is_not_echoed() -> None:
    result = rejected(type="bad\nline " + "x" * 100)
    assert (result.reason, result.frame_type) == ("unknown_type", "<unprintable>")


def test_describe_has_no_content() -> None:
    text = frame(type="prompt", voicePrompt=["my card is 4111"])
    result = parse_frame(text)
    assert isinstance(result, Rejected)
    assert describe(result) == (f"reason=bad_field type=prompt size={len(text)} "
                                "problem=voicePrompt: expected string, got array")
    assert describe(Rejected("binary", None, 3)) == "reason=binary type=- size=3"


# ---------------------------------------------------------------- encoding


@pytest.mark.parametrize(("message", "expected"), [
    (Text("Hello"), '{"type":"text","token":"Hello","last":false}'),
    (Text("", last=True), '{"type":"text","token":"","last":true}'),
    (Text(" at nine", last=True, lang="en-US", interruptible=False, preemptible=True),
     '{"type":"text","token":" at nine","last":true,"lang":"en-US","interruptible":false,'
     '"preemptible":true}'),
    (Text("¿Qué? \"sí\"\n"), '{"type":"text","token":"¿Qué? \\"sí\\"\\n","last":false}'),
    (Play("https://example.com/hold.mp3"),
     '{"type":"play","source":"https://example.com/hold.mp3"}'),
    (Play("https://example.com/a.mp3", loop=0, preemptible=True, interruptible=False),
     '{"type":"play","source":"https://example.com/a.mp3","loop":0,"preemptible":true,'
     '"interruptible":false}'),
    (SendDigits("1w2#*"), '{"type":"sendDigits","digits":"1w2#*"}'),
    (Language(tts_language="es-ES"), '{"type":"language","ttsLanguage":"es-ES"}'),
    (Language(transcription_language="fr-FR"),
     '{"type":"language","transcriptionLanguage":"fr-FR"}'),
    (Language("de-DE", "de-DE"),
     '{"type":"language","ttsLanguage":"de-DE","transcriptionLanguage":"de-DE"}'),
    (End(), '{"type":"end"}'),
    (End(handoff_data='{"reasonCode":"transfer"}'),
     '{"type":"end","handoffData":"{\\"reasonCode\\":\\"transfer\\"}"}'),
    (End(handoff_data=""), '{"type":"end","handoffData":""}'),
    (Config.of({"interruptible": "speech", "dtmfDetection": True}),
     '{"type":"config","dtmfDetection":true,"interruptible":"speech"}'),
    (Config.of(languages=[{"code": "en-US", "speechModel": "nova-3-general",
                           "hints": "visa,mastercard"}]),
     '{"type":"config","languages":[{"code":"en-US","hints":"visa,mastercard",'
     '"speechModel":"nova-3-general"}]}'),
    (Hints(("margherita", "quattro formaggi")),
     '{"type":"hints","hints":"margherita,quattro formaggi"}'),
    (Hints(("pizza",), language="it-IT"), '{"type":"hints","hints":"pizza","language":"it-IT"}'),
])
def test_encode_exact(message: Outbound, expected: str) -> None:
    assert encode(message) == expected


def test_handoff_data_stays_a_string_on_the_wire() -> None:
    data = json.dumps({"reasonCode": "live-agent-handoff", "callerId": "x"})
    assert json.loads(encode(End(handoff_data=data)))["handoffData"] == data


@pytest.mark.parametrize("data", [{"reasonCode": "transfer"}, ["a"], 7, b"{}"])
def test_handoff_data_that_is_not_a_string_is_refused_where_it_is_made(data: Any) -> None:
    """Twilio drops an `end` whose handoffData is not a string, and the session goes on in
    silence: the tool that made it fails instead, saying what to do."""
    with pytest.raises(TypeError, match=r"must be a string.*json\.dumps"):
        End(handoff_data=data)


@pytest.mark.parametrize(("settings", "languages", "problem"), [
    ({}, [], "at least one setting"),
    ({"url": "wss://elsewhere"}, [], "cannot change \\['url'\\] mid-call"),
    ({}, [{"voice": "x"}], "needs its code"),
    ({}, [{"code": "en-US", "welcomeGreeting": "hi"}], "cannot change \\['welcomeGreeting'\\]"),
])
def test_config_changes_only_what_twilio_lets_change(
        settings: dict[str, str], languages: list[dict[str, str]], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Config.of(settings, languages)


@pytest.mark.parametrize("phrases", [(), ("",), ("a,b",), ("ok", " ")])
def test_hints_need_plain_phrases(phrases: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="Hints needs phrases"):
        Hints(phrases)


@pytest.mark.parametrize("digits", ["", "12a", "1W", "A", "1 2", "+1"])
def test_send_digits_rejects_bad_digits(digits: str) -> None:
    with pytest.raises(ValueError, match="0-9, w, # or \\*"):
        SendDigits(digits)


@pytest.mark.parametrize(("tts", "stt"), [(None, None), ("", None), (None, ""), ("en-US", "")])
def test_language_needs_a_language(tts: str | None, stt: str | None) -> None:
    with pytest.raises(ValueError, match="tts_language and/or transcription_language"):
        Language(tts, stt)


def test_play_checks() -> None:
    with pytest.raises(ValueError, match="non-empty URL"):
        Play("")
    with pytest.raises(ValueError, match=">= 0"):
        Play("https://example.com/a.mp3", loop=-1)
    with pytest.raises(ValueError, match=r"at most 1000 .* not 1001"):
        Play("https://example.com/a.mp3", loop=1001)
    assert Play("https://example.com/a.mp3", loop=1000).loop == 1000


# ---------------------------------------------------------------- properties


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

KNOWN_FIELDS = {
    "setup": ["sessionId", "callSid", "accountSid", "from", "to", "callStatus", "direction",
              "callerName", "parentCallSid", "forwardedFrom", "callType", "customParameters"],
    "prompt": ["voicePrompt", "last", "lang"],
    "dtmf": ["digit"],
    "interrupt": ["utteranceUntilInterrupt", "durationUntilInterruptMs"],
    "info": ["name", "value", "ts"],
    "error": ["description"],
    "configUpdated": ["ts", "ttsProvider", "transcriptionProvider"],
}
plausible = json_values | st.sampled_from(["", "CA1", "460", "460.7", "1", "#", "RINGING"])


@st.composite
def typed_frames(draw: st.DrawFn, values: st.SearchStrategy[object] = plausible) -> dict[str, Any]:
    frame_type = draw(st.sampled_from(sorted(KNOWN_FIELDS)))
    keys = draw(st.lists(st.sampled_from(KNOWN_FIELDS[frame_type]), unique=True))
    fields = {key: draw(values) for key in keys}
    extra = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2))
    return extra | fields | {"type": frame_type}


USABLE = Inbound | Rejected
# Problems come from a fixed vocabulary, so no frame value can end up in one.
PROBLEM = re.compile(
    r"missing|expected 1-128 letters, digits or _ \. : -"
    r"|value cannot be represented as text|expected a finite number"
    r"|expected (string|number|boolean|object|one of 0-9 \* # A-D)"
    r"(, got (null|boolean|number|string|array|object|non-numeric string))?")


@FAST
@given(st.text() | st.binary())
def test_any_frame_parses_without_raising(data: str | bytes) -> None:
    assert isinstance(parse_frame(data), USABLE)


@FAST
@given(json_values)
def test_any_json_value_parses_without_raising(value: object) -> None:
    result = parse_frame(json.dumps(value))
    assert isinstance(result, USABLE)
    if not isinstance(value, dict):
        assert result == Rejected("not_object", None, len(json.dumps(value).encode()))


@FAST
@given(typed_frames(), st.booleans())
def test_typed_frames_parse_without_raising(fields: dict[str, Any], ascii_only: bool) -> None:
    text = json.dumps(fields, ensure_ascii=ascii_only)
    result = parse_frame(text)
    assert isinstance(result, USABLE)
    if isinstance(result, Rejected):
        assert result.reason == "bad_field"
        assert result.frame_type == fields["type"]
        assert result.size == len(text.encode("utf-8", "surrogatepass"))
        key, _, problem = result.problem.partition(": ")
        assert key in KNOWN_FIELDS[fields["type"]]
        assert PROBLEM.fullmatch(problem), problem


MARKER = "QX7-secret-4111"
marked = st.sampled_from([MARKER, f"{MARKER}.5", [MARKER], {MARKER: MARKER}, {"k": [MARKER]}])


@FAST
@given(typed_frames(values=marked))
def test_rejections_carry_no_content(fields: dict[str, Any]) -> None:
    fields[MARKER] = MARKER
    result = parse_frame(json.dumps(fields))
    if isinstance(result, Rejected):
        assert MARKER not in repr(result)
        assert MARKER not in describe(result)
        assert "QX7" not in result.problem


@FAST
@given(st.builds(Setup, session_id=st.text(),
                 call_sid=st.from_regex(r"\A[A-Za-z0-9_.:-]{1,128}\Z"),
                 account_sid=st.text(), from_number=st.text(), to_number=st.text(),
                 call_status=st.sampled_from(["", "ringing", "in_progress", "active"]),
                 direction=st.text(), caller_name=st.text(), parent_call_sid=st.text(),
                 forwarded_from=st.text(), call_type=st.text(),
                 custom_parameters=st.dictionaries(st.text(), st.text())))
def test_valid_setup_parses_to_the_same_values(setup: Setup) -> None:
    wire = {"type": "setup", "sessionId": setup.session_id, "callSid": setup.call_sid,
            "accountSid": setup.account_sid, "from": setup.from_number, "to": setup.to_number,
            "callStatus": setup.call_status.upper(), "direction": setup.direction,
            "callerName": setup.caller_name, "parentCallSid": setup.parent_call_sid,
            "forwardedFrom": setup.forwarded_from, "callType": setup.call_type,
            "customParameters": setup.custom_parameters}
    assert parse_frame(json.dumps(wire, ensure_ascii=False)) == setup


@FAST
@given(st.builds(Prompt, text=st.text(), last=st.booleans(), lang=st.text()),
       st.builds(Interrupt, heard=st.none() | st.text(), duration_ms=st.none() | st.integers()))
def test_valid_prompt_and_interrupt_parse_to_the_same_values(prompt: Prompt,
                                                              interrupt: Interrupt) -> None:
    assert parse(type="prompt", voicePrompt=prompt.text, last=prompt.last,
                 lang=prompt.lang) == prompt
    assert parse(type="interrupt", utteranceUntilInterrupt=interrupt.heard,
                 durationUntilInterruptMs=interrupt.duration_ms) == interrupt


optional_bool = st.none() | st.booleans()
# any path a web URL can carry unescaped (Play refuses spaces and control characters); no
# lone surrogate, which encode sends as U+FFFD (test_unencodable_reply_text): no round trip
play_sources = st.text(st.characters(min_codepoint=0x21, exclude_characters="\x7f",
                                     exclude_categories=("Cs",)),
                       max_size=200).map(lambda path: "https://cdn.example.com/" + path)
outbound_messages = st.one_of(
    st.builds(Text, token=st.text(), last=st.booleans(), lang=st.none() | st.text(min_size=1),
              interruptible=optional_bool, preemptible=optional_bool),
    st.builds(Play, source=play_sources, loop=st.none() | st.integers(0, 1000),
              preemptible=optional_bool, interruptible=optional_bool),
    st.builds(SendDigits, digits=st.text(alphabet="0123456789w#*", min_size=1)),
    st.builds(Language, tts_language=st.text(min_size=1),
              transcription_language=st.none() | st.text(min_size=1)),
    st.builds(Language, tts_language=st.none(), transcription_language=st.text(min_size=1)),
    st.builds(End, handoff_data=st.none() | st.text()),
)

WIRE_NAMES = {
    Text: ("text", {"token": "token", "last": "last", "lang": "lang",
                    "interruptible": "interruptible", "preemptible": "preemptible"}),
    Play: ("play", {"source": "source", "loop": "loop", "preemptible": "preemptible",
                    "interruptible": "interruptible"}),
    SendDigits: ("sendDigits", {"digits": "digits"}),
    Language: ("language", {"ttsLanguage": "tts_language",
                            "transcriptionLanguage": "transcription_language"}),
    End: ("end", {"handoffData": "handoff_data"}),
}


@FAST
@given(outbound_messages)
def test_encode_shape_and_round_trip(message: Outbound) -> None:
    encoded = encode(message)
    assert "\n" not in encoded
    wire = json.loads(encoded)
    wire_type, names = WIRE_NAMES[type(message)]
    assert wire.pop("type") == wire_type
    assert set(wire) <= set(names)
    assert all(value is not None for value in wire.values())
    if isinstance(message, Text):
        assert isinstance(wire["last"], bool)
    assert type(message)(**{names[key]: value for key, value in wire.items()}) == message


# Twilio, "Update configuration during a call"
# (https://www.twilio.com/docs/voice/conversationrelay/dynamic-configuration, "What you can
# update"): "Change a language's settings: Update the speech model, hints, transcription
# provider, voice, TTS provider, and text normalization for a language." asrSmartFormat
# (transcript smart formatting) is none of these, so a config frame carrying it would be
# refused by Twilio (error 64107) and the whole change dropped with it.
def test_config_refuses_language_settings_twilio_does_not_list() -> None:
    with pytest.raises(ValueError, match="cannot change \\['asrSmartFormat'\\]"):
        Config.of(languages=[{"code": "en-US", "asrSmartFormat": True}])
