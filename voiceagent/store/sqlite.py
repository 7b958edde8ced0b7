"""The embedded store: the DynamoDB table's items in one SQLite file.

The default for development and single-process deployments, and the reference the DynamoDB
store is checked against: both pass ``tests/store_contract.py``. Each item is kept whole as
JSON in ``attrs``; ``pk``, ``sk``, ``pk1``, ``sk1`` and ``expireAt`` are copied into columns so
SQLite can key, index and expire on them. Text compares byte-wise in UTF-8 (SQLite's BINARY
collation), which is DynamoDB's sort order for string keys.

Like DynamoDB the index is sparse: an item is in it only when it has both ``pk1`` and ``sk1``.
Expired items (``expireAt`` in the past) are deleted when the store opens, and hourly while a
server runs (``sweep_expired``), which stands in for DynamoDB's TTL sweeper; like DynamoDB,
reads do not hide items that expired since.

Threads: one connection, opened with ``check_same_thread=False`` and used under a
``threading.Lock``; every call runs in a worker thread through ``run_blocking`` and the
limiter the owner passes in. WAL mode lets a ``sqlite3`` shell read while the service writes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from voiceagent.errors import StoreError, StoreRejected
from voiceagent.store.base import BATCH_LIMIT, Item, describe_key, is_newer, is_number, is_own_item
from voiceagent.store.sqlite_rows import Row, encode
from voiceagent.threads import run_blocking

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_S = 5.0
SWEEP_EVERY_S = 3600.0
SWEEP_BATCH_ROWS = 1000              # rows per DELETE: other writes get the lock in between

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    pk TEXT NOT NULL,
    sk TEXT NOT NULL,
    pk1 TEXT,
    sk1 TEXT,
    expireAt INTEGER,
    attrs TEXT NOT NULL,
    PRIMARY KEY (pk, sk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_index_1 ON items (pk1, sk1);
CREATE INDEX IF NOT EXISTS items_expire_at ON items (expireAt);
"""
_UPSERT = ("INSERT OR REPLACE INTO items (pk, sk, pk1, sk1, expireAt, attrs) "
           "VALUES (?, ?, ?, ?, ?, ?)")
_DELETE_EXPIRED = ("DELETE FROM items WHERE (pk, sk) IN "
                   "(SELECT pk, sk FROM items WHERE expireAt < ? LIMIT ?)")
_INSERT_NEW = ("INSERT OR IGNORE INTO items (pk, sk, pk1, sk1, expireAt, attrs) "
               "VALUES (?, ?, ?, ?, ?, ?)")


