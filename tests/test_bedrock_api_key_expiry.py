"""A Bedrock API key (AWS_BEARER_TOKEN_BEDROCK) is read once at start; a short-term one lasts
12 hours at most. A service started with one stopped answering calls hours later, its log
saying only that Bedrock refused "our credentials" (with advice about the task role it was
not using), once per call on a quiet night. Now start-up says when the key expires (a
warning, with the setting to unset) and refuses a key already expired; a refusal at runtime
says the API key was refused and what to do, once until a stream works again; and no line
or error holds the key. Keys are built as AWS builds them (tests/bedrock_api_keys.py)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.bedrock_api_keys import key_signed_ago, secret_parts, short_term_key
from tests.check_support import (
    RUN_TIMEOUT_S,
    base_env,
    bedrock_env,
    config_dir,
    one_token_or_refusal,
    run_check,
)
from tests.fake_bedrock import (
    FakeBedrock,
    HttpError,
    RecordedRequest,
    Reply,
    running_fake_bedrock,
    text_reply,
)
from tests.server_harness import make_settings
from tests.test_bedrock import collect, request
from voiceagent.errors import ModelUnavailable
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.llm.bedrock_api_key import expired_problem, expiry_notice, key_expiry
from voiceagent.llm.bedrock_startup import check_bedrock_ready, open_bedrock_llm
from voiceagent.logs import JsonFormatter, for_call

pytestmark = pytest.mark.timeout(90)

SIGNED = datetime(2026, 12, 6, 15, 0, 0, tzinfo=UTC)
REFUSED = "bedrock refused the API key (AWS_BEARER_TOKEN_BEDROCK)"
AUTH_FAILED = "Authentication failed: Please make sure your API Key is valid."


def logged(records: list[logging.LogRecord]) -> str:
    """Every line as the JSON log writes it, extra fields included."""
    return "\n".join(JsonFormatter().format(record) for record in records)


def assert_no_key(key: str, *texts: str) -> None:
    for text in texts:
        for part in secret_parts(key):
            assert part not in text


# ---------------------------------------------------------------- reading the key

def test_a_short_term_key_states_when_it_stops_working() -> None:
    key = short_term_key(SIGNED)
    expiry = key_expiry(key)
    assert expiry is not None
    assert expiry.expires_at == (SIGNED + timedelta(hours=12)).timestamp()
    assert expiry.session_bound            # made from temporary credentials
    now = (SIGNED + timedelta(hours=1)).timestamp()
    notice = expiry_notice(key, now)
    assert notice is not None
    what, advice = notice
    assert what.startswith("a short-term Bedrock API key: it expires at 2026-12-07 03:00:00 "
                           "UTC (in 11 h 00 min), or sooner")
    assert advice is not None
    assert "unset AWS_BEARER_TOKEN_BEDROCK" in advice
    assert "IAM role credentials" in advice
    assert expired_problem(key, now) is None
    later = (SIGNED + timedelta(hours=12)).timestamp()
    assert expiry_notice(key, later) == (
        "a short-term Bedrock API key that expired at 2026-12-07 03:00:00 UTC", advice)
    from_keys = short_term_key(SIGNED, 3600, session_token=None)
    what, _ = expiry_notice(from_keys, SIGNED.timestamp()) or ("", None)
    assert "sooner" not in what
    assert "expires at 2026-12-06 16:00:00 UTC (in 1 h 00 min)" in what


def test_a_key_past_its_expiry_is_a_problem_that_says_when() -> None:
    key = short_term_key(SIGNED)
    problem = expired_problem(key, (SIGNED + timedelta(hours=13, minutes=5)).timestamp())
    assert problem is not None
    assert problem.startswith("AWS_BEARER_TOKEN_BEDROCK: this short-term Bedrock API key "
                              "expired at 2026-12-07 03:00:00 UTC (1 h 05 min ago)")
    assert "unset AWS_BEARER_TOKEN_BEDROCK" in problem
    assert_no_key(key, problem)


@pytest.mark.parametrize("key", [
    "ABSKQmVkcm9ja0FQSUtleS1leGFtcGxlOnNlY3JldA==",        # a long-term key's shape
    "bedrock-api-key-not*base64",
    "bedrock-api-key-" + "YmVkcm9jay5hbWF6b25hd3MuY29tLz9BY3Rpb249Q2FsbA==",  # no expiry
    short_term_key(SIGNED)[:-3],                             # cut: not base64 any more
    "bedrock-api-key-" + "A" * 20_000,                       # past the cap: not read
])
def test_a_key_whose_expiry_cannot_be_read_is_taken_as_valid(key: str) -> None:
    now = (SIGNED + timedelta(days=30)).timestamp()
    assert key_expiry(key) is None
    assert expired_problem(key, now) is None
    what, advice = expiry_notice(key, now) or ("", "")
    assert "cannot be read from it" in what
    assert advice is None


def test_start_is_refused_with_an_expired_key(aws_env: None, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's start-up check (``serve`` and ``check`` run it): one problem, no key."""
    settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1")
    key = key_signed_ago(hours=13)
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
    problems = check_bedrock_ready(settings)
    assert len(problems) == 1
    assert "short-term Bedrock API key expired at" in problems[0]
    assert_no_key(key, *problems)
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key_signed_ago(hours=1))
    assert check_bedrock_ready(settings) == []


