"""What every ``Store`` backend must do, as plain async checks taking a fresh, empty store.

``tests/test_store_contract.py`` runs each check against each backend; a new backend passes
when it passes all of them. Each check asserts; none relies on another having run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock

import pytest
import trio

from voiceagent.errors import StoreRejected
from voiceagent.store import base, config_records, records
from voiceagent.store.base import (
    BATCH_LIMIT,
    MAX_ITEM_BYTES,
    MAX_NESTING_LEVELS,
    Store,
    item_size,
)
from voiceagent.store.write_behind import is_permanent
from voiceagent.usecases import (
    DtmfConfig,
    DtmfHandler,
    InferenceSettings,
    Profile,
    ToolDeclaration,
    UseCase,
)

Check = Callable[[Store], Awaitable[None]]
CHECKS: list[Check] = []


def check(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


@check
async def check_put_get_replace(store: Store) -> None:
    item = {"pk": "a", "sk": "one", "pk1": "kind", "sk1": "x", "expireAt": 2_000_000_000,
            "value": 1}
    await store.put(item)
    assert await store.get("a", "one") == item
    replacement = {"pk": "a", "sk": "one", "other": "field"}
    await store.put(replacement)
    assert await store.get("a", "one") == replacement      # replaced whole, not merged
    assert await store.query_index("kind") == []            # and left the index


@check
async def check_put_new_claims_once(store: Store) -> None:
    """Of several claims on one key at once, exactly one wins; the item is the winner's,
    and a key taken by ``put`` counts as taken."""
    won: list[int] = []

    async def claim(n: int) -> None:
        if await store.put_new({"pk": "call", "sk": "claim", "by": n}):
            won.append(n)

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(claim, n)
    assert len(won) == 1
    assert await store.get("call", "claim") == {"pk": "call", "sk": "claim", "by": won[0]}
    assert await store.put_new({"pk": "call", "sk": "other"})          # another key: free
    await store.put({"pk": "call", "sk": "put"})
    assert not await store.put_new({"pk": "call", "sk": "put", "by": 9})
    assert await store.get("call", "put") == {"pk": "call", "sk": "put"}
    # the winner's own item again (its first attempt applied, the answer lost): still won
    winner = {"pk": "call", "sk": "claim", "by": won[0]}
    assert await store.put_new(winner)
    assert not await store.put_new({**winner, "by": won[0] + 1})


@check
async def check_put_new_knows_its_own_item_read_back(store: Store) -> None:
    """A claim holding a tuple comes back with a list: sent again (its first attempt
    applied, the answer lost) it is still its own, not another's; one that differs is not."""
    claim = {"pk": "call", "sk": "slot", "at": 1_750_000_000.25, "hours": (18, [19, 30]),
             "by": {"ids": ("a", "b")}}
    assert await store.put_new(claim)
    assert await store.get("call", "slot") == {**claim, "hours": [18, [19, 30]],
                                               "by": {"ids": ["a", "b"]}}
    assert await store.put_new(claim)
    assert not await store.put_new({**claim, "hours": (18, [19, 31])})


@check
async def check_put_unless_newer_never_goes_back_a_version(store: Store) -> None:
    """A write of the same or a later version lands; one of an earlier version (a queue
    that was behind) does not, and says so; a first write, or one over an item without the
    version, lands."""
    v0 = {"pk": "call", "sk": "connection", "generation": 0, "token": "first"}
    assert await store.put_unless_newer(v0, "generation")
    claimed = {**v0, "token": ""}
    assert await store.put_unless_newer(claimed, "generation")          # same version
    renewed = {**v0, "generation": 1, "token": "second"}
    assert await store.put_unless_newer(renewed, "generation")
    assert not await store.put_unless_newer(claimed, "generation")      # late: refused
    assert await store.get("call", "connection") == renewed
    await store.put({"pk": "call", "sk": "legacy", "token": "the sample's"})
    assert await store.put_unless_newer({**v0, "sk": "legacy"}, "generation")
    assert await store.get("call", "legacy") == {**v0, "sk": "legacy"}
    with pytest.raises(ValueError, match="must be a number"):
        await store.put_unless_newer({"pk": "call", "sk": "x", "generation": "1"},
                                     "generation")


