"""The real server on the DynamoDB store (moto on 127.0.0.1): a call goes on through a
DynamoDB outage and every message lands afterwards, in order; and a table the original
sample filled runs calls unchanged."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import voiceagent.store.records as records
from tests.dynamodb_support import (
    REGION,
    MotoServer,
    aws_env,
    isolate_env,
    moto_endpoint,
    open_test_table,
    raw_client,
    table_name,
)
from tests.server_harness import AUTH_TOKEN, FIXTURE_CONFIG, make_settings, running_server
from voiceagent.app.caller import Identity, RelayCall, open_call
from voiceagent.catalog import read_config_dir, write_config
from voiceagent.store.dynamodb import DynamoDBStore
from voiceagent.store.write_behind import WriteBehind, WriteBehindStatistics
from voiceagent.tools.registry import default_registry

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

SAMPLE = Path(__file__).parent / "fixtures" / "original-sample"
TURN_LIMIT_S = 1.0                   # a reply's first token, store up or down


async def _turn(call: RelayCall, text: str, expected: str) -> None:
    """One prompt and its whole reply; the first token within TURN_LIMIT_S."""
    await call.say(text)
    with trio.fail_after(TURN_LIMIT_S):
        first = await call.receive()
    assert first is not None
    rest = await call.read_reply()
    reply = str(first.get("token", "")) + rest.text
    assert reply.startswith(expected), reply
    assert rest.closed or first.get("last")


async def _store_down(writer: WriteBehind) -> WriteBehindStatistics:
    """The queue's statistics once it has seen the store fail."""
    while True:
        statistics = writer.statistics()
        if statistics.store_down:
            return statistics
        await trio.sleep(0.02)


def _scan(client: Any, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.scan(TableName=table, ConsistentRead=True)["Items"]
    return items


async def _restore(endpoint: str, table: str, items: list[dict[str, Any]]) -> None:
    """moto lost its tables when it stopped; real DynamoDB keeps them through an endpoint
    outage, so the test carries the table across: ``store init``'s code path, then the
    items as they were."""
    client = raw_client(endpoint)
    store = DynamoDBStore(table, client, limiter=trio.CapacityLimiter(1))
    await store.ensure_table()
    for item in items:
        await trio.to_thread.run_sync(partial(client.put_item, TableName=table, Item=item))
    await store.aclose()


async def test_a_call_goes_on_while_dynamodb_is_down_and_every_message_lands_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moto = MotoServer(tmp_path / "moto.log")
    await trio.to_thread.run_sync(moto.start)
    try:
        isolate_env(monkeypatch, aws_env(moto.endpoint, tmp_path))
        name = table_name()
        client = raw_client(moto.endpoint)
        settings = make_settings(tmp_path, STORE="dynamodb", TABLE_NAME=name,
                                 AWS_REGION=REGION)
        with trio.fail_after(45):
            async with open_test_table(moto.endpoint, name=name) as loader:
                await write_config(loader, read_config_dir(FIXTURE_CONFIG, default_registry()))
                async with running_server(settings) as server:
                    writer = server.runtime.writer
                    identity = Identity()
                    async with open_call(server.url, auth_token=AUTH_TOKEN,
                                         identity=identity) as call:
                        await _turn(call, "what are your hours?", "We are open")
                        await _turn(call, "when can I pick up my order?", "Your order will be")
                        await writer.flush(timeout_s=5)
                        before = await trio.to_thread.run_sync(_scan, client, name)
                        sks = [item["sk"]["S"] for item in before]
                        assert records.SESSION_SK in sks
                        assert any(sk.startswith(records.CHAT_PREFIX) for sk in sks)

                        await trio.to_thread.run_sync(moto.stop)
                        await _turn(call, "tell me a story", "Once upon a time")
                        await _turn(call, "what are your hours?", "We are open")
                        down = await _store_down(writer)
                        assert down.pending >= 4

                        await trio.to_thread.run_sync(moto.start)
                        await _restore(moto.endpoint, name, before)
                        await _turn(call, "tell me a story", "Once upon a time")
                        await call.hang_up()
                    await server.runtime.calls.wait_idle()
                    assert await writer.flush(timeout_s=15)
                    after = writer.statistics()
                    history = server.runtime.calls.reports[-1].history
                stored = await loader.query(identity.call_sid, records.CHAT_PREFIX)
                session = await loader.get(identity.call_sid, records.SESSION_SK)
    finally:
        await trio.to_thread.run_sync(moto.stop)
    assert down.store_down
    assert after.retries >= 1
    assert after.failed == 0
    assert after.pending == 0
    assert not after.store_down
    assert history is not None
    assert session is not None
    entries = [records.chat_from_item(item) for item in stored]
    assert [e["seq"] for e in entries] == list(range(len(history.messages)))
    assert [e["chat"] for e in entries] == list(history.messages)
    said = [b["text"] for m in history.messages if m["role"] == "user"
            for b in m["content"] if "text" in b]
    assert said == ["what are your hours?", "when can I pick up my order?", "tell me a story",
                    "what are your hours?", "tell me a story"]


async def test_the_original_samples_items_run_calls_unchanged(
        moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
    name = table_name()
    client = raw_client(moto_endpoint)
    settings = make_settings(tmp_path, STORE="dynamodb", TABLE_NAME=name, AWS_REGION=REGION,
                             STACK_USE_CASE="albertEinsteinUseCase")
    with trio.fail_after(30):
        async with open_test_table(moto_endpoint, name=name) as store:
            for file in ("restaurantOrderingUseCase.ddb.json", "albertEinsteinUseCase.ddb.json"):
                item = json.loads((SAMPLE / file).read_text(encoding="utf-8"))
                await trio.to_thread.run_sync(partial(client.put_item, TableName=name,
                                                      Item=item))
            profile = json.loads((SAMPLE / "user-profile-example.json").read_text())
            await store.put(profile)                        # plain JSON in the sample
            async with running_server(settings) as server:
                known = Identity(from_number=profile["pk"])
                async with open_call(server.url, auth_token=AUTH_TOKEN, identity=known) as call:
                    assert call.target.greeting == ("Thanks for calling Twilio Dough Boy "
                                                    "Pizza! How can I help you?")
                    assert call.target.attributes["ttsProvider"] == "google"
                    await call.dtmf("0")
                    assert (await call.read_reply()).text == "You pressed 0."
                    await _turn(call, "hello", "Sorry")
                    await call.hang_up()
                stranger = Identity(from_number="+15555550999")
                async with open_call(server.url, auth_token=AUTH_TOKEN,
                                     identity=stranger) as call:
                    assert call.target.greeting is not None
                    assert call.target.greeting.startswith("Hi, I understand that you want to "
                                                           "find out more about Albert Einstein")
                    await call.hang_up()
                await server.runtime.calls.wait_idle()
                await server.runtime.writer.flush(timeout_s=5)
            session = await store.get(known.call_sid, records.SESSION_SK)
            assert session is not None
            assert session["useCase"] == "restaurantOrderingUseCase"
            assert "Pat" in session["systemPrompt"][0]["text"]      # <<USER_CONTEXT>> filled
            assert "<<CURRENT_DATE>>" not in session["systemPrompt"][0]["text"]
            chat = await store.query(known.call_sid, records.CHAT_PREFIX)
            assert [records.chat_from_item(i)["chat"]["role"] for i in chat] == [
                "assistant", "user", "assistant", "user", "assistant"]
