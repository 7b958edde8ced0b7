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
from voiceagent.store import dynamodb_http
from voiceagent.store.dynamodb import open_dynamodb_store

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



async def test_a_store_opened_alone_reads_the_aws_config_through_one_session(
        moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its client and its requests from the loop (CA bundle, proxy) share the session it
    makes, as the runtime's store and model share the runtime's."""
    linked: list[int | None] = []
    link = dynamodb_http.link_settings

    def spy_link(*args: Any, session: botocore.session.Session | None = None,
                 **kwargs: Any) -> Any:
        linked.append(None if session is None else id(session))
        return link(*args, session=session, **kwargs)

    with trio.fail_after(30):
        async with open_test_table(moto_endpoint) as table:
            isolate_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
            made = _spy_on_clients(monkeypatch)
            monkeypatch.setattr(dynamodb_http, "link_settings", spy_link)
            settings = Settings.from_env(STORE="dynamodb", TABLE_NAME=table.table_name,
                                         VALIDATE_SIGNATURES=False)
            async with open_dynamodb_store(settings, limiter=trio.CapacityLimiter(2)) as store:
                await store.put({"pk": "a", "sk": "b"})
                assert await store.get("a", "b") == {"pk": "a", "sk": "b"}
    assert [service for service, _ in made] == ["dynamodb"]
    assert linked == [made[0][1]]
