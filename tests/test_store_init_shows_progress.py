"""``voiceagent store init`` printed what it had done only once the new table and its index
were ACTIVE (tens of seconds on AWS, up to five minutes allowed), so it sat silent, and
looked hung, for the slowest part; each line now goes out as it is done, with one saying
it waits, before the wait."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from botocore.stub import Stubber

from tests.dynamodb_support import raw_client
from voiceagent.store import dynamodb_admin
from voiceagent.store.dynamodb import DynamoDBStore
from voiceagent.store.dynamodb_table import table_definition


async def test_lines_go_out_as_done_and_the_wait_is_announced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Real time with a short poll (a virtual clock would jump while a call is in a thread);
    the client never connects (a Stubber answers)."""
    monkeypatch.setattr(dynamodb_admin, "TABLE_POLL_S", 0.01)
    client = raw_client("http://127.0.0.1:9")
    store = DynamoDBStore("new", client, limiter=trio.CapacityLimiter(2))
    definition = table_definition("new")
    describes = []
    client.meta.events.register("provide-client-params.dynamodb.DescribeTable",
                                lambda **_: describes.append(1))

    def described(status: str) -> dict[str, Any]:
        index = {**definition["GlobalSecondaryIndexes"][0], "IndexStatus": status}
        return {"TableName": "new", "TableStatus": status,
                "KeySchema": definition["KeySchema"],
                "AttributeDefinitions": definition["AttributeDefinitions"],
                "GlobalSecondaryIndexes": [index]}

    said: list[tuple[str, int]] = []
    with Stubber(client) as stubber:
        stubber.add_client_error("describe_table", "ResourceNotFoundException")
        stubber.add_response("create_table", {"TableDescription": described("CREATING")},
                             definition)
        stubber.add_response("describe_table", {"Table": described("CREATING")})
        stubber.add_response("describe_table", {"Table": described("ACTIVE")})
        stubber.add_response("describe_time_to_live", {
            "TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}})
        stubber.add_response("update_time_to_live", {}, {
            "TableName": "new", "TimeToLiveSpecification": {"Enabled": True,
                                                            "AttributeName": "expireAt"}})
        with trio.fail_after(10):
            done = await store.ensure_table(
                report=lambda line: said.append((line, len(describes))))
        stubber.assert_no_pending_responses()
    assert [line for line, _ in said[:1] + said[2:]] == done
    assert said[0][0].startswith("created table new")
    assert said[0][1] == 1
    assert said[1] == ("waiting for table new and its index to be ACTIVE (usually under a "
                       "minute; at most 300 s)...", 1)        # before the first poll
    assert said[2] == ("enabled TTL on expireAt", 3)
