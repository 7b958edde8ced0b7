"""The production store: the items of ``records.py`` in one DynamoDB table.

The table is the original sample's (pk/sk string keys, GSI ``index-1-full`` on pk1/sk1 with
every attribute projected, TTL on ``expireAt``), so a table that sample filled works unchanged
and ``voiceagent store init`` (``ensure_table``) creates the same one anywhere.

One low-level client per process (botocore's, which boto3's clients are), owned by the store
(``aclose`` closes it), created with ``open_dynamodb_store`` from the botocore session the
runtime shares with the model, when it has one (``open_runtime``). Table work and deletes run
in a worker thread through ``run_blocking`` and the limiter the owner passes in; the client's
connection pool is sized to that limiter. Writes (every message of every call), single-item
reads (every call's profile) and queries (every call's session check in ``/twiml``, histories)
go from the event loop instead, through ``dynamodb_http`` (why: there), when the store was
opened with ``open_dynamodb_store``; a store built around a bare client uses it for everything.
The endpoint and credentials come from the standard AWS variables and files, which boto3 reads
itself (``AWS_ENDPOINT_URL_DYNAMODB`` points it at DynamoDB Local or moto), and the loop's
requests go where the client would.

Values: callers hand in and get back plain JSON-like values. Numbers travel as Decimal and
come back as ``int`` when whole and ``float`` otherwise (DynamoDB keeps no number type, so a
float with a whole value comes back as an int: equal to it up to 2**53; beyond, the int of
its shortest decimal form, e.g. 1e30 comes back as 10**30, which differs from the float).

Errors (translated in ``dynamodb_calls``): ``StoreError`` for what may pass (throttling, 5xx,
the endpoint unreachable, the table or the credentials missing: fixable without losing the
item), ``StoreRejected`` (permanent) for an item DynamoDB refuses, with the item's pk/sk in
the message (phone numbers masked). Items are checked before anything is sent, so a call that
names a bad item writes nothing.
"""

from __future__ import annotations

import decimal
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from voiceagent.aws_session import StartupSession
from voiceagent.errors import SettingsError, StoreError, StorePartlyWritten, StoreRejected
from voiceagent.log_episodes import Episode
from voiceagent.retry_quota import RetryBudget
from voiceagent.settings import Settings
from voiceagent.store.base import (
    INDEX_NAME,
    Item,
    check_item_keys,
    check_item_nesting,
    check_item_size,
    describe_key,
    is_own_item,
)
from voiceagent.store.dynamodb_admin import TableAdmin
from voiceagent.store.dynamodb_calls import DynamoDBCalls, ReadCounts
from voiceagent.store.dynamodb_client import make_both
from voiceagent.store.dynamodb_http import DynamoDBHttp
from voiceagent.store.dynamodb_values import (
    Encoded,
    Key,
    WireDeserializer,
    batches,
    condition_failed_item,
    error_code,
    plain,
    to_attribute,
    unless_newer,
)
from voiceagent.threads import run_blocking

log = logging.getLogger(__name__)

DEFAULT_POOL_CONNECTIONS = 64       # for a limiter without a bound
UNPROCESSED_ATTEMPTS = 6             # BatchWriteItem rounds before UnprocessedItems is an error
UNPROCESSED_BACKOFF_BASE_S = 0.05
UNPROCESSED_BACKOFF_CAP_S = 1.0

CONDITION_FAILED = "ConditionalCheckFailedException"    # put_new: the item was there