class SqliteStore:
    """Owns its connection; ``aclose`` (or leaving ``open_sqlite_store``) closes it."""

    def __init__(self, path: Path, connection: sqlite3.Connection, *,
                 limiter: trio.CapacityLimiter) -> None:
        self.name = f"sqlite:{path}"
        self._path = path
        self._connection = connection
        self._limiter = limiter
        self._lock = threading.Lock()
        self._closed = False

    async def get(self, pk: str, sk: str) -> Item | None:
        def read(db: sqlite3.Connection) -> Item | None:
            row = db.execute("SELECT attrs FROM items WHERE pk = ? AND sk = ?",
                             (pk, sk)).fetchone()
            return _decode(row[0]) if row is not None else None

        return await self._run("get", read, read_only=True)

    async def put(self, item: Item) -> None:
        await self.put_many([item])

    async def put_many(self, items: Sequence[Item]) -> None:
        """Every item is checked before anything is written (``StoreRejected`` names the
        problem); then each chunk of ``BATCH_LIMIT`` is one transaction, in order."""
        rows = [encode(item) for item in items]
        for start in range(0, len(rows), BATCH_LIMIT):
            chunk = rows[start:start + BATCH_LIMIT]
            await self._run("put", partial(_write_chunk, rows=chunk))

    async def put_new(self, item: Item) -> bool:
        row = encode(item)

        def insert(db: sqlite3.Connection) -> bool:
            if db.execute(_INSERT_NEW, row).rowcount == 1:      # autocommit: atomic
                return True
            found = db.execute("SELECT attrs FROM items WHERE pk = ? AND sk = ?",
                               row[:2]).fetchone()
            return is_own_item(_decode(found[0]) if found is not None else None, item)

        return await self._run("put_new", insert)

    async def put_unless_newer(self, item: Item, version: str, *,
                               legacy: str | None = None) -> bool:
        for name in (version, legacy) if legacy else (version,):
            if not is_number(item.get(name)):
                raise ValueError(f"put_unless_newer: the item's {name!r} must be a number")
        return await self._run("put_unless_newer", partial(
            _write_unless_newer, row=encode(item), item=item, version=version, legacy=legacy))

    async def put_if_newer(self, item: Item, version: str, *,
                           legacy: str | None = None) -> bool:
        """One transaction that takes the write lock first (BEGIN IMMEDIATE), so processes
        sharing the file (WORKERS=2) decide one at a time: the look and the write."""
        for name in (version, legacy) if legacy else (version,):
            if not is_number(item.get(name)):
                raise ValueError(f"put_if_newer: the item's {name!r} must be a number")
        return await self._run("put_if_newer", partial(
            _write_unless_newer, row=encode(item), item=item, version=version, legacy=legacy,
            strict=True))

    async def remove_expired(self, *, batch_rows: int = SWEEP_BATCH_ROWS) -> int:
        """Delete the items whose ``expireAt`` has passed; how many. ``batch_rows`` at a time,
        each batch its own turn of the lock: one DELETE of a large backlog (a server down for
        days, a shortened SESSION_TTL_S) kept every write of the process waiting behind it."""
        now = int(time.time())
        removed = 0
        while True:
            batch = await self._run("remove_expired", partial(
                _delete_expired_batch, now=now, limit=batch_rows))
            removed += batch
            if batch < batch_rows:
                return removed

    async def sweep_expired(self, *, every_s: float = SWEEP_EVERY_S,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
        """Remove expired items every ``every_s`` until cancelled: a server that runs for
        weeks kept every transcript (callers' words) past ``SESSION_TTL_S``, and its file
        grew, since expiry happened only at open. A failed sweep waits for the next."""
        task_status.started()
        while True:
            await trio.sleep(every_s)
            try:
                removed = await self.remove_expired()
            except StoreError as err:
                log.warning("sqlite expiry sweep failed", extra={"error": str(err)[:300]})
                continue
            if removed:
                log.info("sqlite expired items removed", extra={"removed": removed})

    async def query(self, pk: str, sk_prefix: str = "", *, descending: bool = False,
                    limit: int | None = None) -> list[Item]:
        return await self._select("query", "pk", "sk", pk, sk_prefix, descending, limit)

    async def query_index(self, pk1: str, sk1_prefix: str = "", *, descending: bool = False,
                          limit: int | None = None) -> list[Item]:
        return await self._select("query_index", "pk1", "sk1", pk1, sk1_prefix, descending,
                                  limit)

    async def delete(self, pk: str, sk: str) -> None:
        def remove(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM items WHERE pk = ? AND sk = ?", (pk, sk))

        await self._run("delete", remove)

    async def aclose(self) -> None:
        """Close the connection; idempotent, and finishes even when cancelled."""
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            with self._lock:
                self._connection.close()

        with trio.CancelScope(shield=True):
            await run_blocking(close, limiter=self._limiter)

    # ------------------------------------------------------------------ helpers

    async def _select(self, operation: str, key: str, sort: str, value: str, prefix: str,
                      descending: bool, limit: int | None) -> list[Item]:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        sql = f"SELECT pk, sk, attrs FROM items WHERE {key} = ? AND {sort} IS NOT NULL"
        params: list[Any] = [value]
        if prefix:                   # the range uses the index; substr makes it exact
            sql += f" AND {sort} >= ? AND substr({sort}, 1, ?) = ?"
            params += [prefix, len(prefix), prefix]
        direction = "DESC" if descending else "ASC"
        sql += f" ORDER BY {sort} {direction}, pk {direction}, sk {direction} LIMIT ?"
        params.append(limit if limit is not None else -1)

        def read(db: sqlite3.Connection) -> list[Item]:
            return [item for pk, sk, attrs in db.execute(sql, params)
                    if (item := _decode_or_skip(pk, sk, attrs)) is not None]

        return await self._run(operation, read, read_only=True)

    async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], T], *,
                   read_only: bool = False) -> T:
        """``fn`` on the connection, in a worker thread. A read is abandoned when cancelled
        (nobody wants its answer; it may wait seconds for the lock behind writes, each up to
        the busy timeout, and a caller's deadline, ``/action``'s, must end the wait); its
        thread keeps its limiter slot until it ends. A write finishes: its outcome is known."""
        if self._closed:
            raise StoreError(f"sqlite {operation} on {self._path}: the store is closed")

        def call() -> T:
            with self._lock:
                return fn(self._connection)

        try:
            return await run_blocking(call, limiter=self._limiter, abandon_on_cancel=read_only)
        except (sqlite3.IntegrityError, sqlite3.DataError) as err:
            raise StoreRejected(f"sqlite {operation} on {self._path} refused the item: "
                                f"{err}") from err
        except sqlite3.Error as err:
            raise StoreError(f"sqlite {operation} failed on {self._path}: {err}; check the "
                             "file is writable and not locked by another program") from err


