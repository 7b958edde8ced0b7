"""The DynamoDB store's HTTP writer against an endpoint that misbehaves on purpose
(``tests/fake_dynamodb.py``, on 127.0.0.1): every fault is a ``StoreError``, transient unless
DynamoDB refused the item itself (``StoreRejected``); a kept-alive connection the server
dropped is replaced without the caller noticing; the request is DynamoDB's JSON 1.0, signed
with SigV4 for ``dynamodb``; and the write-behind queue retries until the writes land.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import trio
import trio.testing
from botocore.credentials import RefreshableCredentials

from tests.fake_dynamodb import (
    TABLE,
    FakeDynamoDB,
    Reply,
    http_store,
    running_fake_dynamodb,
    signature_ok,
)
from tests.settled_clock import jump_when_settled
from voiceagent.errors import StoreError, StorePartlyWritten, StoreRejected, is_permanent
from voiceagent.retry_quota import RetryBudget
from voiceagent.store import dynamodb, write_behind
from voiceagent.store.dynamodb_calls import ReadCounts
from voiceagent.store.write_behind import WriteBehind

pytestmark = pytest.mark.timeout(30)

PHONE = "+15555550123"
SECRET = "not-a-secret"              # conftest's aws_env: AKIDEXAMPLE / not-a-secret


def item(sk: str, **values: Any) -> dict[str, Any]:
    return {"pk": PHONE, "sk": sk, **values}


@pytest.fixture
async def fake(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDynamoDB]:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with running_fake_dynamodb() as server:
        yield server


async def test_large_items_outside_ascii_are_batched_within_dynamodbs_16_mb(
        fake: FakeDynamoDB) -> None:
    """25 items just under 400 KB each, in Chinese: 10 MB as DynamoDB counts them, ~20 MB as
    JSON on the wire (a 3-byte character takes six as an escape). DynamoDB refuses a batch over
    16 MB as a whole (ValidationException, permanent), so the write-behind queue would have
    dropped every item with it. The batches are now cut to fit."""
    text = "中" * 130_000                       # 390,000 bytes
    items = [item(f"chat::{n:02d}", text=text) for n in range(25)]
    with trio.fail_after(20):
        async with http_store(fake.endpoint_url) as store:
            await store.put_many(items)
    sizes = [len(seen.body) for seen in fake.requests]
    assert len(sizes) > 1
    assert all(size <= 16 * 1024 * 1024 for size in sizes), sizes
    assert sorted(sk for _, sk in fake.items) == [f"chat::{n:02d}" for n in range(25)]


def test_small_items_still_go_25_to_a_batch() -> None:
    from voiceagent.store.dynamodb_values import Encoded, batches
    encoded = [Encoded((PHONE, f"chat::{n:03d}"), {"pk": {"S": PHONE},
                                                   "sk": {"S": f"chat::{n:03d}"},
                                                   "text": {"S": "x" * 2000}}, 2030)
               for n in range(60)]
    assert [len(batch) for batch in batches(encoded)] == [25, 25, 10]


@pytest.mark.parametrize(("status", "code", "permanent"), [
    (500, "InternalServerError", False),
    (400, "ValidationException", True),
    (400, "ProvisionedThroughputExceededException", False),
    (400, "SerializationException", True),
])
async def test_an_error_answer_is_transient_or_permanent_by_its_code(
        fake: FakeDynamoDB, status: int, code: str, permanent: bool) -> None:
    fake.script.append(Reply("error", status, code))
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            with pytest.raises(StoreError) as caught:
                await store.put(item("chat::1"))
            assert fake.items == {}
            await store.put(item("chat::1"))        # the connection was kept: it carries this
            assert store._http is not None
            assert (store._http._pool.opened, store._http._pool.reused) == (1, 1)
    assert isinstance(caught.value, StoreRejected) is permanent
    assert is_permanent(caught.value) is permanent
    assert code in str(caught.value)
    assert PHONE not in str(caught.value)
    assert len(fake.requests) == 2                  # the writer itself never retries an error
    assert list(fake.items) == [(PHONE, "chat::1")]


async def test_a_proxy_refusing_a_batch_as_too_large_costs_only_what_still_fails(
        fake: FakeDynamoDB) -> None:
    """A proxy's HTML 413 was a transient "not a JSON object": the write-behind retried the
    batch for ever and every later write of the process waited behind it. It is permanent:
    the batch goes again item by item, and only an item the proxy still refuses is dropped."""
    fake.script.extend([Reply("page", 413), Reply("page", 413)])
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            writer = WriteBehind(store, jitter=lambda: 1.0)
            for i in range(3):
                writer.submit({"pk": f"CA{i:02d}", "sk": "chat::0001"}, call_sid=f"CA{i:02d}")
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                assert await writer.flush(timeout_s=5)
                nursery.cancel_scope.cancel()
    assert [r.operation for r in fake.requests] == ["BatchWriteItem"] + ["PutItem"] * 3
    assert sorted(pk for pk, _ in fake.items) == ["CA01", "CA02"]   # the first one refused
    assert writer.statistics().failed == 1


async def test_an_expired_token_is_transient_and_the_credentials_are_found_anew(
        fake: FakeDynamoDB, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.script.extend([Reply("error", 500, "InternalServerError"),
                        Reply("error", 400, "ExpiredTokenException")])
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDROTATED")    # rotated underneath
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated-secret")
            with pytest.raises(StoreError):
                await store.put(item("a"))          # a 500: the credentials are kept
            with pytest.raises(StoreError) as expired:
                await store.put(item("a"))          # expired: found anew for the next one
            await store.put(item("a"))
    assert not is_permanent(expired.value)
    assert "ExpiredTokenException" in str(expired.value)
    assert "check the AWS credentials" in str(expired.value)
    assert [r.access_key for r in fake.requests] == ["AKIDEXAMPLE", "AKIDEXAMPLE", "AKIDROTATED"]
    assert signature_ok(fake.requests[1], SECRET)
    assert signature_ok(fake.requests[2], "rotated-secret")
    assert list(fake.items) == [(PHONE, "a")]


@pytest.mark.parametrize("threads", [1, 4])
async def test_requests_refused_as_expired_at_once_do_not_wait_on_each_other(
        fake: FakeDynamoDB, monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """Every STORE_THREADS request refused as expired at once: each renewal used to wait for
    a token of the limiter the requests themselves held, and the writes, shielded, hung
    for good (even one, with STORE_THREADS=1)."""
    fake.script.extend([Reply("error", 400, "ExpiredTokenException")] * threads)
    outcomes: list[str] = []

    async def put(sk: str) -> None:
        try:
            await store.put(item(sk))
            outcomes.append("written")
        except StoreError as err:
            outcomes.append(type(err).__name__)

    with trio.fail_after(10):
        async with http_store(fake.endpoint_url, at_once=threads) as store:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDROTATED")
            async with trio.open_nursery() as nursery:
                for i in range(threads):
                    nursery.start_soon(put, f"chat::{i}")
            await store.put(item("after"))
    assert outcomes == ["StoreError"] * threads
    assert fake.requests[-1].access_key == "AKIDROTATED"
    assert list(fake.items) == [(PHONE, "after")]


async def test_credentials_in_their_refresh_window_do_not_stall_the_store(
        fake: FakeDynamoDB) -> None:
    """Temporary credentials (a task role) are refreshed in a thread once inside botocore's
    15-minute window, while the request holds a store token: the refresh took a token of the
    same limiter, and STORE_THREADS requests at once hung for good."""
    def soon(minutes: int) -> str:
        return (datetime.datetime.now(datetime.UTC)
                + datetime.timedelta(minutes=minutes)).isoformat()

    def refresh() -> dict[str, str]:
        return {"access_key": "AKIDREFRESHED", "secret_key": "s", "token": "t",
                "expiry_time": soon(60)}

    with trio.fail_after(10):
        async with http_store(fake.endpoint_url, at_once=2) as store:
            assert store._http is not None
            store._http._signer._credentials = RefreshableCredentials.create_from_metadata(
                {"access_key": "AKIDOLD", "secret_key": "s", "token": "t",
                 "expiry_time": soon(10)}, refresh_using=refresh, method="container-role")
            async with trio.open_nursery() as nursery:
                for sk in ("a", "b"):
                    nursery.start_soon(store.put, item(sk))
    assert sorted(fake.items) == [(PHONE, "a"), (PHONE, "b")]
    assert {r.access_key for r in fake.requests} == {"AKIDREFRESHED"}


async def test_a_chain_that_finds_nothing_keeps_the_credentials_we_had(
        fake: FakeDynamoDB) -> None:
    """The instance metadata service failing at the moment of a renewal: with no credentials
    nothing would be sent, so no refusal would ever ask for another lookup and every write
    failed until a restart."""
    fake.script.append(Reply("error", 400, "ExpiredTokenException"))
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            assert store._http is not None
            signer = store._http._signer
            signer._resolve = lambda: None
            with pytest.raises(StoreError, match="ExpiredTokenException"):
                await store.put(item("a"))
            await store.put(item("a"))              # sent, with the credentials we had
            assert signer.renewals == 1
    assert [r.access_key for r in fake.requests] == ["AKIDEXAMPLE", "AKIDEXAMPLE"]
    assert list(fake.items) == [(PHONE, "a")]


async def test_a_write_ahead_of_the_queue_ends_at_its_callers_deadline(
        fake: FakeDynamoDB, mock_clock: trio.testing.MockClock) -> None:
    """``write_now`` gives a session 2 s (``/twiml`` waits on it). Writes are shielded so a
    cancel cannot abandon one, and the budget became the attempt's own read timeout (4 s
    here, ~10 s with a dead kept-alive connection) under a stalled DynamoDB. Now the
    attempt ends at the caller's deadline and the item waits in the queue."""
    fake.script.append(Reply("stall"))
    outcome: list[bool] = []
    async with http_store(fake.endpoint_url, read_timeout_s=4.0) as store:
        writer = WriteBehind(store, jitter=lambda: 1.0)

        async def write() -> None:
            outcome.append(await writer.write_now(item("session"), call_sid="CA1",
                                                  timeout_s=2.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await fake.wait_requests(1)             # sent, and DynamoDB says nothing
            mock_clock.jump(2.5)                    # past the caller's 2 s, not the 4 s
            while fake.client_closed < 1:           # the attempt gave up its connection
                await fake.wait_change()
        assert outcome == [False]
        assert writer.pending == 1                  # the session waits in the queue


async def test_an_answer_failing_its_crc32_is_a_transient_error(fake: FakeDynamoDB) -> None:
    fake.script.append(Reply("bad_crc"))
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            with pytest.raises(StoreError, match="CRC32") as caught:
                await store.put(item("a"))
            await store.put(item("b"))              # a correct CRC32 passes
    assert not is_permanent(caught.value)
    assert len(fake.requests) == 2


async def test_a_reset_before_the_answer_is_a_transient_error(fake: FakeDynamoDB) -> None:
    fake.script.append(Reply("reset"))
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            with pytest.raises(StoreError, match="ConnectionResetError") as caught:
                await store.put(item("a"))
            await store.put(item("b"))
    assert not is_permanent(caught.value)
    assert len(fake.requests) == 2                  # a new connection's failure: not re-sent
    assert fake.connections == 2
    assert list(fake.items) == [(PHONE, "b")]


async def test_no_answer_is_a_transient_error_at_the_read_timeout(
        fake: FakeDynamoDB, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On the virtual clock, jumping once every task waits and no thread works: the wait is
    the read timeout to the instant, whatever else the machine runs."""
    fake.script.append(Reply("stall"))
    jump_when_settled(mock_clock, monkeypatch)
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url, read_timeout_s=0.3) as store:
            start = trio.current_time()
            with pytest.raises(StoreError, match=r"no answer from .* within 0.3 s") as caught:
                await store.put(item("a"))
            waited = trio.current_time() - start
            await fake.wait_client_closed(1)        # the client gave the connection up
            await store.put(item("b"))
    assert waited == pytest.approx(0.3)
    assert not is_permanent(caught.value)
    assert fake.endpoint_url in str(caught.value)
    assert fake.connections == 2
    assert list(fake.items) == [(PHONE, "b")]


async def test_a_kept_alive_connection_the_server_closed_is_replaced(
        fake: FakeDynamoDB) -> None:
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            await store.put(item("a"))
            await fake.close_idle(1)                # the server's keep-alive timeout
            await store.put(item("b"))
    assert fake.connections == 2
    assert [r.connection for r in fake.requests] == [0, 1]
    assert list(fake.items) == [(PHONE, "a"), (PHONE, "b")]


@pytest.mark.parametrize("kind", ["hangup", "reset"])
async def test_a_reused_connection_dying_before_any_answer_is_sent_again_once(
        fake: FakeDynamoDB, kind: str) -> None:
    """The server took the request on the kept-alive connection, then closed it unanswered
    (it had timed it out as we sent): sent again on a new connection, as urllib3 does."""
    fake.script.extend([Reply("ok"), Reply(kind)])
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            await store.put(item("a"))
            await store.put(item("b"))
            assert store._http is not None
            assert (store._http._pool.opened, store._http._pool.reused) == (2, 1)
    assert [r.connection for r in fake.requests] == [0, 0, 1]
    assert fake.requests[1].body == fake.requests[2].body
    assert list(fake.items) == [(PHONE, "a"), (PHONE, "b")]


async def test_an_answer_cut_short_on_a_reused_connection_is_not_sent_again(
        fake: FakeDynamoDB) -> None:
    fake.script.extend([Reply("ok"), Reply("truncated")])
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            await store.put(item("a"))
            with pytest.raises(StoreError) as caught:
                await store.put(item("b"))
    assert not is_permanent(caught.value)
    assert [r.connection for r in fake.requests] == [0, 0]


async def test_unprocessed_items_are_sent_again_and_only_they(
        fake: FakeDynamoDB, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dynamodb, "UNPROCESSED_BACKOFF_BASE_S", 0.001)
    fake.script.append(Reply("unprocessed", count=2))
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            await store.put_many([item(f"m{i}", i=i) for i in range(5)])
            fake.script.extend([Reply("unprocessed", count=1)] * dynamodb.UNPROCESSED_ATTEMPTS)
            with pytest.raises(StoreError, match="1 of 2 items unprocessed") as caught:
                await store.put_many([item("x"), item("y")])
    sent = [[i["sk"]["S"] for i in r.put_items()] for r in fake.requests]
    assert sent[:2] == [["m0", "m1", "m2", "m3", "m4"], ["m3", "m4"]]
    assert sent[2:] == [["x", "y"]] + [["y"]] * (dynamodb.UNPROCESSED_ATTEMPTS - 1)
    assert {r.operation for r in fake.requests} == {"BatchWriteItem"}
    assert not is_permanent(caught.value)
    assert isinstance(caught.value, StorePartlyWritten)
    assert caught.value.remaining == [(PHONE, "y")]
    assert sorted(sk for _, sk in fake.items) == ["m0", "m1", "m2", "m3", "m4", "x"]


async def test_the_write_behind_sends_again_only_what_dynamodb_left_unprocessed(
        fake: FakeDynamoDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """A throttled partition: one item of 25 comes back unprocessed round after round. The
    queue used to send the whole batch again, 24 stored items included, spending the
    throttled table's capacity again (85 item writes for 25 in the reviewer's run)."""
    monkeypatch.setattr(dynamodb, "UNPROCESSED_BACKOFF_BASE_S", 0.001)
    fake.script.extend([Reply("unprocessed", count=1)] * dynamodb.UNPROCESSED_ATTEMPTS)
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            writer = WriteBehind(store, jitter=lambda: 1.0)
            for i in range(25):
                writer.submit({"pk": f"CA{i:02d}", "sk": "chat::0001"}, call_sid=f"CA{i:02d}")
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                assert await writer.flush(timeout_s=5)
                nursery.cancel_scope.cancel()
    sent = [len(r.put_items()) if r.operation == "BatchWriteItem" else 1
            for r in fake.requests]
    assert sent == [25] + [1] * (dynamodb.UNPROCESSED_ATTEMPTS - 1) + [1]
    assert fake.requests[-1].operation == "PutItem"        # the one left, alone
    assert len(fake.items) == 25
    assert writer.statistics().written == 25


async def test_the_requests_are_dynamodb_json_signed_for_dynamodb(fake: FakeDynamoDB) -> None:
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            await store.put(item("one", n=1.5, big=10**30, flag=True, none=None,
                                 list=["a", 2, []], map={"k": "vé"}))
            await store.put_many([item(f"b{i}") for i in range(3)])
    put, batch = fake.requests
    for seen, operation in ((put, "PutItem"), (batch, "BatchWriteItem")):
        assert (seen.method, seen.target) == ("POST", "/")
        assert seen.headers["x-amz-target"] == f"DynamoDB_20120810.{operation}"
        assert seen.headers["content-type"] == "application/x-amz-json-1.0"
        assert seen.headers["host"] == f"127.0.0.1:{fake.port}"
        assert seen.headers["content-length"] == str(len(seen.body))
        assert seen.headers["user-agent"].startswith("voiceagent/")
        authorization = seen.headers["authorization"]
        assert re.match(r"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/\d{8}/us-east-1/dynamodb/"
                        r"aws4_request, SignedHeaders=\S*host\S*x-amz-target", authorization)
        assert signature_ok(seen, SECRET)
        assert not signature_ok(replace(seen, body=seen.body + b" "), SECRET)
    assert put.payload == {"TableName": TABLE, "Item": {
        "pk": {"S": PHONE}, "sk": {"S": "one"}, "n": {"N": "1.5"},
        "big": {"N": str(10**30)}, "flag": {"BOOL": True}, "none": {"NULL": True},
        "list": {"L": [{"S": "a"}, {"N": "2"}, {"L": []}]}, "map": {"M": {"k": {"S": "vé"}}}}}
    assert batch.payload == {"RequestItems": {TABLE: [
        {"PutRequest": {"Item": {"pk": {"S": PHONE}, "sk": {"S": f"b{i}"}}}} for i in range(3)]}}
    assert put.connection == batch.connection == 0


async def test_a_cancel_lets_the_write_in_flight_finish(fake: FakeDynamoDB) -> None:
    fake.script.append(Reply("hold"))
    outcome: list[str] = []
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            async with trio.open_nursery() as nursery:
                async def write() -> None:
                    await store.put(item("a"))
                    outcome.append("returned")

                nursery.start_soon(write)
                await fake.wait_requests(1)
                nursery.cancel_scope.cancel()       # before the answer comes
                fake.release.set()
    assert outcome == ["returned"]
    assert list(fake.items) == [(PHONE, "a")]


async def test_a_read_is_abandoned_when_cancelled_and_reads_what_was_written(
        fake: FakeDynamoDB) -> None:
    """Nobody wants a cancelled read's answer (the call it was for has gone): its connection
    is closed at once, unlike a write's."""
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            await store.put(item("a", text="hello"))
            assert await store.get(PHONE, "a") == item("a", text="hello")
            assert await store.get(PHONE, "missing") is None
            fake.script.append(Reply("stall"))
            with trio.move_on_after(5) as waited:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(store.get, PHONE, "a")
                    await fake.wait_requests(4)
                    nursery.cancel_scope.cancel()
            await fake.wait_client_closed(1)
    assert not waited.cancelled_caught
    assert [r.operation for r in fake.requests] == ["PutItem", "GetItem", "GetItem", "GetItem"]


async def test_requests_in_flight_are_bounded_by_the_store_limiter(fake: FakeDynamoDB) -> None:
    """A burst of calls must not open a connection each to DynamoDB: STORE_THREADS bounds
    the requests in flight, as it bounded the threads."""
    fake.script.append(Reply("hold"))
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url, at_once=1) as store:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.put, item("a"))
                await fake.wait_requests(1)
                nursery.start_soon(store.get, PHONE, "a")
                await trio.testing.wait_all_tasks_blocked()
                assert len(fake.requests) == 1          # the read waits for the write
                fake.release.set()
            assert [r.operation for r in fake.requests] == ["PutItem", "GetItem"]
    assert fake.connections == 1


