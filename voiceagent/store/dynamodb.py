"""The production store: the items of ``records.py`` in one DynamoDB table.

The table is the original sample's (pk/sk string keys, GSI ``index-1-full`` on pk1/sk1 with
every attribute projected, TTL on ``expireAt``), so a table that sample filled works unchanged
and ``voiceagent store init`` (``ensure_table``) creates the same one anywhere.

One low-level boto3 client per process, owned by the store (``aclose`` closes it), created
with ``open_dynamodb_store``. Every call runs in a worker thread through ``run_blocking`` and
the limiter the owner passes in; the client's connection pool is sized to that limiter. The
endpoint and credentials come from the standard AWS variables and files, which boto3 reads
itself (``AWS_ENDPOINT_URL_DYNAMODB`` points it at DynamoDB Local or moto).

Values: callers hand in and get back plain JSON-like values. Numbers travel as Decimal and
come back as ``int`` when whole and ``float`` otherwise (DynamoDB keeps no number type, so a
float with a whole value comes back as an int that equals it).

Errors: ``StoreError`` for what may pass (throttling, 5xx, the endpoint unreachable, the table
or the credentials missing: fixable without losing the item), ``StoreRejected`` (permanent)
for an item DynamoDB refuses, with the item's pk/sk in the message (phone numbers masked).
Items are checked before anything is sent, so a call that names a bad item writes nothing.
"""

from __future__ import annotations

import decimal
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import boto3
import trio
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
)

from voiceagent.errors import SettingsError, StoreError, StoreRejected
from voiceagent.settings import Settings
from voiceagent.store.base import (
    INDEX_NAME,
    TTL_ATTRIBUTE,
    Item,
    check_item_keys,
    describe_key,
)
from voiceagent.store.dynamodb_table import is_active, table_definition, table_problems
from voiceagent.store.dynamodb_values import (
    Key,
    batches,
    error_code,
    item_size,
    plain,
    to_dynamo,
    where,
)
from voiceagent.threads import run_blocking

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 4.0
DEFAULT_POOL_CONNECTIONS = 64       # for a limiter without a bound
TOTAL_MAX_ATTEMPTS = 2               # botocore's own retry; the write-behind retries beyond
UNPROCESSED_ATTEMPTS = 6             # BatchWriteItem rounds before UnprocessedItems is an error
UNPROCESSED_BACKOFF_BASE_S = 0.05
UNPROCESSED_BACKOFF_CAP_S = 1.0
TABLE_ACTIVE_TIMEOUT_S = 300.0       # a new on-demand table is usually ACTIVE within seconds
TABLE_POLL_S = 0.5
MAX_ITEM_BYTES = 400 * 1024          # DynamoDB's item limit, counted as DynamoDB counts it

_PERMANENT_CODES = frozenset({"ValidationException", "SerializationException"})
_CREDENTIAL_CODES = frozenset({"AccessDeniedException", "UnrecognizedClientException",
                               "InvalidSignatureException", "ExpiredTokenException",
                               "MissingAuthenticationTokenException"})