async def test_start_up_warns_when_the_key_expires(
        fake_bedrock: FakeBedrock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        records: list[logging.LogRecord]) -> None:
    key = key_signed_ago(hours=1)
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
    settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1")
    with trio.fail_after(10):
        async with open_bedrock_llm(settings):
            pass
    warned = [r for r in records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == [
        "bedrock takes an API key that expires within hours"]
    assert "it expires at" in vars(warned[0])["api_key"]
    assert "(in 10 h 59 min)" in vars(warned[0])["api_key"] or "(in 11 h 00 min)" in vars(
        warned[0])["api_key"]
    assert "unset AWS_BEARER_TOKEN_BEDROCK" in vars(warned[0])["what_to_do"]
    assert_no_key(key, logged(records))


WARNED = "bedrock's API key expires within the hour"
EXPIRED = "bedrock's API key has expired: Bedrock refuses every call until it is replaced"


def said_since(records: list[logging.LogRecord], seen: int) -> list[str]:
    return [r.getMessage() for r in records[seen:]
            if r.name == "voiceagent.llm.bedrock" and "API key" in r.getMessage()]


async def jumped(mock_clock: trio.testing.MockClock, seconds: float) -> None:
    mock_clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


async def test_a_running_server_warns_an_hour_before_the_key_expires_and_when_it_does(
        fake_bedrock: FakeBedrock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        mock_clock: trio.testing.MockClock, records: list[logging.LogRecord]) -> None:
    """Started with 2 h left (less a second: X-Amz-Date has whole seconds): a warning at
    1 h left and an error at expiry, each once, on trio's clock."""
    key = key_signed_ago(hours=10)
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
    settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1")
    with trio.fail_after(48 * 3600):        # virtual
        async with open_bedrock_llm(settings):
            seen = len(records)
            await jumped(mock_clock, 3590.0)
            assert said_since(records, seen) == []
            await jumped(mock_clock, 20.0)              # 1 h left
            assert said_since(records, seen) == [WARNED]
            await jumped(mock_clock, 3580.0)
            assert said_since(records, seen) == [WARNED]
            await jumped(mock_clock, 20.0)              # expired
            assert said_since(records, seen) == [WARNED, EXPIRED]
            await jumped(mock_clock, 24 * 3600.0)
            assert said_since(records, seen) == [WARNED, EXPIRED]
    warned, expired = [r for r in records[seen:] if r.getMessage() in (WARNED, EXPIRED)]
    assert warned.levelno == logging.WARNING
    assert "(in 1 h 00 min)" in vars(warned)["api_key"]
    assert expired.levelno == logging.ERROR
    assert vars(expired)["api_key"].startswith("a short-term Bedrock API key that expired at")
    for line in (warned, expired):
        assert "unset AWS_BEARER_TOKEN_BEDROCK" in vars(line)["what_to_do"]
    assert_no_key(key, logged(records))


@pytest.mark.parametrize(("key", "said"), [
    (key_signed_ago(hours=11.5), [EXPIRED]),        # start's line said it: no second warning
    ("ABSKQmVkcm9ja0FQSUtleS1leGFtcGxlOnNlY3JldA==", []),     # a long-term key
    ("", []),                                                   # no key
], ids=["half-an-hour-left", "long-term", "none"])
async def test_what_a_running_server_says_of_a_key_with_less_left_or_none_stated(
        fake_bedrock: FakeBedrock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        mock_clock: trio.testing.MockClock, records: list[logging.LogRecord],
        key: str, said: list[str]) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
    settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1")
    with trio.fail_after(48 * 3600):        # virtual
        async with open_bedrock_llm(settings):
            seen = len(records)
            for _ in range(30):
                await jumped(mock_clock, 3600.0)
            assert said_since(records, seen) == said
    if said:
        assert_no_key(key, logged(records))
    elif key:
        assert key not in logged(records)


# ---------------------------------------------------------------- refused at runtime

@pytest.fixture
async def llm(fake_bedrock: FakeBedrock) -> AsyncIterator[BedrockLLM]:
    backend = BedrockLLM(region="us-east-1", retry_base_delay_s=0.0)
    yield backend
    await backend.aclose()


async def refused_turns(llm: BedrockLLM, mock_clock: trio.testing.MockClock,
                        count: int) -> list[ModelUnavailable]:
    """``count`` turns of different calls five minutes apart: a quiet night."""
    errors = []
    for call in range(count):
        with for_call(f"CA{call:032d}"), pytest.raises(ModelUnavailable) as caught:
            await collect(llm, request())
        errors.append(caught.value)
        mock_clock.jump(300.0)
    return errors


@pytest.mark.parametrize("refusal", [
    HttpError(403, "", AUTH_FAILED),                       # no error type: by its status
    HttpError(403, "AccessDeniedException", AUTH_FAILED),
    HttpError(403, "UnrecognizedClientException",
              "The security token included in the request is invalid."),
], ids=["403", "AccessDenied", "Unrecognized"])
async def test_an_expired_key_refused_is_said_once_with_what_to_do(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord],
        refusal: HttpError) -> None:
    key = key_signed_ago(hours=13)
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
    fake_bedrock.responder = lambda request: refusal
    with trio.fail_after(3600):         # virtual: turns 5 min apart
        errors = await refused_turns(llm, mock_clock, 3)
        fake_bedrock.responder = lambda request: text_reply(["Hello."])
        await collect(llm, request())             # a new key would do this after a restart
    assert len(fake_bedrock.requests) == 4        # nothing retried: no retry can help
    for error in errors:
        assert "the key expired at" in str(error)
        assert "unset AWS_BEARER_TOKEN_BEDROCK" in str(error)
    lines = [r for r in records if r.getMessage() == REFUSED]
    assert len(lines) == 1
    assert lines[0].levelno == logging.ERROR
    assert vars(lines[0])["call_sid"] == "CA" + "0" * 32
    assert "IAM role credentials" in vars(lines[0])["what_to_do"]
    messages = [r.getMessage() for r in records]
    assert "bedrock refused our credentials" not in messages
    assert messages.count("bedrock API key accepted again") == 1
    assert_no_key(key, logged(records), *(str(error) for error in errors))


