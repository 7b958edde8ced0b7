"""The words voiceagent itself says in a call (apologies, the re-prompt, its goodbyes, and
``/action``'s ``<Say>``), and a use case's own words for them, per language; and the check of
a ``languages`` entry's words for the texts a use case says elsewhere (``SAID_INSTEAD``).

The defaults are English. A use case that speaks Spanish had its caller hear "Are you still
there?" read by a Spanish voice: ``lines`` at the use case's top level gives its words for
every language, and ``lines`` in a ``languages`` entry its words while that language is
spoken (``actors.spoken_lines`` picks one when a line is said). Each is checked as a tool's
filler is: one short line of plain text, and a line name that does not exist is refused with
the names that do.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from voiceagent.usecase_base import Strict, key_problem
from voiceagent.usecase_xml import NOT_XML, describe

# a filler is one short sentence: the model's answer queues behind it, so one longer than the
# wait it fills (about 15 characters a second of speech) delays the answer it stands in for
MAX_FILLER_CHARS = 100
# a spoken line stands in for the answer, or ends the call: a sentence or two. The English
# ones are under 100 characters; other languages say the same in up to half as many more.
MAX_LINE_CHARS = 150
# a use case's own fixed text (its handoff's message, a key's reply) in another language: the
# English one may run to a few sentences (the restaurant's hours, 170 characters)
MAX_SAID_INSTEAD_CHARS = 300

# name -> (the English default, when it is said): the names a ``lines`` mapping may use
LINES: dict[str, tuple[str, str]] = {
    "trouble": ("Sorry, I'm having a little trouble right now. Could you say that again?",
                "said when the model fails before saying a word"),
    "lost_thought": ("Sorry, I lost my train of thought. Could you say that again?",
                     "said when the model fails mid-answer, stops without a word, or is cut "
                     "by maxTokens"),
    "too_many_rounds": ("I'm sorry, that is taking me longer than it should. "
                        "Could you tell me once more what you need?",
                        "said when the model calls tools MAX_TOOL_ROUNDS times without an "
                        "answer"),
    "cannot_go_on": ("Sorry, we cannot take your call right now. Please try again later.",
                     "said before the call ends after three failed turns in a row"),
    "reprompt": ("Are you still there?", "said when the caller is silent"),
    "idle_goodbye": ("I haven't heard from you, so I'll end the call now. "
                     "Please call back anytime.",
                     "said before the call ends because the caller stayed silent"),
    "time_limit_goodbye": ("I'm sorry, we have reached the time limit for this call. "
                           "Please call back anytime.",
                           "said before the call ends at MAX_CALL_DURATION_S"),
    "draining_goodbye": ("I'm sorry, we have to end this call now for maintenance. "
                         "Please call back in a minute.",
                         "said before the call ends because the server is stopping"),
    "goodbye": ("Thank you for calling. Goodbye.",
                "said by /action when the agent ended the call, or asked for a person and "
                "the call's session could not be read"),
    "no_agent": ("Sorry, no one is available to take your call right now. "
                 "Please call back later.",
                 "said by /action when a person is asked for and handoff has no target"),
}
DEFAULT_LINES: dict[str, str] = {name: text for name, (text, _) in LINES.items()}


def one_short_line(value: str | None, key: str, when: str, example: str, *,
                   limit: int = MAX_FILLER_CHARS, why: str = "the answer waits behind it",
                   unset: str = "silence", at: tuple[str | int, ...] = ()) -> str | None:
    """A fixed sentence said for the model (a filler, a hold line, a spoken line): one short
    line, and says so when not (``at``: the key under the validated one it is at)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        raise key_problem(at, f"a {key} is {when}: write one short sentence "
                          f"(\"{example}\"), or leave {key} out for {unset}")
    if len(text) > limit:
        raise key_problem(at, f"{len(text)} characters; a {key} is one short sentence of at "
                          f"most {limit} ({why}): shorten it")
    if (odd := next((c for c in text if c in "\t\n\r" or NOT_XML.match(c)), None)):
        raise key_problem(at, f"holds {describe(odd)}: a {key} is one line of plain text; "
                          "remove it")
    return text


def filler_ok(value: str | None, at: tuple[str | int, ...] = ()) -> str | None:
    return one_short_line(value, "filler", "said while the tool runs",
                          "One moment while I check that.", at=at)


def hold_line_ok(value: str | None) -> str | None:
    return one_short_line(value, "hold_line", "said while the model is slow to begin",
                          "One moment, please.")


# a ``languages`` entry's key for a text the use case says elsewhere -> (what it stands in
# for, when it is said, an example)
SAID_INSTEAD: dict[str, tuple[str, str, str]] = {
    "handoff_message": ("handoff.message", "said before the transfer",
                        "Le paso con una persona de nuestro equipo."),
    "scripted_fallback": ("scripted.fallback", "said when no scripted rule matches",
                          "Perdone, no le he entendido."),
    "dtmf_replies": ("a dtmf.handlers entry's reply", "said when its keys are pressed",
                     "Abrimos a las once."),
}


def said_instead_ok(key: str, value: Any) -> Any:
    """A ``languages`` entry's words for a text the use case says elsewhere (the handoff's
    message, the scripted fallback, keys' replies, by their keys): checked as a spoken line
    is, to a longer limit, since the use case's own may be a few sentences."""
    _, when, example = SAID_INSTEAD[key]

    def checked(text: str, at: tuple[str | int, ...] = ()) -> str:
        return str(one_short_line(text, key, when, example, limit=MAX_SAID_INSTEAD_CHARS,
                                  why="it stands in for an answer, or ends the call",
                                  unset="the use case's own", at=at))

    if value is None:
        return None
    if isinstance(value, str):
        return checked(value)
    if not value:
        raise key_problem((), f"{key} needs at least one key (leave it out for the "
                          "handlers' own replies)")
    return {keys: checked(text, (keys,)) for keys, text in value.items()}


class SpokenLines(Strict):
    """A use case's words for the lines in ``LINES``; a line left out is the default's (or,
    in a ``languages`` entry, the use case's top-level one)."""

    trouble: str | None = None
    lost_thought: str | None = None
    too_many_rounds: str | None = None
    cannot_go_on: str | None = None
    reprompt: str | None = None
    idle_goodbye: str | None = None
    time_limit_goodbye: str | None = None
    draining_goodbye: str | None = None
    goodbye: str | None = None
    no_agent: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _names_known(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if not data:
                raise key_problem((), "lines needs at least one line (leave lines out for "
                                  "the defaults)")
            for key in data:
                if key not in LINES:
                    raise key_problem((str(key),), f"no line is called {key!r}; the lines "
                                      f"are {', '.join(LINES)} (see config/README.md)")
        return data

    @field_validator("*")
    @classmethod
    def _one_line(cls, value: str | None, info: ValidationInfo) -> str | None:
        name = str(info.field_name)
        default, when = LINES[name]
        return one_short_line(value, name, when, default, limit=MAX_LINE_CHARS,
                              why="it stands in for an answer, or ends the call",
                              unset="the default")

    @model_serializer(mode="wrap")
    def _only_the_lines_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The lines set, no ``null`` for the rest: stored, they read back as written."""
        data: dict[str, Any] = handler(self)
        return {name: text for name, text in data.items() if text is not None}

    def given(self) -> dict[str, str]:
        """The lines this mapping sets, by name."""
        return {name: text for name in LINES if (text := getattr(self, name)) is not None}