@check
async def check_put_unless_newer_compares_an_earlier_release_s_items_by_legacy(
        store: Store) -> None:
    """During a rolling deploy the item there may come from the release before, which had
    no ``version`` (sessions: only their generation): compared by ``legacy`` then, a late
    claim cannot undo that release's renewal (helper-31)."""
    renewed = {"pk": "call", "sk": "connection", "generation": 1, "token": "renewed"}
    await store.put(renewed)                                # the earlier release's write
    late_claim = {"pk": "call", "sk": "connection", "generation": 0, "version": 1,
                  "token": ""}
    assert not await store.put_unless_newer(late_claim, "version", legacy="generation")
    assert await store.get("call", "connection") == renewed
    claim = {**late_claim, "generation": 1, "version": 3}
    assert await store.put_unless_newer(claim, "version", legacy="generation")
    assert await store.get("call", "connection") == claim
    mint = {**claim, "version": 2, "token": "minted"}     # versions compare first now
    assert not await store.put_unless_newer(mint, "version", legacy="generation")


@check
async def check_put_if_newer_lets_one_writer_of_a_version_win(store: Store) -> None:
    """Of several writes of one version at once (two processes minting one call's session,
    claiming one token, renewing one generation), exactly one lands and the others are told
    they lost; an older one loses too; the winner's own item sent again (its first attempt
    applied, the answer lost) still wins."""
    won: list[dict[str, Any]] = []

    async def mint(n: int) -> None:
        item = {"pk": "call", "sk": "connection", "version": 0, "generation": 0,
                "token": f"token-{n}"}
        if await store.put_if_newer(item, "version", legacy="generation"):
            won.append(item)

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(mint, n)
    assert len(won) == 1
    assert await store.get("call", "connection") == won[0]
    assert await store.put_if_newer(won[0], "version", legacy="generation")     # resent
    claim = {**won[0], "version": 1, "token": "", "claim": "mine"}
    assert await store.put_if_newer(claim, "version", legacy="generation")
    assert not await store.put_if_newer({**claim, "claim": "theirs"}, "version",
                                        legacy="generation")            # the same token
    assert not await store.put_if_newer(won[0], "version", legacy="generation")   # older
    renewal = {**won[0], "version": 2, "generation": 1, "token": "renewed"}
    assert await store.put_if_newer(renewal, "version", legacy="generation")
    assert not await store.put_if_newer({**renewal, "token": "again"}, "version",
                                        legacy="generation")
    assert await store.get("call", "connection") == renewal
    # an earlier release's item (no version) compares by legacy, as put_unless_newer does
    await store.put({"pk": "call", "sk": "legacy", "generation": 1, "token": "old"})
    assert await store.put_if_newer({**claim, "sk": "legacy", "generation": 1, "version": 3},
                                    "version", legacy="generation")
    with pytest.raises(ValueError, match="must be a number"):
        await store.put_if_newer({"pk": "call", "sk": "x", "version": "1"}, "version")


@check
async def check_get_missing(store: Store) -> None:
    assert await store.get("nobody", "nothing") is None
    await store.put({"pk": "a", "sk": "b"})
    assert await store.get("a", "c") is None
    assert await store.get("b", "b") is None


@check
async def check_query_prefix_sort_descending_limit(store: Store) -> None:
    for sk in ["chat::3", "chat::1", "profile", "chat::2", "chat:x", "chat::10"]:
        await store.put({"pk": "call", "sk": sk})
    await store.put({"pk": "other", "sk": "chat::0"})

    def sks(items: list[dict[str, Any]]) -> list[str]:
        return [item["sk"] for item in items]

    assert sks(await store.query("call", "chat::")) == ["chat::1", "chat::10", "chat::2",
                                                        "chat::3"]
    assert sks(await store.query("call", "chat::", descending=True)) == [
        "chat::3", "chat::2", "chat::10", "chat::1"]
    assert sks(await store.query("call", "chat::", limit=2)) == ["chat::1", "chat::10"]
    assert sks(await store.query("call", "chat::", descending=True, limit=1)) == ["chat::3"]
    assert sks(await store.query("call")) == ["chat::1", "chat::10", "chat::2", "chat::3",
                                              "chat:x", "profile"]    # byte order: ':' < 'x'
    assert await store.query("call", "CHAT::") == []        # prefixes are case-sensitive
    assert await store.query("call", "chat::%") == []       # and literal
    assert await store.query("nobody") == []


