"""Every backend against the store contract (``tests/store_contract.py``), then what is
particular to the SQLite file.

A backend is a name in ``BACKENDS`` mapping to a factory that opens a fresh, empty store for
one test. DynamoDB (moto's server mode on 127.0.0.1, a table per test) is there twice: every
request through boto3's client, and as ``open_dynamodb_store`` makes it, the item requests
from the event loop (``dynamodb_http``).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from botocore.credentials import Credentials

from tests.dynamodb_support import REGION, open_test_table, shared_moto, stop_shared_moto
from tests.server_harness import make_settings
from tests.store_contract import CHECKS, Check
from voiceagent.app.runtime import open_runtime
from voiceagent.aws_http import USER_AGENT, ConnectionPool, Endpoint, Signer
from voiceagent.errors import StoreError, StoreRejected
from voiceagent.store.base import (
    MAX_CONTAINERS,
    MAX_ITEM_BYTES,
    Store,
    check_item_size,
    item_size,
)
from voiceagent.store.dynamodb import DynamoDBStore
from voiceagent.store.dynamodb_http import SIGNING_NAME, DynamoDBHttp
from voiceagent.store.sqlite import SWEEP_EVERY_S, SqliteStore, open_sqlite_store

BackendFactory = Callable[[Path], AbstractAsyncContextManager[Store]]


@asynccontextmanager
async def _sqlite_backend(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_sqlite_store(tmp_path / "data" / "store.db",
                                 limiter=trio.CapacityLimiter(4)) as store:
        yield store


@asynccontextmanager
async def _dynamodb_backend(tmp_path: Path) -> AsyncIterator[Store]:
    """A table of its own on the shared moto server (started on first use)."""
    async with open_test_table(shared_moto().endpoint) as store:
        yield store


@asynccontextmanager
async def _dynamodb_loop_backend(tmp_path: Path) -> AsyncIterator[Store]:
    """The same, with the requests ``open_dynamodb_store`` sends from the event loop (writes,
    gets, queries: ``dynamodb_http``) going that way, signed with the table's test keys."""
    async with open_test_table(shared_moto().endpoint) as table:
        endpoint = Endpoint.from_url(table.endpoint, REGION)
        signer = Signer(endpoint, lambda: Credentials("testing", "testing"), None, USER_AGENT,
                        signing_name=SIGNING_NAME)
        pool = ConnectionPool(endpoint, connect_timeout_s=2.0, max_idle=4, ssl_context=None)
        http = DynamoDBHttp(pool, signer, read_timeout_s=4.0)
        try:
            yield DynamoDBStore(table.table_name, table._client,
                                limiter=trio.CapacityLimiter(4), http=http)
        finally:
            http.close()


BACKENDS: dict[str, BackendFactory] = {"sqlite": _sqlite_backend, "dynamodb": _dynamodb_backend,
                                       "dynamodb-loop": _dynamodb_loop_backend}


@pytest.fixture(scope="session", autouse=True)
def _moto_stopped_at_the_end() -> Iterator[None]:
    """The shared moto server starts with the first DynamoDB check; it stops with the run."""
    yield
    stop_shared_moto()


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with BACKENDS[request.param](tmp_path) as opened:
        yield opened


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
async def test_contract(store: Store, check: Check) -> None:
    with trio.fail_after(10):
        await check(store)


# ------------------------------------------------------------------ the limits both refuse by


def test_item_size_counts_as_dynamodb_does() -> None:
    """Names and values; strings in UTF-8 bytes; a number one byte per two significant digits
    plus one (and one more where the pairs may split unevenly); lists and maps 3, and 1 more
    per element."""
    assert item_size({"pk": "a", "sk": "é"}) == 2 + 1 + 2 + 2
    assert item_size({"n": 12_300, "f": 0.25, "t": True, "z": None}) == (
        1 + 3) + (1 + 3) + (1 + 1) + (1 + 1)
    assert item_size({"l": ["ab", []], "m": {"k": "v", "e": {}}}) == (
        1 + 3 + (1 + 2) + (1 + 3)) + (1 + 3 + (1 + 1 + 1) + (1 + 1 + 3))