async def test_the_write_behind_retries_until_the_writes_land(
        fake: FakeDynamoDB, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write_behind, "BACKOFF_BASE_S", 0.02)
    fake.script.extend([Reply("error", 500, "InternalServerError")] * 2)
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            writer = WriteBehind(store, jitter=lambda: 1.0)
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                start = trio.current_time()
                for i in range(3):
                    writer.submit(item(f"chat::{i}", text=f"t{i}"), call_sid="CA1")
                assert await writer.flush(timeout_s=5.0)
                took = trio.current_time() - start
                stats = writer.statistics()
                # a refused item is dropped, the rest of its batch written
                fake.script.extend([Reply("error", 400, "ValidationException"), Reply("ok"),
                                    Reply("error", 400, "ValidationException"), Reply("ok")])
                for sk in ("good", "bad", "fine"):
                    writer.submit(item(sk), call_sid="CA2")
                assert await writer.flush(timeout_s=5.0)
                after = writer.statistics()
                nursery.cancel_scope.cancel()
    assert (stats.written, stats.retries, stats.failed, stats.pending) == (3, 2, 0, 0)
    assert not stats.store_down
    assert took >= 0.02 + 0.04                      # the two backoffs, jitter pinned
    assert (after.written, after.failed) == (5, 1)
    assert [len(r.put_items()) for r in fake.requests] == [3, 3, 3, 3, 1, 1, 1]
    assert sorted(sk for _, sk in fake.items) == ["chat::0", "chat::1", "chat::2", "fine",
                                                   "good"]
    assert fake.connections == 1                    # error answers keep the connection


