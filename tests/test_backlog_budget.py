"""The write backlog counted in memory, not only in items: a store outage with large tool
results (up to 32 KiB each) outgrew a small task long before WRITE_BACKLOG_MAX items, and the
process was killed with every call in it (helper-25)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import trio

from tests.fakes import MemoryStore
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_security import FORM, post
from voiceagent.app.memory_budget import (
    BUDGET_SHARE,
    NO_LIMIT_BUDGET_MB,
    backlog_budget_bytes,
    container_memory_limit,
)
from voiceagent.settings import Settings
from voiceagent.signature import sign
from voiceagent.store.write_behind import ENTRY_OVERHEAD, WriteBehind

MB = 1024 * 1024


def test_the_budget_follows_the_container_limit_unless_set(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text("1073741824\n")                                   # a 1 GiB Fargate task
    assert container_memory_limit((v2, v1)) == 1024 * MB
    v2.write_text("max\n")
    assert container_memory_limit((v2, v1)) is None                 # no limit
    v2.unlink()
    v1.write_text("9223372036854771712\n")                          # v1's "no limit"
    assert container_memory_limit((v2, v1)) is None
    v1.write_text("536870912\n")
    assert container_memory_limit((v2, v1)) == 512 * MB
    assert container_memory_limit((tmp_path / "none", tmp_path / "either")) is None
    settings = Settings.model_validate({})
    assert backlog_budget_bytes(settings, 1024 * MB) == int(1024 * MB * BUDGET_SHARE)
    set_ = Settings.model_validate({"WRITE_BACKLOG_MAX_MB": "64"})
    assert backlog_budget_bytes(set_, 1024 * MB) == 64 * MB
    three = Settings.model_validate({"WORKERS": "3"})       # processes in one container
    assert backlog_budget_bytes(three, 1024 * MB) == int(1024 * MB * BUDGET_SHARE) // 3


def test_no_limit_found_means_the_old_budget(monkeypatch: Any) -> None:
    import voiceagent.app.memory_budget as memory_budget

    monkeypatch.setattr(memory_budget, "container_memory_limit", lambda: None)
    assert backlog_budget_bytes(Settings.model_validate({})) == NO_LIMIT_BUDGET_MB * MB


async def test_the_queue_counts_what_its_items_hold(autojump_clock: Any) -> None:
    writer = WriteBehind(MemoryStore(), jitter=lambda: 1.0)
    writer.submit({"pk": "CA1", "sk": "chat::1", "text": "x" * 30_000}, call_sid="CA1")
    writer.submit({"pk": "CA1", "sk": "chat::2", "text": "short"}, call_sid="CA1")
    assert 30_000 + 2 * ENTRY_OVERHEAD < writer.pending_bytes < 30_200 + 2 * ENTRY_OVERHEAD
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            assert await writer.flush(timeout_s=5)
            nursery.cancel_scope.cancel()
    assert writer.pending_bytes == 0


async def test_new_calls_are_refused_while_the_backlog_holds_its_budget(
        tmp_path: Path) -> None:
    """40 large items are far below WRITE_BACKLOG_MAX's count but past a 1 MB budget: new
    calls are refused as over capacity until the store has taken them."""
    settings = make_settings(tmp_path, WRITE_BACKLOG_MAX_MB="1")
    with trio.fail_after(30):
        async with running_server(settings) as server:
            url = server.url + "/twiml"
            headers = {"X-Twilio-Signature": sign(AUTH_TOKEN, url, FORM)}
            writer = server.runtime.writer
            blocker = sqlite3.connect(tmp_path / "voiceagent.db", isolation_level=None)
            try:
                blocker.execute("BEGIN EXCLUSIVE")          # the store cannot write
                for i in range(40):
                    writer.submit({"pk": "CAbacklog", "sk": f"chat::{i:03d}",
                                   "result": "x" * 30_000}, call_sid="CAbacklog")
                assert writer.pending < settings.write_backlog_max
                status, body = await post(url, FORM, headers)
                assert status == 200
                assert "ConversationRelay" not in body
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            assert await writer.flush(timeout_s=20)
            status, body = await post(url, FORM, headers)
    assert status == 200
    assert "ConversationRelay" in body


def test_the_fargate_task_gives_its_container_a_limit_to_read() -> None:
    """Fargate enforces only the task's memory unless the container has its own limit, and
    the container's cgroup then reads "no limit": the budget fell back to 800 MB whatever
    TaskMemory was, more than a 512 MiB task has (helper-32)."""
    from tests.test_deploy import CLOUD, _template

    template = _template(CLOUD)
    (definition,) = template["Resources"]["TaskDefinition"]["Properties"][
        "ContainerDefinitions"]
    assert definition["Memory"] == {"Ref": "TaskMemory"}