@check
async def check_sort_is_utf8_byte_order(store: Store) -> None:
    keys = ["\U0001f355", "é", "Z", "z", "a", "\uff5e"]
    for sk in keys:
        await store.put({"pk": "sorted", "sk": sk, "pk1": "sorted", "sk1": sk})
    expected = sorted(keys, key=lambda k: k.encode())
    assert expected == ["Z", "a", "z", "é", "\uff5e", "\U0001f355"]
    assert [i["sk"] for i in await store.query("sorted")] == expected
    assert [i["sk1"] for i in await store.query_index("sorted")] == expected


@check
async def check_query_index(store: Store) -> None:
    await store.put({"pk": "b", "sk": "configuration", "pk1": "use-case", "sk1": "beta"})
    await store.put({"pk": "a", "sk": "configuration", "pk1": "use-case", "sk1": "alpha"})
    await store.put({"pk": "c", "sk": "configuration", "pk1": "use-case", "sk1": "alps"})
    await store.put({"pk": "d", "sk": "profile", "pk1": "profile", "sk1": "alpha"})
    await store.put({"pk": "e", "sk": "configuration", "pk1": "use-case"})   # no sk1: sparse
    names = [item["sk1"] for item in await store.query_index("use-case")]
    assert names == ["alpha", "alps", "beta"]
    assert [i["pk"] for i in await store.query_index("use-case", "alp")] == ["a", "c"]
    assert [i["pk"] for i in await store.query_index("use-case", descending=True,
                                                     limit=2)] == ["b", "c"]
    assert (await store.query_index("profile"))[0] == {"pk": "d", "sk": "profile",
                                                       "pk1": "profile", "sk1": "alpha"}
    assert await store.query_index("nothing") == []


@check
async def check_put_many_in_order(store: Store) -> None:
    count = BATCH_LIMIT * 2 + 7
    items = [{"pk": "call", "sk": f"chat::{i:04d}", "i": i} for i in range(count)]
    items.append({"pk": "call", "sk": "chat::0003", "i": "rewritten"})   # later one wins
    await store.put_many(items)
    stored = await store.query("call", "chat::")
    assert len(stored) == count
    assert [item["i"] for item in stored[:5]] == [0, 1, 2, "rewritten", 4]
    assert stored[-1] == items[count - 1]
    await store.put_many([])
    assert len(await store.query("call")) == count


@check
async def check_delete(store: Store) -> None:
    await store.put({"pk": "a", "sk": "b", "pk1": "k", "sk1": "v"})
    await store.put({"pk": "a", "sk": "c"})
    await store.delete("a", "b")
    assert await store.get("a", "b") is None
    assert await store.query_index("k") == []
    assert [item["sk"] for item in await store.query("a")] == ["c"]
    await store.delete("a", "missing")                      # deleting nothing is fine
    assert await store.get("a", "c") == {"pk": "a", "sk": "c"}


@check
async def check_value_types_round_trip(store: Store) -> None:
    item = {
        "pk": "types", "sk": "all", "int": 42, "negative": -7, "big": 2**53 + 1,
        "float": 0.1, "whole_float": 2.5, "true": True, "false": False, "none": None,
        "empty_string": "", "empty_list": [], "empty_map": {},
        "unicode": "Grüße, 東京, emoji \U0001f355, quote \" and backslash \\",
        "nested": {"list": [1, "two", 3.5, None, {"deep": [True, {"x": []}]}],
                   "map": {"ä": "ö", "n": 0}},
    }
    await store.put(item)
    stored = await store.get("types", "all")
    assert stored == item
    assert stored is not None
    assert type(stored["int"]) is int
    assert type(stored["big"]) is int
    assert type(stored["float"]) is float
    assert math.isclose(stored["float"], 0.1)
    assert stored["true"] is True
    assert stored["false"] is False
    assert stored["none"] is None


@check
async def check_rejects_invalid_items(store: Store) -> None:
    """Items DynamoDB would refuse fail as permanent errors, and nothing of the call lands."""
    good = {"pk": "ok", "sk": "1"}
    for bad in ({"pk": "", "sk": "x"}, {"pk": "p", "sk": "s", "pk1": "", "sk1": "v"},
                {"pk": "p", "sk": "s", "value": math.nan}, {"pk": "p", "sk": "s" * 1025},
                {"pk": "p" * 2049, "sk": "s"}, {"pk": "p", "sk": "s", "sk1": "é" * 513}):
        with pytest.raises(StoreRejected) as caught:
            await store.put_many([good, bad])
        assert is_permanent(caught.value)
    assert await store.get("ok", "1") is None
    await store.put_many([{"pk": "p" * 2048, "sk": "s" * 1024, "pk1": "q" * 2048,
                          "sk1": "é" * 512}])                  # at the limits: written
    assert await store.get("p" * 2048, "s" * 1024) is not None


