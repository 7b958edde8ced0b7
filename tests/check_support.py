"""Running ``voiceagent check`` as an operator runs it, for the tests of what it checks: a
process with nothing of the developer's environment, its checklist parsed line by line with
the advice under each failure, and the environments that point it at real parts on
127.0.0.1 (moto, the local Bedrock endpoint over TLS, a fake of Twilio's REST API)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
import yaml

from tests.dynamodb_support import aws_env
from tests.fake_bedrock import FakeBedrock, HttpError, RecordedRequest, Reply, text_reply
from tests.fake_twilio_api import FakeTwilioApi, running_fake_twilio_api

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
