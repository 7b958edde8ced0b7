"""What a call changes in its ConversationRelay session while it runs: the language spoken,
the use case's ``relay_updates`` rules, and the flags on the next reply's frames.

Twilio holds the session's settings; this keeps our view of the few we change, so a switch is
sent once, when it changes something, and a rule that fires ``once`` fires once per call.
Only the llm_streamer's task (and the turns it runs) touch it; the language it shares with
the tools (SessionLanguage), which switch it too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from actors.messages import Config, Hints, Language
from actors.session_language import SessionLanguage, same
from voiceagent.usecases import LanguageEntry, RelayUpdate, UseCase

log = logging.getLogger(__name__)

RelayMessage = Language | Config | Hints


@dataclass(frozen=True, slots=True)
class ReplyFlags:
    """``interruptible`` / ``preemptible`` for a reply's text frames (None: the TwiML's).

    A ``preemptible`` reply that the next one cuts short stays whole in the history: Twilio
    sends no ``interrupt`` for it (Voice Insights records ``preempted`` only after the call),
    and ``tokensPlayed``, when subscribed, names no reply and races the next one's frames,
    so nothing says where it was cut. Keep preemptible for words whose loss does not
    mislead the model (a "let me check" before the answer)."""

    interruptible: bool | None = None
    preemptible: bool | None = None


@dataclass
class RelayControl:
    use_case: UseCase
    language: SessionLanguage                       # what Twilio speaks now, tools' switches too
    fired: set[int] = field(default_factory=set)    # relay_updates fired (``once`` rules)

    @classmethod
    def for_use_case(cls, use_case: UseCase,
                     language: SessionLanguage | None = None) -> RelayControl:
        return cls(use_case, language or SessionLanguage.for_use_case(use_case))

    # ------------------------------------------------------------------ language

    def switch_for(self, lang: str) -> Language | None:
        """The ``language`` message that makes Twilio answer in ``lang`` (a final prompt's
        language), when the use case declares it, switches automatically, and it is not the
        language spoken now; else None. Not recorded here: the sender notes it in
        ``language`` once the writer has taken it. A send cut short (a prompt superseding the
        turn while Twilio was slow) changed nothing, and a record saying otherwise held back
        the next prompt's switch, and a tool's too."""
        if not lang or not self.use_case.auto_language_enabled:
            return None
        entry = self.use_case.language_for(lang)
        if entry is None or same(entry.code, self.language.tts):
            return None
        log.info("caller's language changed: switching", extra={
            "from": self.language.tts, "to": entry.code})
        return Language(tts_language=entry.code)

    def language_note(self) -> str | None:
        """A system block telling the model which language to answer in, once the call has
        moved off the use case's first language (the persona prompt is written in one)."""
        if not self.use_case.auto_language_enabled:
            return None
        spoken = self.language.tts
        if same(SessionLanguage.for_use_case(self.use_case).tts, spoken):
            return None
        entry: LanguageEntry | None = self.use_case.language_for(spoken)
        code = entry.code if entry is not None else spoken
        return (f"The caller is speaking the language with code {code}. Answer only in that "
                "language, whatever language the instructions above are written in.")

    # ------------------------------------------------------------------ rules

    def for_tool(self, name: str) -> list[RelayMessage]:
        return self._fire(lambda rule: rule.when.tool == name)

    def for_caller(self, text: str) -> list[RelayMessage]:
        return self._fire(lambda rule: _matches(rule.when.caller_says, text))

    def for_agent(self, text: str) -> list[RelayMessage]:
        return self._fire(lambda rule: _matches(rule.when.agent_says, text))

    def _fire(self, applies: Callable[[RelayUpdate], bool]) -> list[RelayMessage]:
        messages: list[RelayMessage] = []
        for index, rule in enumerate(self.use_case.relay_updates):
            if (rule.once and index in self.fired) or not applies(rule):
                continue
            self.fired.add(index)
            messages.extend(rule.messages())
            log.info("relay update", extra={"rule": index, "messages": [
                type(m).__name__.lower() for m in rule.messages()]})
        return messages


def _matches(pattern: str | None, text: str) -> bool:
    return pattern is not None and re.search(pattern, text, re.IGNORECASE) is not None
