"""``voiceagent check`` as an operator runs it: a process with its own environment (and a
``.env`` in its folder), against real parts on 127.0.0.1: moto's server for STS and DynamoDB,
the local Bedrock endpoint over TLS (its CA through AWS_CA_BUNDLE), and a local fake of
Twilio's REST API. Every check line is asserted, with the advice under each failure.

Here: everything ready, the settings, and the stacks that run offline. The table, the models
and Twilio each have their own file (``test_check_table``, ``_models``, ``_twilio``); how
the check is run and read is ``check_support``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from tests.check_support import (
    ACCOUNT,
    DEFAULT_MODEL,
    GOOD,
    NUMBER,
    PUBLIC_URL,
    RUN_TIMEOUT_S,
    TOKEN,
    base_env,
    bedrock_env,
    config_dir,
    moto_env,
    one_token_or_refusal,
    run_check,
    twilio_env,
)
from tests.dynamodb_support import aws_env, moto_endpoint, open_test_table, table_name
from tests.fake_bedrock import running_fake_bedrock
from tests.fake_twilio_api import running_fake_twilio_api
from voiceagent.app.dotenv_file import load_dotenv_file
from voiceagent.catalog import read_config_dir, write_config
from voiceagent.tools.registry import default_registry

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.timeout(90)


# ---------------------------------------------------------------------------- all pass

async def test_everything_ready_passes_every_check(moto_endpoint: str, tmp_path: Path) -> None:
    config = config_dir(tmp_path / "config", {"frontDesk": None, "orders": GOOD,
                                               "billing": GOOD})
    with trio.fail_after(RUN_TIMEOUT_S):
        async with open_test_table(moto_endpoint, name=table_name()) as store, \
                running_fake_bedrock(tls=True, responder=one_token_or_refusal) as bedrock, \
                running_fake_twilio_api(ACCOUNT, TOKEN) as twilio:
            await write_config(store, read_config_dir(config, default_registry()))
            twilio.add_number(NUMBER, voice_url=f"{PUBLIC_URL}/twiml")
            env = base_env(tmp_path, STORE="dynamodb", TABLE_NAME=store.table_name,
                           CONFIG_DIR=str(config), STACK_USE_CASE="frontDesk",
                           **moto_env(moto_endpoint, tmp_path), **bedrock_env(bedrock),
                           **twilio_env(twilio))
            run = await run_check(env, tmp_path, "--number", NUMBER)
    lines = run.lines
    assert run.code == 0, run.out + run.err
    # the table lists use cases by name: billing (GOOD), frontDesk (the default), orders
    assert list(lines) == ["settings", "AWS credentials", f"DynamoDB table {store.table_name}",
                           "use cases and tools", f"Bedrock model {GOOD}",
                           f"Bedrock model {DEFAULT_MODEL}", "Twilio credentials",
                           f"Twilio number {NUMBER}"]
    assert all(line.status == "pass" and not line.advice for line in lines.values()), run.out
    assert "account 123456789012" in lines["AWS credentials"].detail
    assert "3 use case(s), frontDesk among them" in lines[
        f"DynamoDB table {store.table_name}"].detail
    assert "use cases billing, orders, from the table" in lines[f"Bedrock model {GOOD}"].detail
    assert lines[f"Twilio number {NUMBER}"].detail == \
        f"voice webhook is {PUBLIC_URL}/twiml (POST)"
    assert lines["use cases and tools"].detail.startswith("3 use case(s) in the table naming ")
    assert lines["use cases and tools"].detail.endswith(" registered")
    assert run.out.endswith("\nall 8 checks passed\n")
    # one request per distinct model, one token asked, over TLS through the CA bundle
    assert sorted(r.model_id for r in bedrock.requests) == sorted([DEFAULT_MODEL, GOOD])
    assert [r.body["inferenceConfig"] for r in bedrock.requests] == [{"maxTokens": 1}] * 2
    assert all(r.connection.tls for r in bedrock.requests)
    assert bedrock.violations == []
    assert [(method, user) for method, _, user in twilio.requests] == [("GET", ACCOUNT)] * 2
    assert twilio.requests[1][1].endswith(
        "/IncomingPhoneNumbers.json?PhoneNumber=%2B15551234567")


# ---------------------------------------------------------------------------- settings

async def test_bad_settings_are_all_listed_and_the_rest_skipped(tmp_path: Path) -> None:
    env = base_env(tmp_path, PORT="not-a-port", STORE="dynamodb", TIME_ZONE="Mars/Olympus",
                   LLM="bedrock")
    del env["TWILIO_AUTH_TOKEN"]
    with trio.fail_after(RUN_TIMEOUT_S):
        run = await run_check(env, tmp_path, "--number", NUMBER)
    lines = run.lines
    assert run.code == 1
    assert lines["settings"].status == "fail"
    # what serve would refuse too: no region and no credentials for Bedrock (helper-33)
    assert lines["settings"].detail == "6 problem(s) in the environment"
    for name in ("PORT:", "TIME_ZONE:", "TABLE_NAME:", "TWILIO_AUTH_TOKEN:", "AWS_REGION:",
                 "AWS credentials:"):
        assert any(a.startswith(name) for a in lines["settings"].advice), run.out
    assert [(name, line.status) for name, line in lines.items()][1:] == [
        ("AWS credentials", "skip"), ("store", "skip"), ("use cases and tools", "skip"),
        ("Bedrock models", "skip"), ("Twilio", "skip")]
    assert "Traceback" not in run.err
    assert run.out.endswith("\n1 of 6 checks failed, 5 skipped\n")


async def test_settings_serve_would_refuse_are_not_valid_and_the_rest_still_runs(
        tmp_path: Path) -> None:
    """Valid settings with no AWS region or credentials for Bedrock: ``check`` said
    "settings: valid" where ``serve`` refuses to start (helper-33); the other checks still
    run and say more."""
    env = base_env(tmp_path, LLM="bedrock", STORE="sqlite", DATA_DIR=str(tmp_path / "data"))
    with trio.fail_after(RUN_TIMEOUT_S):
        run = await run_check(env, tmp_path)
    lines = run.lines
    assert lines["settings"].status == "fail"
    assert lines["settings"].detail == "2 problem(s) in the environment"
    assert [a.split(":")[0] for a in lines["settings"].advice][:2] == [
        "AWS_REGION", "AWS credentials"]
    assert lines["SQLite data dir"].status == "pass"
    assert "Traceback" not in run.err


# ---------------------------------------------------------------------------- offline

async def test_sqlite_and_scripted_pass_offline_with_settings_from_dotenv(
        tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STORE=sqlite\nLLM=scripted\nTWILIO_AUTH_TOKEN=from-file\n"
                                   f"DATA_DIR={tmp_path / 'from-dotenv'}\n")
    env = base_env(tmp_path, DATA_DIR=str(tmp_path / "from-environment"))
    del env["TWILIO_AUTH_TOKEN"]
    with trio.fail_after(RUN_TIMEOUT_S):
        run = await run_check(env, tmp_path)
        ascii_run = await run_check({**env, "PYTHONIOENCODING": "ascii"}, tmp_path)
        json_run = await run_check(env, tmp_path, "--json")
    lines = run.lines
    assert run.code == 0, run.out + run.err
    assert lines["settings"].detail == "valid (environment and .env; STORE=sqlite, LLM=scripted)"
    assert [(name, line.status) for name, line in lines.items()] == [
        ("settings", "pass"), ("AWS credentials", "skip"), ("SQLite data dir", "pass"),
        ("use cases and tools", "pass"), ("Bedrock models", "skip"), ("Twilio", "skip")]
    # the environment wins over .env
    assert lines["SQLite data dir"].detail.startswith(f"{tmp_path / 'from-environment'} ")
    assert run.out.endswith("\nall 3 checks passed, 3 skipped\n")
    assert ascii_run.code == 0
    assert ascii_run.out.splitlines()[:2] == [
        "[ok] settings: valid (environment and .env; STORE=sqlite, LLM=scripted)",
        "[skip] AWS credentials: skipped (STORE=sqlite and LLM=scripted: nothing calls AWS)"]
    document = json.loads(json_run.out)
    assert json_run.code == 0
    assert document["ok"] is True
    assert [c["status"] for c in document["checks"]] == [
        "pass", "skip", "pass", "pass", "skip", "skip"]


async def test_dynamodb_local_and_scripted_need_no_aws_identity(moto_endpoint: str,
                                                                  tmp_path: Path) -> None:
    """compose's dev path: DynamoDB Local takes dummy keys, which STS would refuse. No
    AWS_ENDPOINT_URL_STS here: asked, STS (unreachable offline) would fail the run."""
    config = config_dir(tmp_path / "config", {"frontDesk": None})
    with trio.fail_after(RUN_TIMEOUT_S):
        async with open_test_table(moto_endpoint, name=table_name()) as store:
            await write_config(store, read_config_dir(config, default_registry()))
            env = base_env(tmp_path, STORE="dynamodb", LLM="scripted",
                           TABLE_NAME=store.table_name, CONFIG_DIR=str(config),
                           STACK_USE_CASE="frontDesk", **aws_env(moto_endpoint, tmp_path))
            run = await run_check(env, tmp_path)
    lines = run.lines
    assert run.code == 0, run.out + run.err
    assert lines["AWS credentials"].status == "skip"
    assert lines["AWS credentials"].detail == (
        f"skipped (LLM=scripted, and DynamoDB is at {moto_endpoint}, not AWS)")
    assert lines[f"DynamoDB table {store.table_name}"].status == "pass"


def test_dotenv_file_never_overrides_the_environment(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_dotenv_file() is None
    (tmp_path / ".env").write_text("VOICEAGENT_TEST_SET=from-file\n"
                                   "VOICEAGENT_TEST_UNSET=from-file\n")
    monkeypatch.setenv("VOICEAGENT_TEST_SET", "from-environment")
    monkeypatch.setenv("VOICEAGENT_TEST_UNSET", "placeholder")    # restored to unset after
    monkeypatch.delenv("VOICEAGENT_TEST_UNSET")
    assert load_dotenv_file() == Path(".env")
    assert os.environ["VOICEAGENT_TEST_SET"] == "from-environment"
    assert os.environ["VOICEAGENT_TEST_UNSET"] == "from-file"
