"""What ``/action`` needs to know of a call to speak its words, carried in the ``end`` frame's
``handoffData``: the language the call last spoke, and its use case.

Twilio asks ``/action`` what the caller hears next (the handoff's message, a goodbye), and
it may ask another process than the one that served the socket. Nothing in the store says
which language the call last spoke (a switch is known to its socket alone, and a reconnect
starts from the TwiML's again), and a write per switch for it, or a read of it in
``/action``, would cost every call what a few need; a plain goodbye reads no session at all
(a store that is down would hold it in silence). ``handoffData`` comes back verbatim in the
signed ``/action`` request, so the socket puts both there as it ends the session: only for a
use case with words of its own for ``/action`` (else nothing it says would change), and never
over a key the sender set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from voiceagent import jsonlimits
from voiceagent.usecases import UseCase

# Twilio's own name for the language it speaks (the ``language`` message's field); a Flex
# task made from the handoff data carries it too, for a workflow to route on
KEY = "ttsLanguage"
USE_CASE_KEY = "useCase"    # as the handoff tool names it
MAX_VALUE_CHARS = 128       # a language tag or a use case's name; longer is not ours


def needed(use_case: UseCase) -> bool:
    """Whether ``/action`` has words of ``use_case`` to say (a ``goodbye`` or ``no_agent``
    line, a ``languages`` entry's ``handoff_message``): else the stamp would change nothing
    it says, and the ``end`` goes as it came."""
    entries = use_case.languages
    return any(e.handoff_message for e in entries) or any(
        lines is not None and (lines.goodbye is not None or lines.no_agent is not None)
        for lines in (use_case.lines, *(e.lines for e in entries)))


def stamped(handoff_data: str | None, language: str, use_case: str) -> str | None:
    """``handoff_data`` with ``language`` and ``use_case`` under their keys: a JSON object
    gains the keys it lacks, no data becomes an object of them alone, and data that is not a
    JSON object (a plugin's own string) goes as it was."""
    stamp = {KEY: language, USE_CASE_KEY: use_case}
    if handoff_data is None:
        return json.dumps(stamp)
    try:
        data = jsonlimits.loads(handoff_data, finite=False) if handoff_data else None
    except ValueError:
        return handoff_data
    if not isinstance(data, dict) or not stamp.keys() - data.keys():
        return handoff_data
    return json.dumps({**stamp, **data})


def spoken_in(handoff: Mapping[str, Any]) -> str | None:
    """The language the stamp says, from the handoff data as ``/action`` parsed it."""
    return _value(handoff, KEY)


def use_case_of(handoff: Mapping[str, Any]) -> str | None:
    return _value(handoff, USE_CASE_KEY)


def _value(handoff: Mapping[str, Any], key: str) -> str | None:
    value = handoff.get(key)
    return value if isinstance(value, str) and 0 < len(value) <= MAX_VALUE_CHARS else None