class DynamoDBStore:
    """A ``Store`` on one table. Owns ``client`` (``aclose`` closes it); built by
    ``open_dynamodb_store``, or directly in tests with any table name and boto3 client."""

    def __init__(self, table_name: str, client: Any, *,
                 limiter: trio.CapacityLimiter) -> None:
        self.name = f"dynamodb:{table_name}"
        self.table_name = table_name
        self._client = client
        self._limiter = limiter
        self._serializer = TypeSerializer()
        self._deserializer = TypeDeserializer()
        self._closed = False

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    # ------------------------------------------------------------------ the Store interface

    async def get(self, pk: str, sk: str) -> Item | None:
        response = await self._call(
            "get", lambda: self._client.get_item(
                TableName=self.table_name, Key=self._key(pk, sk), ConsistentRead=True),
            keys=[(pk, sk)], read=True)
        found = response.get("Item")
        return self._decode(found) if found is not None else None

    async def put(self, item: Item) -> None:
        await self.put_many([item])

    async def put_many(self, items: Sequence[Item]) -> None:
        """Every item is checked first (``StoreRejected`` names the one at fault); then
        batches of at most ``BATCH_LIMIT`` go out in order. A batch never holds one key twice:
        it ends before the repeat, so the later write lands later and wins."""
        encoded = [self._encode(item) for item in items]
        for batch in batches(encoded):
            if len(batch) == 1:
                key, attributes = batch[0]
                await self._call("put", partial(self._client.put_item,
                                                TableName=self.table_name, Item=attributes),
                                 keys=[key])
            else:
                await self._write_batch(batch)

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
        with trio.CancelScope(shield=True):
            await run_blocking(self._client.close, limiter=self._limiter)

    # ------------------------------------------------------------------ the table itself

    async def describe(self) -> dict[str, Any] | None:
        """DescribeTable's ``Table``, or None when there is no such table."""
        try:
            response = await self._call("describe", lambda: self._client.describe_table(
                TableName=self.table_name), read=True)
        except StoreError as err:
            if error_code(err.__cause__) == "ResourceNotFoundException":
                return None
            raise
        table: dict[str, Any] = response["Table"]
        return table

    async def check_table(self) -> None:
        """Fail early, naming the table and endpoint, when the table is missing or keyed
        differently. A principal not allowed to DescribeTable is let through (logged)."""
        try:
            table = await self.describe()
        except StoreError as err:
            if error_code(err.__cause__) in _CREDENTIAL_CODES:
                log.warning("cannot describe the table, skipping the schema check",
                            extra={"table": self.table_name, "error": error_code(err.__cause__)})
                return
            raise
        if table is None:
            raise StoreError(f"DynamoDB table {self.table_name!r} does not exist at "
                             f"{self.endpoint}; create it with `voiceagent store init` or "
                             "check TABLE_NAME and AWS_REGION")
        problems = table_problems(table)
        if problems:
            raise StoreError(f"DynamoDB table {self.table_name!r} does not have voiceagent's "
                             f"schema: {'; '.join(problems)}")

    async def ensure_table(self, *, timeout_s: float = TABLE_ACTIVE_TIMEOUT_S) -> list[str]:
        """Create the table (on-demand, GSI, TTL) unless it exists, wait until it is ACTIVE,
        and return what was done, one line each. An existing table with the right keys is
        left as it is (TTL is switched on if off); other keys raise ``StoreError`` listing
        every difference."""
        done: list[str] = []
        table = await self.describe()
        if table is None:
            table = await self._create_table()
            done.append(f"created table {self.table_name} (pk/sk strings, GSI {INDEX_NAME} "
                        "on pk1/sk1 projecting ALL, on-demand)")
        problems = table_problems(table)
        if problems:
            raise StoreError(f"DynamoDB table {self.table_name!r} exists at {self.endpoint} "
                             f"with another schema: {'; '.join(problems)}")
        with trio.move_on_after(timeout_s):
            while not is_active(table):
                await trio.sleep(TABLE_POLL_S)
                table = await self.describe() or table
        if not is_active(table):
            raise StoreError(f"DynamoDB table {self.table_name!r} is not ACTIVE after "
                             f"{timeout_s:g} s (status {table.get('TableStatus')}); run "
                             "`voiceagent store init` again to keep waiting")
        done.extend(await self._ensure_ttl())
        if not done:
            done.append(f"table {self.table_name} already exists with the expected schema")
        return done

    async def _create_table(self) -> dict[str, Any]:
        def create() -> dict[str, Any]:
            response = self._client.create_table(**table_definition(self.table_name))
            return dict(response["TableDescription"])

        try:
            return await self._call("create_table", create)
        except StoreError as err:
            if error_code(err.__cause__) != "ResourceInUseException":    # created meanwhile
                raise
            return await self.describe() or {}

    async def _ensure_ttl(self) -> list[str]:
        response = await self._call("describe_ttl", lambda: self._client.describe_time_to_live(
            TableName=self.table_name), read=True)
        ttl = response.get("TimeToLiveDescription", {})
        status, attribute = ttl.get("TimeToLiveStatus"), ttl.get("AttributeName")
        if status in ("ENABLED", "ENABLING"):
            if attribute != TTL_ATTRIBUTE:
                raise StoreError(f"DynamoDB table {self.table_name!r} has TTL on "
                                 f"{attribute!r}; voiceagent's items expire on "
                                 f"{TTL_ATTRIBUTE!r}")
            return []
        await self._call("update_ttl", lambda: self._client.update_time_to_live(
            TableName=self.table_name, TimeToLiveSpecification={
                "Enabled": True, "AttributeName": TTL_ATTRIBUTE}))
        return [f"enabled TTL on {TTL_ATTRIBUTE}"]

    # ------------------------------------------------------------------ helpers

    async def _write_batch(self, batch: list[tuple[Key, dict[str, Any]]]) -> None:
        """One BatchWriteItem, then its UnprocessedItems again with backoff, a bounded number
        of times; what is still left is a (transient) ``StoreError``."""
        requests = [{"PutRequest": {"Item": attributes}} for _, attributes in batch]
        keys = [key for key, _ in batch]
        for attempt in range(1, UNPROCESSED_ATTEMPTS + 1):
            response = await self._call("put_many", partial(
                self._client.batch_write_item, RequestItems={self.table_name: requests}),
                keys=keys)
            requests = response.get("UnprocessedItems", {}).get(self.table_name, [])
            if not requests:
                return
            if attempt < UNPROCESSED_ATTEMPTS:
                await trio.sleep(min(UNPROCESSED_BACKOFF_CAP_S,
                                     UNPROCESSED_BACKOFF_BASE_S * 2.0 ** (attempt - 1)))
        raise StoreError(f"DynamoDB left {len(requests)} of {len(batch)} items unprocessed "
                         f"after {UNPROCESSED_ATTEMPTS} attempts (throttled); try again later")

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
            page = await self._call(operation, partial(self._client.query, **request),
                                    read=True)
            items.extend(self._decode(found) for found in page.get("Items", []))
            request["ExclusiveStartKey"] = page.get("LastEvaluatedKey")
            if request["ExclusiveStartKey"] is None or (limit is not None
                                                        and len(items) >= limit):
                return items[:limit] if limit is not None else items

    async def _call(self, operation: str, fn: Callable[[], T], *,
                    keys: Sequence[Key] = (), read: bool = False) -> T:
        """Run one client call in a worker thread; translate botocore's errors. Reads are
        abandoned when cancelled (nobody wants the answer); writes finish their attempt."""
        if self._closed:
            raise StoreError(f"dynamodb {operation} on {self.table_name}: the store is closed")
        try:
            return await run_blocking(fn, limiter=self._limiter, abandon_on_cancel=read)
        except ClientError as err:
            raise self._client_error(operation, err, keys) from err
        except ParamValidationError as err:
            raise StoreRejected(f"dynamodb {operation} refused {where(keys)}before sending: "
                                f"{err}") from err
        except NoCredentialsError as err:
            raise StoreError(f"dynamodb {operation}: no AWS credentials found; set them the "
                             "usual AWS way (role, profile, or AWS_ACCESS_KEY_ID)") from err
        except BotoCoreError as err:
            raise StoreError(f"dynamodb {operation} on {self.table_name} failed: {err}") from err

    def _client_error(self, operation: str, err: ClientError, keys: Sequence[Key]
                      ) -> StoreError:
        code = error_code(err)
        message = str(err.response.get("Error", {}).get("Message", ""))[:300]
        if code in _PERMANENT_CODES:
            return StoreRejected(f"DynamoDB refused {where(keys)}({operation}, {code}): "
                                 f"{message}")
        if code == "ResourceNotFoundException":
            return StoreError(f"DynamoDB table {self.table_name!r} not found at "
                              f"{self.endpoint} ({operation}); create it with "
                              "`voiceagent store init` or check TABLE_NAME and AWS_REGION")
        if code in _CREDENTIAL_CODES:
            return StoreError(f"DynamoDB denied {operation} on {self.table_name} ({code}): "
                              f"{message}; check the AWS credentials and their permissions")
        return StoreError(f"DynamoDB {operation} on {self.table_name} failed ({code}): "
                          f"{message}")

    def _key(self, pk: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    def _encode(self, item: Item) -> tuple[Key, dict[str, Any]]:
        """The item as DynamoDB attribute values, or ``StoreRejected`` for what DynamoDB
        would refuse (checked here so that nothing of a call with a bad item is written)."""
        check_item_keys(item)
        key = (item["pk"], item["sk"])
        try:
            attributes = {name: self._serializer.serialize(to_dynamo(value, name))
                          for name, value in item.items()}
        except StoreRejected as err:
            raise StoreRejected(f"{describe_key(*key)}: {err}") from None
        except (decimal.DecimalException, TypeError) as err:
            raise StoreRejected(f"{describe_key(*key)}: a number is outside DynamoDB's range "
                                f"(38 digits, 1e-130 to 1e126): {type(err).__name__}") from None
        size = item_size(attributes)
        if size > MAX_ITEM_BYTES:
            raise StoreRejected(f"{describe_key(*key)}: the item is {size} bytes, over "
                                f"DynamoDB's 400 KB item limit ({MAX_ITEM_BYTES} bytes)")
        return key, attributes

    def _decode(self, attributes: Mapping[str, Any]) -> Item:
        return {name: plain(self._deserializer.deserialize(value))
                for name, value in attributes.items()}


# ------------------------------------------------------------------ opening


def make_client(settings: Settings, *, max_pool_connections: int) -> Any:
    """The process's boto3 DynamoDB client (blocking: call it in a worker thread)."""
    config = Config(
        retries={"mode": "standard", "total_max_attempts": TOTAL_MAX_ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
        max_pool_connections=max_pool_connections, tcp_keepalive=True)
    try:
        session = boto3.session.Session(region_name=settings.aws_region)
        return session.client("dynamodb", config=config)
    except NoRegionError:
        raise SettingsError(["AWS_REGION: required for the DynamoDB store (the table's "
                             "region, e.g. us-east-1)"]) from None
    except BotoCoreError as err:
        raise StoreError(f"cannot create the DynamoDB client: {err}") from err


@asynccontextmanager
async def open_dynamodb_store(settings: Settings, *, limiter: trio.CapacityLimiter,
                              check_table: bool = True) -> AsyncIterator[DynamoDBStore]:
    """Create the client, check the table (``check_table``: exists, keyed as expected) and
    close the client on exit. ``SettingsError`` without TABLE_NAME or a region; ``StoreError``
    naming the table and endpoint when it cannot be used."""
    if not settings.table_name:
        raise SettingsError(["TABLE_NAME: required for the DynamoDB store (the table's name)"])
    table_name = settings.table_name
    tokens = limiter.total_tokens
    pool = max(1, int(tokens)) if math.isfinite(tokens) else DEFAULT_POOL_CONNECTIONS
    client = await run_blocking(lambda: make_client(settings, max_pool_connections=pool),
                                limiter=limiter)
    store = DynamoDBStore(table_name, client, limiter=limiter)
    try:
        if check_table:
            await store.check_table()
        log.info("dynamodb store opened", extra={"table": table_name,
                                                 "endpoint": store.endpoint, "pool": pool})
        yield store
    finally:
        await store.aclose()


# ------------------------------------------------------------------ values
