"""The edges: settings at start-up, signatures, TwiML, and the CLI's demo."""

from __future__ import annotations

import io
import socket
import sys
from pathlib import Path

import pytest
import trio

from voiceagent import signature, twiml
from voiceagent.app.cli import main
from voiceagent.errors import SettingsError
from voiceagent.settings import Settings
from voiceagent.usecases import LanguageEntry, UseCase

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_CONFIG = ROOT / "tests" / "fixtures" / "config"
SERVE_TIMEOUT_S = 60

# main() runs the demo's server, or serve (if start-up stopped nothing, on HOST, for ever),
# in this process: a bound, as for every test that does I/O
IN_PROCESS_LIMIT = pytest.mark.timeout(SERVE_TIMEOUT_S)


def test_every_settings_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"PORT": "eighty", "STORE": "dynamodb", "TIME_ZONE": "Mars/Base",
                           "WS_URL": "http://x/relay"})
    message = str(caught.value)
    for name in ("PORT", "TIME_ZONE", "WS_URL", "TABLE_NAME", "TWILIO_AUTH_TOKEN"):
        assert name in message
    assert "voiceagent demo" in message
    assert len(caught.value.problems) == 5


@pytest.mark.parametrize("ws_url", ["wss://agent.example.com", "wss://agent.example.com/",
                                    "wss://agent.example.com/relay%20v2",
                                    "wss://agent.example.com/relay v2", "wss:///relay",
                                    "wss://agent.example.com/relay/<path>",
                                    "wss://agent.example.com/relay#top"])
def test_a_ws_url_whose_path_the_relay_route_cannot_match_is_refused(ws_url: str) -> None:
    """Its path is the relay route, matched against the path as the server reads it: with
    an escape or a space (decoded before matching), a converter's brackets, or no path at
    all (Twilio connects to /, the route is /relay), every call's socket got a 404."""
    with pytest.raises(SettingsError, match=r"WS_URL.*relay route"):
        Settings.from_env({"WS_URL": ws_url, "TWILIO_AUTH_TOKEN": "t"})


def test_ws_urls_with_a_plain_path_are_taken() -> None:
    for ws_url in ("wss://agent.example.com/relay", "wss://agent.example.com:8443/v2/relay.ws",
                   "ws://127.0.0.1:3000/relay?region=eu", "wss://a.ngrok.app/~agent/relay_1"):
        assert Settings.from_env({"WS_URL": ws_url, "TWILIO_AUTH_TOKEN": "t"}).ws_url == ws_url


def test_items_that_would_expire_during_a_call_are_refused_at_start() -> None:
    """A call's session item keeps the expiry it got as the call started: with
    SESSION_TTL_S under MAX_CALL_DURATION_S, a long call's handoff and reconnects failed once
    DynamoDB's TTL (or the SQLite sweep) removed it."""
    with pytest.raises(SettingsError, match=r"SESSION_TTL_S: 600 s is shorter than "
                                            r"MAX_CALL_DURATION_S \(3600 s\)"):
        Settings.from_env({"SESSION_TTL_S": "600", "TWILIO_AUTH_TOKEN": "t"})
    taken = Settings.from_env({"SESSION_TTL_S": "600", "MAX_CALL_DURATION_S": "600",
                               "TWILIO_AUTH_TOKEN": "t"})
    assert (taken.session_ttl_s, taken.max_call_duration_s) == (600, 600)


def test_settings_defaults_and_the_original_sample_alias() -> None:
    settings = Settings.from_env({"TWILIO_AUTH_TOKEN": "s3cr3t-token",
                                  "INFERENCE_PROFILE_ARN": "arn:aws:bedrock:x"})
    assert settings.port == 3000
    assert settings.store == "sqlite"
    assert settings.llm == "bedrock"
    assert settings.model_identifier == "arn:aws:bedrock:x"
    assert "s3cr3t" not in repr(settings)            # the token never shows in a repr
    assert settings.twilio_auth_token == "s3cr3t-token"


