"""The DynamoDB store's writes and reads over its own HTTP transport (``store/dynamodb_http.py``):
through moto's real server, what goes in comes back exactly and never touches boto3; moto's
refusals come out as ``StoreError`` or ``StoreRejected``; and over TLS with a private CA, the
CA bundle boto3 would use is the one trusted. The faults of a misbehaving endpoint are in
``test_dynamodb_http_faults.py``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from boto3.dynamodb.types import Binary

from tests.dynamodb_support import (
    aws_env,
    isolate_env,
    moto_endpoint,
    open_test_table,
    table_name,
)
from tests.fake_dynamodb import http_store, running_fake_dynamodb
from voiceagent.errors import SettingsError, StoreError, StoreRejected
from voiceagent.settings import Settings
from voiceagent.store.dynamodb import DynamoDBStore, open_dynamodb_store
from voiceagent.store.dynamodb_http import make_http
from voiceagent.store.write_behind import is_permanent

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.timeout(60)

PHONE = "+15555550123"
PROFILE: dict[str, Any] = {
    "pk": PHONE, "sk": "profile", "pk1": "profile", "sk1": "2026-01-02T03:04:05Z",
    "name": "Zoë Ångström 👋 中文 \"quoted\" \\ back\nline", "empty": "",
    "n": 42, "neg": -7, "zero": 0, "big": 10**37, "negbig": -(10**37) + 1,
    "pi": 3.141592653589793, "tiny": 1.25e-100, "large": 123456789.125, "cents": -0.01,
    "yes": True, "no": False, "nothing": None,
    "list": [1, "two", 3.5, None, [True, {"deep": -0.001}], []],
    "map": {"a": {"b": {"c": [10**20, "ü"]}}, "empty": {}, "flag": False},
    "expireAt": 4_102_444_800,
}


def _settings(name: str) -> Settings:
    return Settings.from_env(STORE="dynamodb", TABLE_NAME=name, VALIDATE_SIGNATURES=False)


def _spy_on_writes(store: DynamoDBStore, monkeypatch: pytest.MonkeyPatch
                   ) -> tuple[list[tuple[str, int]], list[str]]:
    """What the http writer sends (operation, items) and what the boto3 client writes."""
    sent: list[tuple[str, int]] = []
    via_boto3: list[str] = []
    http = store._http
    assert http is not None
    call = http.call

    async def spy(operation: str, payload: dict[str, Any]) -> dict[str, Any]:
        count = (len(next(iter(payload["RequestItems"].values())))
                 if operation == "BatchWriteItem" else 1)
        sent.append((operation, count))
        return await call(operation, payload)

    def record(model: Any, **_: Any) -> None:
        via_boto3.append(model.name)

    monkeypatch.setattr(http, "call", spy)
    for operation in ("PutItem", "BatchWriteItem", "GetItem", "Query"):
        store._client.meta.events.register(f"before-call.dynamodb.{operation}", record)
    return sent, via_boto3


async def test_writes_go_over_http_and_read_back_exactly(
        moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
    messages = [{"pk": "CA01", "sk": f"chat::{i:03d}", "i": i, "text": f"message {i} — ñ ✓",
                 "meta": {"score": i / 8, "tags": [f"t{i}", i % 2 == 0], "none": None,
                          "n": -i * 10**30}}
                for i in range(30)]
    with trio.fail_after(30):
        async with open_test_table(moto_endpoint) as table:
            async with open_dynamodb_store(_settings(table.table_name),
                                           limiter=trio.CapacityLimiter(4)) as store:
                assert store._http is not None
                assert store._http.endpoint_url == moto_endpoint
                sent, via_boto3 = _spy_on_writes(store, monkeypatch)
                await store.put(PROFILE)
                await store.put_many(messages)
                assert await store.get(PHONE, "profile") == PROFILE
                assert await store.query("CA01") == messages
                assert await store.query_index("profile") == [PROFILE]
                # moto's server (werkzeug) answers "Connection: close": one connection per
                # request, none kept (reuse is tested against test_dynamodb_http_faults' fake)
                pool = store._http._pool
                assert (pool.opened, pool.reused, pool.idle) == (6, 0, 0)
                assert await store.get(PHONE, "nothing here") is None
    assert sent == [("PutItem", 1), ("BatchWriteItem", 25), ("BatchWriteItem", 5),
                    ("GetItem", 1), ("Query", 1), ("Query", 1), ("GetItem", 1)]
    assert via_boto3 == []


async def test_a_claim_goes_over_http_and_a_second_one_is_told_it_lost(
        moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``put_new`` on the production path: a conditional PutItem, whose
    ConditionalCheckFailedException (its ``__type`` as DynamoDB spells it) means "taken",
    not an error."""
    isolate_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
    claim = {"pk": "CA01", "sk": "relayAnswered::VX1", "at": 1.5}
    with trio.fail_after(30):
        async with open_test_table(moto_endpoint) as table:
            async with open_dynamodb_store(_settings(table.table_name),
                                           limiter=trio.CapacityLimiter(4)) as store:
                sent, via_boto3 = _spy_on_writes(store, monkeypatch)
                first = await store.put_new(claim)
                second = await store.put_new({**claim, "at": 2.5})
                kept = await store.get("CA01", "relayAnswered::VX1")
    assert (first, second) == (True, False)
    assert kept == claim
    # the second claim's failed condition comes with the item it found (ALL_OLD): another
    # claimer's, so lost, and no read needed to tell
    assert sent == [("PutItem", 1), ("PutItem", 1), ("GetItem", 1)]
    assert via_boto3 == []


