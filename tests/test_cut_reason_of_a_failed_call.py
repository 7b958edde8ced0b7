"""A turn cut because its call failed (an actor beside it raised: a bug) is counted and logged
under a fixed reason. trio's own reason for that cancel is the exception's repr, which the
turn took as its ``cut_by``: the caller's words an exception was built from went into the
"turn done" line, and every failure with another message was a new
``voiceagent_turns_cut_total`` series, kept by the process for ever."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tests.call_harness import open_test_call
from tests.fakes import FakeLLM, MemorySocket, words
from voiceagent.app.metrics import Metrics
from voiceagent.settings import Settings
from voiceagent.tools.registry import default_registry

CALLS = 12


class FailingSocket(MemorySocket):
    """Its third send raises what no socket should (a bug), naming what it was handed."""

    def __init__(self, words_said: str) -> None:
        super().__init__()
        self._words_said = words_said
        self._sends = 0

    async def send(self, text: str) -> None:
        self._sends += 1
        if self._sends == 3:
            raise ValueError(f"cannot frame {self._words_said!r}")
        await super().send(text)


async def test_turns_cut_by_failed_calls_add_one_series_and_no_words(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.model_validate({})
    metrics = Metrics(cast(Any, SimpleNamespace(settings=settings,
                                                registry=default_registry())))
    caplog.set_level(logging.INFO, logger="actors.turn")
    reports = []
    for index in range(CALLS):
        llm = FakeLLM([words("one two three four five six seven eight")])
        socket = FailingSocket(f"my card number is 4111 {index:04d}")
        async with open_test_call(llm, socket=socket,
                                  services_changes={"on_turn": metrics.on_turn}) as call:
            call.say("hello")
            await call.done.wait()
        reports.append(call.report)
    assert {report.ended_by for report in reports} == {"error"}
    cut = {tuple(sample.labels.items()): sample.value
           for family in metrics.cut_turns.collect() for sample in family.samples
           if sample.name.endswith("_total")}
    assert cut == {(("reason", "cancelled"),): CALLS}
    reasons = [record.__dict__["cut_by"] for record in caplog.records
               if record.getMessage() == "turn done"]
    assert reasons == ["cancelled"] * CALLS