@pytest.mark.timeout(10)         # the walk it bounds looped for ever
def test_item_size_gives_up_on_a_value_that_contains_itself() -> None:
    """Stores refuse such a value first (``check_item_nesting``), the write-behind's copy
    too: should anything measure one, it fails, naming the bound, instead of looping."""
    loop: list[Any] = []
    loop.append(loop)
    mapping: dict[str, Any] = {"k": 1}
    mapping["self"] = [mapping]
    for value in (loop, mapping):
        with pytest.raises(ValueError, match=f"more than {MAX_CONTAINERS} lists and maps"):
            item_size({"pk": "a", "sk": "b", "value": value})


def test_item_size_gives_up_past_its_bound_over_the_limit() -> None:
    """Each list or map counts 3 bytes at least: an item at MAX_CONTAINERS is measured to
    the byte and refused by its size; past it, refused without a size, over the limit all
    the same."""
    at_bound = {"pk": "many", "sk": "at", "maps": [{}] * (MAX_CONTAINERS - 1)}
    size = item_size(at_bound)
    assert size > MAX_ITEM_BYTES
    with pytest.raises(StoreRejected, match=f"pk=many sk=at: the item is {size} bytes"):
        check_item_size(at_bound)
    with pytest.raises(StoreRejected, match=f"pk=many sk=over: the item holds more than "
                                            f"{MAX_CONTAINERS} lists and maps"):
        check_item_size({**at_bound, "sk": "over", "one more": []})


