"""One process's ``Sessions`` over a store, and a socket's ``setup`` for it: what the tests of
sessions across processes build for each process they play."""

from __future__ import annotations

import json
from typing import Any, cast

from tests.fakes import setup_frame
from voiceagent.app.sessions import Sessions
from voiceagent.catalog import Catalog
from voiceagent.relay.protocol import Setup, parse_frame
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.store.write_behind import WriteBehind
from voiceagent.tools.registry import ToolRegistry


def sessions_on(store: Any, use_case: str) -> tuple[Sessions, WriteBehind]:
    """``Sessions`` and its write-behind queue (not drained unless the test runs it), serving
    ``use_case``; ``store`` is a ``Store`` or a wrapper that counts or stalls its calls."""
    writer = WriteBehind(cast(Store, store), jitter=lambda: 1.0)
    settings = Settings.model_validate({"STACK_USE_CASE": use_case})
    return Sessions(settings=settings, store=cast(Store, store),
                    catalog=Catalog(cast(Store, store), ToolRegistry()), writer=writer), writer


def setup_message(call_sid: str, token: str) -> Setup:
    """The ``setup`` a socket sends carrying ``token``, parsed as the relay reader parses it."""
    frame = parse_frame(json.dumps(setup_frame(call_sid, token)))
    assert isinstance(frame, Setup)
    return frame
