"""The words a call says for voiceagent itself, in the language Twilio speaks when it says
them: the ``lines`` of that language's ``languages`` entry, else the use case's top-level
``lines``, else the English default (``voiceagent.usecase_lines``).

Every spoken line of the actors is looked up here, when it is said: a tool's switchLanguage
or the automatic switch moves ``SessionLanguage``, and the next line follows it. The tables
are made once per call, so saying a line costs a dict lookup or two.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from actors.session_language import SessionLanguage
from voiceagent.usecase_lines import DEFAULT_LINES
from voiceagent.usecases import UseCase

_DEFAULTS = MappingProxyType(DEFAULT_LINES)


class SpokenLines:
    """One call's lines; ``language`` is the call's record of what Twilio speaks (None: the
    use case's top-level lines in every language)."""

    def __init__(self, use_case: UseCase | None = None,
                 language: SessionLanguage | None = None) -> None:
        self.language = language
        top = use_case.lines.given() if use_case is not None and use_case.lines else {}
        self.everywhere: Mapping[str, str] = {**DEFAULT_LINES, **top} if top else _DEFAULTS
        self.by_code: dict[str, Mapping[str, str]] = {}
        entries = use_case.languages if use_case is not None else ()
        if not any(entry.lines for entry in entries):
            return                      # the same words in every language
        for entry in entries:
            lines = ({**self.everywhere, **entry.lines.given()} if entry.lines
                     else self.everywhere)
            code = entry.code.lower()
            self.by_code[code] = lines
            # as ``UseCase.language_for``: an entry of the code itself, else the first of its
            # primary subtag (an en-US without lines is not spoken with en-GB's)
            self.by_code.setdefault(_primary(code), lines)

    def __call__(self, name: str) -> str:
        """The line ``name`` (a key of ``usecase_lines.LINES``) as the caller hears it now."""
        if self.by_code and self.language is not None:
            spoken = self.language.tts.lower()
            lines = self.by_code.get(spoken) or self.by_code.get(_primary(spoken))
            if lines is not None:
                return lines[name]
        return self.everywhere[name]


def _primary(code: str) -> str:
    return code.replace("_", "-").split("-", 1)[0]
