"""`voiceagent check` on the table's use cases agrees with what the service does with them
(the Catalog checks stored use cases with ``keywords=False``)."""
from __future__ import annotations

import trio

from voiceagent.app.check_config import _stored_outcome
from voiceagent.app.check_steps import CheckContext
from voiceagent.settings import Settings
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase


def test_check_does_not_fail_a_stored_use_case_the_service_serves() -> None:
    """A use case in the table with OpenAPI's `nullable` (loaded before the keyword check
    existed) is served: Catalog.use_case skips the keyword check. `voiceagent check`
    (STORE=dynamodb) still runs it, and fails the step saying the table's use cases "do not
    fit the tools this process registers" with the advice to "register the tools": neither
    true (every tool is registered, and its calls are answered)."""
    uc = UseCase.model_validate({"name": "orders", "prompt": "Hi.", "tools": [
        {"name": "endCall", "description": "Hang up.", "input_schema": {
            "type": "object", "properties": {"reason": {"type": "string",
                                                        "nullable": True}}}}]})
    ctx = CheckContext(settings=Settings.model_validate({}), limiter=trio.CapacityLimiter(1))
    outcome = _stored_outcome(ctx, default_registry(), (uc,))
    assert outcome.status == "pass", outcome
    assert "nullable" in outcome.detail, outcome      # still said, as a note: it is ignored
