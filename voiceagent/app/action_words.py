"""What ``/action``'s ``<Say>`` says, and in which language: the use case's words for the
language the call last spoke, as a line said on its socket would be.

That language is the one the ``end`` frame's handoff data carries when the call left its
first one (``voiceagent.handoff_language``); else (no stamp, a session that failed, a
language the use case does not declare) the use case's first language: its ``lines`` entry
for it, else its top-level words, else the English defaults. Without a use case (the
session unreadable, or not read: a plain goodbye) the English defaults.

``<Say>`` reads the text in Twilio's own voices, not the relay's: its ``language`` makes
Twilio pick its voice for that language (its default one, unless the Twilio console sets
another per language). It is set whenever the text is the use case's own, except for en-US,
which is ``<Say>``'s default; the English defaults go without it, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.session_language import SessionLanguage, same
from actors.spoken_lines import HANDOFF_MESSAGE, SpokenLines
from voiceagent.usecase_lines import DEFAULT_LINES
from voiceagent.usecases import UseCase

SAY_DEFAULT_LANGUAGE = "en-US"      # <Say>'s own when it has no language attribute


@dataclass(frozen=True, slots=True)
class Said:
    text: str
    language: str | None = None     # <Say language>; None: Twilio's default, en-US


class ActionWords:
    """The words of one ``/action`` answer; ``spoken``: the language the handoff data says
    the call last spoke (None: not said)."""

    def __init__(self, use_case: UseCase | None, spoken: str | None = None) -> None:
        self._use_case = use_case
        if use_case is None:
            self._words, self._first = SpokenLines(), SAY_DEFAULT_LANGUAGE
            return
        self._first = SessionLanguage.for_use_case(use_case).tts
        code = spoken if spoken and use_case.language_for(spoken) is not None else self._first
        self._words = SpokenLines(use_case, SessionLanguage(code, code))

    def line(self, name: str) -> Said:
        """The line ``name`` of ``usecase_lines.LINES``."""
        text = self._words(name)
        return self._said(text, text != DEFAULT_LINES[name])

    def handoff_message(self) -> Said:
        text = self._words.handoff_message()
        return self._said(text, text != HANDOFF_MESSAGE)

    def _said(self, text: str, own: bool) -> Said:
        language = (self._words.entry_code() or self._first) if own else None
        if language is not None and same(language, SAY_DEFAULT_LANGUAGE):
            language = None
        return Said(text, language)
