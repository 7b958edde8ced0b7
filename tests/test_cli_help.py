"""The command line explains itself: help on every command and option, --version, and every
setting problem in one message."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from voiceagent.app import cli


def _parsers(parser: argparse.ArgumentParser, path: str = "voiceagent"
             ) -> Iterator[tuple[str, argparse.ArgumentParser, argparse.Action | None]]:
    yield path, parser, None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"`{path} {name}` has no help line in `{path} --help`"
                yield from _parsers(sub, f"{path} {name}")


def test_every_command_and_option_has_help() -> None:
    missing = []
    commands = 0
    for path, parser, _ in _parsers(cli._parser()):
        commands += 1
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert commands >= 10                  # serve, demo, call, check, bench, config ..., calls ...
    assert not missing, f"options without help: {missing}"


def _shown_default(value: object) -> str:
    """A default as a reader of --help would look for it (``1``, not ``1.0``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_option_with_a_default_says_it_in_its_help() -> None:
    """`voiceagent demo --help` said of --from only "caller's number", where `call --help`
    gave its default, and `bench --help` did not say where --json writes when not given: a
    reader of --help cannot tell what leaving an option out does (s26 README walk)."""
    silent = []
    for path, parser, _ in _parsers(cli._parser()):
        for action in parser._actions:
            default = action.default
            # none, off, zero, empty: leaving the option out leaves its thing out
            if (not default or default == argparse.SUPPRESS
                    or isinstance(action, argparse._HelpAction | argparse._SubParsersAction)):
                continue
            if _shown_default(default) not in (action.help or ""):
                name = "/".join(action.option_strings) or action.dest
                silent.append(f"{path} {name} (default {_shown_default(default)})")
    assert not silent, f"options whose --help does not give their default: {silent}"


def test_every_command_describes_itself_in_its_own_help() -> None:
    """`voiceagent demo --help` showed its options under no description at all: the line in
    the parent's list is not shown in the command's own help."""
    bare = [path for path, parser, _ in _parsers(cli._parser()) if not parser.description]
    assert not bare, f"commands whose --help has no description: {bare}"


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"voiceagent {metadata.version('voiceagent')}"


def test_serve_reports_every_setting_problem_at_once(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PORT": "not-a-port",
           "STORE": "dynamodb", "TIME_ZONE": "Mars/Olympus", "LLM": "bedrock",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_EC2_METADATA_DISABLED": "true"}
    done = subprocess.run([sys.executable, "-m", "voiceagent", "serve"], env=env,
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("voiceagent: cannot start, 6 setting(s) to fix:"), done.stderr
    said = "\n".join(lines[1:])
    for name in ("PORT:", "TIME_ZONE:", "TABLE_NAME:", "TWILIO_AUTH_TOKEN:", "AWS_REGION:",
                 "AWS credentials:"):
        assert name in said, f"{name} missing from:\n{done.stderr}"
    assert "Traceback" not in done.stderr


def test_serve_reads_dotenv_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TIME_ZONE=Mars/Olympus\nPORT=70000\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LLM": "scripted",
           "TWILIO_AUTH_TOKEN": "not-secret", "PORT": "3000"}
    done = subprocess.run([sys.executable, "-m", "voiceagent", "serve"], env=env,
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "1 setting(s) to fix" in done.stderr, done.stderr
    assert "TIME_ZONE: unknown time zone" in done.stderr       # from the file
    assert "PORT" not in done.stderr                           # the environment's 3000 won
    missing = subprocess.run([sys.executable, "-m", "voiceagent", "serve", "--env-file",
                              "nowhere.env"], env=env, cwd=str(tmp_path),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert "--env-file: no file at nowhere.env" in missing.stderr


def test_serve_says_which_addresses_to_give_twilio() -> None:
    """Behind a tunnel the address Twilio calls is not the one the server binds (hypercorn's
    'Running on http://0.0.0.0:3000'), and nothing said what to paste into the console."""
    from voiceagent.settings import Settings

    tunnel = Settings.from_env({"PUBLIC_URL": "https://abc.ngrok.app/", "LLM": "scripted",
                                "VALIDATE_SIGNATURES": "false"})
    assert cli.webhook_addresses(tunnel) == {
        "voice_url": "https://abc.ngrok.app/twiml (POST)",
        "relay_socket": "wss://abc.ngrok.app/relay"}
    bare = Settings.from_env({"LLM": "scripted", "VALIDATE_SIGNATURES": "false",
                              "PHONE_PAGE": "true", "HOST": "127.0.0.1", "PORT": "3000"})
    said = cli.webhook_addresses(bare)
    assert said["voice_url"].endswith("/twiml (POST)")
    assert "PUBLIC_URL" in said["hint"]
    assert said["phone_page"] == "http://127.0.0.1:3000/phone"


@pytest.mark.parametrize("args", [["demo", "--from", "15551234567"],
                                  ["call", "--from", "+1 555 123 4567"],
                                  ["call", "--to", "555-0199"]])
def test_a_caller_number_not_in_e164_is_refused_with_the_form_to_use(
        args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Profiles match the E.164 numbers Twilio sends: a number without its + matched none,
    and the default use case answered without a word about why."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(args)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {args[1]}: {args[2]!r} is not an E.164 number" in error
    assert "(e.g. +15551234567)" in error
