"""``voiceagent check`` as an operator runs it: a process with its own environment (and a
``.env`` in its folder), against real parts on 127.0.0.1: moto's server for STS and DynamoDB,
the local Bedrock endpoint over TLS (its CA through AWS_CA_BUNDLE), and a local fake of
Twilio's REST API. Every check line is asserted, with the advice under each failure."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import yaml

from tests.dynamodb_support import aws_env, moto_endpoint, open_test_table, raw_client, table_name
from tests.fake_bedrock import (
    FakeBedrock,
    HttpError,
    RecordedRequest,
    Reply,
    running_fake_bedrock,
    text_reply,
)
from tests.fake_twilio_api import FakeTwilioApi, running_fake_twilio_api
from voiceagent.app.dotenv_file import load_dotenv_file
from voiceagent.catalog import read_config_dir, write_config
from voiceagent.store import config_records
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).parent.parent
ACCOUNT = "AC" + "c" * 32
TOKEN = "check-auth-token-not-secret"
NUMBER = "+15551234567"
PUBLIC_URL = "https://agent.example.com"
DEFAULT_MODEL = "us.acme.default-v1:0"
GOOD = "acme.good-v1:0"
REFUSED = "acme.refused-v1:0"
UNKNOWN = "acme.nonexistent-v9"
MARKS = {"✓": "pass", "✗": "fail", "○": "skip"}
RUN_TIMEOUT_S = 60


# ---------------------------------------------------------------------------- helpers

@dataclass
class Line:
    status: str
    detail: str
    advice: list[str] = field(default_factory=list)

    @property
    def said(self) -> str:
        return "\n".join([self.detail, *self.advice])


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> dict[str, Line]:
        """The checklist by check name, advice lines under each."""
        found: dict[str, Line] = {}
        last: Line | None = None
        for text in self.out.splitlines():
            if text[:1] in MARKS:
                name, _, detail = text[2:].partition(": ")
                last = found[name] = Line(MARKS[text[:1]], detail)
            elif text.startswith("    → ") and last is not None:
                last.advice.append(text.removeprefix("    → "))
        return found


def base_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """Nothing of the developer's environment: no AWS files, no proxies, no .env."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
            "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8",
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true", "TWILIO_AUTH_TOKEN": TOKEN, **values}


def moto_env(endpoint: str, tmp_path: Path) -> dict[str, str]:
    return {**aws_env(endpoint, tmp_path), "AWS_ENDPOINT_URL_STS": endpoint}


async def run_check(env: dict[str, str], cwd: Path, *args: str) -> Run:
    done = await trio.run_process([sys.executable, "-m", "voiceagent", "check", *args],
                                  env=env, cwd=cwd, capture_stdout=True,
                                  capture_stderr=True, check=False)
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


