"""A ``BedrockLLM`` for a test on trio's virtual clock, against the local endpoint: its setup
thread (credentials, the pool) finishes on real time before the clock may jump, or the jump
would fire every timeout the setup is still inside."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio.testing

from voiceagent.llm.bedrock import BedrockLLM


@asynccontextmanager
async def llm_on_virtual_clock(mock_clock: trio.testing.MockClock,
                               **options: Any) -> AsyncIterator[BedrockLLM]:
    """Production limits unless ``options`` say otherwise."""
    backend = BedrockLLM(region="us-east-1", **options)
    await backend.warm_up()
    mock_clock.autojump_threshold = 0
    try:
        yield backend
    finally:
        await backend.aclose()
