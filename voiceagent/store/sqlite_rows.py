"""The SQLite store's rows: an item checked as DynamoDB would check it, then its columns.

Both stores refuse alike (``base``'s checks and measures), so an item the embedded store
takes in development is one the production table takes too.
"""

from __future__ import annotations

import json
import math
from typing import Any

from voiceagent.errors import StoreRejected
from voiceagent.store.base import (
    Item,
    check_item_keys,
    check_item_nesting,
    check_item_size,
    check_number,
    describe_key,
)

Row = tuple[str, str, str | None, str | None, int | float | None, str]

_EPOCH_LIMIT = 2**62                 # expireAt must fit SQLite's 64-bit INTEGER


def encode(item: Item) -> Row:
    """The row for an item, or ``StoreRejected`` for what DynamoDB would refuse too."""
    check_item_keys(item)
    expire_at = item.get("expireAt")
    if expire_at is not None and not abs(expire_at) < _EPOCH_LIMIT:
        raise StoreRejected(f"{describe_key(item['pk'], item['sk'])}: item attribute "
                            "'expireAt' must be epoch seconds (a number)")
    check_item_nesting(item)
    for key, value in item.items():
        _check_value(value, key)
    check_item_size(item)            # as DynamoDB counts it: the JSON's escapes are not stored
    attrs = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    indexed = "pk1" in item and "sk1" in item
    return (item["pk"], item["sk"], item["pk1"] if indexed else None,
            item["sk1"] if indexed else None, expire_at, attrs)


def _check_value(value: Any, where: str) -> None:
    """Plain JSON values only, so what comes back equals what went in."""
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, int):
        check_number(value, where)          # what DynamoDB refuses, refused here alike
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StoreRejected(f"item attribute {where!r} is {value}: not storable")
        check_number(value, where)
        return
    if isinstance(value, list | tuple):
        for index, element in enumerate(value):
            _check_value(element, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, element in value.items():
            if not isinstance(key, str):
                raise StoreRejected(f"item attribute {where!r} has a {type(key).__name__} "
                                    "key; map keys must be strings")
            _check_value(element, f"{where}.{key}")
        return
    raise StoreRejected(f"item attribute {where!r} is a {type(value).__name__}; items hold "
                        "str, int, float, bool, None, lists and dicts")
