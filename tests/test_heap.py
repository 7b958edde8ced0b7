"""Start-up objects are frozen out of the collector's walks (voiceagent.heap)."""

from __future__ import annotations

import gc
import logging

import pytest

from voiceagent import heap


def test_settle_freezes_what_start_up_built(caplog: pytest.LogCaptureFixture) -> None:
    built_at_startup = [[n] for n in range(1000)]        # lists: always tracked
    try:
        with caplog.at_level(logging.INFO, logger="voiceagent.heap"):
            heap.settle_after_startup()
        assert gc.get_freeze_count() >= len(built_at_startup)
        assert all(gc.is_tracked(x) for x in built_at_startup)   # frozen, still tracked
        (record,) = [r for r in caplog.records if r.getMessage() == "heap settled"]
        assert record.frozen_objects >= len(built_at_startup)
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