@asynccontextmanager
async def open_sqlite_store(path: Path, *, limiter: trio.CapacityLimiter
                            ) -> AsyncIterator[SqliteStore]:
    """Open (creating the folder, file and schema as needed) and close on exit. Raises
    ``StoreError`` naming the path when the file cannot be opened."""
    connection = await run_blocking(lambda: _connect(path), limiter=limiter)
    store = SqliteStore(path, connection, limiter=limiter)
    try:
        yield store
    finally:
        await store.aclose()


def _connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create the folder for the sqlite store {path}: "
                         f"{err.strerror}") from err
    connection: sqlite3.Connection | None = None
    try:
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                     timeout=BUSY_TIMEOUT_S)
        _switch_to_wal(connection, deadline=time.monotonic() + BUSY_TIMEOUT_S)
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.executescript(SCHEMA)
        expired = _delete_expired(connection)
    except sqlite3.Error as err:
        if connection is not None:
            connection.close()
        raise StoreError(f"cannot open the sqlite store {path}: {err}; check the path is "
                         "a writable file and not another program's database") from err
    log.info("sqlite store opened", extra={"path": str(path), "expired_removed": expired})
    return connection


def _delete_expired(db: sqlite3.Connection) -> int:
    """At open, in batches too: each DELETE commits, so another process sharing the file
    (WORKERS=2) may write between them."""
    now = int(time.time())
    removed = 0
    while (batch := _delete_expired_batch(db, now, SWEEP_BATCH_ROWS)) == SWEEP_BATCH_ROWS:
        removed += batch
    return removed + batch


def _delete_expired_batch(db: sqlite3.Connection, now: int, limit: int) -> int:
    return db.execute(_DELETE_EXPIRED, (now, limit)).rowcount


def _switch_to_wal(connection: sqlite3.Connection, *, deadline: float) -> None:
    """Processes that open a new file at once (``WORKERS=2`` on a container's first start)
    each hold a read lock and want the write lock to change the journal. SQLite answers one of
    them SQLITE_BUSY at once, without its busy handler, since waiting would deadlock (about 1
    start in 25 measured, and that worker exited). The other one is done within milliseconds,
    so the answer is to try again, until the same busy timeout as any other lock wait."""
    pause = 0.005
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            busy = getattr(err, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)                # a worker thread (run_blocking), never the loop
        pause = min(pause * 2, 0.25)


def _write_chunk(db: sqlite3.Connection, rows: list[Row]) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(_UPSERT, rows)
        db.execute("COMMIT")
    except BaseException:
        _roll_back(db)
        raise


def _roll_back(db: sqlite3.Connection) -> None:
    """End a failed transaction, also one whose COMMIT failed: SQLite rolls back some of
    those itself (SQLITE_FULL, SQLITE_IOERR) and leaves others open (SQLITE_BUSY), and one
    left open made every later BEGIN on the shared connection fail, for good."""
    if db.in_transaction:
        db.execute("ROLLBACK")


def _write_unless_newer(db: sqlite3.Connection, row: Row, item: Item, version: str,
                        legacy: str | None, strict: bool = False) -> bool:
    db.execute("BEGIN IMMEDIATE")           # the look and the write: one writer at a time
    try:
        found = db.execute("SELECT attrs FROM items WHERE pk = ? AND sk = ?",
                           row[:2]).fetchone()
        stored = _decode(found[0]) if found is not None else None
        newer = stored is not None and is_newer(stored, item, version, legacy, strict=strict)
        if not newer:
            db.execute(_UPSERT, row)
        db.execute("COMMIT")
    except BaseException:
        _roll_back(db)
        raise
    return not newer or (strict and is_own_item(stored, item))


def _decode(attrs: str) -> Item:
    try:
        item = json.loads(attrs)
    except ValueError as err:
        raise StoreError(f"an item in the sqlite store is not valid JSON: {err}") from err
    if not isinstance(item, dict):
        raise StoreError("an item in the sqlite store is not a JSON object")
    return item


def _decode_or_skip(pk: str, sk: str, attrs: str) -> Item | None:
    """A row a query cannot decode (written by hand or by another program) is left out with
    a warning naming its key: one such row failed the whole query (a call's reconnect, or
    ``calls show``, for one bad chat item)."""
    try:
        return _decode(attrs)
    except StoreError as err:
        log.warning("sqlite item unreadable, skipped", extra={
            "key": describe_key(pk, sk), "problem": str(err)})
        return None
