"""`voiceagent check` points out the tools that can leave a caller in silence: a tool the
model calls without a word first, that runs long and declares no ``filler``, holds the caller
in silence up to its timeout (a review measured 10 s for a slow tool with no filler), and
the check said nothing about it. It is a note on the passing line, not a failure: the tool
may well answer fast. Both what the service reads: CONFIG_DIR, and the table's use cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import yaml

from tests.test_check import RUN_TIMEOUT_S, base_env, run_check
from voiceagent.app.check_config import _stored_outcome
from voiceagent.app.check_steps import CheckContext
from voiceagent.settings import Settings
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase

pytestmark = pytest.mark.timeout(90)

FILLER = "One moment while I check that."


def _use_case(name: str) -> dict[str, object]:
    """CheckOrderStatus (5 s) and PlaceOrderFunction (10 s) with no filler: noted.
    CheckRestaurantPickUpTime has one, CheckRestaurantDeliveryTime is cut to 3 s by the use
    case, endCall ends the call (no filler allowed): not noted."""
    return {"name": name, "prompt": "You take orders.", "tools": [
        {"name": "CheckOrderStatus", "description": "Where an order is."},
        {"name": "CheckRestaurantPickUpTime", "description": "Pick-up time.",
         "filler": FILLER},
        {"name": "CheckRestaurantDeliveryTime", "description": "Delivery time.",
         "timeout_s": 3},
        {"name": "PlaceOrderFunction", "description": "Place the order."},
        {"name": "endCall", "description": "Hang up."}]}


async def test_config_dir_tools_that_can_run_silent_are_noted_not_failed(
        tmp_path: Path) -> None:
    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    (config / "usecases" / "orders.yaml").write_text(yaml.safe_dump(_use_case("orders")))
    (config / "usecases" / "quiet.yaml").write_text(yaml.safe_dump(
        {"name": "quiet", "prompt": "Hi.", "tools": [
            {"name": "CheckOrderStatus", "description": "Where an order is.",
             "filler": FILLER}]}))
    env = base_env(tmp_path, STORE="sqlite", LLM="scripted", DATA_DIR=str(tmp_path / "data"),
                   CONFIG_DIR=str(config), STACK_USE_CASE="orders")
    with trio.fail_after(RUN_TIMEOUT_S):
        run = await run_check(env, tmp_path)
    line = run.lines["use cases and tools"]
    assert run.code == 0, run.out + run.err
    assert (line.status, line.advice) == ("pass", []), run.out
    assert line.detail.startswith(f"2 use case(s) naming 5 tool(s), all among the 11 "
                                  f"registered in {config}; "), line.detail
    assert ("use case orders: CheckOrderStatus (up to 5 s), PlaceOrderFunction (up to 10 s);"
            in line.detail), line.detail
    assert "a caller hears silence while these run" in line.detail
    assert f'`filler: "{FILLER}"` in its declaration, in its use case\'s file' in line.detail
    for quiet in ("quiet", "PickUpTime", "DeliveryTime", "endCall"):
        assert quiet not in line.detail, line.detail


def _check_table(*use_cases: UseCase) -> str:
    ctx = CheckContext(settings=Settings.model_validate({}), limiter=trio.CapacityLimiter(1))
    outcome = _stored_outcome(ctx, default_registry(), use_cases)
    assert (outcome.status, outcome.advice) == ("pass", ()), outcome
    return outcome.detail


def test_table_use_cases_tools_that_can_run_silent_are_noted_with_config_load() -> None:
    detail = _check_table(UseCase.model_validate(_use_case("orders")),
                          UseCase.model_validate(_use_case("frontDesk")))
    assert ("use case orders: CheckOrderStatus (up to 5 s), PlaceOrderFunction (up to 10 s); "
            "use case frontDesk: CheckOrderStatus (up to 5 s), PlaceOrderFunction (up to "
            "10 s);" in detail), detail
    assert "in config/, then run `voiceagent config load`" in detail
    for quiet in ("PickUpTime", "DeliveryTime", "endCall"):
        assert quiet not in detail, detail
    # every tool with a filler, answering within 3 s, or ending the call: nothing to note
    quiet_use_case = UseCase.model_validate({"name": "quiet", "prompt": "Hi.", "tools": [
        {"name": "CheckOrderStatus", "description": "Where.", "filler": FILLER},
        {"name": "PlaceOrderFunction", "description": "Order.", "timeout_s": 3},
        {"name": "liveAgentHandoff", "description": "A person."}]})
    assert _check_table(quiet_use_case) == ("1 use case(s) naming 3 tool(s), all among the "
                                            "11 registered in the table")
