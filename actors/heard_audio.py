"""What was heard when Twilio says no word was, yet audio played: an empty
``utteranceUntilInterrupt`` with a ``durationUntilInterruptMs`` above zero.

Twilio reports the words of the item it was playing; a ``play`` (or ``sendDigits``) has none.
So a caller who cuts into a tool's hold recording gets an empty report with the time the
recording played, and the words the turn said before the tool ran, queued ahead of the
recording, had all played. Taking the empty report for "nothing heard" dropped them, and the
model then said them again. The words after the audio were not reached. With no such tool
in the cut turns there is nothing known to have played, and nothing is kept, as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from actors.history_span import Mark

MAX_AUDIO_USES = 32     # kept: only the turns still playing at a barge-in need them


class AudioUses:
    """The tool uses (by toolUseId) that sent the caller audio or digits, the newest few."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[str, None] = {}        # insertion-ordered: the oldest go first

    def add(self, tool_use_ids: Iterable[str]) -> None:
        for tool_use_id in tool_use_ids:
            self._ids.pop(tool_use_id, None)
            self._ids[tool_use_id] = None
        while len(self._ids) > MAX_AUDIO_USES:
            del self._ids[next(iter(self._ids))]

    def __contains__(self, tool_use_id: object) -> bool:
        return tool_use_id in self._ids


def said_before_audio(messages: Sequence[dict[str, Any]], start: Mark, texts: Sequence[str],
                      audio: AudioUses) -> list[str]:
    """For each of ``texts`` (the assistant texts from ``start``, in order): the text when
    it stands before the first tool use since ``start`` that sent audio, else ""."""
    said = 0
    for at in range(start.index, len(messages)):
        if messages[at]["role"] != "assistant":
            continue
        for block in messages[at]["content"][start.first_block(at):]:
            use = block.get("toolUse")
            if isinstance(use, dict) and use.get("toolUseId") in audio:
                return [text.strip() for text in texts[:said]] + [""] * (len(texts) - said)
            said += isinstance(block.get("text"), str)
    return [""] * len(texts)