@check
async def check_item_size_is_dynamodbs_measure(store: Store) -> None:
    """400 KB as DynamoDB counts an item (names and values, strings in UTF-8), not its JSON: a
    tool result that is a JSON document in a string, ~350 KB of it, takes ~420 KB as JSON (each
    quote escaped), and DynamoDB stores it. Past the limit, every store refuses. (Exactly at the
    limit is ``test_item_size_at_the_limit_passes``: moto refuses from 405,000 bytes.)"""
    doc = json.dumps([{"sku": f"A{n:05d}", "name": "Margherita", "size": "large"}
                      for n in range(6200)])
    assert len(json.dumps(doc)) > MAX_ITEM_BYTES > len(doc) > 300 * 1024
    fits = {"pk": "size", "sk": "fits", "text": doc}
    await store.put(fits)
    assert await store.get("size", "fits") == fits
    for over in ({"pk": "size", "sk": "over", "text": "é" * (MAX_ITEM_BYTES // 2)},
                 {"pk": "size", "sk": "over", "list": ["x" * 1000] * 410}):
        assert item_size(over) > MAX_ITEM_BYTES
        with pytest.raises(StoreRejected, match="400 KB"):
            await store.put(over)
    assert await store.get("size", "over") is None


@check
async def check_an_item_too_many_lists_and_maps_to_measure_is_refused(store: Store) -> None:
    """Measuring stops past MAX_CONTAINERS lists and maps (an item holding that many is over
    400 KB anyway: ``test_item_size_gives_up_past_its_bound_over_the_limit``): the store
    refuses it like any item over the limit, naming its key, and writes nothing of the call,
    where a ``ValueError`` came out. The bound lowered here: 400,000 maps took seconds to
    encode. A value that contains itself is refused before, as nested past 32 levels."""
    bound = 50
    too_many = {"pk": "many", "sk": "over", "maps": [{}] * bound}
    with mock.patch.object(base, "MAX_CONTAINERS", bound), pytest.raises(
            StoreRejected, match=f"pk=many sk=over: the item holds more than {bound} lists "
                                 "and maps") as caught:
        await store.put_many([{"pk": "many", "sk": "ok"}, too_many])
    assert is_permanent(caught.value)
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(StoreRejected, match=r"'loop' nests .* 32 levels"):
        await store.put({"pk": "many", "sk": "loop", "loop": loop})
    assert await store.query("many") == []
    await store.put(too_many)                   # under the real bound: a small item
    assert await store.get("many", "over") == too_many


def _nested(levels: int) -> Any:
    """A value whose scalar is at ``levels``, counting the attribute as level 1 as DynamoDB
    does: maps and lists in turn around it."""
    value: Any = "leaf"
    for level in range(levels - 1):
        value = {"n": value} if level % 2 else [value]
    return value


@check
async def check_nesting_is_bounded_as_dynamodb_bounds_it(store: Store) -> None:
    """A scalar at level 32 is stored, at level 33 refused (DynamoDB's ValidationException,
    which moto does not raise), and one far deeper refused alike, not a RecursionError."""
    deepest = {"pk": "nest", "sk": "32", "value": _nested(MAX_NESTING_LEVELS),
               "other": {"flat": 1}}
    await store.put(deepest)
    assert await store.get("nest", "32") == deepest
    for levels in (MAX_NESTING_LEVELS + 1, 5_000):
        with pytest.raises(StoreRejected, match=r"'value' nests .* 32 levels") as caught:
            await store.put_many([{"pk": "nest", "sk": "ok"},
                                  {"pk": "nest", "sk": "deep", "value": _nested(levels)}])
        assert is_permanent(caught.value)
    assert await store.query("nest") == [deepest]             # nothing of the call landed


@check
async def check_numbers_dynamodb_cannot_hold_are_refused_alike(store: Store) -> None:
    """DynamoDB holds 38 digits and magnitudes from 1e-130 to 9.99...e125 (moto lets 1e126
    through, DynamoDB does not); SQLite refused none of the others, so an item one store
    kept the other lost. Both refuse them before anything of the call is written, naming the
    attribute, and take the numbers at the limits."""
    for where, bad in (("id", 2**128 - 1), ("id", -(10**38)), ("tiny", 1e-131),
                       ("tiny", -1e-200), ("huge", 1e126), ("huge", -1e200)):
        with pytest.raises(StoreRejected, match=rf"'v\.l\[0\]\.{where}' is a number "
                                                r"DynamoDB cannot hold .* as text") as caught:
            await store.put_many([{"pk": "n", "sk": "ok"},
                                  {"pk": "n", "sk": "bad", "v": {"l": [{where: bad}]}}])
        assert is_permanent(caught.value)
    assert await store.query("n") == []
    edges = {"pk": "n", "sk": "edges", "ints": [10**38 - 1, -(10**38 - 1)],
             "floats": [1e-130, -1e-130, 9.999999999999998e125, 0.0, -0.0]}
    await store.put(edges)
    stored = await store.get("n", "edges")
    assert stored is not None
    assert stored["ints"] == edges["ints"]
    assert stored["floats"][:2] == [1e-130, -1e-130]


@check
async def check_empty_attribute_names_are_refused_alike(store: Store) -> None:
    """DynamoDB refuses an empty attribute name at any depth ("Empty attribute name"); moto
    stored a map with one and gave it back changed, and SQLite kept it, so a tool's result
    with such a key was history on one store and a lost round on the other."""
    for item, where in (({"pk": "e", "sk": "bad", "": 1}, "an item attribute has an empty"),
                        ({"pk": "e", "sk": "bad", "v": {"l": [{"": 1}]}},
                         "'v' holds a map with an empty key")):
        with pytest.raises(StoreRejected, match=where) as caught:
            await store.put_many([{"pk": "e", "sk": "ok"}, item])
        assert is_permanent(caught.value)
    assert await store.query("e") == []
    await store.put({"pk": "e", "sk": "fine", "v": {"k": "", "l": [""]}})  # values may be empty
    assert await store.get("e", "fine") == {"pk": "e", "sk": "fine", "v": {"k": "", "l": [""]}}


@check
async def check_use_case_round_trip(store: Store) -> None:
    use_case = UseCase(
        name="roundTrip", title="Round trip", description="Every kind of field",
        prompt="Hello <<USER_CONTEXT>>\n\"quoted\" ünïcode", model="us.amazon.nova-lite-v1:0",
        time_zone="Europe/Paris", inference=InferenceSettings(max_tokens=123, temperature=0.5),
        relay={"welcomeGreeting": "Hi", "interruptible": True, "speechTimeout": 1.5},
        tools=(ToolDeclaration(name="CheckRestaurantPickUpTime", description="When",
                               input_schema={"type": "object", "properties": {
                                   "n": {"type": "integer"}}}, timeout_s=2.0,
                               filler="One moment while I check the kitchen."),
               ToolDeclaration(name="CheckOrderStatus", description="Where")),
        dtmf=DtmfConfig(handlers={"1": DtmfHandler(reply="One"),
                                  "2": DtmfHandler(tool="CheckRestaurantPickUpTime")},
                        idle_timeout_s=2.0))
    item = config_records.use_case_item(use_case)
    await store.put(item)
    stored = await store.get("roundTrip", "configuration")
    assert stored == item
    assert stored is not None
    assert config_records.use_case_from_item(stored) == use_case
    listed = await store.query_index("use-case")
    assert [config_records.use_case_from_item(i).name for i in listed] == ["roundTrip"]


@check
async def check_profile_round_trip(store: Store) -> None:
    profiles = [Profile(phone="+15555550101", first_name="Ada", last_name="Byron",
                        email="ada@example.com", use_case="restaurantOrderingUseCase"),
                Profile(phone="+15555550100", first_name="Pat")]
    for profile in profiles:
        await store.put(config_records.profile_item(profile))
    stored = await store.get("+15555550101", "profile")
    assert stored is not None
    assert config_records.profile_from_item(stored) == profiles[0]
    listed = [config_records.profile_from_item(i) for i in await store.query_index("profile")]
    assert listed == [profiles[1], profiles[0]]             # by phone number


@check
async def check_session_round_trip(store: Store) -> None:
    profile = Profile(phone="+15555550100", first_name="Pat", use_case="x")
    older = records.CallSession(
        call_sid="CA" + "1" * 32, token="tok-1", use_case="x", system_prompt="Be brief.",
        model_id="us.amazon.nova-lite-v1:0", caller="+15555550100", called="+15555550199",
        profile=profile, greeting="Hello!", created_at=1_750_000_000.25)
    newer = records.CallSession(
        call_sid="CA" + "2" * 32, token="tok-2", use_case="y", system_prompt="Be kind.",
        model_id="m", caller="+15555550102", called="+15555550199", profile=None,
        greeting=None, created_at=1_750_000_060.5)
    for session in (older, newer):
        await store.put(records.session_item(session, ttl_s=86_400))
    stored = await store.get(older.call_sid, "connection")
    assert stored is not None
    assert stored["expireAt"] == 1_750_086_400
    assert records.session_from_item(stored) == older
    recent = await store.query_index("call", descending=True)
    assert [records.session_from_item(i) for i in recent] == [newer, older]


@check
async def check_chat_ordering(store: Store) -> None:
    call_sid = "CA" + "3" * 32
    messages = [(1_750_000_000_000 + at, seq, {"role": role, "content": [{"text": text}]})
                for at, seq, role, text in [(0, 0, "user", "hi"), (5, 1, "assistant", "hello"),
                                            (5, 2, "user", "pizza"),
                                            (10_000, 3, "assistant", "sure")]]
    for at_ms, seq, message in reversed(messages):        # written out of order
        await store.put(records.chat_item(call_sid, at_ms, seq, message,
                                          {"turn": seq, "kind": "said", "heard": None},
                                          ttl_s=3_600))
    await store.put({"pk": call_sid, "sk": "connection"})
    entries = [records.chat_from_item(i) for i in await store.query(call_sid, "chat::")]
    assert [e["chat"] for e in entries] == [m for _, _, m in messages]
    assert [(e["at_ms"], e["seq"]) for e in entries] == [(a, s) for a, s, _ in messages]
    assert entries[0]["meta"] == {"turn": 0, "kind": "said"}
    last = await store.query(call_sid, "chat::", descending=True, limit=1)
    assert records.chat_from_item(last[0])["chat"]["content"] == [{"text": "sure"}]


@check
async def check_chat_with_reasoning_round_trips(store: Store) -> None:
    """A tool round's reasoning (a model thinking with tools wants it back verbatim) comes back
    as written: its signature, and redacted reasoning as the base64 text it arrived as."""
    call_sid = "CA" + "4" * 32
    message = {"role": "assistant", "content": [
        {"reasoningContent": {"reasoningText": {"text": "Pickup time? \u00e9\n  x ",
                                                "signature": "RXFB" * 300}}},
        {"reasoningContent": {"redactedContent": "ZW5j" * 2000}},
        {"toolUse": {"toolUseId": "tu_1", "name": "pickupTime", "input": {}}}]}
    await store.put(records.chat_item(call_sid, 1_750_000_000_000, 0, message, {"turn": 1},
                                      ttl_s=3_600))
    [item] = await store.query(call_sid, "chat::")
    assert records.chat_from_item(item)["chat"] == message


@check
async def check_order_via_query_index(store: Store) -> None:
    order = {"order_items": [{"line_item": "Cheese pizza", "line_amount": 10.95}],
             "order_type": "pickup", "order_total": 10.95}
    first = records.order_item("+15555550100", "CA" + "4" * 28 + "1234", "+15555550199",
                               order, at_s=1_750_000_000, ttl_s=7 * 86_400)
    second = records.order_item("CA" + "5" * 32, "CA" + "5" * 32, "+15555550199",
                                {**order, "order_total": 5.0}, at_s=1_750_000_100, ttl_s=60)
    elsewhere = records.order_item("+15555550100", "CA" + "6" * 32, "+15555550188", order,
                                   at_s=1_750_000_200, ttl_s=60)
    unindexed = records.order_item("+15555550100", "CA" + "7" * 32, "", order,
                                   at_s=1_750_000_300, ttl_s=60)
    await store.put_many([first, second, elsewhere, unindexed])
    orders = await store.query_index("restaurantOrder", "+15555550199")
    assert {o["sk"] for o in orders} == {first["sk"], second["sk"]}
    assert first["sk"] == "restaurantOrder::1234::1750000000"
    by_caller = await store.query("+15555550100", "restaurantOrder::")
    assert len(by_caller) == 3
    assert by_caller[0]["order"] == order
    assert (await store.get(first["pk"], first["sk"])) == first
