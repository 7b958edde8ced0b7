"""The SQLite expiry sweep deletes a backlog of expired items in batches, each its own turn
of the store's lock: it was one DELETE of every expired row, and every write of the process
(a call's claim, its messages) waited behind it for as long as it took."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import trio
import trio.testing

from voiceagent.store.sqlite import SCHEMA, SqliteStore, open_sqlite_store

EXPIRED = 25
BATCH = 10


class Recording(sqlite3.Connection):
    """Records the writes it runs; the first expiry batch waits for ``go`` (set by the test
    once the other write is waiting for the store)."""

    go = threading.Event()
    writes: list[str] = []

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("DELETE") and "expireAt" in sql:
            if not self.writes:
                assert self.go.wait(10)
            self.writes.append("sweep")
        elif sql.startswith("INSERT"):
            self.writes.append("insert")
        return super().execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self.writes.append("put")
        return super().executemany(sql, *args)


def _expired(n: int) -> dict[str, Any]:
    return {"pk": f"CA{n:032d}", "sk": "connection", "expireAt": 1_000}


async def test_a_write_gets_in_between_the_sweep_s_batches(tmp_path: Path) -> None:
    path = tmp_path / "voiceagent.db"
    with sqlite3.connect(path) as setup:
        setup.executescript(SCHEMA)
        setup.executemany("INSERT INTO items (pk, sk, expireAt, attrs) VALUES (?, ?, ?, '{}')",
                          [(item["pk"], item["sk"], item["expireAt"])
                           for item in map(_expired, range(EXPIRED))])
    setup.close()
    connection = sqlite3.connect(path, factory=Recording, check_same_thread=False,
                                 isolation_level=None)
    store = SqliteStore(path, connection, limiter=trio.CapacityLimiter(1))
    Recording.writes.clear()
    removed: list[int] = []
    with trio.fail_after(10):
        try:
            async with trio.open_nursery() as nursery:
                async def sweep() -> None:
                    removed.append(await store.remove_expired(batch_rows=BATCH))

                nursery.start_soon(sweep)
                await trio.testing.wait_all_tasks_blocked()     # its first batch is running
                nursery.start_soon(store.put, {"pk": "CA1", "sk": "connection"})
                await trio.testing.wait_all_tasks_blocked()     # the put waits for the store
                Recording.go.set()
            assert await store.get("CA1", "connection") == {"pk": "CA1", "sk": "connection"}
            assert await store.get(_expired(0)["pk"], "connection") is None
        finally:
            await store.aclose()
    assert removed == [EXPIRED]
    assert Recording.writes == ["sweep", "put", "sweep", "sweep"]


async def test_the_store_opens_after_removing_more_than_a_batch_of_expired_items(
        tmp_path: Path) -> None:
    """At open the sweep runs in batches too, and every expired item goes."""
    path = tmp_path / "voiceagent.db"
    fresh = {"pk": "CA1", "sk": "connection", "expireAt": 2**40}
    with trio.fail_after(10):
        async with open_sqlite_store(path, limiter=trio.CapacityLimiter(1)) as store:
            await store.put_many([*map(_expired, range(2_500)), fresh])
        async with open_sqlite_store(path, limiter=trio.CapacityLimiter(1)) as store:
            assert await store.get("CA1", "connection") == fresh
            assert await store.remove_expired() == 0
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM items").fetchone() == (1,)
    raw.close()