async def test_item_size_at_the_limit_passes(tmp_path: Path) -> None:
    """Exactly 400 KB is stored; one byte more is refused (moto's own limit is lower)."""
    overhead = item_size({"pk": "size", "sk": "at", "text": ""})
    at_limit = {"pk": "size", "sk": "at", "text": "é" * ((MAX_ITEM_BYTES - overhead) // 2)}
    assert item_size(at_limit) == check_item_size(at_limit) == MAX_ITEM_BYTES
    with pytest.raises(StoreRejected, match="400 KB"):
        check_item_size({**at_limit, "text": at_limit["text"] + "x"})
    with trio.fail_after(10):
        async with _sqlite_backend(tmp_path) as store:
            await store.put(at_limit)
            assert await store.get("size", "at") == at_limit


# ------------------------------------------------------------------ SQLite in particular


async def test_sqlite_keeps_items_across_reopen_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folders" / "store.db"
    limiter = trio.CapacityLimiter(2)
    with trio.fail_after(10):
        async with open_sqlite_store(path, limiter=limiter) as first:
            assert first.name == f"sqlite:{path}"
            await first.put({"pk": "a", "sk": "b", "n": 1})
        async with open_sqlite_store(path, limiter=limiter) as second:
            assert await second.get("a", "b") == {"pk": "a", "sk": "b", "n": 1}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_removes_expired_items_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    limiter = trio.CapacityLimiter(2)
    with trio.fail_after(10):
        async with open_sqlite_store(path, limiter=limiter) as store:
            await store.put_many([{"pk": "old", "sk": "x", "expireAt": 1_000},
                                  {"pk": "new", "sk": "x", "expireAt": 4_000_000_000},
                                  {"pk": "forever", "sk": "x"}])
            assert await store.get("old", "x") is not None     # reads do not hide them
        async with open_sqlite_store(path, limiter=limiter) as store:
            assert await store.get("old", "x") is None
            assert await store.get("new", "x") is not None
            assert await store.get("forever", "x") is not None


async def test_sqlite_removes_expired_items_while_it_runs(tmp_path: Path) -> None:
    """A server that runs for weeks kept every transcript (callers' words) past
    SESSION_TTL_S, expiry happening only at open (helper-25)."""
    with trio.fail_after(10):
        async with open_sqlite_store(tmp_path / "store.db",
                                     limiter=trio.CapacityLimiter(2)) as store:
            await store.put_many([{"pk": "old", "sk": "x", "expireAt": 1_000},
                                  {"pk": "new", "sk": "x", "expireAt": 4_000_000_000}])
            assert await store.remove_expired() == 1
            assert await store.get("old", "x") is None
            assert await store.get("new", "x") is not None


async def test_sqlite_sweeps_hourly_and_a_failed_sweep_waits_for_the_next(
        tmp_path: Path, autojump_clock: Any) -> None:
    async with open_sqlite_store(tmp_path / "store.db",
                                 limiter=trio.CapacityLimiter(2)) as store:
        swept: list[float] = []

        async def remove_expired() -> int:
            swept.append(trio.current_time())
            if len(swept) == 2:
                raise StoreError("sqlite remove_expired: database is locked")
            return 3

        store.remove_expired = remove_expired            # type: ignore[method-assign]
        with trio.move_on_after(3 * SWEEP_EVERY_S + 1):
            await store.sweep_expired()
    assert swept == [SWEEP_EVERY_S, 2 * SWEEP_EVERY_S, 3 * SWEEP_EVERY_S]


@pytest.mark.timeout(60)        # real seconds: the virtual clock runs the hours
async def test_the_runtime_keeps_the_sqlite_sweep_running(
        tmp_path: Path, autojump_clock: Any) -> None:
    """The wiring: a server on the embedded store sweeps while it serves, not only at open."""
    async with open_sqlite_store(tmp_path / "store.db",
                                 limiter=trio.CapacityLimiter(2)) as store:
        swept: list[float] = []

        async def remove_expired() -> int:
            swept.append(trio.current_time())
            return 0

        store.remove_expired = remove_expired            # type: ignore[method-assign]
        started = trio.current_time()
        async with open_runtime(make_settings(tmp_path), store=store):
            await trio.sleep(2 * SWEEP_EVERY_S + 1)
    assert [round(t - started) for t in swept] == [SWEEP_EVERY_S, 2 * SWEEP_EVERY_S]


async def test_sqlite_open_error_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    path = blocker / "store.db"
    with trio.fail_after(10), pytest.raises(StoreError, match=re.escape(str(path))):
        async with open_sqlite_store(path, limiter=trio.CapacityLimiter(1)):
            pass


async def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with trio.fail_after(10), pytest.raises(StoreError, match=re.escape(str(path))):
        async with open_sqlite_store(path, limiter=trio.CapacityLimiter(1)):
            pass


async def test_sqlite_closed_store_raises_store_error(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_sqlite_store(tmp_path / "s.db",
                                     limiter=trio.CapacityLimiter(1)) as store:
            pass
        assert isinstance(store, SqliteStore)
        await store.aclose()                                  # idempotent
        with pytest.raises(StoreError, match="closed"):
            await store.get("a", "b")


async def test_sqlite_many_concurrent_callers_share_the_limiter(tmp_path: Path) -> None:
    limiter = trio.CapacityLimiter(2)
    with trio.fail_after(10):
        async with open_sqlite_store(tmp_path / "s.db", limiter=limiter) as store:
            async with trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(store.put, {"pk": "p", "sk": f"{i:02d}"})
            assert len(await store.query("p")) == 30
            assert limiter.borrowed_tokens == 0


async def test_sqlite_rejects_limit_below_one(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_sqlite_store(tmp_path / "s.db",
                                     limiter=trio.CapacityLimiter(1)) as store:
            with pytest.raises(ValueError, match="limit"):
                await store.query("p", limit=0)


async def test_sqlite_openers_of_a_new_file_at_once_all_open_it(tmp_path: Path) -> None:
    """Several workers on a container's first start open the same new file at once. Switching
    it to WAL needs the write lock while each holds a read lock, and SQLite answers one of
    them SQLITE_BUSY at once (a deadlock, so no busy wait): about one round in 25 failed,
    and a worker exited. 200 rounds of four openers; the same locks across threads as
    across processes."""
    limiter = trio.CapacityLimiter(4)
    failures: list[str] = []

    async def open_once(path: Path) -> None:
        try:
            async with open_sqlite_store(path, limiter=limiter):
                pass
        except StoreError as err:
            failures.append(str(err))

    with trio.fail_after(60):
        for round_ in range(200):
            path = tmp_path / f"round{round_}" / "store.db"
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(open_once, path)
    assert failures == []
