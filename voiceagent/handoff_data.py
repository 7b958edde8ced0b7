"""What a session's ``end`` frame's ``handoffData`` says: whether the call goes to a person.

Kept apart from ``/action`` (``voiceagent.app.session_end``) because the call's own actors
read it too, for their logs: a goodbye's ``end`` may carry data of its own (the language
stamp of ``voiceagent.handoff_language``), so "has data" is not "hands off".
"""

from __future__ import annotations

from typing import Any

from voiceagent import jsonlimits

# A session end hands the call to a person only when its HandoffData says so: the handoff
# tool's {"handoff": true, ...}, or Twilio's samples' reasonCode "live-agent-handoff". Every
# other end (the caller was silent, the call's time was up, the server drains, the agent hung
# up) says goodbye and hangs up.
HANDOFF_REASON = "live-agent-handoff"


def parsed(text: str | None) -> dict[str, Any]:
    """``HandoffData`` as sent in our ``end`` frame: a JSON object, else nothing usable."""
    try:
        # finite=False: our own end frame's JSON (json.dumps writes NaN), read as written
        data = jsonlimits.loads(text, finite=False) if text else {}
    except ValueError:                  # not JSON, or nested too deep: TooDeep
        return {}
    return data if isinstance(data, dict) else {}


def asks_for_person(handoff: dict[str, Any]) -> bool:
    return handoff.get("handoff") is True or handoff.get("reasonCode") == HANDOFF_REASON


def hands_off(handoff_data: str | None) -> bool:
    """The session's ``end`` asked for a person (else its answer is a goodbye)."""
    return asks_for_person(parsed(handoff_data))
