"""The one interface both stores implement: DynamoDB-shaped items in a single table.

An item is a plain JSON-like dict with ``pk`` and ``sk`` (strings), optionally ``pk1``/``sk1``
(the GSI ``index-1-full``) and ``expireAt`` (epoch seconds, the TTL attribute). Values are
str, int, float, bool, None, lists and dicts; backends convert to and from their own encoding
(DynamoDB numbers are Decimals) so callers always get plain Python values back.

What the items mean lives in ``records.py``; backends know nothing of calls or use cases, which
is what lets one contract test suite cover them all.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from voiceagent.errors import StoreRejected
from voiceagent.logs import mask_phone

Item = dict[str, Any]

INDEX_NAME = "index-1-full"
TTL_ATTRIBUTE = "expireAt"
BATCH_LIMIT = 25                      # DynamoDB BatchWriteItem's limit; enforced for both stores
MAX_ITEM_BYTES = 400 * 1024           # DynamoDB's item limit, counted by ``item_size``
MAX_NESTING_LEVELS = 32               # DynamoDB's for a document, an attribute being level 1
# Lists and maps ``item_size`` walks before it gives up: each counts 3 bytes at least, so an
# item holding more is over the 400 KB three times whatever it holds (refused all the same),
# and a value that contains itself ends here instead of walking for ever.
MAX_CONTAINERS = MAX_ITEM_BYTES
# DynamoDB's numbers: 38 digits (boto3 refuses an int of more, even 10**38, as Rounded), and a
# magnitude from 1e-130 to 9.99...e125 (moto lets 1e126 through; DynamoDB does not)
MAX_NUMBER_DIGITS = 38
_INT_BOUND = 10**MAX_NUMBER_DIGITS
SMALLEST_NUMBER = Decimal("1e-130")
NUMBER_BOUND = Decimal("1e126")


def describe_key(pk: Any, sk: Any) -> str:
    """``pk=... sk=...`` for messages and logs: phone numbers masked, nothing else shown."""
    return f"pk={_masked(pk)} sk={_masked(sk)}"


def _masked(value: Any) -> str:
    text = str(value)
    return mask_phone(text) if text.startswith("+") else text


def expect_sk(item: Item, sk: str, kind: str) -> None:
    """``ValueError`` unless the item is of the kind a reader takes (its sk, a string pk):
    shared by the item mappings, ``records`` and ``config_records``."""
    if item.get("sk") != sk or not isinstance(item.get("pk"), str):
        raise ValueError(f"not a {kind} item: expected sk={sk!r} and a string pk")


KEY_BYTES = {"pk": 2048, "pk1": 2048, "sk": 1024, "sk1": 1024}    # DynamoDB's key limits


def check_item_keys(item: Item) -> None:
    """The key rules every backend enforces (DynamoDB's own), so both stores refuse alike and
    before anything of a batch is sent: ``StoreRejected`` for a missing or empty pk/sk, an
    empty index key, a key longer than DynamoDB allows, a non-numeric TTL."""
    if not isinstance(item, dict):
        raise StoreRejected(f"an item must be a dict, not {type(item).__name__}")
    for key in ("pk", "sk"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise StoreRejected(f"item attribute {key!r} must be a non-empty string "
                                f"({describe_key(item.get('pk'), item.get('sk'))})")
    for key in ("pk1", "sk1"):
        if key in item and (not isinstance(item[key], str) or not item[key]):
            raise StoreRejected(f"{describe_key(item['pk'], item['sk'])}: item attribute "
                                f"{key!r} must be a non-empty string when present (it is an "
                                "index key)")
    for key, limit in KEY_BYTES.items():
        if key in item and len(item[key].encode()) > limit:
            raise StoreRejected(f"{describe_key(item['pk'][:40], item['sk'][:40])}: item "
                                f"attribute {key!r} is {len(item[key].encode())} bytes, over "
                                f"DynamoDB's {limit} for a key")
    expire_at = item.get(TTL_ATTRIBUTE)
    if expire_at is not None and not is_number(expire_at):
        raise StoreRejected(f"{describe_key(item['pk'], item['sk'])}: item attribute "
                            f"{TTL_ATTRIBUTE!r} must be epoch seconds (a number)")


def check_item_nesting(item: Item) -> None:
    """``StoreRejected`` for an item DynamoDB refuses as nested too deep (ValidationException
    "Nesting Levels have exceeded supported limits"), which moto does not check. DynamoDB
    counts an attribute as level 1 and the elements of a list or map one level below it, up
    to 32: a scalar under 31 maps is stored, under 32 refused, so a list or map at level 32
    is refused, here even when empty (erring towards refusing here rather than in the middle
    of a batch). A loop, not recursion, and run before anything else walks the item, so an
    item nested thousands deep is refused, not a ``RecursionError``.

    Also refused: an empty attribute name, at any depth (DynamoDB's "Empty attribute name";
    moto stores a map with an empty key and gives it back changed)."""
    stack = [(value, 1, name) for name, value in item.items()]
    if "" in item:
        raise StoreRejected(f"{describe_key(item['pk'], item['sk'])}: an item attribute has "
                            "an empty name, which DynamoDB refuses")
    while stack:
        value, level, name = stack.pop()
        if not isinstance(value, dict | list | tuple):
            continue
        if level >= MAX_NESTING_LEVELS:
            raise StoreRejected(f"{describe_key(item['pk'], item['sk'])}: item attribute "
                                f"{name!r} nests lists and maps deeper than DynamoDB's "
                                f"{MAX_NESTING_LEVELS} levels (the attribute is level 1)")
        if isinstance(value, dict) and "" in value:
            raise StoreRejected(f"{describe_key(item['pk'], item['sk'])}: item attribute "
                                f"{name!r} holds a map with an empty key, which DynamoDB "
                                "refuses (an empty attribute name); name every key")
        elements = value.values() if isinstance(value, dict) else value
        stack.extend((element, level + 1, name) for element in elements)


def is_storable_number(value: int | float) -> bool:
    """Whether DynamoDB holds ``value`` (a finite number) as it is. Both stores refuse the
    others alike (``check_number``), and what comes from outside (a tool's result, the
    model's tool input) turns them into their text first (``jsonlimits``)."""
    if isinstance(value, int):
        return bool(abs(value) < _INT_BOUND)    # not str(): it raises past 4300 digits
    if not math.isfinite(value):
        return False
    magnitude = abs(Decimal(repr(value)))     # the float as it is sent: its shortest repr
    return magnitude == 0 or SMALLEST_NUMBER <= magnitude < NUMBER_BOUND


def check_number(value: int | float, where: str) -> None:
    """``StoreRejected`` naming the attribute for a number DynamoDB cannot hold, so SQLite
    refuses what DynamoDB would, and DynamoDB before the batch is sent."""
    if not is_storable_number(value):
        raise StoreRejected(number_refusal(where))


def number_refusal(where: str) -> str:
    return (f"item attribute {where!r} is a number DynamoDB cannot hold (more than "
            f"{MAX_NUMBER_DIGITS} digits, or a magnitude outside 1e-130 to 1e126); store it "
            "as text")


@dataclass(frozen=True, slots=True)
class Version:
    """The attribute that orders an item's writes across processes (``put_unless_newer``),
    and the one that did before it, for items an earlier release wrote. ``strict``: a write
    that only one process may make (``put_if_newer``), never over one of the same version."""

    attribute: str
    legacy: str | None = None
    strict: bool = False


def is_newer(stored: Mapping[str, Any], item: Mapping[str, Any], version: str,
             legacy: str | None = None, *, strict: bool = False) -> bool:
    """Whether ``stored`` outranks ``item`` (``Store.put_unless_newer``'s rule, for stores
    that check it themselves); ``strict``: ``put_if_newer``'s, where the same ``version``
    outranks it too (an earlier release's item, compared by ``legacy``, never does: that
    release decided its claims in memory)."""
    value = stored.get(version)
    if is_number(value):
        return bool(value >= item[version] if strict else value > item[version])
    if legacy is not None and is_number(stored.get(legacy)):
        return bool(stored[legacy] > item[legacy])
    return False


def is_own_item(found: Mapping[str, Any] | None, item: Mapping[str, Any]) -> bool:
    """``Store.put_new``'s "an item equal to it is there", as the store reads items back:
    tuples come back lists, so a claim holding one, resent after its first attempt was
    applied, found its own item unequal and read it as another's claim."""
    return found is not None and found == _as_read_back(item)


def _as_read_back(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _as_read_back(element) for key, element in value.items()}
    if isinstance(value, list | tuple):
        return [_as_read_back(element) for element in value]
    return value


def is_number(value: Any) -> bool:
    """A JSON number (``bool`` is an ``int`` to Python, not to JSON)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def item_size(item: Mapping[str, Any]) -> int:
    """An item's size as DynamoDB counts it against its 400 KB (names plus values, by the
    rules of its "item sizes and formats" page), never its JSON: escapes and punctuation are
    not stored. Both stores refuse by this one measure, so they cannot drift apart. Takes the
    plain values ``check_item_size``'s callers have already checked. One loop over a stack,
    not a call and a generator per value: the write-behind queue measures every item.
    ``ValueError`` past MAX_CONTAINERS lists and maps (counted as they are walked, the only
    cost of the bound), so a value that contains itself cannot loop for ever."""
    size = 0
    walked = 0
    values: list[Any] = []
    for name, value in item.items():
        size += len(name.encode())
        values.append(value)
    while values:
        value = values.pop()
        if value is None or isinstance(value, bool):
            size += 1
        elif isinstance(value, str):
            size += len(value.encode())
        elif isinstance(value, int | float):
            size += _number_size(value)
        elif isinstance(value, list | tuple):
            size += 3 + len(value)          # and a byte an element
            walked += 1
            if walked > MAX_CONTAINERS:
                raise _too_many_containers()
            values.extend(value)
        elif isinstance(value, dict):
            size += 3 + len(value)          # and a byte an entry, with its key
            walked += 1
            if walked > MAX_CONTAINERS:
                raise _too_many_containers()
            for key, element in value.items():
                size += len(key.encode())
                values.append(element)
        else:
            raise TypeError(f"not a plain item value: {type(value).__name__}")
    return size


def _too_many_containers() -> ValueError:
    return ValueError(f"the item holds more than {MAX_CONTAINERS} lists and maps, over "
                      f"DynamoDB's 400 KB item limit ({MAX_ITEM_BYTES} bytes) whatever they "
                      "hold, or a value that contains itself")


def _number_size(value: int | float) -> int:
    """One byte per two significant digits, leading and trailing zeros trimmed, plus one; the
    pairs are aligned to the decimal point, so an odd split costs one more (``1.5`` is ``01``
    ``50``): counting the worst case refuses here what DynamoDB might refuse at the limit."""
    digits = "".join(map(str, Decimal(repr(value) if isinstance(value, float) else value)
                         .as_tuple().digits)).strip("0")
    return len(digits) // 2 + 2


# values an item's copy may share with the item: nothing can change them
_SHARED = frozenset({str, int, float, bool, type(None)})


def copy_item(value: Any) -> Any:
    """``copy.deepcopy`` for the plain values items hold, at a call per list or map instead
    of two or three per value: the write-behind queue copies every item it is handed, a few
    a turn. A scalar is shared, not copied (none can change); any other type (a tuple, a
    dict subclass) goes to ``deepcopy`` as before."""
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in _SHARED else copy_item(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _SHARED else copy_item(v) for v in value]
    return value if kind in _SHARED else copy.deepcopy(value)


class MeasuredItem(dict[str, Any]):
    """An item the write-behind queue owns (its own deep copy, never changed after), with its
    ``item_size`` taken when it was queued: the store's check reads it instead of walking
    the item a second time on the event loop."""

    __slots__ = ("size",)

    def __init__(self, item: Item, size: int) -> None:
        super().__init__(item)
        self.size = size


def check_item_size(item: Item) -> int:
    """The item's ``item_size``, or ``StoreRejected`` (naming its key) past DynamoDB's limit."""
    try:
        size = item.size if isinstance(item, MeasuredItem) else item_size(item)
    except ValueError as err:       # too many lists and maps to be measured: over it too
        raise StoreRejected(f"{describe_key(item['pk'], item['sk'])}: {err}") from None
    if size > MAX_ITEM_BYTES:
        raise StoreRejected(f"{describe_key(item['pk'], item['sk'])}: the item is {size} "
                            f"bytes, over DynamoDB's 400 KB item limit ({MAX_ITEM_BYTES} "
                            "bytes, as DynamoDB counts an item's size)")
    return size


class Store(Protocol):
    """A table of items. Every method is safe to call from the trio loop: blocking drivers run
    in worker threads through the process's shared limiter. Errors are ``StoreError``."""

    name: str

    async def get(self, pk: str, sk: str) -> Item | None: ...

    async def put(self, item: Item) -> None:
        """Insert or replace the item with the same pk/sk."""
        ...

    async def put_many(self, items: Sequence[Item]) -> None:
        """Write items in order, batched by at most ``BATCH_LIMIT``; all or an error."""
        ...

    async def put_new(self, item: Item) -> bool:
        """Insert the item unless one with its pk/sk is there, atomically across processes,
        for a claim that only one process may win. True if written, or if an item equal to
        it is there: a retried attempt whose first try was applied (a connection lost after
        DynamoDB wrote it) finds its own item, so a claim item must carry something unique
        to its claimer. False if another one is there (also one expired but not yet
        removed, as DynamoDB's TTL leaves them a while), or if one is there that cannot be
        read to tell: a claim in doubt is lost. ``StoreError`` only when the write itself
        got no answer."""
        ...

    async def put_unless_newer(self, item: Item, version: str, *,
                               legacy: str | None = None) -> bool:
        """Insert or replace the item, atomically across processes, unless the one there
        has a greater number in its ``version`` attribute: a write that a queue held back
        (a call's claim, behind a throttled store) must not undo a later process's newer
        one (the reconnect's session). False if it did not land for that reason. ``item``
        must carry ``version`` (and ``legacy``) as a number. An item there without
        ``version`` is compared by ``legacy`` instead (one an earlier release wrote, during
        a rolling deploy), and is replaced when it has neither."""
        ...

    async def put_if_newer(self, item: Item, version: str, *,
                           legacy: str | None = None) -> bool:
        """``put_unless_newer``, but an item there of the same ``version`` wins too: of
        several writes of one version, exactly one lands, the store deciding (a call's
        session minted, claimed or renewed by one process only). True if written, or if an
        item equal to it is there (a resent attempt whose first try was applied: so each
        such item carries something unique to its writer); False otherwise. An item there
        without ``version`` is compared by ``legacy`` as ``put_unless_newer`` does."""
        ...

    async def query(
        self, pk: str, sk_prefix: str = "", *, descending: bool = False, limit: int | None = None
    ) -> list[Item]:
        """Items of one partition whose sk starts with the prefix, sorted by sk."""
        ...

    async def query_index(
        self, pk1: str, sk1_prefix: str = "", *, descending: bool = False,
        limit: int | None = None,
    ) -> list[Item]:
        """Items whose pk1 matches and sk1 starts with the prefix, sorted by sk1."""
        ...

    async def delete(self, pk: str, sk: str) -> None: ...

    async def aclose(self) -> None: ...