class DynamoDBStore(DynamoDBCalls, TableAdmin):
    """A ``Store`` on one table. Owns ``client`` (``aclose`` closes it); built by
    ``open_dynamodb_store``, or directly in tests with any table name and boto3 client."""

    def __init__(self, table_name: str, client: Any, *, limiter: trio.CapacityLimiter,
                 http: DynamoDBHttp | None = None) -> None:
        self.name = f"dynamodb:{table_name}"
        self.table_name = table_name
        self._client = client
        self._http = http               # writes and gets from the loop; None: the client
        self._limiter = limiter
        self._deserializer = WireDeserializer()
        self._closed = False
        self._read_quota = RetryBudget()     # the loop's reads (``dynamodb_calls``)
        self.read_counts = ReadCounts()
        self._read_faults = Episode(log, lasts="dynamodb reads still failing",
                                    ended="dynamodb reads answered again", level=logging.INFO,
                                    state=lambda: {"retry_quota": self._read_quota.available})

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    # ------------------------------------------------------------------ the Store interface

    async def get(self, pk: str, sk: str) -> Item | None:
        request = {"TableName": self.table_name, "Key": self._key(pk, sk),
                   "ConsistentRead": True}
        if self._http is not None:      # on every call's path (its caller's profile)
            response = await self._call_http("get", "GetItem", request, [(pk, sk)], read=True)
        else:
            response = await self._call("get", partial(self._client.get_item, **request),
                                        keys=[(pk, sk)], read=True)
        found = response.get("Item")
        return self._decode(found) if found is not None else None

    async def put(self, item: Item) -> None:
        await self.put_many([item])

    async def put_many(self, items: Sequence[Item]) -> None:
        """Every item is checked first (``StoreRejected`` names the one at fault); then
        batches of at most ``BATCH_LIMIT`` go out in order. A batch never holds one key twice:
        it ends before the repeat, so the later write lands later and wins. The loop runs on
        between items: encoding a full batch at once held it ~10 ms at 500 calls."""
        encoded = []
        for item in items:
            encoded.append(self._encode(item))
            await trio.lowlevel.checkpoint()
        split = list(batches(encoded))
        for n, batch in enumerate(split):
            if len(batch) > 1:
                try:
                    await self._write_batch(batch)
                except StorePartlyWritten as err:
                    later = [entry.key for rest in split[n + 1:] for entry in rest]
                    raise StorePartlyWritten(str(err), err.remaining + later) from None
                continue
            key, attributes, _ = batch[0]
            await self._put_item("put", {"TableName": self.table_name, "Item": attributes},
                                 key)

    async def put_new(self, item: Item) -> bool:
        return await self._put_on_condition("put_new", item, lambda _: {
            "ConditionExpression": "attribute_not_exists(pk)"}, own=True)

    async def put_unless_newer(self, item: Item, version: str, *,
                               legacy: str | None = None) -> bool:
        # a resend of an applied attempt meets <=: never refused for its own item
        return await self._put_on_condition("put_unless_newer", item, lambda attributes:
                                            unless_newer(attributes, version, legacy))

    async def put_if_newer(self, item: Item, version: str, *,
                           legacy: str | None = None) -> bool:
        return await self._put_on_condition("put_if_newer", item, lambda attributes:
                                            unless_newer(attributes, version, legacy,
                                                         strict=True), own=True)

    async def _put_on_condition(self, operation: str, item: Item,
                                condition: Callable[[dict[str, Any]], dict[str, Any]], *,
                                own: bool = False) -> bool:
        """One PutItem (a BatchWriteItem takes no condition); False when the condition
        failed, unless (``own``) the item found is this one: a resend (our client's on a dead
        kept-alive connection, botocore's on a 500) of an attempt DynamoDB applied. That item
        comes with the failure; without it, a read, and a read that fails counts as lost."""
        key, attributes, _ = self._encode(item)
        request = {"TableName": self.table_name, "Item": attributes, **condition(attributes),
                   "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        try:
            await self._put_item(operation, request, key)
        except StoreError as err:
            if error_code(err.__cause__) != CONDITION_FAILED:
                raise
            found = condition_failed_item(err.__cause__) if own else None
            if own and found is None:
                try:
                    return is_own_item(await self.get(*key), item)
                except StoreError:
                    return False
            return found is not None and is_own_item(self._decode(found), item)
        return True

    async def _put_item(self, operation: str, request: dict[str, Any], key: Key) -> None:
        """One PutItem, over the loop's HTTP transport when there is one, else boto3."""
        if self._http is not None:
            await self._call_http(operation, "PutItem", request, [key])
        else:
            await self._call(operation, partial(self._client.put_item, **request), keys=[key])

    async def query(self, pk: str, sk_prefix: str = "", *, descending: bool = False,
                    limit: int | None = None) -> list[Item]:
        return await self._query("query", None, "pk", "sk", pk, sk_prefix, descending, limit)

    async def query_index(self, pk1: str, sk1_prefix: str = "", *, descending: bool = False,
                          limit: int | None = None) -> list[Item]:
        return await self._query("query_index", INDEX_NAME, "pk1", "sk1", pk1, sk1_prefix,
                                 descending, limit)

    async def delete(self, pk: str, sk: str) -> None:
        await self._call("delete", lambda: self._client.delete_item(
            TableName=self.table_name, Key=self._key(pk, sk)), keys=[(pk, sk)])

    async def aclose(self) -> None:
        """Close the client's connections; idempotent, and finishes even when cancelled."""
        if self._closed:
            return
        self._closed = True
        self._read_faults.close()
        if self._http is not None:
            self._http.close()
        with trio.CancelScope(shield=True):
            await run_blocking(self._client.close, limiter=self._limiter)

    # ------------------------------------------------------------------ helpers

    async def _write_batch(self, batch: list[Encoded]) -> None:
        """One BatchWriteItem, then its UnprocessedItems again with backoff, a bounded number
        of times; what is still left is a (transient) ``StoreError``."""
        requests = [{"PutRequest": {"Item": entry.attributes}} for entry in batch]
        keys = [entry.key for entry in batch]
        for attempt in range(1, UNPROCESSED_ATTEMPTS + 1):
            payload = {"RequestItems": {self.table_name: requests}}
            if self._http is not None:
                response = await self._call_http("put_many", "BatchWriteItem", payload, keys)
            else:
                response = await self._call("put_many", partial(
                    self._client.batch_write_item, **payload), keys=keys)
            requests = response.get("UnprocessedItems", {}).get(self.table_name, [])
            if not requests:
                return
            if attempt < UNPROCESSED_ATTEMPTS:
                await trio.sleep(min(UNPROCESSED_BACKOFF_CAP_S,
                                     UNPROCESSED_BACKOFF_BASE_S * 2.0 ** (attempt - 1)))
        remaining = [(request["PutRequest"]["Item"]["pk"]["S"],
                      request["PutRequest"]["Item"]["sk"]["S"]) for request in requests]
        raise StorePartlyWritten(f"DynamoDB left {len(requests)} of {len(batch)} items "
                                 f"unprocessed after {UNPROCESSED_ATTEMPTS} attempts "
                                 "(throttled); try again later", remaining)

    async def _query(self, operation: str, index: str | None, key: str, sort: str,
                     value: str, prefix: str, descending: bool,
                     limit: int | None) -> list[Item]:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        request: dict[str, Any] = {
            "TableName": self.table_name, "ScanIndexForward": not descending,
            "KeyConditionExpression": "#key = :key",
            "ExpressionAttributeNames": {"#key": key},
            "ExpressionAttributeValues": {":key": {"S": value}}}
        if prefix:
            request["KeyConditionExpression"] += " AND begins_with(#sort, :prefix)"
            request["ExpressionAttributeNames"]["#sort"] = sort
            request["ExpressionAttributeValues"][":prefix"] = {"S": prefix}
        if index is not None:
            request["IndexName"] = index
        else:
            request["ConsistentRead"] = True
        items: list[Item] = []
        while True:
            if limit is not None:
                request["Limit"] = limit - len(items)
            if self._http is not None:      # every call's /twiml (its session) and history
                page = await self._call_http(operation, "Query", request, (), read=True)
            else:
                page = await self._call(operation, partial(self._client.query, **request),
                                        read=True)
            items.extend(self._decode(found) for found in page.get("Items", []))
            request["ExclusiveStartKey"] = page.get("LastEvaluatedKey")
            if request["ExclusiveStartKey"] is None or (limit is not None
                                                        and len(items) >= limit):
                return items[:limit] if limit is not None else items

    def _key(self, pk: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    def _encode(self, item: Item) -> Encoded:
        """The item as DynamoDB attribute values, or ``StoreRejected`` for what DynamoDB
        would refuse (checked here so that nothing of a call with a bad item is written)."""
        check_item_keys(item)
        check_item_nesting(item)            # DynamoDB refuses it; moto does not
        key = (item["pk"], item["sk"])
        try:
            attributes = {name: to_attribute(value, name) for name, value in item.items()}
        except StoreRejected as err:
            raise StoreRejected(f"{describe_key(*key)}: {err}") from None
        except (decimal.DecimalException, TypeError) as err:
            raise StoreRejected(f"{describe_key(*key)}: a number is outside DynamoDB's range "
                                f"(38 digits, 1e-130 to 1e126): {type(err).__name__}") from None
        return Encoded(key, attributes, check_item_size(item))

    def _decode(self, attributes: Mapping[str, Any]) -> Item:
        return {name: plain(self._deserializer.deserialize(value))
                for name, value in attributes.items()}


# ------------------------------------------------------------------ opening


@asynccontextmanager
async def open_dynamodb_store(settings: Settings, *, limiter: trio.CapacityLimiter,
                              check_table: bool = True,
                              session: StartupSession | None = None
                              ) -> AsyncIterator[DynamoDBStore]:
    """Create the client, check the table (``check_table``: exists, keyed as expected) and
    close the client on exit. ``SettingsError`` without TABLE_NAME or a region; ``StoreError``
    naming the table and endpoint when it cannot be used. ``session``: the runtime's session,
    lent while the model's endpoint is resolved from it too; else one of its own, for the
    client and the loop's requests alike (each session reads the AWS config and botocore's
    data anew)."""
    if not settings.table_name:
        raise SettingsError(["TABLE_NAME: required for the DynamoDB store (the table's name)"])
    table_name = settings.table_name
    tokens = limiter.total_tokens
    pool = max(1, int(tokens)) if math.isfinite(tokens) else DEFAULT_POOL_CONNECTIONS
    client, http = await run_blocking(partial(make_both, settings, pool, session),
                                      limiter=limiter)
    store = DynamoDBStore(table_name, client, limiter=limiter, http=http)
    try:
        if check_table:
            await store.check_table()
        log.info("dynamodb store opened", extra={"table": table_name,
                                                 "endpoint": store.endpoint, "pool": pool})
        yield store
    finally:
        await store.aclose()