# ---------------------------------------------------------------- reads tried a second time

READ_FAULTS = [Reply("error", 400, "ProvisionedThroughputExceededException"),
               Reply("error", 400, "ThrottlingException"),
               Reply("error", 500, "InternalServerError"),
               Reply("page", 502), Reply("reset"), Reply("bad_crc"), Reply("truncated")]
READ_FAULT_IDS = ["throttled", "throttling", "500", "proxy-502", "reset", "bad-crc",
                  "cut-short"]


async def read_back(store: dynamodb.DynamoDBStore, operation: str) -> Any:
    if operation == "GetItem":
        return await store.get(PHONE, "chat::1")
    return await store.query(PHONE, "chat::", limit=1)


def read_back_as_written(operation: str) -> Any:
    written = item("chat::1", text="hi")
    return written if operation == "GetItem" else [written]


@pytest.mark.parametrize("operation", ["GetItem", "Query"])
@pytest.mark.parametrize("fault", READ_FAULTS, ids=READ_FAULT_IDS)
async def test_a_read_whose_failure_may_pass_is_tried_once_more(
        fake: FakeDynamoDB, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch, operation: str, fault: Reply) -> None:
    """A /twiml's session check (a Query) and a call's profile (a GetItem) each had one
    attempt on the loop, where botocore's client had two: one throttled read refused the
    caller's call. The second goes after 25-50 ms, on a new connection if the first failed
    with its connection, the same bytes signed anew."""
    jump_when_settled(mock_clock, monkeypatch)
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            await store.put(item("chat::1", text="hi"))
            assert store._http is not None
            store._http.close()                 # a fresh connection: none resent as stale
            fake.script.append(fault)
            start = trio.current_time()
            found = await read_back(store, operation)
            waited = trio.current_time() - start
            counts = store.read_counts
    assert found == read_back_as_written(operation)
    assert counts == ReadCounts(retried=1, failed=0)
    assert [r.operation for r in fake.requests] == ["PutItem", operation, operation]
    assert fake.requests[1].payload == fake.requests[2].payload
    assert 0.025 <= waited <= 0.05


