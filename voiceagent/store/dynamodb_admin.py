"""The table itself, for ``voiceagent store init``, ``check`` and start-up: describe it, check
its keys, create it (on demand, GSI, TTL) and wait until it is ACTIVE. Rare, slow calls: they
go through the store's boto3 client in a worker thread, like its reads."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import trio

from voiceagent.errors import StoreError, StoreRejected
from voiceagent.store.base import INDEX_NAME, TTL_ATTRIBUTE
from voiceagent.store.dynamodb_table import is_active, table_definition, table_problems
from voiceagent.store.dynamodb_values import Key, error_code, where

log = logging.getLogger(__name__)

T = TypeVar("T")

TABLE_ACTIVE_TIMEOUT_S = 300.0       # a new on-demand table is usually ACTIVE within seconds
TABLE_POLL_S = 0.5
CREDENTIAL_CODES = frozenset({"AccessDeniedException", "UnrecognizedClientException",
                              "InvalidSignatureException", "ExpiredTokenException",
                              "MissingAuthenticationTokenException"})


class _StoreParts(Protocol):
    """What ``TableAdmin`` uses of the store it is mixed into (``DynamoDBStore``)."""

    table_name: str
    _client: Any

    @property
    def endpoint(self) -> str: ...

    async def _call(self, operation: str, fn: Callable[[], T], *,
                    keys: Sequence[Key] = (), read: bool = False) -> T: ...


class TableAdmin(_StoreParts):
    """Mixed into ``DynamoDBStore``: the table calls, apart from the item calls."""

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
            if error_code(err.__cause__) in CREDENTIAL_CODES:
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

    async def ensure_table(self, *, timeout_s: float = TABLE_ACTIVE_TIMEOUT_S,
                           report: Callable[[str], None] | None = None) -> list[str]:
        """Create the table (on-demand, GSI, TTL) unless it exists, wait until it is ACTIVE,
        and return what was done, one line each, each also given to ``report`` as it is
        done, and before the wait (tens of seconds on AWS, in silence otherwise) a line
        saying so. An existing table with the right keys is left as it is (TTL is switched
        on if off); other keys raise ``StoreError`` listing every difference."""
        done: list[str] = []

        def did(line: str) -> None:
            done.append(line)
            if report is not None:
                report(line)

        table = await self.describe()
        if table is None:
            table = await self._create_table()
            did(f"created table {self.table_name} (pk/sk strings, GSI {INDEX_NAME} on "
                "pk1/sk1 projecting ALL, on-demand)")
        problems = table_problems(table)
        if problems:
            raise StoreError(f"DynamoDB table {self.table_name!r} exists at {self.endpoint} "
                             f"with another schema: {'; '.join(problems)}")
        if report is not None and not is_active(table):
            report(f"waiting for table {self.table_name} and its index to be ACTIVE (usually "
                   f"under a minute; at most {timeout_s:g} s)...")
        with trio.move_on_after(timeout_s):
            while not is_active(table):
                await trio.sleep(TABLE_POLL_S)
                table = await self.describe() or table
        if not is_active(table):
            raise StoreError(f"DynamoDB table {self.table_name!r} is not ACTIVE after "
                             f"{timeout_s:g} s (status {table.get('TableStatus')}); run "
                             "`voiceagent store init` again to keep waiting")
        for line in await self._ensure_ttl():
            did(line)
        if not done:
            did(f"table {self.table_name} already exists with the expected schema")
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


# an item's own fault: retrying cannot help. A 413 (a proxy's limit) refuses the request's
# size: the write-behind then writes the batch item by item, and drops only what still fails
_PERMANENT_CODES = frozenset({"ValidationException", "SerializationException",
                              "RequestEntityTooLarge"})


def store_error(table: str, endpoint: str, operation: str, code: str | None, message: str,
                keys: Sequence[Key]) -> StoreError:
    """A DynamoDB error as the store raises it: ``StoreRejected`` for the item's own fault
    (retrying cannot help), else a transient ``StoreError`` that says what to check."""
    message = message[:300]
    if code in _PERMANENT_CODES:
        return StoreRejected(f"DynamoDB refused {where(keys)}({operation}, {code}): {message}")
    if code == "ResourceNotFoundException":
        return StoreError(f"DynamoDB table {table!r} not found at {endpoint} ({operation}); "
                          "create it with `voiceagent store init` or check TABLE_NAME and "
                          "AWS_REGION")
    if code in CREDENTIAL_CODES:
        return StoreError(f"DynamoDB denied {operation} on {table} ({code}): {message}; "
                          "check the AWS credentials and their permissions")
    return StoreError(f"DynamoDB {operation} on {table} failed ({code}): {message}")
