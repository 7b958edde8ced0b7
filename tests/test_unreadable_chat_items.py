"""A chat item that cannot be read (written by another tool, by hand, or by a later version:
its ``chat`` a JSON string, missing, without a role, content that is not a list of maps, a
SQLite row that is not JSON) costs the call that one message. A reconnect raised on it (the
caller got an apology instead of the conversation), and so did ``calls show``. Now each is
left out with a warning that names its key and never its content, the call resumes with the
rest, and the transcript says which item it left out."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

import voiceagent.store.records as records
from tests.test_sessions_elsewhere import (
    CALL_SID,
    _claimed_on_a,
    _drained,
    _process,
    _reconnect,
    _store_with_use_case,
)
from voiceagent.app.transcripts import format_transcript, load_transcript
from voiceagent.store.sqlite import open_sqlite_store

SECRET = "SENTINEL-UNREADABLE-4242"
TTL_S = 50 * 365 * 86_400
GOOD = [(1_000, 0, "user", "hi, a table please"), (2_000, 1, "assistant", "For how many?"),
        (5_000, 4, "user", "two")]
# each between the good ones, so skipping it leaves a conversation that alternates
UNREADABLE: list[tuple[str, dict[str, Any]]] = [
    (records.chat_key(3_000, 2), {"chat": json.dumps({"role": "user", "content": SECRET})}),
    (records.chat_key(3_001, 2), {"heard": SECRET}),                              # no chat
    (records.chat_key(3_002, 2), {"chat": {"content": [{"text": SECRET}]}}),      # no role
    (records.chat_key(3_003, 2), {"chat": {"role": "assistant", "content": SECRET}}),
    (records.chat_key(3_004, 2), {"chat": {"role": "user", "content": [SECRET]}}),
    (records.chat_key(3_005, 2), {"chat": {}}),                  # empty, and not a mark
]


def _good_items() -> list[dict[str, Any]]:
    return [records.chat_item(CALL_SID, at_ms, seq,
                              {"role": role, "content": [{"text": text}]}, {}, TTL_S)
            for at_ms, seq, role, text in GOOD]


def _unreadable_items() -> list[dict[str, Any]]:
    return [{"pk": CALL_SID, "sk": sk, **attributes, "expireAt": 10**10}
            for sk, attributes in UNREADABLE]


def _skipped_keys(caplog: pytest.LogCaptureFixture) -> list[str]:
    assert all(SECRET not in str(record.__dict__) for record in caplog.records)
    return [record.__dict__["key"] for record in caplog.records
            if record.getMessage().endswith("unreadable, skipped")]


async def test_a_reconnect_resumes_without_the_items_it_cannot_read(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    store = await _store_with_use_case()
    a, a_writer = _process(store)
    b, _ = _process(store)
    caplog.set_level(logging.WARNING)
    with trio.fail_after(30):
        await _claimed_on_a(store, a, a_writer)
        await store.put_many([*_good_items(), *_unreadable_items()])
        await a.socket_ended(CALL_SID)
        a.release(CALL_SID)
        await _drained(a_writer)
        plan = await _reconnect(store, b)
    assert [(m["role"], m["content"][0]["text"]) for m in plan.history] == [
        (role, text) for _, _, role, text in GOOD]
    assert _skipped_keys(caplog) == [f"pk={CALL_SID} sk={sk}" for sk, _ in UNREADABLE]


async def test_calls_show_says_which_items_it_could_not_read(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "voiceagent.db"
    result = {"toolUseId": "t1", "status": "success", "content": 7}     # not a list
    use = {"toolUseId": "t1", "name": "BookTable", "input": {}}
    caplog.set_level(logging.WARNING)
    with trio.fail_after(10):
        async with open_sqlite_store(path, limiter=trio.CapacityLimiter(2)) as store:
            await store.put_many([
                *_good_items(), *_unreadable_items(),
                records.chat_item(CALL_SID, 6_000, 5, {"role": "assistant", "content": [
                    {"toolUse": use}]}, {}, TTL_S),
                records.chat_item(CALL_SID, 7_000, 6, {"role": "user", "content": [
                    {"toolResult": result}]}, {}, TTL_S)])
            with sqlite3.connect(path) as raw:            # another program's row: not JSON
                raw.execute("INSERT INTO items (pk, sk, attrs) VALUES (?, ?, ?)",
                            (CALL_SID, records.chat_key(4_000, 3), '{"chat": "' + SECRET))
            raw.close()
            transcript = await load_transcript(store, CALL_SID)
    assert transcript is not None
    shown = format_transcript(transcript, "UTC")
    assert shown[:2] == [f"call {CALL_SID}",
                         "  (no session item: it expired or was never written)"]
    assert shown[2].endswith(", 5 messages")
    assert shown[3:9] == [f"  item {sk} could not be read (another tool's, or a later "
                          "version's): left out" for sk, _ in UNREADABLE]
    assert [line.split(maxsplit=2)[1:] for line in shown[10:]] == [
        ["caller", "hi, a table please"], ["agent", "For how many?"], ["caller", "two"],
        ["agent", "-> BookTable {}"], ["tool", "<- BookTable result: "]]
    assert SECRET not in "\n".join(shown)
    assert _skipped_keys(caplog) == [f"pk={CALL_SID} sk={records.chat_key(4_000, 3)}",
                                     *(f"pk={CALL_SID} sk={sk}" for sk, _ in UNREADABLE)]