async def test_a_key_refused_before_its_stated_expiry_says_it_was_revoked(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord]) -> None:
    key = key_signed_ago(hours=1)
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)

    def echoing(request: RecordedRequest) -> Reply:       # a refusal that quotes the key
        return HttpError(403, "", f"{AUTH_FAILED} ({request.headers['authorization']})")

    fake_bedrock.responder = echoing
    with trio.fail_after(3600):         # virtual: turns 5 min apart
        [error] = await refused_turns(llm, mock_clock, 1)
    assert "revoked, or the credentials that made it expired first" in str(error)
    assert "<AWS_BEARER_TOKEN_BEDROCK>" in str(error)
    assert [r.getMessage() for r in records].count(REFUSED) == 1
    assert_no_key(key, logged(records), str(error))


async def test_a_permission_the_key_lacks_is_not_called_a_refused_key(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord]) -> None:
    """The key works; its principal may not call the model: what to grant, as before."""
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key_signed_ago(hours=1))
    fake_bedrock.responder = lambda request: HttpError(
        403, "AccessDeniedException", "User: arn:aws:iam::123456789012:user/BedrockAPIKey-x "
        "is not authorized to perform: bedrock:InvokeModelWithResponseStream")
    with trio.fail_after(3600):         # virtual: turns 5 min apart
        [error] = await refused_turns(llm, mock_clock, 1)
    assert "grant bedrock:InvokeModelWithResponseStream" in str(error)
    messages = [r.getMessage() for r in records]
    assert REFUSED not in messages
    assert "bedrock refused our credentials" in messages


# ---------------------------------------------------------------- voiceagent check

async def test_check_says_when_the_key_expires_and_fails_an_expired_one(
        tmp_path: Path) -> None:
    config = config_dir(tmp_path / "config", {"frontDesk": None})
    fresh, expired = key_signed_ago(hours=2), key_signed_ago(hours=13)
    runs = []
    with trio.fail_after(RUN_TIMEOUT_S * 2):
        async with running_fake_bedrock(tls=True, responder=one_token_or_refusal) as bedrock:
            for key in (fresh, expired):
                env = base_env(tmp_path, STORE="sqlite", DATA_DIR=str(tmp_path / "data"),
                               CONFIG_DIR=str(config), STACK_USE_CASE="frontDesk",
                               AWS_REGION="us-east-1", AWS_BEARER_TOKEN_BEDROCK=key,
                               **bedrock_env(bedrock))
                runs.append(await run_check(env, tmp_path))
    fresh_run, expired_run = runs
    line = fresh_run.lines["Bedrock API key"]
    assert line.status == "pass"
    assert line.detail.startswith("a short-term Bedrock API key: it expires at")
    assert "unset AWS_BEARER_TOKEN_BEDROCK" in line.said
    assert fresh_run.lines["Bedrock model us.acme.default-v1:0"].status == "pass"
    failed = expired_run.lines["Bedrock models"]
    assert expired_run.code == 1
    assert failed.status == "fail"
    assert "short-term Bedrock API key expired at" in failed.said
    assert len(bedrock.requests) == 1                 # the expired key was never sent
    assert_no_key(fresh, fresh_run.out, fresh_run.err)
    assert_no_key(expired, expired_run.out, expired_run.err)
