"""The runtime makes its DynamoDB client and resolves its Bedrock endpoint from one botocore
session: each session loads and keeps its own copy of botocore's data (partitions, endpoint
rules, defaults, service models), ~7 MB a server process paid twice (benchmarks/RESULTS.md,
issue 20). Against moto's server and the local ConverseStream endpoint: both still work, each
reached where the environment says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import botocore.session
import pytest
import trio

from tests.dynamodb_support import aws_env, isolate_env, moto_endpoint, open_test_table
from tests.fake_bedrock import running_fake_bedrock, text_reply
from voiceagent.app.runtime import open_runtime
from voiceagent.llm.base import LLMRequest, TextDelta
from voiceagent.settings import Settings

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.timeout(60)

REQUEST = LLMRequest(call_sid="CA" + "0" * 32, use_case="testUseCase",
                     model_id="amazon.nova-lite-v1:0", system=("You are a host.",),
                     messages=({"role": "user", "content": [{"text": "When do you open?"}]},))


def _spy_on_clients(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(service, the id of the session it came from) for every botocore client made."""
    made: list[tuple[str, int]] = []
    create = botocore.session.Session.create_client

    def spy(self: botocore.session.Session, service_name: str, *args: Any,
            **kwargs: Any) -> Any:
        made.append((service_name, id(self)))
        return create(self, service_name, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "create_client", spy)
    return made


async def test_the_store_and_the_model_come_from_one_session_and_both_work(
        moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(30):
        async with running_fake_bedrock() as fake, open_test_table(moto_endpoint) as table:
            isolate_env(monkeypatch, {**aws_env(moto_endpoint, tmp_path),
                                      "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake.endpoint_url})
            made = _spy_on_clients(monkeypatch)
            fake.push(text_reply(["We open", " at nine."]))
            settings = Settings.from_env(STORE="dynamodb", TABLE_NAME=table.table_name,
                                         LLM="bedrock", VALIDATE_SIGNATURES=False,
                                         CONFIG_DIR=str(tmp_path))
            async with open_runtime(settings) as runtime:
                await runtime.store.put({"pk": "+15555550123", "sk": "profile", "n": 1})
                assert await runtime.store.get("+15555550123", "profile") == {
                    "pk": "+15555550123", "sk": "profile", "n": 1}
                async with runtime.llm.stream(REQUEST) as events:
                    said = "".join([e.text async for e in events if isinstance(e, TextDelta)])
    assert said == "We open at nine."
    assert sorted(service for service, _ in made) == ["bedrock-runtime", "dynamodb"]
    assert len({session for _, session in made}) == 1, made
    assert fake.violations == []