@pytest.mark.parametrize("operation", ["GetItem", "Query"])
async def test_a_read_failing_twice_is_a_transient_error_after_two_tries(
        fake: FakeDynamoDB, operation: str) -> None:
    throttled = Reply("error", 400, "ProvisionedThroughputExceededException")
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            await store.put(item("chat::1", text="hi"))
            fake.script.extend([throttled, throttled])
            with pytest.raises(StoreError, match="ProvisionedThroughputExceeded") as caught:
                await read_back(store, operation)
            assert store.read_counts == ReadCounts(retried=1, failed=1)
            assert await read_back(store, operation) == read_back_as_written(operation)
            assert store.read_counts == ReadCounts(retried=1, failed=1)
    assert not is_permanent(caught.value)
    assert [r.operation for r in fake.requests] == ["PutItem"] + [operation] * 3


@pytest.mark.parametrize(("code", "says"), [("ValidationException", "ValidationException"),
                                            ("AccessDeniedException", "AccessDenied"),
                                            ("ResourceNotFoundException", "not found")])
async def test_a_read_that_would_fail_again_is_not_tried_again(
        fake: FakeDynamoDB, code: str, says: str) -> None:
    fake.script.append(Reply("error", 400, code))
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            with pytest.raises(StoreError, match=says):
                await store.query(PHONE)
            assert store.read_counts == ReadCounts()       # nothing that may pass
    assert [r.operation for r in fake.requests] == ["Query"]