async def test_a_session_write_older_than_the_stored_one_goes_over_http_and_is_refused(
        moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``put_unless_newer`` on the production path: one conditional PutItem each; the
    failed condition means "superseded", not an error."""
    isolate_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
    renewed = {"pk": "CA01", "sk": "connection", "generation": 1, "token": "second"}
    with trio.fail_after(30):
        async with open_test_table(moto_endpoint) as table:
            async with open_dynamodb_store(_settings(table.table_name),
                                           limiter=trio.CapacityLimiter(4)) as store:
                sent, via_boto3 = _spy_on_writes(store, monkeypatch)
                first = await store.put_unless_newer(renewed, "generation")
                late = await store.put_unless_newer(
                    {**renewed, "generation": 0, "token": ""}, "generation")
                kept = await store.get("CA01", "connection")
    assert (first, late) == (True, False)
    assert kept == renewed
    assert sent == [("PutItem", 1), ("PutItem", 1), ("GetItem", 1)]
    assert via_boto3 == []


async def test_a_missing_table_is_transient_and_says_how_to_create_it(
        moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
    missing = table_name()
    with trio.fail_after(20):
        async with open_dynamodb_store(_settings(missing), limiter=trio.CapacityLimiter(2),
                                       check_table=False) as store:
            sent, _ = _spy_on_writes(store, monkeypatch)
            with pytest.raises(StoreError) as single:
                await store.put({"pk": "a", "sk": "b"})
            with pytest.raises(StoreError) as batch:
                await store.put_many([{"pk": "a", "sk": str(i)} for i in range(3)])
    assert sent == [("PutItem", 1), ("BatchWriteItem", 3)]
    for caught in (single, batch):
        assert not isinstance(caught.value, StoreRejected)
        assert not is_permanent(caught.value)
        message = str(caught.value)
        assert f"{missing!r} not found at {moto_endpoint}" in message
        assert "create it with `voiceagent store init`" in message


async def test_a_key_over_dynamodbs_limit_is_refused_before_anything_is_sent(
        moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sort key over DynamoDB's 1024 bytes (the service would answer ValidationException) is
    refused by our own check, so a batch that holds one writes nothing at all."""
    isolate_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
    too_long = "s" * 1025
    with trio.fail_after(20):
        async with open_test_table(moto_endpoint) as table:
            async with open_dynamodb_store(_settings(table.table_name),
                                           limiter=trio.CapacityLimiter(2)) as store:
                sent, _ = _spy_on_writes(store, monkeypatch)
                batch = [{"pk": PHONE, "sk": f"chat::{i:02d}"} for i in range(30)]
                with pytest.raises(StoreRejected) as caught:
                    await store.put_many([*batch, {"pk": PHONE, "sk": too_long, "text": "x"}])
                await store.put({"pk": PHONE, "sk": "s" * 1024})   # at the limit: written
                assert [item["sk"] for item in await store.query(PHONE)] == ["s" * 1024]
    assert sent == [("PutItem", 1), ("Query", 1)]
    assert is_permanent(caught.value)
    message = str(caught.value)
    assert "'sk' is 1025 bytes, over DynamoDB's 1024" in message
    assert "pk=+1555***0123" in message
    assert PHONE not in message


async def test_over_tls_the_ca_bundle_is_trusted_and_no_other_ca(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_env(monkeypatch, aws_env("http://127.0.0.1:9", tmp_path))
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    ca = trustme.CA()
    bundle = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with trio.fail_after(20):
        async with running_fake_dynamodb(ca=ca) as fake:
            assert fake.endpoint_url.startswith("https://localhost:")
            monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
            async with http_store(fake.endpoint_url) as store:
                await store.put({"pk": "tls", "sk": "trusted"})
            monkeypatch.delenv("AWS_CA_BUNDLE")     # botocore's own bundle: not our CA
            async with http_store(fake.endpoint_url) as store:
                with pytest.raises(StoreError) as caught:
                    await store.put({"pk": "tls", "sk": "untrusted"})
    assert list(fake.items) == [("tls", "trusted")]
    assert len(fake.requests) == 1                  # the untrusted one never sent a byte
    assert fake.requests[0].headers["host"] == f"localhost:{fake.port}"
    assert not is_permanent(caught.value)
    assert "certificate verify failed" in str(caught.value)
    assert "AWS_CA_BUNDLE" in str(caught.value)


def test_a_ca_bundle_or_proxy_that_cannot_be_used_stops_start_up_with_what_to_fix(
        aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    monkeypatch.setenv("AWS_CA_BUNDLE", str(missing))
    build = partial(make_http, "https://dynamodb.us-east-1.amazonaws.com", "us-east-1",
                    connect_timeout_s=1, read_timeout_s=1, max_idle=1)
    with pytest.raises(SettingsError) as caught:
        build()
    assert "AWS_CA_BUNDLE" in str(caught.value)
    assert str(missing) in str(caught.value)
    assert "DynamoDB" in str(caught.value)
    monkeypatch.delenv("AWS_CA_BUNDLE")
    monkeypatch.setenv("HTTPS_PROXY", "https://user:pw@proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "")
    with pytest.raises(SettingsError) as caught:
        build()
    assert "HTTPS_PROXY" in str(caught.value)
    assert "only http:// proxies" in str(caught.value)
    assert "pw" not in str(caught.value)


async def test_an_item_another_program_wrote_with_binary_values_reads_as_through_boto3(
        moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wire carries a binary value as base64 text; botocore decodes it before boto3's
    deserializer sees it, which refuses text. Our items hold none, but a table can be shared:
    a query of that partition failed with a TypeError over the loop's requests."""
    isolate_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
    written = {"pk": {"S": PHONE}, "sk": {"S": "blob"}, "data": {"B": b"\x00\xffvoice"},
               "set": {"BS": [b"a", b"\x01"]}, "nested": {"M": {"b": {"B": b"\x02"}}}}
    with trio.fail_after(20):
        async with open_test_table(moto_endpoint) as table:
            await trio.to_thread.run_sync(partial(table._client.put_item,
                                                  TableName=table.table_name, Item=written))
            through_boto3 = await table.get(PHONE, "blob")
            async with open_dynamodb_store(_settings(table.table_name),
                                           limiter=trio.CapacityLimiter(2)) as store:
                sent, via_boto3 = _spy_on_writes(store, monkeypatch)
                got = await store.get(PHONE, "blob")
                queried = await store.query(PHONE)
    assert through_boto3 is not None
    assert through_boto3["data"] == Binary(b"\x00\xffvoice")
    assert got == through_boto3
    assert queried == [through_boto3]
    assert (sent, via_boto3) == ([("GetItem", 1), ("Query", 1)], [])