def test_signature_matches_the_spec_worked_examples() -> None:
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert signature.sign("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert signature.sign("12345", "wss://agent.example.com/relay") == \
        "7CqIVSnwJUUqw+gxShy+t9T534Y="
    good = {"x-twilio-signature": "7CqIVSnwJUUqw+gxShy+t9T534Y="}
    assert signature.is_valid("12345", "wss://agent.example.com/relay", {}, good)
    assert not signature.is_valid("12345", "https://agent.example.com/relay", {}, good)
    assert not signature.is_valid("12345", "wss://agent.example.com/relay", {}, {})


def test_public_base_behind_a_proxy() -> None:
    headers = {"x-forwarded-proto": "https", "x-forwarded-host": "agent.example.com"}
    assert signature.public_base(headers, "http", "10.0.0.5:3000", None,
                                 trust_forwarded=True) == "https://agent.example.com"
    assert signature.public_base(headers, "http", "10.0.0.5:3000", None) == \
        "http://10.0.0.5:3000"                      # untrusted: a caller could send them
    assert signature.public_base({}, "http", "h:1", "https://pub.example/") == \
        "https://pub.example"
    assert signature.to_ws("https://agent.example.com") == "wss://agent.example.com"


def test_twiml_carries_the_relay_attributes_languages_and_token() -> None:
    use_case = UseCase(name="x", prompt="p",
                       relay={"welcomeGreeting": "Hi & welcome", "dtmfDetection": True,
                              "interruptible": "speech"},
                       languages=(LanguageEntry(code="es-US", voice="es-US-Neural2-A"),))
    document = twiml.connect_relay(ws_url="wss://a.example/relay",
                                   action_url="https://a.example/action", use_case=use_case,
                                   parameters={"sessionToken": "tok"})
    assert '<Connect action="https://a.example/action">' in document
    assert 'dtmfDetection="true"' in document
    assert 'welcomeGreeting="Hi &amp; welcome"' in document
    assert '<Language code="es-US" voice="es-US-Neural2-A" />' in document
    assert '<Parameter name="sessionToken" value="tok" />' in document
    again = twiml.connect_relay(ws_url="wss://a.example/relay", action_url="https://a/action",
                                use_case=use_case, parameters={}, greeting=False)
    assert "welcomeGreeting" not in again


@IN_PROCESS_LIMIT
def test_demo_plays_a_scripted_caller(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONFIG_DIR", "TIME_ZONE"):
        monkeypatch.delenv(name, raising=False)
    code = main(["demo", "--say", "What are your hours?", "--say", "/dtmf 1",
                 "--say", "goodbye"])
    out = capsys.readouterr()
    assert code == 0
    lines = out.out.splitlines()
    assert lines[0].startswith("agent: Hi, thanks for calling Twilio Dough Boy Pizza")
    assert lines[1] == "caller: What are your hours?"
    assert lines[2].startswith("agent: We're open Tuesday through Thursday")
    assert lines[4].startswith("agent: We're open")
    assert "goodbye" in lines[-1].lower()
    assert "DEMO MODE" in out.err


@IN_PROCESS_LIMIT
def test_demo_in_a_projects_folder_says_it_is_not_the_projects_agent(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """`voiceagent demo`, tried first in the folder `voiceagent init` made, answered as the
    pizza place with no word that the folder's own agent is run another way."""
    for name in ("CONFIG_DIR", "TIME_ZONE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "config" / "usecases").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    code = main(["demo", "--say", "goodbye"])
    out = capsys.readouterr()
    assert code == 0
    assert out.out.startswith("agent: Hi, thanks for calling Twilio Dough Boy Pizza")
    assert ("demo runs voiceagent's example restaurant agent, not this folder's "
            "config/usecases/. For yours: `voiceagent serve` here") in out.err
    monkeypatch.chdir(Path(__file__).parent.parent)     # the checkout: its config/ is the demo's
    assert main(["demo", "--say", "goodbye"]) == 0
    assert "not this folder's" not in capsys.readouterr().err


@IN_PROCESS_LIMIT
def test_demo_reads_a_piped_script_and_waits_for_each_answer(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`echo ... | voiceagent demo` used to hang up at end of input, before any answer."""
    for name in ("CONFIG_DIR", "TIME_ZONE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO("What are your hours?\n\n/dtmf 1\ngoodbye\n"))
    code = main(["demo"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[1] == "caller: What are your hours?"
    assert lines[2].startswith("agent: We're open Tuesday through Thursday")
    assert lines[3] == "caller: /dtmf 1"        # the blank line is skipped, not said
    assert lines[-2] == "caller: goodbye"
    assert "goodbye" in lines[-1].lower()


@IN_PROCESS_LIMIT
def test_call_reports_an_unreachable_server_in_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["call", "http://127.0.0.1:9", "--say", "hi"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot reach http://127.0.0.1:9/twiml" in err
    assert "Traceback" not in err


def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """Nothing from the developer's shell: no AWS identity, no Twilio token; and run from
    ``tmp_path``, so serve's ./.env is not the checkout's (a developer's .env with a token
    would start a server there, and load_dotenv writes os.environ past monkeypatch)."""
    import os
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("AWS_", "TWILIO_")) or name in (
                "STORE", "LLM", "DEMO", "VALIDATE_SIGNATURES", "TABLE_NAME", "PORT"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", f"{tmp_path}/no-such-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", f"{tmp_path}/no-such-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@IN_PROCESS_LIMIT
def test_serve_without_a_token_says_what_to_set(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: object) -> None:
    _isolated_env(monkeypatch, tmp_path)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "TWILIO_AUTH_TOKEN" in err
    assert "voiceagent demo" in err
    assert "Traceback" not in err


@IN_PROCESS_LIMIT
def test_serve_with_bedrock_and_no_aws_identity_stops_at_start(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: object) -> None:
    _isolated_env(monkeypatch, tmp_path)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "token")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "AWS_REGION" in err
    assert "voiceagent demo" in err
    assert "Traceback" not in err


async def _serve_fails(tmp_path: Path, host: str, port: int) -> str:
    """``voiceagent serve`` in a process of its own (it sets up logging and signals) with a
    clean environment; it must exit 2 without a traceback. Its last stderr line."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "LLM": "scripted", "TWILIO_AUTH_TOKEN": "t", "DATA_DIR": str(tmp_path / "data"),
           "CONFIG_DIR": str(FIXTURE_CONFIG), "HOST": host, "PORT": str(port),
           "AWS_EC2_METADATA_DISABLED": "true"}
    with trio.fail_after(SERVE_TIMEOUT_S):
        done = await trio.run_process([sys.executable, "-m", "voiceagent", "serve"], env=env,
                                      cwd=tmp_path, capture_stderr=True, check=False)
    err = done.stderr.decode()
    assert "Traceback" not in err, err[-3000:]
    assert done.returncode == 2
    return err.splitlines()[-1]


async def test_serve_on_a_port_in_use_or_a_host_not_here_says_so_in_one_line(
        tmp_path: Path) -> None:
    """A second `voiceagent serve`, or a port another program holds, is the commonest way
    for a start to fail: which address, why, and which setting to change."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert await _serve_fails(tmp_path, "127.0.0.1", port) == (
            f"voiceagent: cannot listen on 127.0.0.1:{port}: the port is in use (another "
            "`voiceagent serve`, or another program): choose a free one (PORT; `demo --port`), "
            "or stop the process that holds it")
    not_here = await _serve_fails(tmp_path, "192.0.2.1", 3000)     # TEST-NET-1, nobody's
    assert not_here.startswith("voiceagent: cannot listen on 192.0.2.1:3000: HOST is not an "
                               "address of this machine: set HOST")
    unknown = await _serve_fails(tmp_path, "no-such-host.invalid", 3000)
    assert unknown.startswith("voiceagent: cannot listen on no-such-host.invalid:3000: HOST is "
                              "neither an IP address nor a name that resolves")
