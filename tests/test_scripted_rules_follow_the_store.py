"""The offline model's rules are the use case's as the store holds them now: they were read
once at start-up, so after a `config load` to a running `serve` every other key of the use
case changed within the catalog's minute, and its scripted rules never did."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import voiceagent.catalog
import voiceagent.store.config_records as config_records
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import open_call
from voiceagent.usecases import ScriptedConfig, ScriptedRule


async def test_a_rule_loaded_while_serving_answers_the_next_turn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(voiceagent.catalog, "USE_CASE_TTL_S", 0.0)   # read the store each time
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            runtime = server.runtime
            use_case = await runtime.catalog.use_case("testUseCase")
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("do you sell parrots?")
                before = (await call.read_reply()).text
                rule = ScriptedRule(match=r"\bparrots?\b", reply="Only the talking kind.")
                changed = use_case.model_copy(update={"scripted": ScriptedConfig(
                    rules=(rule, *use_case.scripted.rules),
                    fallback=use_case.scripted.fallback)})
                await runtime.store.put(config_records.use_case_item(changed))   # a `config load`
                await call.say("any parrots today?")
                after = (await call.read_reply()).text
                await call.hang_up()
    assert before != "Only the talking kind."
    assert after == "Only the talking kind."
