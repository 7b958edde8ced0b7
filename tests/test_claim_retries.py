"""``put_new`` when the first attempt was applied but its answer lost, against a fake DynamoDB
endpoint that honours ``attribute_not_exists`` and misbehaves on cue.

Our HTTP client sends a request again when a kept-alive connection dies before any answer,
and botocore retries a 500: DynamoDB may have applied the first attempt either way, and the
resend then fails its condition on our own item. Reported as lost, a relay session's claim
had Twilio's genuine ``/action`` answered 409 and the caller hung up on (found by a review
helper). The claim's own item, found there, is a win.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from tests.fake_dynamodb import (
    ERROR_PREFIX,
    TABLE,
    FakeDynamoDB,
    Reply,
    Seen,
    http_store,
    running_fake_dynamodb,
)
from voiceagent.store.dynamodb import DynamoDBStore


class ConditionalFake(FakeDynamoDB):
    """The fake, honouring PutItem's attribute_not_exists(pk), and answering a failed
    condition with the item it found when asked (ReturnValuesOnConditionCheckFailure
    ALL_OLD), as DynamoDB does, unless ``leave_out_found``; ``apply_on_arrival`` requests
    (by index) are applied as they arrive, whatever the scripted reply then does (DynamoDB
    took the write, the answer was lost)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.apply_on_arrival: set[int] = set()
        self.leave_out_found = False
        fake = self

        class Recorder(list):  # type: ignore[type-arg]
            def append(self, seen: Seen) -> None:
                super().append(seen)
                if len(self) - 1 in fake.apply_on_arrival:
                    item = seen.payload["Item"]
                    fake.items.setdefault((item["pk"]["S"], item["sk"]["S"]), item)

        self.requests = Recorder()

    def _answer(self, seen: Seen, reply: Reply) -> tuple[int, dict[str, Any]]:
        if (reply.kind == "ok" and seen.operation == "PutItem"
                and "ConditionExpression" in seen.payload):
            item = seen.payload["Item"]
            key = (item["pk"]["S"], item["sk"]["S"])
            if key in self.items and len(self.requests) - 1 not in self.apply_on_arrival:
                answer = {"__type": ERROR_PREFIX + "ConditionalCheckFailedException",
                          "message": "The conditional request failed"}
                if (seen.payload.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD"
                        and not self.leave_out_found):
                    answer["Item"] = self.items[key]
                return 400, answer
        return super()._answer(seen, reply)


@pytest.fixture
async def cfake(aws_env: None, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[ConditionalFake]:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with running_fake_dynamodb(kind=ConditionalFake) as fake:
        assert isinstance(fake, ConditionalFake)
        yield fake


CLAIM = {"pk": "CA01", "sk": "relayAnswered::VX1", "at": 1.5}


async def test_a_claim_applied_before_its_connection_died_is_still_won_over_http(
        cfake: ConditionalFake) -> None:
    """A kept-alive connection that dies after DynamoDB took the conditional PutItem but
    before its answer: dynamodb_http sends the request again on a fresh connection
    (``_DeadIdle``), which fails its condition on our own item, sent back with the
    failure."""
    with trio.fail_after(10):
        async with http_store(cfake.endpoint_url) as store:
            await store.put({"pk": "CA01", "sk": "warm"})     # a kept-alive connection
            cfake.apply_on_arrival.add(1)                    # the claim lands...
            cfake.script.append(Reply("hangup"))             # ...its answer never comes
            won = await store.put_new(CLAIM)
    assert [seen.operation for seen in cfake.requests] == ["PutItem", "PutItem", "PutItem"]
    assert (CLAIM["pk"], CLAIM["sk"]) in cfake.items
    assert won is True


async def test_a_claim_applied_before_a_500_is_still_won_over_boto3(
        cfake: ConditionalFake, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same over the boto3 path (a store built around a bare client): our client's
    standard retry mode (TOTAL_MAX_ATTEMPTS=2) sends the conditional PutItem again after a
    500 whose write DynamoDB applied (DynamoDB documents that a 500 may have been)."""
    from voiceagent.settings import Settings
    from voiceagent.store.dynamodb_client import make_client
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", cfake.endpoint_url)
    settings = Settings.from_env(STORE="dynamodb", TABLE_NAME=TABLE,
                                 VALIDATE_SIGNATURES=False)
    client = await trio.to_thread.run_sync(
        lambda: make_client(settings, max_pool_connections=4))
    store = DynamoDBStore(TABLE, client, limiter=trio.CapacityLimiter(4))
    cfake.apply_on_arrival.add(0)
    cfake.script.append(Reply("error", 500, "InternalServerError"))
    try:
        with trio.fail_after(20):
            won = await store.put_new(CLAIM)
    finally:
        await store.aclose()
    assert [seen.operation for seen in cfake.requests] == ["PutItem", "PutItem"]
    assert won is True


@pytest.mark.parametrize("found_sent", [True, False])
async def test_another_claimer_s_item_loses_even_when_it_cannot_be_read(
        cfake: ConditionalFake, found_sent: bool) -> None:
    """Another process's claim is there and reads are throttled. The verdict comes with the
    failed condition (ALL_OLD), so no read is needed; from an endpoint that leaves the item
    out, a read that fails counts as lost. Raising instead had ``answer_failure`` take the
    store for unavailable and answer the replay with a token (found by a review helper)."""
    cfake.leave_out_found = not found_sent
    with trio.fail_after(20):
        async with http_store(cfake.endpoint_url) as store:
            assert await store.put_new({**CLAIM, "claim": "theirs"})
            cfake.script.extend([Reply("ok")] + [
                Reply("error", 400, "ProvisionedThroughputExceededException")] * 10)
            won = await store.put_new({**CLAIM, "claim": "ours"})
    assert won is False
    operations = [seen.operation for seen in cfake.requests]
    assert operations[:2] == ["PutItem", "PutItem"]
    assert ("GetItem" in operations) is not found_sent