async def test_a_silent_read_is_tried_again_after_its_read_timeout(
        fake: FakeDynamoDB, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first try gives its connection up at the read timeout; the second, on a new
    connection, is answered: the caller waited one read timeout and the delay."""
    fake.script.append(Reply("stall"))
    jump_when_settled(mock_clock, monkeypatch)
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url, read_timeout_s=0.3) as store:
            start = trio.current_time()
            assert await store.query(PHONE) == []
            waited = trio.current_time() - start
            await fake.wait_client_closed(1)
    assert 0.325 <= waited <= 0.35
    assert fake.connections == 2


async def test_a_read_refused_as_expired_is_tried_again_with_credentials_found_anew(
        fake: FakeDynamoDB, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.script.append(Reply("error", 400, "ExpiredTokenException"))
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDROTATED")    # rotated underneath
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated-secret")
            assert await store.get(PHONE, "profile") is None
    assert [r.access_key for r in fake.requests] == ["AKIDEXAMPLE", "AKIDROTATED"]
    assert signature_ok(fake.requests[1], "rotated-secret")


async def test_a_read_cancelled_while_it_waits_to_try_again_ends_at_once(
        fake: FakeDynamoDB, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody wants the answer: the second try is never sent, and nothing is held."""
    fake.script.append(Reply("error", 500, "InternalServerError"))
    jump_when_settled(mock_clock, monkeypatch)
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url, at_once=1) as store:
            with trio.move_on_after(0.01) as cancelled:
                await store.query(PHONE)
            assert store._limiter.borrowed_tokens == 0
    assert cancelled.cancelled_caught
    assert [r.operation for r in fake.requests] == ["Query"]