def config_dir(folder: Path, models: dict[str, str | None]) -> Path:
    """A config folder with one use case per entry, naming that model (None: the default)."""
    (folder / "usecases").mkdir(parents=True)
    for name, model in models.items():
        data = {"name": name, "prompt": "You answer in one word."}
        if model is not None:
            data["model"] = model
        (folder / "usecases" / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return folder


def one_token_or_refusal(request: RecordedRequest) -> Reply:
    if request.model_id == REFUSED:
        return HttpError(403, "AccessDeniedException",
                         "You don't have access to the model with the specified model ID.")
    if request.model_id == UNKNOWN:
        return HttpError(400, "ValidationException", "The provided model identifier is invalid.")
    return text_reply(["Hi"], stop_reason="max_tokens", output_tokens=1)


def bedrock_env(fake: FakeBedrock) -> dict[str, str]:
    assert fake.ca_bundle is not None
    return {"LLM": "bedrock", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake.endpoint_url,
            "AWS_CA_BUNDLE": fake.ca_bundle, "MODEL_IDENTIFIER": DEFAULT_MODEL}


def twilio_env(twilio: FakeTwilioApi, token: str = TOKEN) -> dict[str, str]:
    return {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": token,
            "TWILIO_API_BASE_URL": twilio.url, "PUBLIC_URL": PUBLIC_URL}


@asynccontextmanager
async def offline_twilio(tmp_path: Path) -> AsyncIterator[tuple[FakeTwilioApi, dict[str, str]]]:
    """The fake Twilio API and an environment that needs nothing else (SQLite, scripted)."""
    async with running_fake_twilio_api(ACCOUNT, TOKEN) as twilio:
        yield twilio, base_env(tmp_path, STORE="sqlite", LLM="scripted",
                               DATA_DIR=str(tmp_path / "data"), **twilio_env(twilio))


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
    assert lines["use cases and tools"].detail.startswith("3 use case(s) naming ")
    assert lines["use cases and tools"].detail.endswith(" in the table")
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


# ---------------------------------------------------------------------------- the table

@pytest.mark.parametrize("case", ["missing", "wrong keys"])
async def test_a_missing_or_wrongly_keyed_table_fails_with_advice(
        moto_endpoint: str, tmp_path: Path, case: str) -> None:
    name = table_name()
    client = raw_client(moto_endpoint)
    if case == "wrong keys":
        await trio.to_thread.run_sync(lambda: client.create_table(
            TableName=name, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}]))
    env = base_env(tmp_path, STORE="dynamodb", TABLE_NAME=name, LLM="scripted",
                   **moto_env(moto_endpoint, tmp_path))
    try:
        with trio.fail_after(RUN_TIMEOUT_S):
            run = await run_check(env, tmp_path)
    finally:
        if case == "wrong keys":
            await trio.to_thread.run_sync(lambda: client.delete_table(TableName=name))
    table = run.lines[f"DynamoDB table {name}"]
    assert run.code == 1
    assert run.lines["AWS credentials"].status == "pass"      # independent: still checked
    assert table.status == "fail"
    if case == "missing":
        assert table.detail == f"does not exist at {moto_endpoint}"
        assert table.advice[0] == "create it with `voiceagent store init` (same settings)"
        assert "DynamoDB console > Tables (region us-east-1)" in table.advice[1]
    else:
        assert table.detail == "exists, but is not keyed the way voiceagent needs"
        assert "key schema is id/None, expected pk/sk" in table.advice
        assert any(a.startswith("no global secondary index 'index-1-full'")
                   for a in table.advice)


async def test_a_stored_use_case_naming_a_tool_this_process_lacks_fails(
        moto_endpoint: str, tmp_path: Path) -> None:
    """config/ gained a tool and was loaded into the table, but the image was not rebuilt:
    every call of that use case would fail on the tool, and the checks said all was well."""
    use_case = UseCase.model_validate({"name": "frontDesk", "prompt": "Hi.", "tools": [
        {"name": "bookTable", "description": "Book a table."}]})
    with trio.fail_after(RUN_TIMEOUT_S):
        async with open_test_table(moto_endpoint, name=table_name()) as store:
            await store.put(config_records.use_case_item(use_case))
            env = base_env(tmp_path, STORE="dynamodb", TABLE_NAME=store.table_name,
                           LLM="scripted", STACK_USE_CASE="frontDesk",
                           **moto_env(moto_endpoint, tmp_path))
            run = await run_check(env, tmp_path)
    tools = run.lines["use cases and tools"]
    assert run.code == 1, run.out
    assert run.lines[f"DynamoDB table {store.table_name}"].status == "pass"
    assert (tools.status, tools.detail) == (
        "fail", "1 use case(s) in the table do not fit the tools this process registers")
    assert tools.advice[0].startswith(
        "use case frontDesk: tools[0].name: no tool 'bookTable' is registered")


# ---------------------------------------------------------------------------- models

async def test_refused_and_unknown_models_each_say_what_to_do(moto_endpoint: str,
                                                              tmp_path: Path) -> None:
    config = config_dir(tmp_path / "config", {"frontDesk": GOOD, "vip": REFUSED,
                                               "lab": UNKNOWN})
    with trio.fail_after(RUN_TIMEOUT_S):
        async with running_fake_bedrock(tls=True, responder=one_token_or_refusal) as bedrock:
            env = base_env(tmp_path, STORE="sqlite", DATA_DIR=str(tmp_path / "data"),
                           CONFIG_DIR=str(config), STACK_USE_CASE="frontDesk",
                           **moto_env(moto_endpoint, tmp_path), **bedrock_env(bedrock))
            run = await run_check(env, tmp_path)
    lines = run.lines
    assert run.code == 1
    assert lines[f"Bedrock model {GOOD}"].status == "pass"
    refused = lines[f"Bedrock model {REFUSED}"]
    assert (refused.status, refused.detail) == ("fail",
                                                "access not granted (AccessDeniedException)")
    assert refused.advice[0].startswith(
        f"enable model access in the Bedrock console for {REFUSED} in us-east-1")
    assert refused.advice[1] == ("allow IAM bedrock:InvokeModelWithResponseStream on "
                                 f"arn:aws:bedrock:us-east-1::foundation-model/{REFUSED}")
    unknown = lines[f"Bedrock model {UNKNOWN}"]
    assert (unknown.status, unknown.detail) == (
        "fail", "wrong region or unknown model (ValidationException)")
    assert f"check that {UNKNOWN} (use case lab) is offered in us-east-1" in unknown.said
    assert "set AWS_REGION to the region where the model is enabled" in unknown.said
    assert unknown.advice[-1] == ("Bedrock said: ValidationException: The provided model "
                                  "identifier is invalid.")
    assert sorted(r.model_id for r in bedrock.requests) == sorted([GOOD, REFUSED, UNKNOWN])


