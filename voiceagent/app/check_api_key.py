"""``voiceagent check``'s line about a Bedrock API key: when it stops working.

A key past its stated expiry fails the Bedrock check already (``check_bedrock_ready``, the
server's own start-up check); this says, for a key that works today, whether it will tonight.
"""

from __future__ import annotations

import os
import time

from voiceagent.app.check_steps import Outcome, passed
from voiceagent.llm.bedrock_api_key import SETTING, expiry_notice

NAME = "Bedrock API key"


def api_key_outcomes() -> list[Outcome]:
    """One passed line with its expiry (and what to use instead when that is within hours),
    or none when ``AWS_BEARER_TOKEN_BEDROCK`` is not set."""
    notice = expiry_notice(os.environ.get(SETTING), time.time())
    if notice is None:
        return []
    what, advice = notice
    return [passed(NAME, what, *([advice] if advice else []))]