async def test_sustained_throttling_spends_the_read_retry_quota_then_stops_retrying(
        fake: FakeDynamoDB, records: list[logging.LogRecord]) -> None:
    """As botocore's client: each retry takes from the store's quota and each success gives
    back, so a store that keeps throttling is not sent every read twice. Throttling fails
    the reads of every call alike: one line for each kind, the rest counted."""
    throttled = Reply("error", 400, "ProvisionedThroughputExceededException")
    fake.script.extend([throttled] * 5)
    with trio.fail_after(10):
        async with http_store(fake.endpoint_url) as store:
            store._read_quota = RetryBudget(capacity=10)    # two throttled retries' worth
            for _ in range(3):
                with pytest.raises(StoreError, match="ProvisionedThroughputExceeded"):
                    await store.get(PHONE, "profile")
            assert store._read_quota.available == 0
            # two read twice and failed, the third failed with no second try
            assert store.read_counts == ReadCounts(retried=2, failed=3)
            assert await store.get(PHONE, "profile") is None
            assert store._read_quota.available == 1     # a success gives one back
    assert len(fake.requests) == 2 + 2 + 1 + 1
    said = [r.getMessage() for r in records if r.getMessage().startswith("dynamodb read")]
    assert said == ["dynamodb read failed, trying it again",
                    "dynamodb read failed and the retry quota is spent: not tried again",
                    "dynamodb reads still failing"]     # the counts, as the store closed
    summary = records[-1].__dict__
    assert (summary["counts"], summary["ok"], summary["stopping"]) == (
        {"ProvisionedThroughputExceededException": 2,
         "ProvisionedThroughputExceededException, not tried again": 1}, 1, True)
