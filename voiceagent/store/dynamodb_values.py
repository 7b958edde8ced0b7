"""Item values between plain Python and DynamoDB's types, and BatchWriteItem requests cut to
fit DynamoDB's 16 MB by each item's size as DynamoDB counts it (``base.item_size``, the measure
both stores refuse by)."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

from boto3.dynamodb.types import DYNAMODB_CONTEXT, Binary, TypeDeserializer
from botocore.exceptions import ClientError

from voiceagent.errors import StoreRejected
from voiceagent.store.base import (
    BATCH_LIMIT,
    describe_key,
    is_storable_number,
    number_refusal,
)
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


def to_attribute(value: Any, name: str) -> dict[str, Any]:
    """An item attribute's value as DynamoDB's typed JSON (``{"S": ...}``, ``{"N": "12"}``,
    ``{"M": {...}}``...), exactly what boto3's ``TypeSerializer`` makes of it once floats
    are Decimals of their shortest repr (the float as it is sent) and tuples lists, in one
    walk: the write-behind encodes every item of every turn, and a plain copy for the
    serializer to walk again cost as much as the encoding. Anything else JSON would not hold
    is refused, and a number DynamoDB cannot hold by ``base.check_number``, naming the
    attribute's path (built only then). ``decimal.DecimalException`` past 38 digits, as the
    serializer raised. Recursive: ``check_item_nesting`` bounds the depth first."""
    try:
        return _attribute(value)
    except _Refused as err:
        raise StoreRejected(err.message(name + "".join(reversed(err.path)))) from None


class _Refused(Exception):
    """A value refused deep in an item: the message waits for the path, gathered on the way
    out (innermost first)."""

    def __init__(self, message: Callable[[str], str]) -> None:
        self.message = message
        self.path: list[str] = []


def _attribute(value: Any) -> dict[str, Any]:
    if value is None:
        return {"NULL": True}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        if not is_storable_number(value):
            if isinstance(value, float) and not math.isfinite(value):
                raise _Refused(lambda where: f"item attribute {where!r} is {value}: not "
                               "storable")
            raise _Refused(lambda where: number_refusal(where))
        number = Decimal(repr(value)) if isinstance(value, float) else value
        return {"N": str(DYNAMODB_CONTEXT.create_decimal(number))}
    if isinstance(value, list | tuple):
        elements = []
        for index, element in enumerate(value):
            try:
                elements.append(_attribute(element))
            except _Refused as err:
                err.path.append(f"[{index}]")
                raise
        return {"L": elements}
    if isinstance(value, dict):
        entries = {}
        for key, element in value.items():
            if not isinstance(key, str):
                raise _key_refused(type(key).__name__)
            try:
                entries[key] = _attribute(element)
            except _Refused as err:
                err.path.append(f".{key}")
                raise
        return {"M": entries}
    kind = type(value).__name__
    raise _Refused(lambda where: f"item attribute {where!r} is a {kind}; items hold str, "
                   "int, float, bool, None, lists and dicts")


def _key_refused(kind: str) -> _Refused:
    return _Refused(lambda where: f"item attribute {where!r} has a {kind} key; map keys must "
                    "be strings")


class WireDeserializer(TypeDeserializer):  # type: ignore[misc]
    """boto3's, for answers from either path: the loop's (``dynamodb_http``) carry a binary
    value as the base64 text on the wire, which botocore's client decodes before boto3's
    deserializer sees it (and which that deserializer refuses). Our items hold none; an item
    another program wrote in the table may."""

    def _deserialize_b(self, value: Any) -> Binary:
        return super()._deserialize_b(base64.b64decode(value) if isinstance(value, str)
                                      else value)


def plain(value: Any) -> Any:
    """DynamoDB's values as plain Python: Decimal -> int or float, sets -> sorted lists;
    binary values stay boto3's ``Binary``."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: plain(element) for key, element in value.items()}
    if isinstance(value, list):
        return [plain(element) for element in value]
    if isinstance(value, set | frozenset):
        return sorted((plain(element) for element in value), key=_set_order)
    return value


def _set_order(element: Any) -> Any:
    """A binary set's elements have no order of their own (another program's items)."""
    return element.value if isinstance(element, Binary) else element


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
