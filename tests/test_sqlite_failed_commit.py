"""A SQLite COMMIT that fails (SQLITE_BUSY, SQLITE_FULL, an I/O error) may leave its
transaction open: SQLite rolls some of them back itself and not others. Left open, every
later write of the one shared connection failed at its BEGIN ("cannot start a transaction
within a transaction"), a transient error the write-behind queue retries forever: the store
took no write again until the process restarted, and reads saw the uncommitted rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from voiceagent.errors import StoreError
from voiceagent.store.sqlite import SCHEMA, SqliteStore


class CommitFailsOnce(sqlite3.Connection):
    """A connection whose first COMMIT fails as SQLITE_BUSY does: nothing committed, and
    the transaction still open."""

    failed = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database is locked")
        return super().execute(sql, *args)


@pytest.mark.parametrize("write", ["put", "put_unless_newer"])
async def test_a_failed_commit_leaves_the_store_writable(tmp_path: Path, write: str) -> None:
    connection = sqlite3.connect(tmp_path / "voiceagent.db", factory=CommitFailsOnce,
                                 check_same_thread=False, isolation_level=None)
    connection.executescript(SCHEMA)
    store = SqliteStore(tmp_path / "voiceagent.db", connection,
                        limiter=trio.CapacityLimiter(1))
    item = {"pk": "CA1", "sk": "connection", "version": 1}
    with trio.fail_after(10):
        try:
            first = (store.put(item) if write == "put"
                     else store.put_unless_newer(item, "version"))
            with pytest.raises(StoreError, match="locked"):
                await first
            assert not connection.in_transaction
            assert await store.get("CA1", "connection") is None     # nothing half-written
            await store.put(item)                                   # the queue's retry
            assert await store.get("CA1", "connection") == item
        finally:
            await store.aclose()
