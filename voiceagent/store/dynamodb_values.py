"""Item values between plain Python and DynamoDB's types, and BatchWriteItem requests cut to
fit DynamoDB's 16 MB by each item's size as DynamoDB counts it (``base.item_size``, the measure
both stores refuse by)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

from botocore.exceptions import ClientError

from voiceagent.errors import StoreRejected
from voiceagent.store.base import BATCH_LIMIT, check_number, describe_key
from voiceagent.store.dynamodb_http import DynamoDBHttpError

Key = tuple[str, str]                # (pk, sk)


class Encoded(NamedTuple):
    """An item ready to send: its key, its attribute values, and ``base.item_size`` of it."""

    key: Key
    attributes: dict[str, Any]
    size: int


REQUEST_BYTES_MAX = 16 * 1024 * 1024   # BatchWriteItem refuses a larger request, all of it
# On the wire a value's byte takes at most 6 (JSON writes a control character, 1 byte, and a
# 3-byte character each as a 6-character escape); wrappers and type tags are counted per item
WIRE_BYTES_PER_BYTE = 6
WIRE_BYTES_PER_ITEM = 1024
BATCH_WIRE_BYTES = REQUEST_BYTES_MAX - 64 * 1024      # room for the request's envelope


def to_dynamo(value: Any, where: str) -> Any:
    """Plain values as TypeSerializer takes them: floats become Decimals (exactly the
    float's shortest repr), tuples lists; anything else JSON would not hold is refused, and
    a number DynamoDB cannot hold by ``base.check_number``, naming the attribute."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        check_number(value, where)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StoreRejected(f"item attribute {where!r} is {value}: not storable")
        check_number(value, where)
        return Decimal(repr(value))
    if isinstance(value, list | tuple):
        return [to_dynamo(element, f"{where}[{i}]") for i, element in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, element in value.items():
            if not isinstance(key, str):
                raise StoreRejected(f"item attribute {where!r} has a {type(key).__name__} "
                                    "key; map keys must be strings")
            out[key] = to_dynamo(element, f"{where}.{key}")
        return out
    raise StoreRejected(f"item attribute {where!r} is a {type(value).__name__}; items hold "
                        "str, int, float, bool, None, lists and dicts")


def plain(value: Any) -> Any:
    """DynamoDB's values as plain Python: Decimal -> int or float, sets -> sorted lists."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: plain(element) for key, element in value.items()}
    if isinstance(value, list):
        return [plain(element) for element in value]
    if isinstance(value, set | frozenset):
        return sorted(plain(element) for element in value)
    return value


def error_code(err: BaseException | None) -> str:
    """DynamoDB's name for the error, from boto3's client or from the writes' own."""
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return str(getattr(err, "code", "")) if isinstance(err, DynamoDBHttpError) else ""


def condition_failed_item(err: BaseException | None) -> dict[str, Any] | None:
    """The item a failed condition found (ReturnValuesOnConditionCheckFailure ALL_OLD), in
    DynamoDB's encoding, from boto3's client or from the writes' own; None when left out."""
    if isinstance(err, DynamoDBHttpError):
        return err.item
    if isinstance(err, ClientError):
        found = err.response.get("Item")
        return found if isinstance(found, dict) else None
    return None


def where(keys: Sequence[Key]) -> str:
    if not keys:
        return ""
    if len(keys) == 1:
        return f"item {describe_key(*keys[0])} "
    return (f"a batch of {len(keys)} items (from {describe_key(*keys[0])} to "
            f"{describe_key(*keys[-1])}) ")


def batches(encoded: Sequence[Encoded]) -> Iterator[list[Encoded]]:
    """BatchWriteItem requests: at most ``BATCH_LIMIT`` items, no key twice, and within its
    16 MB. Items of up to 400 KB each, written as JSON, can pass 16 MB at 25 (text outside
    ASCII doubles on the wire), and DynamoDB would refuse the whole batch, good items too."""
    batch: list[Encoded] = []
    keys: set[Key] = set()
    wire = 0
    for entry in encoded:
        size = WIRE_BYTES_PER_BYTE * entry.size + WIRE_BYTES_PER_ITEM
        if batch and (len(batch) == BATCH_LIMIT or entry.key in keys
                      or wire + size > BATCH_WIRE_BYTES):
            yield batch
            batch, keys, wire = [], set(), 0
        batch.append(entry)
        keys.add(entry.key)
        wire += size
    if batch:
        yield batch


def unless_newer(attributes: Mapping[str, Any], version: str, legacy: str | None, *,
                 strict: bool = False) -> dict[str, Any]:
    """The condition of ``Store.put_unless_newer`` (``strict``: ``put_if_newer``'s) for a
    PutItem of ``attributes``; every attribute name goes through ExpressionAttributeNames
    (``version`` is a reserved word)."""
    for name in (version, legacy) if legacy else (version,):
        if "N" not in attributes.get(name, {}):
            raise ValueError(f"put_{'if' if strict else 'unless'}_newer: the item's {name!r} "
                             "must be a number")
    names, values = {"#v": version}, {":v": attributes[version]}
    unversioned = "attribute_not_exists(#v)"
    if legacy:
        names["#l"], values[":l"] = legacy, attributes[legacy]
        unversioned = f"({unversioned} AND (attribute_not_exists(#l) OR #l <= :l))"
    older = "#v < :v" if strict else "#v <= :v"
    return {"ConditionExpression": f"attribute_not_exists(pk) OR {unversioned} OR {older}",
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}
