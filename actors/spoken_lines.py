"""The fixed words a call says, in the language Twilio speaks when it says them: voiceagent's
own lines (``lines``), the use case's ``hold_line``, its tools' fillers, its handoff's
message, its scripted fallback and its keys' replies. Each is that language's ``languages``
entry's, else the use case's own (``lines``, ``hold_line``, a tool's ``filler``,
``handoff.message``, ``scripted.fallback``, a handler's ``reply``), else the default:
English for the lines, silence for the hold line and fillers (``voiceagent.usecase_lines``).
``/action`` looks its ``<Say>`` lines up here too, for the language the call last spoke.

Every one of them is looked up here, when it is said: a tool's switchLanguage or the
automatic switch moves ``SessionLanguage``, and the next line follows it. The tables are
made once per call, so saying a line costs a dict lookup or two.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from actors.session_language import SessionLanguage
from voiceagent.usecase_lines import DEFAULT_LINES
from voiceagent.usecase_relay import WORDS
from voiceagent.usecases import HandoffConfig, LanguageEntry, ScriptedConfig, UseCase

_DEFAULTS: Mapping[str, str] = MappingProxyType(DEFAULT_LINES)
_NONE: Mapping[str, str] = MappingProxyType({})
HANDOFF_MESSAGE: str = HandoffConfig.model_fields["message"].default
SCRIPTED_FALLBACK: str = ScriptedConfig.model_fields["fallback"].default


@dataclass(frozen=True, slots=True)
class _Words:
    lines: Mapping[str, str]        # every name of ``usecase_lines.LINES``
    hold_line: str | None
    fillers: Mapping[str, str]      # tool name -> its filler
    handoff_message: str
    scripted_fallback: str
    dtmf_replies: Mapping[str, str]     # keys -> the reply of their handler
    code: str | None = None         # the entry these are for (None: every language)

    def under(self, entry: LanguageEntry) -> _Words:
        """These, with what ``entry`` says in their place."""
        return _Words({**self.lines, **entry.lines.given()} if entry.lines else self.lines,
                      entry.hold_line or self.hold_line,
                      {**self.fillers, **entry.fillers} if entry.fillers else self.fillers,
                      entry.handoff_message or self.handoff_message,
                      entry.scripted_fallback or self.scripted_fallback,
                      {**self.dtmf_replies, **entry.dtmf_replies} if entry.dtmf_replies
                      else self.dtmf_replies, entry.code)


class SpokenLines:
    """One call's words; ``language`` is the call's record of what Twilio speaks (None: the
    use case's top-level words in every language)."""

    def __init__(self, use_case: UseCase | None = None,
                 language: SessionLanguage | None = None) -> None:
        self.language = language
        self.by_code: dict[str, _Words] = {}
        if use_case is None:
            self.everywhere = _Words(_DEFAULTS, None, _NONE, HANDOFF_MESSAGE,
                                     SCRIPTED_FALLBACK, _NONE)
            return
        top = use_case.lines.given() if use_case.lines else {}
        self.everywhere = _Words({**DEFAULT_LINES, **top} if top else _DEFAULTS,
                                 use_case.hold_line,
                                 {t.name: t.filler for t in use_case.tools if t.filler},
                                 use_case.handoff.message, use_case.scripted.fallback,
                                 {keys: h.reply for keys, h in use_case.dtmf.handlers.items()
                                  if h.reply is not None})
        entries = use_case.languages
        if not any(getattr(e, key) for e in entries for key in WORDS):
            return                      # the same words in every language
        for entry in entries:
            words = self.everywhere.under(entry)
            code = entry.code.lower()
            self.by_code[code] = words
            # as ``UseCase.language_for``: an entry of the code itself, else the first of its
            # primary subtag (an en-US without lines is not spoken with en-GB's)
            self.by_code.setdefault(_primary(code), words)

    def __call__(self, name: str) -> str:
        """The line ``name`` (a key of ``usecase_lines.LINES``) as the caller hears it now."""
        return self._now().lines[name]

    def hold_line(self) -> str | None:
        return self._now().hold_line

    def filler(self, tool: str) -> str | None:
        return self._now().fillers.get(tool)

    def dtmf_reply(self, keys: str) -> str | None:
        """The reply of the handler of ``keys`` (None: it has none)."""
        return self._now().dtmf_replies.get(keys)

    def handoff_message(self) -> str:
        return self._now().handoff_message

    def scripted_fallback(self) -> str:
        return self._now().scripted_fallback

    def entry_code(self) -> str | None:
        """The code of the ``languages`` entry whose words are said now (None: the use
        case's top-level ones, for every language)."""
        return self._now().code

    def _now(self) -> _Words:
        if self.by_code and self.language is not None:
            spoken = self.language.tts.lower()
            words = self.by_code.get(spoken) or self.by_code.get(_primary(spoken))
            if words is not None:
                return words
        return self.everywhere


def _primary(code: str) -> str:
    return code.replace("_", "-").split("-", 1)[0]
