"""The benchmarks' DynamoDB stand-in answers a base-table Query from its partition alone, as
DynamoDB does, with the answers moto gives: moto sorted the whole table for every Query, and
a mass reconnect's Queries (one per ``/action``, one per new socket) saturated it, so the
reconnect benchmark measured moto's sort (issue 20)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.dynamodb.models.table import Table

from tests.moto_kept_alive import query_one_partition

QUERIES: list[dict[str, Any]] = [
    {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "CA1"}}},
    {"KeyConditionExpression": "pk = :p AND begins_with(sk, :s)",
     "ExpressionAttributeValues": {":p": {"S": "CA1"}, ":s": {"S": "chat::"}},
     "ScanIndexForward": False},
    {"KeyConditionExpression": "pk = :p AND sk BETWEEN :a AND :b", "Limit": 3,
     "ExpressionAttributeValues": {":p": {"S": "CA2"}, ":a": {"S": "chat::0002"},
                                   ":b": {"S": "chat::0008"}}},
    {"KeyConditionExpression": "pk = :p", "FilterExpression": "n > :n",
     "ExpressionAttributeValues": {":p": {"S": "CA3"}, ":n": {"N": "4"}}},
    {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "CA-none"}}},
    {"IndexName": "by-phone", "KeyConditionExpression": "phone = :f",
     "ExpressionAttributeValues": {":f": {"S": "+15550001"}}},
]


def _answers(client: Any) -> list[list[Any]]:
    """Every query's pages, followed to the end."""
    answers = []
    for query in QUERIES:
        pages, start = [], None
        while True:
            extra = {"ExclusiveStartKey": start} if start else {}
            page = client.query(TableName="t", **query, **extra)
            pages.append((page["Items"], page["Count"], page["ScannedCount"]))
            start = page.get("LastEvaluatedKey")
            if not start:
                break
        answers.append(pages)
    return answers


def test_a_base_table_query_reads_its_partition_and_answers_as_moto_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Table, "query", Table.query)          # restored after the test
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_table(
            TableName="t", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": name, "AttributeType": "S"}
                                  for name in ("pk", "sk", "phone")],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                       {"AttributeName": "sk", "KeyType": "RANGE"}],
            GlobalSecondaryIndexes=[{
                "IndexName": "by-phone", "Projection": {"ProjectionType": "ALL"},
                "KeySchema": [{"AttributeName": "phone", "KeyType": "HASH"},
                              {"AttributeName": "sk", "KeyType": "RANGE"}]}])
        for call in range(1, 6):
            for n in (7, 3, 9, 1, 5, 8, 2, 6, 4, 0):        # out of order on purpose
                client.put_item(TableName="t", Item={
                    "pk": {"S": f"CA{call}"}, "sk": {"S": f"chat::{n:04d}"}, "n": {"N": str(n)},
                    "phone": {"S": f"+155500{call:02d}"}})
        as_moto_answers = _answers(client)
        query_one_partition()
        whole_table_reads = []
        original = Table.all_items
        monkeypatch.setattr(Table, "all_items", lambda self: (
            whole_table_reads.append(self.name), original(self))[1])
        assert _answers(client) == as_moto_answers
    # only the index query read the whole table (moto's own way): the five base-table
    # queries, their pages included, read their partitions alone
    assert whole_table_reads == ["t"]
    assert [len(pages) for pages in as_moto_answers] == [1, 1, 3, 1, 1, 1]