async def test_a_model_a_use_case_thinks_with_is_asked_with_thinking(moto_endpoint: str,
                                                                     tmp_path: Path) -> None:
    """1 output token cannot hold a thinking budget: such a model is asked with the smallest
    budget (1024) under maxTokens 1025, and read to its first word only. A model that refuses
    thinking, or a MODEL_IDENTIFIER that cannot think, fails with what to do."""
    thinker, profile = "us.anthropic.claude-sonnet-4-20250514-v1:0", (
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3")
    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    for name, model in {"frontDesk": thinker, "lab": profile, "vip": None}.items():
        data: dict[str, object] = {
            "name": name, "prompt": "You answer in one word.",
            "inference": {"max_tokens": 1400}, "model_options": {"thinking_budget_tokens": 1024}}
        if model is not None:
            data["model"] = model
        (config / "usecases" / f"{name}.yaml").write_text(yaml.safe_dump(data))
    bodies: dict[str, dict[str, object]] = {}

    def respond(request: RecordedRequest) -> Reply:
        bodies[request.model_id] = request.body
        if request.model_id == profile:         # its model cannot think
            return HttpError(400, "ValidationException", "The model returned the following "
                             "errors: thinking: Extra inputs are not permitted")
        return text_reply(["Hi", " there,", " how can I help?"])

    with trio.fail_after(RUN_TIMEOUT_S):
        async with running_fake_bedrock(tls=True, responder=respond) as bedrock:
            env = base_env(tmp_path, STORE="sqlite", DATA_DIR=str(tmp_path / "data"),
                           CONFIG_DIR=str(config), STACK_USE_CASE="frontDesk",
                           **moto_env(moto_endpoint, tmp_path), **bedrock_env(bedrock))
            run = await run_check(env, tmp_path)
    lines = run.lines
    assert run.code == 1
    assert lines[f"Bedrock model {thinker}"].status == "pass"
    assert bodies[thinker]["inferenceConfig"] == {"maxTokens": 1025}
    assert bodies[thinker]["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 1024}}
    refused = lines[f"Bedrock model {profile}"]
    assert (refused.status, refused.detail) == ("fail",
                                                "refused with thinking on (ValidationException)")
    assert refused.advice[0].startswith("thinking is on in lab (model_options.")
    default = lines[f"Bedrock model {DEFAULT_MODEL}"]
    assert (default.status, default.detail) == ("fail", "cannot think (thinking is on in vip)")
    assert "set MODEL_IDENTIFIER or the use case's model" in default.said
    assert DEFAULT_MODEL not in bodies                  # not asked: it would not think


# ---------------------------------------------------------------------------- Twilio

async def test_a_wrong_twilio_token_fails_and_the_number_is_skipped(tmp_path: Path) -> None:
    with trio.fail_after(RUN_TIMEOUT_S):
        async with offline_twilio(tmp_path) as (twilio, env):
            twilio.add_number(NUMBER, voice_url=f"{PUBLIC_URL}/twiml")
            run = await run_check({**env, "TWILIO_AUTH_TOKEN": "not-the-token"}, tmp_path,
                                  "--number", NUMBER)
    lines = run.lines
    assert run.code == 1
    credentials = lines["Twilio credentials"]
    assert credentials.status == "fail"
    assert credentials.detail == (f"Twilio refused TWILIO_ACCOUNT_SID={ACCOUNT} with this "
                                  "TWILIO_AUTH_TOKEN (HTTP 401, error 20003)")
    assert credentials.advice[0].startswith("set TWILIO_AUTH_TOKEN to the account's Auth Token")
    assert lines[f"Twilio number {NUMBER}"].status == "skip"
    assert len(twilio.requests) == 1
    assert "not-the-token" not in run.out + run.err


@pytest.mark.parametrize("case", ["elsewhere", "not in the account"])
async def test_a_number_whose_webhook_is_not_ours_says_what_to_set(tmp_path: Path,
                                                                  case: str) -> None:
    with trio.fail_after(RUN_TIMEOUT_S):
        async with offline_twilio(tmp_path) as (twilio, env):
            if case == "elsewhere":
                twilio.add_number(NUMBER, voice_url="https://old.example.com/voice",
                                  voice_method="GET")
            twilio.add_number("+15550000000", voice_url=f"{PUBLIC_URL}/twiml")
            run = await run_check(env, tmp_path, "--number", NUMBER)
    lines = run.lines
    number = lines[f"Twilio number {NUMBER}"]
    assert run.code == 1
    assert lines["Twilio credentials"].status == "pass"
    assert number.status == "fail"
    if case == "elsewhere":
        assert number.detail == (f"voice webhook URL is https://old.example.com/voice, "
                                 f"expected {PUBLIC_URL}/twiml; method is GET, expected POST")
        assert number.advice == [
            f"Twilio console > Phone Numbers > Manage > Active numbers > {NUMBER} > Voice "
            f"configuration: \"A call comes in\" = Webhook, URL {PUBLIC_URL}/twiml, HTTP POST; "
            "then Save configuration"]
    else:
        assert number.detail == f"not a number of account {ACCOUNT}"


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


async def test_a_model_a_use_case_thinks_adaptively_with_is_asked_at_its_effort(
        moto_endpoint: str, tmp_path: Path) -> None:
    """A model with ``model_options.effort`` is asked with adaptive thinking at that effort
    and read to its first word. A model that refuses it, or a MODEL_IDENTIFIER that does not
    think adaptively, fails with what to do."""
    opus, profile = "us.anthropic.claude-opus-4-7", (
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3")
    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    for name, model in {"frontDesk": opus, "lab": profile, "vip": None}.items():
        data: dict[str, object] = {
            "name": name, "prompt": "You answer in one word.",
            "inference": {"max_tokens": 1400}, "model_options": {"effort": "low"}}
        if model is not None:
            data["model"] = model
        (config / "usecases" / f"{name}.yaml").write_text(yaml.safe_dump(data))
    bodies: dict[str, dict[str, object]] = {}

    def respond(request: RecordedRequest) -> Reply:
        bodies[request.model_id] = request.body
        if request.model_id == profile:         # its model does not think adaptively
            return HttpError(400, "ValidationException", "The model returned the following "
                             "errors: thinking.type.adaptive is not supported for this model.")
        return text_reply(["Hi", " there,", " how can I help?"])

    with trio.fail_after(RUN_TIMEOUT_S):
        async with running_fake_bedrock(tls=True, responder=respond) as bedrock:
            env = base_env(tmp_path, STORE="sqlite", DATA_DIR=str(tmp_path / "data"),
                           CONFIG_DIR=str(config), STACK_USE_CASE="frontDesk",
                           **moto_env(moto_endpoint, tmp_path), **bedrock_env(bedrock))
            run = await run_check(env, tmp_path)
    lines = run.lines
    assert run.code == 1
    assert lines[f"Bedrock model {opus}"].status == "pass"
    assert bodies[opus]["additionalModelRequestFields"] == {"thinking": {"type": "adaptive"}}
    assert bodies[opus]["outputConfig"] == {"effort": "low"}
    refused = lines[f"Bedrock model {profile}"]
    assert (refused.status, refused.detail) == (
        "fail", "refused with adaptive thinking on (ValidationException)")
    assert refused.advice[0].startswith("adaptive thinking is on in lab (model_options.effort")
    default = lines[f"Bedrock model {DEFAULT_MODEL}"]
    assert (default.status, default.detail) == (
        "fail", "does not think adaptively (effort is set in vip)")
    assert "set MODEL_IDENTIFIER or the use case's model" in default.said
    assert DEFAULT_MODEL not in bodies                  # not asked: it would not think
