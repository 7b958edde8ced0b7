"""What is particular to the DynamoDB store (the contract suite covers the rest): batching,
UnprocessedItems, pagination, number conversion, error classes, the client's configuration,
and the table checks behind ``store init``.

Against moto's server on 127.0.0.1 where the behaviour is DynamoDB's; against botocore's
``Stubber`` (the real client, answers given by the test) for answers moto never gives, such
as throttling or a second page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from botocore.stub import Stubber

from tests.dynamodb_support import (
    REGION,
    aws_env,
    isolate_env,
    moto_endpoint,
    open_test_table,
    raw_client,
    table_name,
)
from voiceagent.errors import SettingsError, StoreError, StoreRejected, is_permanent
from voiceagent.settings import Settings
from voiceagent.store import dynamodb_admin
from voiceagent.store.base import BATCH_LIMIT
from voiceagent.store.dynamodb import (
    UNPROCESSED_ATTEMPTS,
    DynamoDBStore,
    open_dynamodb_store,
)
from voiceagent.store.dynamodb_table import table_definition

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

PHONE = "+15555550123"


def _record_batch_sizes(client: Any) -> list[int]:
    """The size of every BatchWriteItem the client sends from now on."""
    sizes: list[int] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sizes.extend(len(requests) for requests in params["RequestItems"].values())

    client.meta.events.register("provide-client-params.dynamodb.BatchWriteItem", record)
    return sizes


async def test_put_many_batches_by_25_and_splits_at_a_repeated_key(moto_endpoint: str) -> None:
    with trio.fail_after(20):
        async with open_test_table(moto_endpoint) as store:
            sizes = _record_batch_sizes(store._client)
            items = [{"pk": "call", "sk": f"chat::{i:03d}", "v": i} for i in range(60)]
            items.insert(10, {"pk": "call", "sk": "chat::003", "v": "rewritten"})
            items.insert(40, {"pk": "call", "sk": "chat::050", "v": "early"})
            await store.put_many(items)
            # a batch ends before a key it already holds, else at 25
            assert sizes == [10, BATCH_LIMIT, 17, 10]
            stored = {item["sk"]: item["v"] for item in await store.query("call")}
            assert stored["chat::003"] == "rewritten"       # the later write wins
            assert stored["chat::050"] == 50
            assert len(stored) == 60


async def test_numbers_come_back_as_plain_int_and_float(moto_endpoint: str) -> None:
    with trio.fail_after(20):
        async with open_test_table(moto_endpoint) as store:
            item = {"pk": "n", "sk": "n", "small": 0.000123, "neg": -2.75, "big": 10**37,
                    "zero": 0, "list": [1, 1.5, {"x": 2**63}], "epoch": 1_750_000_000.125}
            await store.put(item)
            stored = await store.get("n", "n")
            assert stored == item
            assert stored is not None
            assert type(stored["big"]) is int
            assert type(stored["list"][2]["x"]) is int
            assert type(stored["epoch"]) is float
            for bad in (10**40, float("inf"), 1e-200, b"bytes", {1, 2}):
                with pytest.raises(StoreRejected, match="pk=n sk=bad"):
                    await store.put({"pk": "n", "sk": "bad", "value": bad})
            assert await store.get("n", "bad") is None


async def test_whole_floats_come_back_as_ints_equal_only_up_to_2_to_the_53(
        moto_endpoint: str) -> None:
    """What the module docstring promises, and where it stops: DynamoDB keeps no number type,
    so 1e30 (a float that is not 10**30 exactly) comes back as the int of its decimal form."""
    with trio.fail_after(20):
        async with open_test_table(moto_endpoint) as store:
            await store.put({"pk": "w", "sk": "w", "whole": 2.0**53, "big": 1e30})
            stored = await store.get("w", "w")
    assert stored is not None
    assert stored["whole"] == 2**53
    assert type(stored["whole"]) is int
    assert stored["big"] == 10**30
    assert stored["big"] != 1e30


async def test_refused_items_name_their_key_with_the_phone_masked(moto_endpoint: str) -> None:
    with trio.fail_after(20):
        async with open_test_table(moto_endpoint) as store:
            with pytest.raises(StoreRejected) as caught:
                await store.put({"pk": PHONE, "sk": "profile", "blob": "x" * 410_000})
            message = str(caught.value)
            assert "pk=+1555***0123 sk=profile" in message
            assert PHONE not in message
            assert "400" in message
            with pytest.raises(StoreRejected, match="'sk1'"):
                await store.put({"pk": PHONE, "sk": "profile", "pk1": "profile", "sk1": ""})


def _stubbed(operation: str, code: str, status: int = 400) -> DynamoDBStore:
    client = raw_client("http://127.0.0.1:9")
    stubber = Stubber(client)
    stubber.add_client_error(operation, service_error_code=code, http_status_code=status,
                             service_message="the service said no")
    stubber.activate()
    return DynamoDBStore("stubbed", client, limiter=trio.CapacityLimiter(2))


@pytest.mark.parametrize(("code", "status"), [
    ("ProvisionedThroughputExceededException", 400), ("ThrottlingException", 400),
    ("InternalServerError", 500), ("ServiceUnavailable", 503),
    ("ResourceNotFoundException", 400), ("AccessDeniedException", 400)])
async def test_transient_and_set_up_errors_are_retryable(code: str, status: int) -> None:
    store = _stubbed("put_item", code, status)
    with trio.fail_after(10), pytest.raises(StoreError) as caught:
        await store.put({"pk": PHONE, "sk": "profile"})
    assert not is_permanent(caught.value)
    assert code in str(caught.value) or "store init" in str(caught.value)


async def test_validation_exception_is_permanent_and_names_the_item() -> None:
    store = _stubbed("put_item", "ValidationException")
    with trio.fail_after(10), pytest.raises(StoreRejected) as caught:
        await store.put({"pk": PHONE, "sk": "chat::1"})
    assert is_permanent(caught.value)
    assert "pk=+1555***0123 sk=chat::1" in str(caught.value)
    assert "the service said no" in str(caught.value)


async def test_unreachable_endpoint_is_a_retryable_error(tmp_path: Path) -> None:
    store = DynamoDBStore("t", raw_client("http://127.0.0.1:9"), limiter=trio.CapacityLimiter(1))
    with trio.fail_after(20), pytest.raises(StoreError) as caught:
        await store.get("a", "b")
    assert not is_permanent(caught.value)
    assert "127.0.0.1:9" in str(caught.value)
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await store.get("a", "b")


def _batch_response(unprocessed: list[dict[str, Any]]) -> dict[str, Any]:
    return {"UnprocessedItems": {"stubbed": unprocessed} if unprocessed else {}}


async def test_unprocessed_items_are_sent_again_with_backoff(
        autojump_clock: trio.testing.MockClock) -> None:
    client = raw_client("http://127.0.0.1:9")
    store = DynamoDBStore("stubbed", client, limiter=trio.CapacityLimiter(2))
    items = [{"pk": "p", "sk": str(i)} for i in range(5)]
    requests = [{"PutRequest": {"Item": {"pk": {"S": "p"}, "sk": {"S": str(i)}}}}
                for i in range(5)]
    with Stubber(client) as stubber:
        stubber.add_response("batch_write_item", _batch_response(requests[3:]),
                             {"RequestItems": {"stubbed": requests}})
        stubber.add_response("batch_write_item", _batch_response(requests[4:]),
                             {"RequestItems": {"stubbed": requests[3:]}})
        stubber.add_response("batch_write_item", _batch_response([]),
                             {"RequestItems": {"stubbed": requests[4:]}})
        start = trio.current_time()
        await store.put_many(items)
        stubber.assert_no_pending_responses()
    assert trio.current_time() - start == pytest.approx(0.05 + 0.1)


async def test_items_left_unprocessed_become_a_retryable_error(
        autojump_clock: trio.testing.MockClock) -> None:
    client = raw_client("http://127.0.0.1:9")
    store = DynamoDBStore("stubbed", client, limiter=trio.CapacityLimiter(2))
    items = [{"pk": "p", "sk": str(i)} for i in range(2)]
    requests = [{"PutRequest": {"Item": {"pk": {"S": "p"}, "sk": {"S": str(i)}}}}
                for i in range(2)]
    with Stubber(client) as stubber:
        for _ in range(UNPROCESSED_ATTEMPTS):
            stubber.add_response("batch_write_item", _batch_response(requests[1:]))
        with pytest.raises(StoreError, match="unprocessed") as caught:
            await store.put_many(items)
        stubber.assert_no_pending_responses()
    assert not is_permanent(caught.value)


async def test_query_follows_pages_and_keeps_the_limit() -> None:
    client = raw_client("http://127.0.0.1:9")
    store = DynamoDBStore("stubbed", client, limiter=trio.CapacityLimiter(2))

    def item(sk: str) -> dict[str, Any]:
        return {"pk": {"S": "call"}, "sk": {"S": sk}, "n": {"N": "1.50"}}

    base = {"TableName": "stubbed", "ScanIndexForward": False, "ConsistentRead": True,
            "KeyConditionExpression": "#key = :key AND begins_with(#sort, :prefix)",
            "ExpressionAttributeNames": {"#key": "pk", "#sort": "sk"},
            "ExpressionAttributeValues": {":key": {"S": "call"}, ":prefix": {"S": "chat::"}}}
    last = {"pk": {"S": "call"}, "sk": {"S": "chat::8"}}
    with Stubber(client) as stubber:
        stubber.add_response("query", {"Items": [item("chat::9"), item("chat::8")],
                                       "LastEvaluatedKey": last},
                             {**base, "Limit": 3})
        stubber.add_response("query", {"Items": [item("chat::7")],
                                       "LastEvaluatedKey": {"pk": {"S": "call"},
                                                            "sk": {"S": "chat::7"}}},
                             {**base, "Limit": 1, "ExclusiveStartKey": last})
        with trio.fail_after(10):
            found = await store.query("call", "chat::", descending=True, limit=3)
        stubber.assert_no_pending_responses()
    assert [i["sk"] for i in found] == ["chat::9", "chat::8", "chat::7"]
    assert found[0]["n"] == 1.5


async def test_open_configures_one_client_from_the_environment(
        moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
    name = table_name()
    settings = Settings.from_env(STORE="dynamodb", TABLE_NAME=name, VALIDATE_SIGNATURES=False)
    limiter = trio.CapacityLimiter(7)
    with trio.fail_after(20):
        with pytest.raises(StoreError, match=f"{name}.*does not exist.*store init"):
            async with open_dynamodb_store(settings, limiter=limiter):
                pass
        async with open_test_table(moto_endpoint, name=name):
            async with open_dynamodb_store(settings, limiter=limiter) as store:
                config = store._client.meta.config
                assert store.endpoint == moto_endpoint       # from AWS_ENDPOINT_URL_DYNAMODB
                assert config.max_pool_connections == 7
                assert config.retries == {"mode": "standard", "total_max_attempts": 2}
                assert config.connect_timeout > 0
                assert config.read_timeout > 0
                assert store._client.meta.region_name == REGION
                await store.put({"pk": "a", "sk": "b"})
                assert await store.get("a", "b") == {"pk": "a", "sk": "b"}
            assert limiter.borrowed_tokens == 0
    with pytest.raises(SettingsError, match="TABLE_NAME"):
        async with open_dynamodb_store(Settings.from_env(VALIDATE_SIGNATURES=False),
                                       limiter=limiter):
            pass


async def test_ensure_table_is_idempotent_and_names_schema_differences(
        moto_endpoint: str) -> None:
    client = raw_client(moto_endpoint)
    with trio.fail_after(20):
        async with open_test_table(moto_endpoint) as store:
            again = await store.ensure_table()
            assert again == [f"table {store.table_name} already exists with the expected schema"]
            ttl = await trio.to_thread.run_sync(
                lambda: client.describe_time_to_live(TableName=store.table_name))
            assert ttl["TimeToLiveDescription"] == {"TimeToLiveStatus": "ENABLED",
                                                    "AttributeName": "expireAt"}
            await store.check_table()

        wrong = table_definition(table_name())
        wrong["KeySchema"] = [{"AttributeName": "pk", "KeyType": "HASH"}]
        del wrong["GlobalSecondaryIndexes"]
        wrong["AttributeDefinitions"] = [{"AttributeName": "pk", "AttributeType": "S"}]
        await trio.to_thread.run_sync(lambda: client.create_table(**wrong))
        other = DynamoDBStore(wrong["TableName"], client, limiter=trio.CapacityLimiter(2))
        with pytest.raises(StoreError) as caught:
            await other.ensure_table()
        message = str(caught.value)
        assert "key schema is pk/None, expected pk/sk" in message
        assert "no global secondary index 'index-1-full'" in message
        with pytest.raises(StoreError, match="does not have voiceagent's schema"):
            await other.check_table()
        await trio.to_thread.run_sync(lambda: client.delete_table(TableName=wrong["TableName"]))


async def test_ensure_table_waits_until_the_table_and_its_index_are_active(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Real time (a virtual clock would jump to the deadline while a call is in a thread),
    with the poll interval shortened."""
    monkeypatch.setattr(dynamodb_admin, "TABLE_POLL_S", 0.01)
    client = raw_client("http://127.0.0.1:9")
    store = DynamoDBStore("new", client, limiter=trio.CapacityLimiter(2))
    definition = table_definition("new")

    def described(table_status: str, index_status: str) -> dict[str, Any]:
        index = {**definition["GlobalSecondaryIndexes"][0], "IndexStatus": index_status}
        return {"Table": {"TableName": "new", "TableStatus": table_status,
                          "KeySchema": definition["KeySchema"],
                          "AttributeDefinitions": definition["AttributeDefinitions"],
                          "GlobalSecondaryIndexes": [index]}}

    with Stubber(client) as stubber:
        stubber.add_client_error("describe_table", "ResourceNotFoundException")
        stubber.add_response("create_table", {"TableDescription": described(
            "CREATING", "CREATING")["Table"]}, definition)
        stubber.add_response("describe_table", described("ACTIVE", "CREATING"))
        stubber.add_response("describe_table", described("ACTIVE", "ACTIVE"))
        stubber.add_response("describe_time_to_live", {
            "TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}})
        stubber.add_response("update_time_to_live", {}, {
            "TableName": "new", "TimeToLiveSpecification": {"Enabled": True,
                                                            "AttributeName": "expireAt"}})
        with trio.fail_after(10):
            done = await store.ensure_table()
        stubber.assert_no_pending_responses()                  # two polls, then TTL
    assert done[0].startswith("created table new")
    assert done[1] == "enabled TTL on expireAt"

    with Stubber(client) as stubber:
        for _ in range(100):
            stubber.add_response("describe_table", described("CREATING", "CREATING"))
        with trio.fail_after(10), pytest.raises(StoreError, match=r"not ACTIVE after 0\.1 s"):
            await store.ensure_table(timeout_s=0.1)


async def test_open_without_a_region_says_to_set_aws_region(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = aws_env("http://127.0.0.1:9", tmp_path)
    del env["AWS_REGION"], env["AWS_DEFAULT_REGION"]
    isolate_env(monkeypatch, env)
    settings = Settings.from_env(STORE="dynamodb", TABLE_NAME="t", VALIDATE_SIGNATURES=False)
    with trio.fail_after(10), pytest.raises(SettingsError, match="AWS_REGION"):
        async with open_dynamodb_store(settings, limiter=trio.CapacityLimiter(1)):
            pass
